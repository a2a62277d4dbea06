"""Heap budget of the device on the MicroPython unix port (64-bit: about twice
the RAM the same objects take on a 32-bit ESP32 or RP2040)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.firmware.helpers import DEVICE_HEAP, Recorder, device_config, start_device, stop_process
from tests.support import micropython
from tests.support.broker import Mosquitto

STREAMS = [
    {"name": "temperature", "source": "sim:temperature", "interval_ms": 100, "qos": 0},
    {"name": "humidity", "source": "sim:humidity", "interval_ms": 100, "qos": 1},
    {"name": "door", "source": "sim:door", "interval_ms": 100, "qos": 2},
]


def run_measured(broker: Mosquitto, tmp_path: Path, heap: str, dev: str) -> tuple[list[int], str, int]:
    """Boot offline (the RAM queue fills), then connect; returns gc.mem_free samples."""
    rec = Recorder(broker.port, dev, "rec-" + dev).start()
    broker.stop()
    p = start_device(tmp_path, dev, device_config(broker.port, STREAMS, debug=True, stats_ms=1000,
                                                   queue_size=16), heap=heap)
    try:
        time.sleep(2.5)
        broker.start()
        rec.stop()
        rec = Recorder(broker.port, dev, "rec2-" + dev).start()
        time.sleep(3.5)
        n = len(rec.telemetry())
    finally:
        out = stop_process(p)
        rec.stop()
    mem = [int(m) for m in re.findall(r"mem=(\d+)", out)]
    return mem, out, n


@pytest.mark.micropython
def test_device_runs_in_its_heap(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    mem, out, n = run_measured(broker, tmp_path, DEVICE_HEAP, "mp-heap-1")
    assert "MemoryError" not in out and "Traceback" not in out, out
    assert "connected to" in out and n >= 10, out
    assert len(mem) >= 4, out
    # the lowest gc.mem_free seen, while readings queued offline and after reconnect
    print(f"heap {DEVICE_HEAP}: gc.mem_free min {min(mem)} max {max(mem)} bytes")
    assert min(mem) >= 8 * 1024, mem


@pytest.mark.micropython
@pytest.mark.xfail(strict=True, reason="known gap: the full device needs ~60 KB resident on the "
                   "64-bit unix port; 64K is the target (docs/firmware.md, RAM budget)")
def test_device_runs_in_64k(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    mem, out, n = run_measured(broker, tmp_path, micropython.HEAP, "mp-heap-64")
    assert "MemoryError" not in out and n >= 10, out[-400:]
