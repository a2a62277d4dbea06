# Simulated sensor chips at the bus level, for the tests (the port fakes in
# tests/firmware/ports/ route machine.I2C, onewire.OneWire and dht_readinto to
# them) and for SimBoard (the simulator's sensors are a real driver over one of
# these). Runs on MicroPython and CPython; a device never imports it (not frozen).
#
# What each models, from the datasheets:
# - SimBme280: the BME280 register map (Bosch BST-BME280-DS002, section 5.3):
#   chip id 0xD0 = 0x60, soft reset 0xE0, calibration 0x88-0xA1 and 0xE1-0xE7
#   (table 16), ctrl_hum 0xF2 (latched by the next ctrl_meas write), status 0xF3
#   (bit 3 measuring), ctrl_meas 0xF4 (forced mode 01 measures once, then back to
#   sleep), config 0xF5, raw data 0xF7-0xFE (reset values 0x80000 / 0x8000 until a
#   measurement). Raw values are found from the physical ones by inverting the
#   datasheet's floating-point compensation (section 8.1), so a driver's integer
#   compensation is checked against an independent formula. Faults: present=False
#   (no ACK: the bus raises its NACK errno), stuck=True (measuring never ends).
# - SimDs18b20 on SimOneWire: the 1-Wire protocol (Maxim DS18B20 datasheet):
#   reset/presence, ROM commands SEARCH 0xF0 (bit triplets), MATCH 0x55,
#   SKIP 0xCC, READ 0x33; function commands CONVERT T 0x44 (read slots return 0
#   until done: 750 ms at 12 bits), READ SCRATCHPAD 0xBE (9 bytes, byte 8 the
#   Dallas CRC-8), WRITE SCRATCHPAD 0x4E. Power-on scratchpad holds 85 C. Two
#   devices answering at once wire-AND their bits. Faults: present=False (no
#   presence pulse), bad_crc=n (the next n scratchpad reads have a flipped bit),
#   brownout=True (it resets during each conversion: the scratchpad reads 85 C).
# - SimDht22: the AM2302/DHT22 40-bit frame: humidity x10, temperature x10
#   (sign-magnitude, bit 15 the sign), checksum = low byte of the sum of the
#   first four. Faults: present=False (no answer: dht_readinto times out),
#   bad_checksum=n.
#
# clock: a function returning ms (time in the model: conversion times), or None
# for conversions that are done at once.

import struct

