"""The port fakes themselves (tests/firmware/ports/) and the scan that keeps
board code to what each port has: a machine/network/esp32/rp2/ntptime
attribute, or a method of a port class, that the targeted port's fake does not
provide fails here, as it would fail on the board."""
from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.firmware import boardrun

pytestmark = pytest.mark.micropython

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
PORT_MODULES = {"esp32": ("machine", "network", "esp32", "esp", "ntptime", "onewire"),
                "rp2": ("machine", "network", "rp2", "ntptime", "onewire")}
# which ports each firmware file runs on (a file not listed runs on both)
TARGETS = {"boards/esp32.py": ("esp32",), "boards/pico_w.py": ("rp2",)}


@cache
def port_api(port: str) -> dict[str, dict[str, list[str]]]:
    """{module: {attribute: [members, when the attribute is a class]}} of a port's fakes."""
    from tests.support import micropython
    micropython.build_firmware() if not micropython.BUILD.exists() else None
    mods = PORT_MODULES[port]
    p = boardrun.run(port, f"""
import json
api = {{}}
for m in {list(mods)!r}:
    try:
        mod = __import__(m)
    except ImportError:
        continue
    api[m] = {{}}
    for a in dir(mod):
        if a.startswith('_'):
            continue
        v = getattr(mod, a)
        api[m][a] = [x for x in dir(v) if not x.startswith('_')] if isinstance(v, type) else []
print('R ' + json.dumps(api))
""")
    api: dict[str, dict[str, list[str]]] = boardrun.result(p)
    return api


@cache
def own_names() -> frozenset[str]:
    """Method names the firmware defines itself (Board.read, ...): a call to one of
    them cannot be told from a port method by name, so the method check skips them."""
    names = set()
    for p in (FIRMWARE / "edgewire").rglob("*.py"):
        names.update(n.name for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef))
    return frozenset(names)


