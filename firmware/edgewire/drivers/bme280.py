# Bosch BME280 temperature, humidity and pressure sensor on I2C, the way
# micropython-lib drivers take a bus: BME280(i2c, addr) with any object that has
# machine.I2C's readfrom_mem/writeto_mem (a board's i2c(), or a simulated bus).
#
# Forced mode, oversampling x1 for all three, filter off (the datasheet's
# "weather monitoring" setting, section 3.5.1): one measurement per read(),
# ~9.3 ms, then the chip sleeps (0.1 uA). The compensation is the datasheet's
# integer arithmetic (BST-BME280-DS002 section 4.2.3: 32-bit temperature and
# humidity, 64-bit pressure): exact on 32-bit boards whose floats are single
# precision, where the floating-point formulas lose ~1 hPa.
#
# Errors: OSError from the bus (no ACK: missing, unplugged), ValueError for a
# chip that is not a BME280 or a measurement that never finishes.

import struct

try:
    from time import sleep_ms
except ImportError:  # CPython (the simulator)
    from time import sleep

    def sleep_ms(ms):
        sleep(ms / 1000)


class BME280:
    def __init__(self, i2c, addr=0x76):
        self.i2c = i2c
        self.addr = addr
        cid = i2c.readfrom_mem(addr, 0xD0, 1)[0]
        if cid != 0x60:
            raise ValueError("chip id 0x%02x at 0x%02x is not a BME280 (0x60)" % (cid, addr))
        c = struct.unpack("<HhhHhhhhhhhhxB", i2c.readfrom_mem(addr, 0x88, 26))
        e = i2c.readfrom_mem(addr, 0xE1, 7)
        h4 = (e[3] << 4) | (e[4] & 0x0F)
        h5 = (e[5] << 4) | (e[4] >> 4)
        # T1..T3, P1..P9, H1, H2, H3, H4, H5, H6 (H4, H5: signed 12 bits; H6: signed 8)
        self.cal = c + (struct.unpack_from("<h", e)[0], e[2], h4 - 4096 if e[3] & 0x80 else h4,
                        h5 - 4096 if e[5] & 0x80 else h5, e[6] - 256 if e[6] & 0x80 else e[6])
        self.buf = bytearray(8)

    def read(self):
        """One forced measurement -> (temperature C, humidity %RH, pressure hPa)."""
        i2c, a = self.i2c, self.addr
        i2c.writeto_mem(a, 0xF2, b"\x01")   # humidity x1 (takes effect with ctrl_meas)
        i2c.writeto_mem(a, 0xF4, b"\x25")   # temperature x1, pressure x1, forced mode
        for _ in range(20):                 # ~9.3 ms expected; give up after ~60 ms
            sleep_ms(3)
            if not i2c.readfrom_mem(a, 0xF3, 1)[0] & 0x08:
                break
        else:
            raise ValueError("BME280 at 0x%02x: measurement did not finish" % a)
        i2c.readfrom_mem_into(a, 0xF7, self.buf)
        b = self.buf
        ap = (b[0] << 12) | (b[1] << 4) | (b[2] >> 4)
        at = (b[3] << 12) | (b[4] << 4) | (b[5] >> 4)
        ah = (b[6] << 8) | b[7]
        if at == 0x80000:
            raise ValueError("BME280 at 0x%02x: no measurement (chip reset?)" % a)
        tf, t = self._t(at)
        return t / 100, self._h(ah, tf) / 1024, self._p(ap, tf) / 25600

    def _t(self, at):
        c = self.cal
        v1 = (((at >> 3) - (c[0] << 1)) * c[1]) >> 11
        d = (at >> 4) - c[0]
        v2 = (((d * d) >> 12) * c[2]) >> 14
        tf = v1 + v2
        return tf, (tf * 5 + 128) >> 8   # t_fine, 0.01 C

    def _p(self, ap, tf):
        c = self.cal  # c[3..11]: P1..P9
        v1 = tf - 128000
        v2 = v1 * v1 * c[8] + ((v1 * c[7]) << 17) + (c[6] << 35)
        v1 = ((v1 * v1 * c[5]) >> 8) + ((v1 * c[4]) << 12)
        v1 = (((1 << 47) + v1) * c[3]) >> 33
        if v1 == 0:
            return 0
        p = 1048576 - ap
        p = (((p << 31) - v2) * 3125) // v1
        v1 = (c[11] * (p >> 13) * (p >> 13)) >> 25
        v2 = (c[10] * p) >> 19
        return ((p + v1 + v2) >> 8) + (c[9] << 4)   # Pa * 256

    def _h(self, ah, tf):
        c = self.cal  # c[12..17]: H1..H6
        v = tf - 76800
        v = ((((ah << 14) - (c[15] << 20) - c[16] * v) + 16384) >> 15) * \
            (((((((v * c[17]) >> 10) * (((v * c[14]) >> 11) + 32768)) >> 10) + 2097152) * c[13] + 8192) >> 14)
        v -= ((((v >> 15) * (v >> 15)) >> 7) * c[12]) >> 4
        v = 0 if v < 0 else min(v, 419430400)
        return v >> 12   # %RH * 1024
