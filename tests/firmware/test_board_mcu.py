"""The real McuBoard, Esp32Board and PicoWBoard on the MicroPython unix port,
over port-faithful fakes of machine/network/esp32/rp2/ntptime/time/socket
(tests/firmware/ports/): ADC scaling, Wi-Fi join, power management, DNS,
connect, wall time, watchdog. Each test failed on the board code before #9."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.firmware import boardrun

pytestmark = pytest.mark.micropython

BOARD = {"esp32": ("Esp32Board", "esp32"), "rp2": ("PicoWBoard", "pico_w")}


def board_code(port: str, **kw: object) -> str:
    cls, mod = BOARD[port]
    args = ", ".join(f"{k}={v!r}" for k, v in dict({"ssid": "home", "password": "pw", "storage_dir": "/tmp"},
                                                     **kw).items())
    return (f"import json\nfrom edgewire.boards.{mod} import {cls}\n"
            f"fakehw.ap('home', 'pw')\nb = {cls}({args})\n"
            "def out(x):\n    print('R ' + json.dumps(x))\n")


def join(timeout: int = 20000) -> str:
    return ("def join():\n"
            "    while True:\n"
            f"        if b.connect_network({timeout}):\n"
            "            return\n"
            "join()\n")


# ------------------------------------------------------------------ ADC

@pytest.mark.parametrize("port,pin", [("rp2", 26), ("esp32", 34)])
def test_adc_reads_volts_on_each_port(firmware_build: Path, port: str, pin: int) -> None:
    # rp2 has read_u16 only: the board scales it by its reference voltage
    p = boardrun.run(port, board_code(port) + f"""
fakehw.volts[{pin}] = 1.65
out([b.read('adc:{pin}'), b.read('adc:{pin}')])
""")
    v = boardrun.result(p)
    assert abs(v[0] - 1.65) < 0.002 and v[0] == v[1], p.stdout


def test_pico_w_adc_uses_the_boards_reference(firmware_build: Path) -> None:
    # a Pico W with an external 3.0 V reference (LM4040 on ADC_VREF): calibrated in the board
    p = boardrun.run("rp2", board_code("rp2", adc_vref=3.0) + """
import machine
machine.ADC.VREF = 3.0
fakehw.volts[27] = 2.0
out(b.read('adc:27'))
""")
    assert abs(boardrun.result(p) - 2.0) < 0.002


def test_pico_w_internal_temperature(firmware_build: Path) -> None:
    p = boardrun.run("rp2", board_code("rp2") + """
fakehw.volts[4] = 0.706 - 0.001721 * (31.5 - 27)
out(b.read('internal_temp'))
""")
    assert abs(boardrun.result(p) - 31.5) < 0.6  # one 12-bit step is ~0.47 C


def test_esp32_offers_no_uncalibrated_temperature(firmware_build: Path) -> None:
    # the original ESP32 has only raw_temperature(): not a stream, not a default
    p = boardrun.run("esp32", board_code("esp32") + """
from edgewire import config
out([b.check_source('internal_temp'), [s['source'] for s in config.build(b, {})['streams']]])
try:
    b.read('internal_temp')
    out('read')
except Exception as e:
    out(str(e))
""")
    r = boardrun.results(p.stdout)
    assert "no calibrated temperature sensor" in r[0][0]
    assert "internal_temp" not in r[0][1]
    assert "no calibrated temperature sensor" in r[1]


# ------------------------------------------------------------------ Wi-Fi

def test_pico_w_turns_power_saving_off_after_activating(firmware_build: Path) -> None:
    p = boardrun.run("rp2", board_code("rp2") + join() + """
import network
out([fakehw.calls, fakehw.wlan.config('pm') == network.WLAN.PM_NONE])
""")
    calls, pm_none = boardrun.result(p)
    assert pm_none, calls
    assert calls.index("WLAN.active(True)") < calls.index("WLAN.config(pm=%d)" % 0xA11140)


@pytest.mark.parametrize("port", ["esp32", "rp2"])
@pytest.mark.parametrize("case,password,ssid,fails_at,needle", [
    ("wrong password", "nope", "home", "BADAUTH_MS", "wrong password"),
    ("no access point", "pw", "elsewhere", "NONET_MS", "no ap found"),
])
def test_join_gives_up_at_once_on_a_status_error(firmware_build: Path, port: str, case: str, password: str,
                                                 ssid: str, fails_at: str, needle: str) -> None:
    p = boardrun.run(port, board_code(port, password=password, ssid=ssid) + f"""
t0 = b.ticks_ms()
longest = 0
calls = 0
err = None
while err is None and b.ticks_ms() - t0 < 30000:
    t = b.ticks_ms()
    try:
        ok = b.connect_network(20000)
    except OSError as e:
        err = str(e)
    calls += 1
    longest = max(longest, b.ticks_ms() - t)
    if err is None:
        assert not ok
        b.sleep_ms(100)   # the Device samples and steps in between
