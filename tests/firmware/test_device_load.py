"""Issue #9 at device level: under load with commands at 64K the device makes
steady progress instead of the out-of-memory loop it used to enter (seen: 164
reconnects in 135 s, 5 messages delivered). Counts, not timings, are asserted."""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.firmware.helpers import Controlled, Recorder, device_config
from tests.firmware.test_device_hardening import Commander
from tests.support.broker import Mosquitto

STREAMS = [
    {"name": "temperature", "source": "sim:temperature", "interval_ms": 150, "qos": 0},
    {"name": "humidity", "source": "sim:humidity", "interval_ms": 150, "qos": 1},
    {"name": "door", "source": "sim:door", "interval_ms": 150, "qos": 2},
]


@pytest.mark.micropython
def test_load_with_commands_makes_steady_progress(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    dev = "mp-load"
    rec = Recorder(broker.port, dev, "rec-load").start()
    # the defaults a user gets (queue 64, batch 16, window 4), three streams at ~7 Hz
    cfg = device_config(broker.port, STREAMS, queue_size=64, keepalive_s=30, timeout_ms=5000)
    d = Controlled(tmp_path, dev, cfg)
    cmd = Commander(broker.port, dev)
    sent = 0
    try:
        rec.wait(lambda r: len(r.births()) == 1, 15, "birth")
        names = itertools.cycle(["ping", "info", "stats", "ping"])
        # a command every 0.5 s until 40 were sent and 300 readings delivered
        while sent < 40 or sum(len(t["r"]) for t in rec.telemetry()) < 300:
            cmd.send(f"c-{sent}", next(names))
            sent += 1
            time.sleep(0.5)  # the load's pace, not a wait for a condition
            assert sent < 200, "no steady progress: " + repr(rec.telemetry()[-3:])
        st = d.finish()
    finally:
        d.kill()
        cmd.close()
        rec.stop()
    answered = {m[2]["i"] for m in rec.of("result")}
    delivered = sum(len(t["r"]) for t in rec.telemetry())
    print(f"load at 64K: {sent} commands, {len(answered)} answered, {delivered} readings delivered, stats {st}")
    assert st["reconnects"] <= 1, st
    # every command is answered or its loss counted
    assert len(answered) + st["cmd_dropped"] >= sent - 1, (len(answered), sent, st)
    # Commands load their code on demand into a heap the streams keep busy; the
    # device collects this step's garbage first. Measured: 40 of 40 answered (the
    # code before: 14-23, the rest ran out of heap).
    assert len(answered) >= sent * 9 // 10, (len(answered), sent, st)
    # the books balance, and what was sent at QoS 1/2 arrived
    assert st["readings"] == st["sent_readings"] + st["dropped"] + st["queued"], st
    assert delivered >= 300 and st["dropped"] <= st["readings"] // 10, st
    assert "Traceback" not in d.out, d.out
