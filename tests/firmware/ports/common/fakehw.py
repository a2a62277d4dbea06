# The control side of the port fakes: the simulated world the fake `machine`,
# `network`, `esp32`, `rp2`, `ntptime`, `time`, `socket` and `select` modules of
# tests/firmware/ports/<port>/ read and change. Tests set it up in the snippet
# they run on the MicroPython unix port; board code never imports it (the scan
# in tests/firmware/test_board_ports.py treats it as foreign).
#
# Time: the fakes run on a fast-forward clock. It follows real time (so real
# sockets and a real broker work), and time.sleep_ms()/sleep() skip ahead at
# once instead of waiting: a 20 s Wi-Fi join takes no real time. Everything
# timed in the fakes (join phases, the watchdog, DNS delays) uses this clock.
#
# Exits: machine.reset(), machine.deepsleep() and an expired WDT print one line
# "FAKE-EXIT <why>" and raise SystemExit(EXIT_CODES[why]); the process ends with
# that code, as a board would reboot.

import sys
import utime as _rt  # the unix port's own time module (time.py here is the fake)

from _port import PORT  # 'esp32' or 'rp2': which port's fakes are on sys.path

EXIT_CODES = {"reset": 70, "wdt": 71, "deepsleep": 72, "soft_reset": 73}

_t0 = _rt.ticks_ms()
_skip = 0
calls = []          # a log of what board code did to the hardware, in order
feeds = 0           # WDT.feed() calls
wdt_timeout = 0     # ms, 0: no watchdog started
_wdt_last = 0
max_sleep = 0       # longest single sleep asked for (ms)


def now():
    """Milliseconds since the fakes were loaded (the fast-forward clock)."""
    return _rt.ticks_diff(_rt.ticks_ms(), _t0) + _skip


def advance(ms):
    """Skip ms ahead (what time.sleep_ms does), checking the watchdog on the way."""
    global _skip, max_sleep
    if ms > max_sleep:
        max_sleep = ms
    if wdt_timeout:
        left = _wdt_last + wdt_timeout - now()
        if ms > left:
            _skip += max(0, left) + 1
            check()
    _skip += ms
    check()


def check():
    """Called by every fake: an expired watchdog resets the board."""
    if wdt_timeout and now() - _wdt_last > wdt_timeout:
        exit_("wdt", "no feed for %d ms (timeout %d ms)" % (now() - _wdt_last, wdt_timeout))


def wdt_start(ms):
    global wdt_timeout, _wdt_last
    wdt_timeout = ms
    _wdt_last = now()


def wdt_feed():
    global _wdt_last, feeds
    check()
    feeds += 1
    _wdt_last = now()


def exit_(why, detail=""):
    print("FAKE-EXIT %s %s" % (why, detail))
    raise SystemExit(EXIT_CODES[why])


def remember(log, entry):
    """Append to one of the logs here, keeping the last 50 entries (bounded RAM)."""
    log.append(entry)
    if len(log) > 50:
        log.pop(0)


def log(entry):
    remember(calls, entry)


# ---------------------------------------------------------------- the world
# Wi-Fi access points in range: ssid -> [password, rssi]
aps = {}
# how long each phase of a join takes (ms), for both ports; a test may change it.
# Typical figures of a home access point (the ports do not define them).
JOIN_MS = 1500     # association + WPA handshake until the link is up
DHCP_MS = 500      # link up until an address is leased
BADAUTH_MS = 3000  # until the handshake gives up on a wrong password
NONET_MS = 2500    # a full scan without finding the SSID
link = {"up": True}  # set link["up"] = False to make the AP vanish (a drop)

# Analog inputs: GPIO number (or rp2 channel 4 for the temperature sensor) -> volts
volts = {}
# Digital inputs: GPIO -> 0/1
levels = {}
# Devices on buses: ("i2c", id) -> {addr: model}; ("onewire", gpio) -> [model]; ("dht", gpio) -> model
buses = {}

# DNS: name -> (address, delay_ms) or (None, delay_ms) for a name that does not resolve
dns = {}
dns_queries = []
# TCP (socket.py, select.py): the rp2 firmware version modelled (before 1.25 a
# connecting socket polls writable), how long a handshake takes, and until when
# (fake-clock ms) every connect is refused, as by a broker that is not up yet.
rp2_version = (1, 24)
connect_delay_ms = 0
refuse_until = 0

# RTC, in seconds since 1970, set at "power on" by the port's time.py
rtc_base = None
ntp_servers = {}  # host -> epoch seconds it answers, or None for no answer
ntp_queries = []


def ap(ssid, password, rssi=-60):
    aps[ssid] = [password, rssi]
