# Maxim DS18B20 temperature sensors on a 1-Wire bus, the way micropython-lib
# drivers take a bus: DS18B20(ow) with an onewire.OneWire (a board's
# onewire(pin), or a simulated bus). Several sensors may share the bus: one
# CONVERT T for all of them (Skip ROM), then each scratchpad by its ROM code.
#
# A conversion takes up to 750 ms at 12 bits; the driver polls the bus (read
# slots return 0 until it is done) in 10 ms sleeps, at most 800 ms. Errors:
# OSError when no device answers the reset (unplugged, broken wire), ValueError
# for a scratchpad whose CRC-8 does not match (noise, a long bus without a
# strong enough pull-up) and for the 85 C power-on value (the sensor lost
# power during the conversion: parasite power without a strong pull-up).

try:
    from time import sleep_ms
except ImportError:  # CPython (the simulator)
    from time import sleep

    def sleep_ms(ms):
        sleep(ms / 1000)

FAMILIES = (0x28, 0x22, 0x10)  # DS18B20, DS1822, DS18S20


class DS18B20:
    def __init__(self, ow):
        self.ow = ow
        self.buf = bytearray(9)

    def scan(self):
        return [r for r in self.ow.scan() if r[0] in FAMILIES]

    def _reset(self):
        if not self.ow.reset():
            raise OSError(19, "no 1-Wire device answers")

    def convert(self):
        """Start a conversion on every sensor of the bus and wait for it."""
        ow = self.ow
        self._reset()
        ow.writebyte(0xCC)  # Skip ROM: all of them
        ow.writebyte(0x44)  # Convert T
        for _ in range(80):
            sleep_ms(10)
            if ow.readbit():
                return
        raise OSError(110, "DS18B20 conversion did not finish in 800 ms")

    def read_temp(self, rom=None):
        """The last conversion of the sensor `rom` (8 bytes), or of the only
        sensor on the bus (rom None), in C."""
        ow, b = self.ow, self.buf
        self._reset()
        if rom is None:
            ow.writebyte(0xCC)
        else:
            ow.writebyte(0x55)
            ow.write(rom)
        ow.writebyte(0xBE)  # Read scratchpad
        ow.readinto(b)
        if b == b"\xff\xff\xff\xff\xff\xff\xff\xff\xff":
            raise OSError(19, "DS18B20 did not answer")
        if ow.crc8(b):
            raise ValueError("DS18B20 scratchpad CRC error")
        t = b[0] | (b[1] << 8)
        if t & 0x8000:
            t -= 0x10000
        if t == 0x0550:
            raise ValueError("DS18B20 reads 85 C, its power-on value: power lost during conversion")
        return t / 16
