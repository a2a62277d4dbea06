# Shared parts of the port fakes' `machine` modules. Each port's machine.py
# picks what that port has (and only that) and documents where it comes from.

import fakehw


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8
    VALID = ()  # GPIO numbers of the port's chip

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        fakehw.check()
        if id not in self.VALID:
            raise ValueError("invalid pin")
        self.id = id
        self._mode = mode
        self._value = value

    def init(self, mode=-1, pull=-1, *, value=None):
        self._mode = mode
        if value is not None:
            self._value = value

    def value(self, *v):
        fakehw.check()
        if v:
            self._value = 1 if v[0] else 0
            fakehw.levels[self.id] = self._value
            return None
        return fakehw.levels.get(self.id, 0)

    def __call__(self, *v):
        return self.value(*v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=12):
        return None

    def __repr__(self):
        return "Pin(GPIO%d)" % self.id


class RTC:
    """datetime() as (year, month, day, weekday, hours, minutes, seconds, subseconds)."""

    def __init__(self, id=0):
        pass

    def datetime(self, *dt):
        import utime
        fakehw.check()
        if not dt:
            t = utime.gmtime(fakehw.rtc_base + fakehw.now() // 1000)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        y, mo, d, wd, h, mi, s = dt[0][:7]
        fakehw.rtc_base = utime.mktime((y, mo, d, h, mi, s, 0, 0)) - fakehw.now() // 1000
        fakehw.log("RTC.datetime(%d-%02d-%02d %02d:%02d:%02d)" % (y, mo, d, h, mi, s))


class WDTBase:
    MAX_MS = 0  # 0: no upper limit

    def __init__(self, id=0, timeout=5000):
        fakehw.check()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        if self.MAX_MS and timeout > self.MAX_MS:
            raise ValueError("timeout exceeds %d" % self.MAX_MS)
        fakehw.log("WDT(timeout=%d)" % timeout)
        print("FAKE-WDT WDT(timeout=%d)" % timeout)  # on the console, for tests of whole runs
        fakehw.wdt_start(timeout)

    def feed(self):
        fakehw.wdt_feed()


class I2CBase:
    """machine.I2C over the simulated chips in fakehw.buses[("i2c", id)]
    ({address: model}, edgewire.drivers.simbus): the memory transfers drivers use
    are simbus.SimI2C's (imported when first used: it costs heap); a missing or
    absent chip raises the port's NACK errno."""
    NACK = 19

    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        fakehw.check()
        if id not in (0, 1):
            raise ValueError("I2C(%d) doesn't exist" % id)
        self.id = id
        self.freq = freq

    def _bus(self):
        fakehw.check()
        from edgewire.drivers.simbus import SimI2C
        return SimI2C(fakehw.buses.get(("i2c", self.id), {}), self.NACK)  # the test may rewire the world

    def scan(self):
        return self._bus().scan()

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return self._bus().readfrom_mem(addr, memaddr, nbytes)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        self._bus().readfrom_mem_into(addr, memaddr, buf)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._bus().writeto_mem(addr, memaddr, buf)

    def writeto(self, addr, buf, stop=True):
        d = self._bus()._dev(addr)
        if len(buf) > 1:
            d.write(buf[0], bytes(buf[1:]))
        elif len(buf) == 1:
            d.pointer = buf[0]
        return 1 + len(buf)

    def readfrom(self, addr, nbytes, stop=True):
        d = self._bus()._dev(addr)
        return bytes(d.read(getattr(d, "pointer", 0), nbytes))

    def readfrom_into(self, addr, buf, stop=True):
        buf[:] = self.readfrom(addr, len(buf))


def dht_readinto_of(timeout_errno):
    """The port's dht_readinto(pin, buf) (drivers/dht/dht.c): start pulse, 40 bits
    timed in C; OSError(ETIMEDOUT, the port's errno) when nothing answers. The
    frames come from the simulated DHT22 in fakehw.buses[("dht", gpio)]."""
    def dht_readinto(pin, buf):
        fakehw.check()
        fakehw.advance(5)  # the 18 ms start pulse and the frame, shortened
        dev = fakehw.buses.get(("dht", pin.id))
        if dev is None or not dev.present:
            raise OSError(timeout_errno)
        dev.frame_into(buf)
    return dht_readinto


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, *a, **k):
        pass

    def init(self, *a, **k):
        pass

    def deinit(self):
        pass


def port_parts(port, wdt_max_ms, i2c_nack, timeout_errno):
    """What differs between the ports' machine modules by a number only: the WDT
    limit, the errno of an I2C NACK, dht_readinto's ETIMEDOUT, the unique id.
    -> WDT, I2C, SoftI2C, dht_readinto, unique_id (each port's machine.py says
    where its numbers come from)."""
    class WDT(WDTBase):
        MAX_MS = wdt_max_ms

    class I2C(I2CBase):
        NACK = i2c_nack

    class SoftI2C(I2C):
        pass

    def unique_id():
        return unique_id_of(port)

    return WDT, I2C, SoftI2C, dht_readinto_of(timeout_errno), unique_id


def unique_id_of(port):
    return b"\xe6\x61\x41\x04\x03\x2a\x5b\x2c" if port == "rp2" else b"\x24\x0a\xc4\x12\x34\x56"


def reset():
    fakehw.exit_("reset", "machine.reset()")


def soft_reset():
    fakehw.exit_("soft_reset", "machine.soft_reset()")


def deepsleep(time_ms=0):
    fakehw.exit_("deepsleep", "machine.deepsleep(%d)" % time_ms)


def lightsleep(time_ms=0):
    fakehw.advance(time_ms)


def idle():
    fakehw.check()


def freq(*hz):
    return 125000000 if fakehw.PORT == "rp2" else 160000000


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def time_pulse_us(pin, level, timeout_us=1000000):
    return -1
