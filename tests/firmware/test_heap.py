"""Heap budget of the device on the MicroPython unix port (64-bit: about twice
the RAM the same objects take on a 32-bit ESP32 or RP2040): the whole device,
compiled as a board gets it, runs in micropython.HEAP (64K) with headroom."""
from __future__ import annotations

import ast
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgewire import config
from tests.firmware.helpers import Recorder, device_config, start_device
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


class Output:
    """A device process's output, read as it comes, so that a test waits for
    what the device says (its stats lines) instead of for a length of time."""

    def __init__(self, p: "subprocess.Popen[str]") -> None:
        self.p = p
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait(self, cond: Callable[[list[tuple[dict[str, int], int]]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not cond(stats_samples("".join(self.lines))):
                left = deadline - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    raise AssertionError(f"no {what} within {timeout} s; output: {''.join(self.lines)[-2000:]}")
                self.cond.wait(min(left, 0.5))

    def stop(self) -> str:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self.reader.join(10)
        assert self.p.stdout is not None
        self.p.stdout.close()
        return "".join(self.lines)


@pytest.mark.micropython
def test_device_runs_in_64k_with_headroom(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    dev = "mp-heap-64"
    # Offline first, so the RAM queue fills to queue_size and overflows; then the
    # broker comes up and the backlog goes out through the MQTT window.
    broker.stop()
    p = start_device(tmp_path, dev, device_config(broker.port, STREAMS, debug=True, stats_ms=1000,
                                                   queue_size=QUEUE), heap=micropython.HEAP)
    output = Output(p)
    rec = None
    try:
        # 30 readings/s: the queue is full after ~2.1 s; wait until a stats line says so
        output.wait(lambda samples: any(st["queued"] == QUEUE and st["dropped"] > 0 for st, _ in samples),
                    30, "a stats sample with the queue full")
        broker.start()
        rec = Recorder(broker.port, dev, "rec-" + dev).start()
        rec.wait(lambda r: len(r.telemetry()) >= 20, 15, "telemetry after the broker came up")
        # steady state: three streams at 10 Hz, QoS 0/1/2, sampled online three times
        output.wait(lambda samples: sum(st["connects"] >= 1 for st, _ in samples) >= 3, 30,
                    "three stats samples online")
    finally:
        out = output.stop()
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