out([err, b.ticks_ms() - t0, longest, calls, fakehw.{fails_at}])
""")
    err, elapsed, longest, calls, fails_at_ms = boardrun.result(p)
    assert err is not None and needle in err, err
    assert elapsed < fails_at_ms + 500, f"{case}: gave up after {elapsed} ms"
    assert longest <= 300, f"one connect_network() call blocked {longest} ms"


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_device_keeps_sampling_and_stops_during_a_slow_join(firmware_build: Path, port: str) -> None:
    # a 15 s join: readings go on every 500 ms (queued), and stop() ends run() mid-join
    cls, mod = BOARD[port]
    p = boardrun.run(port, f"""
import json
from edgewire import config
from edgewire.device import Device
from edgewire.boards.{mod} import {cls}
fakehw.ap('home', 'pw')
fakehw.JOIN_MS = 15000
b = {cls}(storage_dir='/tmp')
cfg = config.build(b, {{'wifi_ssid': 'home', 'wifi_password': 'pw', 'broker_host': '127.0.0.1',
                       'streams': [{{'name': 'v', 'source': 'adc:{26 if port == 'rp2' else 34}',
                                     'interval_ms': 500}}]}})
d = Device(b, cfg)
t0 = b.ticks_ms()
while b.ticks_ms() - t0 < 10000:
    d.step()
r10 = d.stats['readings']
d.stop()
d.run()   # returns: stop() came first
print('R ' + json.dumps([r10, b.network_up(), b.ticks_ms() - t0]))
""")
    readings, up, elapsed = boardrun.result(p)
    assert not up
    assert readings >= 18, f"{readings} readings in 10 s of a join (2 per second expected)"
    assert elapsed < 11000


# ------------------------------------------------------------------ DNS and connect

@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_dns_once_cached_and_ip_literal_without_dns(firmware_build: Path, port: str) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port_no = srv.getsockname()[1]
    try:
        p = boardrun.run(port, board_code(port) + join() + f"""
fakehw.dns['raspberrypi.local'] = ('127.0.0.1', 5000)   # esp32 mDNS: ~5 s a lookup
t0 = b.ticks_ms()
b.connect('raspberrypi.local', {port_no}, 2000).close()
first = b.ticks_ms() - t0
t0 = b.ticks_ms()
b.connect('raspberrypi.local', {port_no}, 2000).close()
again = b.ticks_ms() - t0
b.connect('127.0.0.1', {port_no}, 2000).close()
fakehw.dns['gone.local'] = (None, 5000)
fails = []
for i in range(2):
    t0 = b.ticks_ms()
    try:
        b.connect('gone.local', {port_no}, 2000)
    except OSError as e:
        fails.append([str(e), b.ticks_ms() - t0])
out([fakehw.dns_queries, first, again, fails])
""")
        queries, first, again, fails = boardrun.result(p)
    finally:
        srv.close()
    assert queries == ["raspberrypi.local", "gone.local", "gone.local"], queries
    assert first >= 5000 and again < 1000
    # a failed lookup: one query per attempt, bounded by the lookup itself; the device's backoff spaces them
    assert len(fails) == 2 and all("DNS lookup of gone.local failed" in f[0] and f[1] < 6000 for f in fails)


def test_esp32_connect_refused_fails_at_once(firmware_build: Path) -> None:
    # esp32: poll() reports a refused connect writable; the board must not hand it out as connected
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    p = boardrun.run("esp32", board_code("esp32") + join() + f"""
t0 = b.ticks_ms()
try:
    s = b.connect('127.0.0.1', {closed}, 3000)
    out(['connected', s._state])
except OSError as e:
    out([str(e), b.ticks_ms() - t0])
""")
    what, detail = boardrun.result(p)
    assert "refused" in what, (what, detail)
    assert detail < 500


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_connect_returns_only_once_the_handshake_is_done(firmware_build: Path, port: str) -> None:
    # rp2 before 1.25 reports a connecting socket writable at once (fakehw.rp2_version)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        p = boardrun.run(port, board_code(port) + join() + f"""
fakehw.connect_delay_ms = 300
t0 = b.ticks_ms()
s = b.connect('127.0.0.1', {srv.getsockname()[1]}, 3000)
out([s._real_state(), b.ticks_ms() - t0])
""")
        state, took = boardrun.result(p)
    finally:
        srv.close()
    assert state == "connected" and took >= 300


# ------------------------------------------------------------------ wall time

@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_wall_time_unset_until_set_then_runs_on(firmware_build: Path, port: str) -> None:
    # rp2's RTC restarts at 2021 on every boot, esp32's at 2000: not a wall time
    p = boardrun.run(port, board_code(port) + """
before = b.time_ms()
b.set_time_ms(1767225600000)
b.sleep_ms(1500)
out([before, b.time_ms()])
""")
    before, after = boardrun.result(p)
    assert before is None
    assert 1767225601500 <= after < 1767225601600


def test_ntp_is_optional_resynced_and_retried(firmware_build: Path) -> None:
    p = boardrun.run("rp2", board_code("rp2") + """
