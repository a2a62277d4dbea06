# Fake `time` for the esp32 and rp2 port fakes: the port's API on the
# fast-forward clock of fakehw (sleeps skip ahead, see fakehw.py).
# API: docs.micropython.org/en/latest/library/time.html. Both ports count
# ticks_ms with a period of 2**30 (py/mphal.h MICROPY_PY_TIME_TICKS_PERIOD) and,
# since MicroPython 1.22, seconds from 1970 (MICROPY_EPOCH_IS_1970).
# The RTC at power-on: rp2 starts at 2021-01-01 00:00 (ports/rp2/main.c sets
# it at boot), esp32 at 2000-01-01 (its RTC counts from 0 in the 2000 epoch
# until set; docs/library/machine.RTC.html). Neither is a real wall time.

import utime as _rt
import fakehw

_PERIOD = 1 << 30

if fakehw.rtc_base is None:
    fakehw.rtc_base = 1609459200 if fakehw.PORT == "rp2" else 946684800

ticks_diff = _rt.ticks_diff
ticks_add = _rt.ticks_add
gmtime = _rt.gmtime
localtime = _rt.gmtime  # no time zones on the boards: local time is UTC
mktime = _rt.mktime


def ticks_ms():
    fakehw.check()
    return fakehw.now() % _PERIOD


def ticks_us():
    fakehw.check()
    return (fakehw.now() * 1000) % _PERIOD


def ticks_cpu():
    return ticks_us()


def sleep_ms(ms):
    fakehw.advance(int(ms))


def sleep_us(us):
    fakehw.advance(int(us) // 1000)


def sleep(s):
    fakehw.advance(int(s * 1000))


def time():
    fakehw.check()
    return fakehw.rtc_base + fakehw.now() // 1000


def time_ns():
    fakehw.check()
    return fakehw.rtc_base * 1000000000 + fakehw.now() * 1000000
