"""The hardware seam, the sim board's behaviour, config validation, and a Device
in a CPython thread (how the simulator runs hundreds of them)."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from edgewire import config
from edgewire.boards import ResetRequested, SensorError, default_board
from edgewire.boards.sim import SimBoard
from edgewire.device import Device
from tests.firmware.helpers import Clock, Recorder
from tests.support.broker import Mosquitto

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def test_only_the_board_layer_imports_machine_or_network() -> None:
    pat = re.compile(r"^\s*(import|from)\s+(machine|network)\b", re.M)
    offenders = [str(p.relative_to(FIRMWARE)) for p in FIRMWARE.rglob("*.py")
                 if pat.search(p.read_text()) and "boards" not in p.parts]
    assert offenders == []
    # and the board layer imports them lazily, inside methods, never at module level
    for p in (FIRMWARE / "edgewire" / "boards").glob("*.py"):
        assert not re.search(r"^(import|from)\s+(machine|network)\b", p.read_text(), re.M), p


def test_default_board_is_sim_here() -> None:
    b = default_board(device_id="x-1")
    assert isinstance(b, SimBoard) and b.name == "sim" and b.device_id() == "x-1"


def test_sim_sensors_behave_and_replay_with_a_seed() -> None:
    ca, cb = Clock(), Clock()
    a = SimBoard("s1", seed=42, fault_rate=0.2, clock=ca)
    b = SimBoard("s1", seed=42, fault_rate=0.2, clock=cb)

    def series(board: SimBoard) -> list[object]:
        out: list[object] = []
        for _ in range(200):
            board.sleep_ms(1000)
            for m in ("temperature", "humidity", "battery", "door"):
                try:
                    out.append(board.read("sim:" + m))
                except SensorError as e:
                    out.append("E:" + str(e))
        return out
    sa, sb = series(a), series(b)
    assert sa == sb  # same seed, same story
    errors = [x for x in sa if isinstance(x, str)]
    assert 100 < len(errors) < 220 and a.faults == len(errors)  # ~20% of 800
    temps = [x for x in sa[0::4] if isinstance(x, float)]
    assert all(15 < t < 27 for t in temps) and len(set(temps)) > 10
    with pytest.raises(SensorError, match="not known"):
        a.read("adc:26")
    assert a.check_source("sim:door") is None and "expected sim:" in (a.check_source("pin:5") or "")


def test_sim_battery_discharges_and_door_flips() -> None:
    clk = Clock()
    b = SimBoard("s2", seed=1, fault_rate=0, clock=clk, battery_life_s=100, door_mean_s=5)
    v0 = b.read("sim:battery")
    doors = set()
    for _ in range(100):
        clk.sleep_ms(1000)
        doors.add(b.read("sim:door"))
    assert b.ticks_ms() == 100000
    assert v0 > 4.1 and b.read("sim:battery") < 3.4
    assert doors == {True, False}


def test_sim_network_control_and_storage(tmp_path: Path, broker: Mosquitto) -> None:
    b = SimBoard("s3", storage=str(tmp_path))
    assert b.read_file("config.json") is None
    b.write_file("config.json", b"{}")
    assert (tmp_path / "config.json").read_bytes() == b"{}"
    s = b.connect("127.0.0.1", broker.port, 1000)
    b.set_network(False)
    assert not b.network_up()
    s.setblocking(True)
    s.settimeout(2)
    assert s.recv(1) == b""  # cut
    s.close()
    with pytest.raises(OSError):
        b.connect("127.0.0.1", broker.port, 1000)
    b.set_network(True)
    b.connect("127.0.0.1", broker.port, 1000).close()
    with pytest.raises(ResetRequested):
        b.reset()
    assert b.resets == 1


@pytest.mark.parametrize("over,needle", [
    ({"keepalive_s": "30"}, "config 'keepalive_s': '30' is not an integer in 1..65535"),
    ({"keepalive_s": True}, "config 'keepalive_s': True is not an integer"),
    ({"broker_port": 70000}, "config 'broker_port': 70000"),
    ({"colour": "red"}, "config 'colour': unknown key"),
    ({"streams": []}, "config 'streams': [] is not a list of 1-32"),
    ({"streams": [{"name": "t", "source": "sim:temperature", "interval_ms": 1000, "qos": 3}]},
     "config 'streams' 't' 'qos': 3 is not 0, 1 or 2"),
    ({"streams": [{"name": "t", "source": "adc:26", "interval_ms": 1000}]},
     "config 'streams' 't' 'source': source 'adc:26' is not known on the sim board"),
    ({"streams": [{"name": "t t", "source": "sim:door", "interval_ms": 1000}]}, "'name': 't t'"),
    ({"backoff_min_ms": 5000, "backoff_max_ms": 1000}, "config 'backoff_max_ms': 1000 is not an integer in 5000.."),
    ({"debug": 1}, "config 'debug': 1 is not true or false"),
    ({"watchdog_ms": 500}, "config 'watchdog_ms': 500 is not an integer in 1000..600000"),
    ({"watchdog_ms": "8s"}, "config 'watchdog_ms': '8s' is not an integer"),
    ({"ntp_host": ""}, "config 'ntp_host': '' is not a string of 1-253 characters (or null)"),
    ({"streams": [{"name": "t", "source": "bme280@0x40:temperature", "interval_ms": 1000}]},
     "config 'streams' 't' 'source': bme280@0x40:temperature: I2C address '0x40' is not 0x76 or 0x77"),
])
def test_config_errors_name_key_value_and_expectation(over: dict[str, object], needle: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.build(SimBoard("c1"), over)
    assert needle in str(e.value)


def test_config_load_reads_board_storage() -> None:
    b = SimBoard("c2")
    assert config.load(b)["streams"] == b.default_streams()
    b.write_file("config.json", b'{"broker_port": 1884, "streams": [{"name": "d", "source": "sim:door", "interval_ms": 500}]}')
    cfg = config.load(b)
    assert cfg["broker_port"] == 1884 and cfg["device_id"] == "c2"
    assert cfg["streams"] == [{"name": "d", "source": "sim:door", "interval_ms": 500, "qos": 1, "unit": ""}]
    b.write_file("config.json", b"{nope")
    with pytest.raises(config.ConfigError, match="config.json: not valid JSON"):
        config.load(b)


def test_devices_in_threads_on_cpython_stop_cleanly(broker: Mosquitto) -> None:
    recs, devs, threads = [], [], []
    for i in range(5):
        did = f"cpy-{i}"
        recs.append(Recorder(broker.port, did, f"rec-cpy-{i}").start())
        board = SimBoard(did, seed=i, fault_rate=0.1)
        cfg = config.build(board, {"broker_host": "127.0.0.1", "broker_port": broker.port, "streams": [
            {"name": "t", "source": "sim:temperature", "interval_ms": 100, "qos": 1}]})
        d = Device(board, cfg)
        devs.append(d)
        threads.append(threading.Thread(target=d.run, name=did))
    for t in threads:
        t.start()
    try:
        for r in recs:
            r.wait(lambda r: len(r.telemetry()) >= 5, 10, "telemetry from each device")
    finally:
        for d in devs:
            d.stop()
        for t in threads:
            t.join(5)
    assert not any(t.is_alive() for t in threads)
    for d, r in zip(devs, recs):
        r.wait(lambda r: any(m[2].get("why") == "shutdown" for m in r.of("status")), 5, "shutdown death")
        death = [m for m in r.of("status") if m[2].get("st") == "off"][-1]
        assert death[2]["b"] == d.boot and death[2]["c"] == d.conn
        # error readings are part of the stream: [name, nil, uptime, text]
        assert d.stats["faults"] == sum(1 for t in r.telemetry() for x in t["r"] if len(x) == 4)
        assert d.stats["sent_q1"] == d.stats["acked_q1"] == len(r.telemetry())
        r.stop()
    assert len({d.boot for d in devs}) == 5


def test_board_settings_go_to_the_board_not_into_the_device_config() -> None:
    # watchdog_ms (on by default: 8000), ntp_host and the Wi-Fi are the board's:
    # config.build hands them to board.configure() and leaves them out of the
    # config the Device keeps for its life (fewer dict slots of heap)
    seen: list[dict[str, object]] = []

    class Board(SimBoard):
        def configure(self, cfg: dict[str, object]) -> None:
            seen.append(dict(cfg))

    cfg = config.build(Board("c3"), {"ntp_host": "10.0.0.1", "wifi_ssid": "plant"})
    assert seen and seen[0]["watchdog_ms"] == 8000 and seen[0]["ntp_host"] == "10.0.0.1"
    assert seen[0]["wifi_ssid"] == "plant"
    assert not set(config.BOARD_KEYS) & set(cfg)
    assert config.DEFAULTS["watchdog_ms"] == 8000 and config.build(SimBoard("c4"), {"watchdog_ms": 0})