def scan(source: str, ports: tuple[str, ...]) -> list[str]:
    """What `source` uses that one of `ports` lacks: ['rp2: machine.ADC...read_uv', ...]."""
    tree = ast.parse(source)
    guarded = {n.args[1].value for n in ast.walk(tree)
               if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr")
               and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found = []
    apis = {p: port_api(p) for p in ("esp32", "rp2")}
    for port in ports:
        api = apis[port]
        # members of each port class on any port: a method one port lacks shows up here
        members: dict[str, set[str]] = {}
        for p2 in apis.values():
            for mod in ("machine", "network"):
                for cls, mem in p2.get(mod, {}).items():
                    members.setdefault(cls, set()).update(mem)
        for n in ast.walk(tree):
            if not isinstance(n, ast.Attribute):
                continue
            # module attributes: machine.ADC, machine.ADC.ATTN_11DB, network.STA_IF
            if isinstance(n.value, ast.Name) and n.value.id in imported and n.value.id in PORT_MODULES[port] + (
                    "esp32", "rp2", "esp"):
                mod = n.value.id
                if n.attr in guarded:
                    continue
                if mod not in api or n.attr not in api[mod]:
                    found.append(f"{port}: {mod}.{n.attr} (line {n.lineno})")
            elif (isinstance(n.value, ast.Attribute) and isinstance(n.value.value, ast.Name)
                  and n.value.value.id in ("machine", "network") and n.value.value.id in imported):
                mod, cls = n.value.value.id, n.value.attr
                if cls in api.get(mod, {}) and n.attr not in api[mod][cls] and n.attr not in guarded:
                    found.append(f"{port}: {mod}.{cls}.{n.attr} (line {n.lineno})")
            elif (not (isinstance(n.value, ast.Name) and n.value.id == "self") and n.attr not in guarded
                  and n.attr not in own_names()):
                # x.method where method belongs to a port class on some port, but not on this one
                for cls, mem in members.items():
                    mine = None
                    for mod in ("machine", "network"):
                        if cls in api.get(mod, {}):
                            mine = api[mod][cls]
                    if n.attr in mem and mine is not None and n.attr not in mine and not any(
                            n.attr in api[m].get(c, []) for m in ("machine", "network") for c in api.get(m, {})):
                        found.append(f"{port}: {cls}.{n.attr} (line {n.lineno})")
                        break
    return found


def firmware_files() -> list[Path]:
    return sorted(p for p in (FIRMWARE / "edgewire").rglob("*.py") if p.name != "sim.py") + [FIRMWARE / "main.py"]


@pytest.mark.parametrize("path", firmware_files(), ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_firmware_uses_only_what_its_ports_have(firmware_build: Path, path: Path) -> None:
    rel = str(path.relative_to(FIRMWARE / "edgewire")) if "edgewire" in path.parts else path.name
    ports = TARGETS.get(rel, ("esp32", "rp2"))
    assert scan(path.read_text(), ports) == []


def test_scan_finds_what_a_port_lacks(firmware_build: Path) -> None:
    # the ADC bug of issue #9: read_uv() exists on esp32 only
    bad = "def read(pin):\n    import machine\n    return machine.ADC(machine.Pin(pin)).read_uv()\n"
    assert scan(bad, ("esp32",)) == []
    assert [f.split(" (")[0] for f in scan(bad, ("esp32", "rp2"))] == ["rp2: ADC.read_uv"]
    # module attributes and class constants
    assert [f.split(" (")[0] for f in scan("import esp32\nesp32.mcu_temperature()\n", ("esp32",))] == [
        "esp32: esp32.mcu_temperature"]
    assert [f.split(" (")[0] for f in scan("import machine\nmachine.ADC.ATTN_11DB\n", ("esp32", "rp2"))] == [
        "rp2: machine.ADC.ATTN_11DB"]
    # a hasattr/getattr guard makes it fine
    assert scan("import esp32\nif hasattr(esp32, 'mcu_temperature'):\n    esp32.mcu_temperature()\n",
                ("esp32",)) == []


# ------------------------------------------------------------------ the fakes model the ports

def test_fakes_have_each_ports_api_and_no_more(firmware_build: Path) -> None:
    e, r = port_api("esp32"), port_api("rp2")
    assert set(r["machine"]["ADC"]) >= {"read_u16", "CORE_TEMP"} and "read_uv" not in r["machine"]["ADC"]
    assert {"read_u16", "read_uv", "atten", "width", "ATTN_11DB"} <= set(e["machine"]["ADC"])
    assert "raw_temperature" in e["esp32"] and "mcu_temperature" not in e["esp32"]  # WROOM-32
    assert "dht_readinto" in r["rp2"] and "dht_readinto" in e["esp"]
    for api in (e, r):
        assert {"WLAN", "STA_IF", "STAT_GOT_IP", "STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "hostname"} <= set(
            api["network"])
        assert {"WDT", "Pin", "ADC", "I2C", "RTC", "unique_id", "reset", "deepsleep"} <= set(api["machine"])
        assert "deinit" not in api["machine"]["WDT"]
    assert "STAT_CONNECT_FAIL" in r["network"] and "STAT_ASSOC_FAIL" in e["network"]


def run_port(port: str, code: str) -> Any:
    return boardrun.result(boardrun.run(port, "import json\n" + code))


@pytest.mark.parametrize("port,codes", [("rp2", [1, 2, 3]), ("esp32", [1001, 1010])])
def test_wlan_status_timeline_of_a_good_join(firmware_build: Path, port: str, codes: list[int]) -> None:
    seen = run_port(port, """
import network, time
fakehw.ap('home', 'pw')
w = network.WLAN(network.STA_IF)
w.active(True)
w.connect('home', 'pw')
seen = []
for i in range(40):
    s = w.status()
    if not seen or seen[-1][0] != s:
        seen.append([s, fakehw.now()])
    time.sleep_ms(100)
print('R ' + json.dumps([[s for s, t in seen], w.isconnected()]))
""")
    assert seen == [codes, True]


@pytest.mark.parametrize("port,badauth,nonet", [("rp2", -3, -2), ("esp32", 202, 201)])
def test_wlan_status_codes_of_failed_joins(firmware_build: Path, port: str, badauth: int, nonet: int) -> None:
    r = run_port(port, """
import network, time
fakehw.ap('home', 'pw')
w = network.WLAN(network.STA_IF)
w.active(True)
out = []
for ssid, key in (('home', 'wrong'), ('nowhere', 'pw')):
    w.connect(ssid, key)
    time.sleep_ms(10000)
    out.append([w.status(), w.isconnected()])
print('R ' + json.dumps(out))
""")
    assert r == [[badauth, False], [nonet, False]]


def test_rp2_first_activation_resets_power_management(firmware_build: Path) -> None:
    r = run_port("rp2", """
import network
w = network.WLAN(network.STA_IF)
w.config(pm=w.PM_NONE)
w.active(True)
a = w.config('pm')
w.config(pm=w.PM_NONE)
print('R ' + json.dumps([a == w.PM_PERFORMANCE, w.config('pm') == w.PM_NONE]))
""")
    assert r == [True, True]


@pytest.mark.parametrize("port,limit", [("rp2", 8388), ("esp32", None)])
def test_wdt_limits_and_reset_exit(firmware_build: Path, port: str, limit: int | None) -> None:
    p = boardrun.run(port, """
import machine, time
try:
    machine.WDT(timeout=9000)
    print('R "ok"')
except ValueError as e:
    print('R ' + repr(str(e)).replace("'", '"'))
w = machine.WDT(timeout=2000)
time.sleep_ms(1500)
w.feed()
time.sleep_ms(2500)
print('R "not reset"')
""")
    first = boardrun.results(p.stdout)[0]
    assert first == ("ok" if limit is None else f"timeout exceeds {limit}")
    assert p.returncode == 71 and "FAKE-EXIT wdt" in p.stdout and "not reset" not in p.stdout


@pytest.mark.parametrize("call,code", [("machine.reset()", 70), ("machine.deepsleep(1000)", 72)])
def test_reset_and_deepsleep_are_exits(firmware_build: Path, call: str, code: int) -> None:
    p = boardrun.run("esp32", f"import machine\n{call}\nprint('after')\n")
    assert p.returncode == code and "after" not in p.stdout


def test_pico_w_has_no_read_uv_and_esp32_calibrates(firmware_build: Path) -> None:
    r = run_port("rp2", """
import machine
a = machine.ADC(machine.Pin(26))
fakehw.volts[26] = 3.3
print('R ' + json.dumps([a.read_u16(), hasattr(a, 'read_uv')]))
""")
    assert r == [65535, False]
    r = run_port("esp32", """
import machine
a = machine.ADC(machine.Pin(34), atten=machine.ADC.ATTN_11DB)
fakehw.volts[34] = 1.0
print('R ' + json.dumps([a.read_uv(), a.read_u16()]))
""")
    assert r[0] == 1000000 and abs(r[1] / 65535 * 3.55 - 1.0) > 0.05  # raw is off, read_uv is not


def api_dump_is_json(port: str) -> str:
    return json.dumps(port_api(port))
