"""firmware/main.py as a board boots it, on the port fakes (tests/firmware/ports/)
and the MicroPython unix port, talking to a real mosquitto: the port's board
joins the fake Wi-Fi, publishes, and keeps its watchdog fed
through slow paths."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.firmware import boardrun
from tests.firmware.helpers import Recorder, stop_process
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.micropython

ADC = {"rp2": 26, "esp32": 34}
BOARD = {"rp2": ("PicoWBoard", "pico_w"), "esp32": ("Esp32Board", "esp32")}


def boot(port: str, store: Path, cfg: dict[str, object], setup: str = "", kw: str = "") -> str:
    store.mkdir(parents=True, exist_ok=True)
    (store / "config.json").write_text(json.dumps(cfg))
    return (f"fakehw.ap('home', 'pw')\nfakehw.volts[{ADC[port]}] = 1.2\n{setup}\n"
            f"from edgewire.boards.{BOARD[port][1]} import {BOARD[port][0]}\n"
            "import main\n"
            f"main.main({BOARD[port][0]}(storage_dir={str(store)!r}{kw}))\n")


def config(port: str, broker_port: int, **over: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "device_id": f"fake-{port}", "wifi_ssid": "home", "wifi_password": "pw",
        "broker_host": "127.0.0.1", "broker_port": broker_port, "keepalive_s": 5, "timeout_ms": 2000,
        "backoff_min_ms": 200, "backoff_max_ms": 800,
        "streams": [{"name": "v", "source": f"adc:{ADC[port]}", "interval_ms": 200, "qos": 1, "unit": "V"}]}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("port,hw", [("rp2", "pico_w"), ("esp32", "esp32")])
def test_main_on_the_port_fakes_joins_and_publishes(
        broker: Mosquitto, tmp_path: Path, firmware_build: Path, port: str, hw: str) -> None:
    dev = f"fake-{port}"
    rec = Recorder(broker.port, dev, f"rec-{dev}").start()
    p = boardrun.spawn(port, boot(port, tmp_path / dev, config(port, broker.port)))
    try:
        rec.wait(lambda r: bool(r.births()) and len(r.telemetry()) >= 2, 20, "birth and telemetry")
        birth = rec.births()[0]
        assert birth["hw"] == hw
        first = rec.telemetry()[0]
        assert "t" not in first  # the RTC says 2021 (rp2) or 2000 (esp32): no wall time yet
        assert all(abs(r[1] - 1.2) < 0.01 for r in first["r"])
    finally:
        out = stop_process(p)
        rec.stop()
    assert "Traceback" not in out and "FAKE-EXIT" not in out, out[-3000:]