# A typical BME280 calibration (T and P: the BMP280 datasheet's worked example,
# section 3.12; H: values read from a BME280 breakout).
CALIB = {"T1": 27504, "T2": 26435, "T3": -1000,
         "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855, "P5": 140, "P6": -7,
         "P7": 15500, "P8": -14600, "P9": 6000,
         "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30}


def crc8(data):
    """Dallas/Maxim 1-Wire CRC-8 (x^8 + x^5 + x^4 + 1, reflected): 0 over data
    that ends with its own CRC."""
    c = 0
    for b in data:
        for _ in range(8):
            mix = (c ^ b) & 1
            c >>= 1
            if mix:
                c ^= 0x8C
            b >>= 1
    return c


def _bisect(f, lo, hi, want, rising=True):
    """The integer x in [lo, hi] where the monotonic f(x) comes closest to want."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (f(mid) < want) == rising:
            lo = mid
        else:
            hi = mid
    return lo if abs(f(lo) - want) <= abs(f(hi) - want) else hi


class SimBme280:
    def __init__(self, temperature=21.0, humidity=45.0, pressure=1013.25, calib=None, clock=None, env=None):
        self.temperature = temperature  # C
        self.humidity = humidity        # %RH
        self.pressure = pressure        # hPa
        self.env = env                  # None, or a function -> (C, %RH, hPa) read at each measurement
        self.c = dict(calib or CALIB)
        self.clock = clock
        self.present = True
        self.drop = 0                   # the next n transfers get no ACK (a glitch)
        self.stuck = False
        self.raw = None                 # (adc_T, adc_P, adc_H) to measure instead of the physical values
        self.measurements = 0
        self.regs = bytearray(256)
        self.pointer = 0
        self._done_at = None
        self._reset()

    def _reset(self):
        r = self.regs
        for i in range(256):
            r[i] = 0
        r[0xD0] = 0x60
        c = self.c
        struct.pack_into("<HhhHhhhhhhhh", r, 0x88, c["T1"], c["T2"], c["T3"], c["P1"], c["P2"], c["P3"],
                         c["P4"], c["P5"], c["P6"], c["P7"], c["P8"], c["P9"])
        r[0xA1] = c["H1"]
        struct.pack_into("<hB", r, 0xE1, c["H2"], c["H3"])
        r[0xE4] = (c["H4"] >> 4) & 0xFF
        r[0xE5] = (c["H4"] & 0x0F) | ((c["H5"] & 0x0F) << 4)
        r[0xE6] = (c["H5"] >> 4) & 0xFF
        r[0xE7] = c["H6"] & 0xFF
        r[0xF7:0xFF] = b"\x80\x00\x00\x80\x00\x00\x80\x00"
        self._hum_latched = 0

    def _now(self):
        return self.clock() if self.clock is not None else 0

    # ---- the float compensation of the datasheet (section 8.1), to invert
    def _t_fine(self, adc_t):
        c = self.c
        v1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
        v2 = (adc_t / 131072.0 - c["T1"] / 8192.0)
        return v1 + v2 * v2 * c["T3"]

    def _p(self, adc_p, tf):
        c = self.c
        v1 = tf / 2.0 - 64000.0
        v2 = v1 * v1 * c["P6"] / 32768.0
        v2 = v2 + v1 * c["P5"] * 2.0
        v2 = v2 / 4.0 + c["P4"] * 65536.0
        v1 = (c["P3"] * v1 * v1 / 524288.0 + c["P2"] * v1) / 524288.0
        v1 = (1.0 + v1 / 32768.0) * c["P1"]
        p = 1048576.0 - adc_p
        p = (p - v2 / 4096.0) * 6250.0 / v1
        v1 = c["P9"] * p * p / 2147483648.0
        v2 = p * c["P8"] / 32768.0
        return p + (v1 + v2 + c["P7"]) / 16.0

    def _h(self, adc_h, tf):
        c = self.c
        h = tf - 76800.0
        h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
            c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h)))
        return h * (1.0 - c["H1"] * h / 524288.0)

    def _measure(self):
        self.measurements += 1
        if self.raw is not None:
            at, ap, ah = self.raw
        else:
            t, h, p = self.env() if self.env is not None else (self.temperature, self.humidity, self.pressure)
            at = _bisect(lambda x: self._t_fine(x) / 5120.0, 0, (1 << 20) - 1, t)
            tf = self._t_fine(at)
            ap = _bisect(lambda x: self._p(x, tf), 0, (1 << 20) - 1, p * 100.0, False)
            ah = _bisect(lambda x: self._h(x, tf), 0, 65535, h)
        r = self.regs
        r[0xF7], r[0xF8], r[0xF9] = ap >> 12, (ap >> 4) & 0xFF, (ap & 0x0F) << 4
        r[0xFA], r[0xFB], r[0xFC] = at >> 12, (at >> 4) & 0xFF, (at & 0x0F) << 4
        if self._hum_latched & 7:  # humidity oversampling 0: skipped, keeps 0x8000
            r[0xFD], r[0xFE] = ah >> 8, ah & 0xFF

    def _tick(self):
        if self._done_at is not None and not self.stuck and self._now() >= self._done_at:
            self._done_at = None
            self._measure()
            self.regs[0xF4] &= 0xFC  # forced mode ends in sleep mode
        self.regs[0xF3] = 0x08 if self._done_at is not None else 0

    # ---- the I2C side: what machine.I2C's memory transfers do to the chip
    def read(self, reg, n):
        self._tick()
        return bytes(self.regs[(reg + i) & 0xFF] for i in range(n))

    def write(self, reg, data):
        self._tick()
        for i in range(len(data)):
            a = (reg + i) & 0xFF
            v = data[i]
            if a == 0xE0:
                if v == 0xB6:
                    self._reset()
            elif a in (0xF2, 0xF5):
                self.regs[a] = v
            elif a == 0xF4:
                self.regs[a] = v
                self._hum_latched = self.regs[0xF2]
                if v & 3 in (1, 2):  # forced mode: one measurement
                    os_t, os_p, os_h = (v >> 5) & 7, (v >> 2) & 7, self._hum_latched & 7
                    ms = 1.25 + sum(2.3 * (1 << (o - 1)) + 0.575 * (k > 0) for k, o in
                                    ((0, os_t), (1, os_p), (2, os_h)) if o)
                    self._done_at = self._now() + (int(ms + 0.999) if self.clock is not None else 0)
        self._tick()


class SimI2C:
    """machine.I2C's memory transfers over simulated chips {address: model};
    a missing or absent chip does not ACK: OSError(nack_errno)."""

    def __init__(self, devices, nack_errno=19):
        self.devices = devices
        self.nack = nack_errno

    def _dev(self, addr):
        d = self.devices.get(addr)
        if d is None or not d.present or d.drop:
            if d is not None and d.drop:
                d.drop -= 1
            raise OSError(self.nack)
        return d

    def scan(self):
        return sorted(a for a in self.devices if self.devices[a].present)

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return self._dev(addr).read(memaddr, nbytes)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        buf[:] = self._dev(addr).read(memaddr, len(buf))

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._dev(addr).write(memaddr, bytes(buf))


class SimDs18b20:
    def __init__(self, serial=1, temperature=21.0, clock=None, env=None):
        rom = bytearray(8)
        rom[0] = 0x28
        for i in range(6):
            rom[1 + i] = (serial >> (8 * i)) & 0xFF
        rom[7] = crc8(rom[:7])
        self.rom = bytes(rom)
        self.temperature = temperature
        self.env = env  # None, or a function -> C read at each conversion
        self.clock = clock
        self.present = True
        self.drop = 0          # no presence pulse at the next n resets (a glitch)
        self.bad_crc = 0
        self.brownout = False  # parasite power too weak: the sensor resets during each conversion
        self.conversions = 0
        self.power_on()
        self._ready_at = 0
        self._out = b""

    def _now(self):
        return self.clock() if self.clock is not None else 0

    def power_on(self):
        """The power-on scratchpad: 85 C, TH 75, TL 70, 12 bits."""
        self.pad = bytearray(b"\x50\x05\x4b\x46\x7f\xff\x0c\x10\x00")
        self.pad[8] = crc8(self.pad[:8])

    def converting(self):
        return self._now() < self._ready_at

    def convert(self):
        self.conversions += 1
        if self.brownout:
            self.power_on()
            return
        bits = 9 + ((self.pad[4] >> 5) & 3)
        self._ready_at = self._now() + (750 >> (12 - bits)) if self.clock is not None else 0
        t = self.env() if self.env is not None else self.temperature
        raw = int(round(t * 16)) & ~((1 << (12 - bits)) - 1)
        struct.pack_into("<h", self.pad, 0, raw)
        self.pad[8] = crc8(self.pad[:8])

    def scratchpad(self):
        out = bytearray(self.pad)
        if self.bad_crc:
            self.bad_crc -= 1
            out[1] ^= 0x04
        return out


class SimOneWire:
    """onewire.OneWire (micropython-lib, frozen on esp32 and rp2) over simulated
    1-Wire devices: reset(), readbit/readbyte/readinto, writebit/writebyte/write,
    select_rom(), scan(), crc8(). Each call is what the port does in bit time
    slots; the devices see the same sequence of resets, bytes and bits."""
    SEARCH_ROM = 0xF0
    MATCH_ROM = 0x55
    SKIP_ROM = 0xCC

    def __init__(self, devices):
        self.devices = devices
        self._sel = []      # devices selected by the last ROM command
        self._state = "idle"
        self._rx = b""      # bytes the selected devices put on the bus next
        self._arg = bytearray()
        self._bit = 0       # search: bit position; match: bytes of ROM collected
        self._phase = 0     # search: 0 bit, 1 complement, 2 direction

    def _present(self):
        return [d for d in self.devices if d.present]

    def reset(self, required=False):
        devs = []
        for d in self._present():
            if d.drop:
                d.drop -= 1
            else:
                devs.append(d)
        self._sel = devs
        self._state = "rom"
        self._rx = b""
        if required and not devs:
            raise OneWireError()
        return bool(devs)

    # ---- bits
    def readbit(self):
        if self._state == "search":
            sel = [d for d in self._sel if d.present]
            bits = [(d.rom[self._bit >> 3] >> (self._bit & 7)) & 1 for d in sel]
            if self._phase == 0:
                self._phase = 1
                return int(all(bits)) if bits else 1  # wired-AND of each device's bit
            self._phase = 2
            return int(all(1 - b for b in bits)) if bits else 1  # of their complements
        if self._state == "convert":
            return 0 if any(d.converting() for d in self._sel if d.present) else 1
        if self._rx:
            return self.readbyte() & 1
        return 1

    def writebit(self, value):
        if self._state == "search" and self._phase == 2:
            i = self._bit
            self._sel = [d for d in self._sel if (d.rom[i >> 3] >> (i & 7)) & 1 == (value & 1)]
            self._bit += 1
            self._phase = 0
            if self._bit == 64:
                self._state = "fn"

    # ---- bytes
    def readbyte(self):
        sel = [d for d in self._sel if d.present]
        if self._state == "data" and sel:
            v = 0xFF
            for d in sel:
                v &= d._out[0] if d._out else 0xFF
                d._out = d._out[1:]
            return v
        if self._state == "convert":
            return 0 if any(d.converting() for d in sel) else 0xFF
        return 0xFF  # nobody drives the bus: the pull-up reads 1s

    def readinto(self, buf):
        for i in range(len(buf)):
            buf[i] = self.readbyte()

    def writebyte(self, value):
        st = self._state
        sel = [d for d in self._sel if d.present]
        if st == "rom":
            if value == 0xCC:
                self._state = "fn"
            elif value == 0x55:
                self._state = "match"
                self._arg = bytearray()
            elif value == 0xF0:
                self._state = "search"
                self._bit = 0
                self._phase = 0
            elif value == 0x33 and sel:
                self._state = "data"
                for d in sel:
                    d._out = bytes(d.rom)
            else:
                self._state = "idle"
        elif st == "match":
            self._arg.append(value)
            if len(self._arg) == 8:
                self._sel = [d for d in sel if d.rom == bytes(self._arg)]
                self._state = "fn"
        elif st == "fn":
            if value == 0x44:
                for d in sel:
                    d.convert()
                self._state = "convert"
            elif value == 0xBE:
                for d in sel:
                    d._out = bytes(d.scratchpad())
                self._state = "data"
            elif value == 0x4E:
                self._state = "wpad"
                self._arg = bytearray()
            else:
                self._state = "idle"
        elif st == "wpad":
            self._arg.append(value)
            if len(self._arg) == 3:
                for d in sel:
                    d.pad[2:5] = self._arg
                    d.pad[8] = crc8(d.pad[:8])
                self._state = "idle"

    def write(self, buf):
        for b in buf:
            self.writebyte(b)

    def select_rom(self, rom):
        self.reset()
        self.writebyte(self.MATCH_ROM)
        self.write(rom)

    def scan(self):
        """The ROM codes on the bus (the 1-Wire search, one pass per device)."""
        found = []
        last = -1  # the bit position where the previous pass took the 1 branch last
        prefix = bytearray(8)
        while True:
            if not self.reset():
                return found
            self.writebyte(self.SEARCH_ROM)
            rom = bytearray(8)
            fork = -1
            for i in range(64):
                b = self.readbit()
                nb = self.readbit()
                if b and nb:
                    return found  # nobody answered: a device left mid-search
                if b != nb:
                    d = b
                elif i < last:
                    d = (prefix[i >> 3] >> (i & 7)) & 1
                    if not d:
                        fork = i
                elif i == last:
                    d = 1
                else:
                    d = 0
                    fork = i
                if d:
                    rom[i >> 3] |= 1 << (i & 7)
                self.writebit(d)
            if crc8(rom) == 0:
                found.append(bytes(rom))
            prefix = rom
            last = fork
            if last < 0:
                return found

    def crc8(self, data):
        return crc8(data)


class OneWireError(Exception):
    pass


class SimDht22:
    def __init__(self, temperature=21.0, humidity=45.0, env=None):
        self.temperature = temperature
        self.humidity = humidity
        self.env = env  # None, or a function -> (C, %RH)
        self.present = True
        self.drop = 0          # the next n reads time out (a glitch)
        self.bad_checksum = 0
        self.reads = 0

    def frame(self):
        t, h = self.env() if self.env is not None else (self.temperature, self.humidity)
        hv = int(round(h * 10))
        tv = int(round(abs(t) * 10)) | (0x8000 if t < 0 else 0)
        f = bytearray((hv >> 8, hv & 0xFF, tv >> 8, tv & 0xFF, 0))
        f[4] = (f[0] + f[1] + f[2] + f[3]) & 0xFF
        if self.bad_checksum:
            self.bad_checksum -= 1
            f[3] ^= 0x10
        return f

    def frame_into(self, buf):
        self.reads += 1
        buf[:5] = self.frame()


def dht_readinto(dev, timeout_errno=110):
    """A port's dht_readinto(pin, buf) for one simulated DHT22 (or None: nothing
    wired): OSError(ETIMEDOUT) when it does not answer."""
    def readinto(pin, buf):
        if dev is None or not dev.present or dev.drop:
            if dev is not None and dev.drop:
                dev.drop -= 1
            raise OSError(timeout_errno)
        dev.frame_into(buf)
        if dev.drop:  # it failed while it measured: no frame
            dev.drop -= 1
            raise OSError(timeout_errno)
    return readinto


class SimBuses:
    """SimBoard's buses (drivers.buses() hands them out for it): a BME280 at 0x76
    and 0x77 on the I2C bus, one DS18B20 on every 1-Wire pin, a DHT22 on every
    DHT pin. `chips` holds them by bus, for tests to unplug or corrupt:
    chips["i2c"].devices[0x76], chips[("onewire", 4)].devices[0], chips[("dht", 5)].

    Each measurement a chip makes takes the board's sensor models one step
    (sim:temperature and sim:humidity: drift, noise, humidity going the other
    way) and a pressure of its own (1013.25 hPa plus a slow walk, the weather),
    so a driver source reports the simulated environment through the driver's
    code at the chip's resolution. The board's fault_rate applies per
    measurement: a failed one leaves the chip off its bus for the next transfer
    (BME280: no ACK for the data read; DS18B20: no presence pulse for the
    scratchpad read; DHT22: no frame), which the driver reports as an error.

    Conversions finish at once (clock None): the driver's own first wait (3 ms
    BME280, 10 ms DS18B20) is all the time a measurement takes here, since in
    the simulator it blocks the loop that runs the other devices.
    KEEP > 0: each measurement's (ticks_ms, (C, %RH, hPa)) is kept in
    `measured`, the last KEEP (tests compare the readings with it)."""

    KEEP = 0

    def __init__(self, board):
        self.board = board
        self.chips = {}
        self.weather = 0.0     # hPa away from 1013.25
        self._wx_at = None
        self.measured = []

    def _env(self, chip):
        b = self.board
        if b.fault_rate and b._uniform() < b.fault_rate:
            b.faults += 1
            chip.drop = 1
        now = b.ticks_ms()
        dt = (now - (self._wx_at if self._wx_at is not None else now)) / 1000
        self._wx_at = now
        # ~1 hPa an hour, pulled back over a day; read noise ~0.03 hPa (x1 oversampling)
        self.weather += b._gauss() * 0.017 * (dt ** 0.5) - self.weather * min(1.0, dt / 86400)
        # the models' values, without their own fault (a fault here is the chip's,
        # above); fault_rate is set aside rather than SimBoard given a parameter:
        # boards/sim.py shares a 64K heap in the firmware tests, where a few more
        # bytes of its bytecode made test_device_load run out
        fr, b.fault_rate = b.fault_rate, 0
        try:
            v = (b.read("sim:temperature"), b.read("sim:humidity"), round(1013.25 + self.weather + b._gauss() * 0.03, 2))
        finally:
            b.fault_rate = fr
        if self.KEEP:
            self.measured.append((now, v))
            if len(self.measured) > self.KEEP:
                self.measured.pop(0)
        return v

    def _chip(self, key, make):
        c = self.chips.get(key)
        if c is None:
            c = self.chips[key] = make()
        return c

    def i2c(self):
        def bme():
            c = SimBme280()
            c.env = lambda: self._env(c)
            return c
        return self._chip("i2c", lambda: SimI2C({0x76: bme(), 0x77: bme()}))

    def onewire(self, pin):
        def ds():
            c = SimDs18b20(pin)
            c.env = lambda: self._env(c)[0]
            return c
        return self._chip(("onewire", pin), lambda: SimOneWire([ds()]))

    def dht(self, pin):
        def dht():
            c = SimDht22()
            c.env = lambda: self._env(c)[:2]
            return c
        return dht_readinto(self._chip(("dht", pin), dht)), pin
