"""The device survives broker death, a frozen broker and a hostile peer, on MicroPython."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import msgpack
import pytest

from tests.firmware.fake_broker import GOOD_CONNACK, FakeBroker
from tests.firmware.helpers import Recorder, device_config, start_device, stop_process
from tests.support.broker import Mosquitto

RELIABLE = [
    {"name": "humidity", "source": "sim:humidity", "interval_ms": 250, "qos": 1},
    {"name": "door", "source": "sim:door", "interval_ms": 250, "qos": 2},
]


def seqs(rec: Recorder, boot: int) -> set[int]:
    return {t["s"] for t in rec.telemetry() if t["b"] == boot}


@pytest.mark.micropython
def test_broker_killed_and_restarted(tmp_path: Path, firmware_build: Path) -> None:
    # The subscriber's persistent session must survive the broker's SIGKILL, so
    # messages the device sends before the subscriber is back are queued for it:
    # the broker saves its database on SIGUSR1 just before being killed.
    # A world-writable directory outside pytest's 0700 tree: mosquitto started as
    # root drops to its own user before it writes the database.
    store = Path(tempfile.mkdtemp(prefix="edgewire-mosq-"))
    os.chmod(store, 0o777)
    broker = Mosquitto(tmp_path, extra_conf=f"persistence true\npersistence_location {store}/\nautosave_interval 0\n").start()
    dev = "mp-kill-1"
    rec = Recorder(broker.port, dev, "rec-kill", persistent=True).start()
    p = start_device(tmp_path, dev, device_config(broker.port, RELIABLE))
    try:
        rec.wait(lambda r: len(r.telemetry()) >= 6, 10, "telemetry before the kill")
        boot = rec.births()[0]["b"]
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not (store / "mosquitto.db").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (store / "mosquitto.db").exists(), "mosquitto did not save its database"
        # kill right after a message arrived, so nothing is half-way through the broker
        n = len(rec.telemetry())
        rec.wait(lambda r: len(r.telemetry()) > n, 5, "a fresh message")
        before = rec.telemetry()
        seen_before = max(t["s"] for t in before)
        last_up = max(t["u"] for t in before)
        broker.kill()
        time.sleep(2.0)  # the device samples on, offline
        broker.start()
        rec.wait(lambda r: any(b["c"] == 2 for b in r.births()), 15, "birth c=2 after the restart")
        birth2 = [b for b in rec.births() if b["c"] == 2][0]
        assert birth2["b"] == boot
        time.sleep(1.5)  # traffic after the reconnect
        top = max(seqs(rec, boot))
        rec.wait(lambda r: set(range(seen_before + 1, top + 1)) <= seqs(r, boot), 10,
                 "every QoS 1/2 message after the kill")
        # readings sampled during the outage arrive, with their own uptime stamps
        outage = [r for t in rec.telemetry() for r in t["r"] if last_up < r[2] < birth2["u"]]
        assert len(outage) >= 8, f"only {len(outage)} readings from the ~2 s outage arrived"
    finally:
        out = stop_process(p)
        rec.stop()
        broker.stop()
        shutil.rmtree(store, ignore_errors=True)
    assert "Traceback" not in out and "crashed" not in out, out


@pytest.mark.micropython
def test_frozen_broker_is_detected(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    dev = "mp-freeze-1"
    rec = Recorder(broker.port, dev, "rec-freeze").start()
    p = start_device(tmp_path, dev, device_config(broker.port, RELIABLE, keepalive_s=2, timeout_ms=800))
    try:
        rec.wait(lambda r: len(r.telemetry()) >= 4, 10, "telemetry before the freeze")
        boot = rec.births()[0]["b"]
        broker.freeze()
        time.sleep(4.0)  # ping after 1 s without traffic, dead 0.8 s later, CONNACK timeouts after
        broker.thaw()
        t0 = time.monotonic()
        rec.wait(lambda r: any(b["c"] >= 2 for b in r.births()), 10, "a new connection after the thaw")
        assert time.monotonic() - t0 < 6
        b2 = [b for b in rec.births() if b["c"] >= 2][0]
        assert b2["b"] == boot, "the device rebooted instead of reconnecting"
        # the old session's will names the old connection and came out as "lost"
        rec.wait(lambda r: any(m[2].get("st") == "off" for m in r.of("status")), 10, "the old session's will")
        deaths = [m[2] for m in rec.of("status") if m[2].get("st") == "off"]
        assert all(d["c"] < b2["c"] and d["why"] == "lost" for d in deaths), deaths
        # QoS 1/2 messages sent into the frozen broker were resent afterwards
        time.sleep(1.0)
        top = max(seqs(rec, boot))
        rec.wait(lambda r: set(range(1, top + 1)) <= seqs(r, boot), 10, "no gap in QoS 1/2 sequence")
        assert p.poll() is None, "the device process died"
    finally:
        broker.thaw()
        out = stop_process(p)
        rec.stop()
    assert "Traceback" not in out and "crashed" not in out, out


@pytest.mark.micropython
def test_hostile_broker_never_crashes_or_hangs(tmp_path: Path, firmware_build: Path) -> None:
    fb = FakeBroker([])
    fb.scenarios = [
        fb.send_then_close(b"\x20\x02\x00\x05"),                    # CONNACK: not authorized
        fb.send_then_close(b"\x20\x03\x00\x00\x00"),                # CONNACK of the wrong length
        fb.send_then_close(b"\x20\xff\xff\xff\xff\x01"),            # remaining length > 4 bytes
        fb.send_then_hold(b""),                                     # no CONNACK at all
        fb.send_then_close(GOOD_CONNACK + b"\x30\x10\x00\x03a/b"),  # truncated PUBLISH, then close
        fb.send_then_hold(GOOD_CONNACK + b"\x30\x0a\x00\x03"),      # truncated PUBLISH, then silence
        fb.send_then_close(GOOD_CONNACK + b"\x30\xff\xff\x7f" + b"x" * 64),  # 2 MB packet announced
        fb.send_then_close(GOOD_CONNACK + b"\xc0\x00"),             # PINGREQ from the broker
        fb.send_then_close(GOOD_CONNACK + b"\x00\x00"),             # packet type 0
        fb.send_then_close(GOOD_CONNACK + b"\x40\x03\x00\x01\x00"),  # PUBACK of the wrong length
        fb.send_then_close(GOOD_CONNACK + b"\x32\x05\x00\x01a\x00\x00"),  # QoS 1 PUBLISH with packet id 0
        fb.good,
    ]
    fb.start()
    dev = "mp-fake-1"
    cfg = device_config(fb.port, [{"name": "door", "source": "sim:door", "interval_ms": 200, "qos": 1}],
                        timeout_ms=500, backoff_min_ms=50, backoff_max_ms=200, stable_ms=60000)
    p = start_device(tmp_path, dev, cfg)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tel = [x for x in fb.published if x[0].endswith("/telemetry")]
            if len(tel) >= 3:
                break
            assert p.poll() is None, "device process ended"
            time.sleep(0.05)
        assert fb.connections >= len(fb.scenarios), fb.connections
        births = [msgpack.unpackb(x[2]) for x in fb.published if x[0].endswith("/status")]
        assert births and births[0]["st"] == "on"
        # c counts CONNECT attempts, so every will names a session of its own. The
        # births of hostile sessions were never acknowledged; each newer birth
        # supersedes the older one, so only the current one arrives.
        assert [b["c"] for b in births] == [len(fb.scenarios)], births
        tel = [msgpack.unpackb(x[2]) for x in fb.published if x[0].endswith("/telemetry")]
        assert len(tel) >= 3 and all(t["d"] == dev for t in tel)
        assert p.poll() is None
    finally:
        out = stop_process(p)
        fb.close()
    assert "Traceback" not in out and "crashed" not in out, out