b.configure({'ntp_host': '10.0.0.1', 'watchdog_ms': 0})
fakehw.ntp_servers['10.0.0.1'] = None        # no answer at first
b.feed()
out(len(fakehw.ntp_queries))                 # not before the Wi-Fi is up
""" + join() + """
b.feed()
q1 = len(fakehw.ntp_queries)
b.sleep_ms(10000); b.feed()                  # retried after 30 s, not at once
q2 = len(fakehw.ntp_queries)
fakehw.ntp_servers['10.0.0.1'] = 1767225600
b.sleep_ms(25000); b.feed()
t = b.time_ms()
q3 = len(fakehw.ntp_queries)
fakehw.ntp_servers['10.0.0.1'] = 1767229200
b.sleep_ms(3600 * 1000); b.feed()            # resynced hourly
out([q1, q2, q3, t, len(fakehw.ntp_queries), b.time_ms()])
""")
    r = boardrun.results(p.stdout)
    assert r[0] == 0, p.stdout
    q1, q2, q3, t, q4, t2 = r[1]
    assert (q1, q2, q3, q4) == (1, 1, 2, 3)
    assert 1767225600000 <= t < 1767225601000
    assert 1767229200000 <= t2 < 1767229201000


# ------------------------------------------------------------------ watchdog

@pytest.mark.parametrize("port,asked,started", [("rp2", 10000, 8388), ("esp32", 10000, 10000), ("rp2", 0, None),
                                                ("rp2", None, None)])
def test_watchdog_clamped_to_the_ports_limit(firmware_build: Path, port: str, asked: int,
                                             started: int | None) -> None:
    kw = {} if asked is None else {"watchdog_ms": asked}
    p = boardrun.run(port, board_code(port, **kw) + f"""
b.feed()
b.sleep_ms({(started or 1000) - 100})
b.feed()
out([fakehw.wdt_timeout, fakehw.feeds])
""")
    timeout, feeds = boardrun.result(p)
    assert timeout == (started or 0)
    assert feeds == (2 if started else 0)


@pytest.mark.parametrize("port,asked,started", [("rp2", None, 8000), ("rp2", 20000, 8388), ("esp32", 20000, 20000),
                                                ("esp32", 0, 0)])
def test_watchdog_is_on_by_default_from_the_config(firmware_build: Path, port: str, asked: int | None,
                                                   started: int) -> None:
    # config.json's watchdog_ms (default 8000) reaches the board; the first step starts it
    over = "" if asked is None else f", 'watchdog_ms': {asked}"
    p = boardrun.run(port, board_code(port) + f"""
from edgewire import config
from edgewire.device import Device
cfg = config.build(b, {{'broker_host': '127.0.0.1'{over}}})
d = Device(b, cfg)
d.step()
out(fakehw.wdt_timeout)
""")
    assert boardrun.result(p) == started


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_watchdog_resets_a_stuck_board(firmware_build: Path, port: str) -> None:
    # a lookup that never returns (rp2's lwIP spins until DNS answers): the watchdog reboots
    p = boardrun.run(port, board_code(port) + join() + """
b.configure({'watchdog_ms': 8000})
fakehw.dns['stuck.local'] = ('127.0.0.1', 10 ** 9)
b.connect('stuck.local', 1883, 2000)
out('returned')
""", timeout=30)
    assert p.returncode == 71, (p.returncode, p.stdout, p.stderr)
    assert "FAKE-EXIT wdt" in p.stdout


def test_no_board_wait_starves_the_watchdog(firmware_build: Path) -> None:
    # rp2, watchdog asked for 20 s and clamped to the port's 8388 ms, driven the way
    # the Device drives a board (feed each step, backoff in 200 ms steps): a wrong
    # password first, then a 12 s join (longer than the watchdog), a 5 s lookup of
    # the broker's .local name, the broker refusing for the first 60 s. No reset.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        p = boardrun.run("rp2", board_code("rp2", watchdog_ms=20000) + f"""
fakehw.JOIN_MS = 12000
fakehw.dns['gateway.local'] = ('127.0.0.1', 5000)
fakehw.refuse_until = 60000
import _wlan
_orig = _wlan.WlanModel.connect
_n = [0]
def connect(self, ssid=None, key=None, **kw):
    _n[0] += 1
    _orig(self, ssid, 'wrong' if _n[0] == 1 else key)
_wlan.WlanModel.connect = connect
errors = []
s = None
while s is None and b.ticks_ms() < 120000:
    b.feed()
    try:
        if not b.network_up() and not b.connect_network(20000):
            b.sleep_ms(200)
            continue
        s = b.connect('gateway.local', {srv.getsockname()[1]}, 5000)
    except OSError as e:
        errors.append(str(e))
        for i in range(5):   # the Device's backoff: a step at a time, fed each step
            b.feed()
            b.sleep_ms(200)
out([s is not None, fakehw.wdt_timeout, errors[:2], len(errors), b.ticks_ms()])
""")
        ok, wdt, first, n, t = boardrun.result(p)
    finally:
        srv.close()
    assert "FAKE-EXIT" not in p.stdout
    assert ok and wdt == 8388, p.stdout
    assert "wrong password" in first[0] and any("refused" in e for e in first), first
    assert t >= 60000
