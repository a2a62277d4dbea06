"""Heap budget of the device on the MicroPython unix port (64-bit: about twice
the RAM the same objects take on a 32-bit ESP32 or RP2040): the whole device,
compiled as a board gets it, runs in micropython.HEAP (64K) with headroom."""
from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

from edgewire import config
from tests.firmware.helpers import Recorder, device_config, start_device, stop_process
from tests.support import micropython
from tests.support.broker import Mosquitto

STREAMS = [
    {"name": "temperature", "source": "sim:temperature", "interval_ms": 100, "qos": 0},
    {"name": "humidity", "source": "sim:humidity", "interval_ms": 100, "qos": 1},
    {"name": "door", "source": "sim:door", "interval_ms": 100, "qos": 2},
]
QUEUE = config.DEFAULTS["queue_size"]  # the default a user gets: 64 readings
# gc.mem_free() (after the device's per-step collect) while sampling with the
# queue full must stay above FLOOR; at the worst moment, the backlog going out
# with the MQTT window full of 16-reading payloads, above BURST_FLOOR.
FLOOR = 7 * 1024
BURST_FLOOR = 6 * 1024


def stats_samples(out: str) -> list[tuple[dict[str, int], int]]:
    """The device's debug lines 'stats {...} mem=N' -> [(stats, gc.mem_free)], in order."""
    return [(ast.literal_eval(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"^stats (\{.*\}) mem=(\d+)$", out, re.M)]


@pytest.mark.micropython
def test_device_runs_in_64k_with_headroom(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    dev = "mp-heap-64"
    # Offline first, so the RAM queue fills to queue_size and overflows; then the
    # broker comes up and the backlog goes out through the MQTT window.
    broker.stop()
    p = start_device(tmp_path, dev, device_config(broker.port, STREAMS, debug=True, stats_ms=1000,
                                                   queue_size=QUEUE), heap=micropython.HEAP)
    rec = None
    try:
        time.sleep(3.5)  # 30 readings/s: the queue is full after ~2.1 s
        broker.start()
        rec = Recorder(broker.port, dev, "rec-" + dev).start()
        rec.wait(lambda r: len(r.telemetry()) >= 20, 15, "telemetry after the broker came up")
        time.sleep(3.0)  # steady state: three streams at 10 Hz, QoS 0/1/2
    finally:
        out = stop_process(p)
        if rec is not None:
            rec.stop()
    assert "MemoryError" not in out and "Traceback" not in out and "crashed" not in out, out[-2000:]
    samples = stats_samples(out)
    full = [mem for st, mem in samples if st["queued"] == QUEUE and st["dropped"] > 0]
    online = [mem for st, mem in samples if st["connects"] >= 1]
    assert full, f"no sample with the queue full: {[(s['queued'], s['dropped']) for s, _ in samples]}"
    assert len(online) >= 3, out[-2000:]
    mem = [m for _, m in samples]
    print(f"heap {micropython.HEAP}: gc.mem_free min {min(mem)} (queue full {min(full)}, online "
          f"{min(online)}..{max(online)}) of {len(samples)} samples")
    assert min(full) >= FLOOR, samples
    assert min(mem) >= BURST_FLOOR, samples
    # the books balance in every sample: nothing sampled goes unaccounted
    for st, _ in samples:
        assert st["readings"] == st["sent_readings"] + st["dropped"] + st["queued"], st


def test_devices_never_import_the_receiver_side() -> None:
    # wire_rx (receiver-side validation) would cost a device ~5 KB of heap
    firmware = Path(__file__).resolve().parents[2] / "firmware"
    pat = re.compile(r"^\s*(from|import)\s.*\bwire_rx\b", re.M)
    users = [str(p.relative_to(firmware)) for p in firmware.rglob("*.py")
             if pat.search(p.read_text()) and p.name != "wire_rx.py"]
    assert users == []
