"""The gateway on its embedded broker (no [mqtt] url): the broker runs in a
process of its own, QoS 0 readings come through cheaply and completely, QoS
1/2 ones exactly once, and the gateway warns when its ingest nears what the
embedded broker can relay."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgewire import wire
from edgewire.gateway.config import EmbeddedBrokerConfig, GatewayConfig, HttpConfig, JournalConfig, MqttConfig
from edgewire.gateway.embedded_broker import MEASURED_LIMIT, IngestWatch
from edgewire.gateway.service import Gateway
from tests.gateway.test_embedded_broker import _packet, _string


def embedded_config(journal: Path, **broker: object) -> GatewayConfig:
    return GatewayConfig(mqtt=MqttConfig(url="", keepalive=5, reconnect_min=0.05, reconnect_max=0.5),
                         embedded_broker=EmbeddedBrokerConfig(port=0, **broker),  # type: ignore[arg-type]
                         http=HttpConfig(host="127.0.0.1", port=0),
                         journal=JournalConfig(path=str(journal / "journal.db")))


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with Gateway(embedded_config(tmp_path)) as g:
        assert g.mqtt is not None
        await g.mqtt.wait_connected(15)
        yield g


async def _until(cond: object, timeout: float, what: str, state: object = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"; {state()}" if state else ""))  # type: ignore[operator]
        await asyncio.sleep(0.05)


def _telemetry(device: str, seq: int) -> bytes:
    return bytes(wire.encode_telemetry(device, 7, seq, 1000 + seq, [["x", seq, 1000 + seq]]))


async def test_the_broker_is_a_process_of_its_own(gw: Gateway) -> None:
    embedded = gw.stats()["mqtt"]["embedded"]
    pid = embedded["pid"]
    assert isinstance(pid, int) and pid != os.getpid()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"edgewire.gateway.embedded_broker" in f.read()
    # Its own process: pausing the gateway's event loop does not pause the
    # broker, which still answers a CONNECT meanwhile.
    sock = socket.create_connection(("127.0.0.1", gw.mqtt.port if gw.mqtt else 0), timeout=5)
    sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string("probe")))
    sock.settimeout(10)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # read while this loop is blocked in recv
    sock.close()


async def test_a_qos0_burst_written_before_leaving_reaches_the_gateway(gw: Gateway) -> None:
    """5,000 QoS 0 readings written at once, then DISCONNECT: all 5,000 are
    ingested, with no gap (issue 6 item 16: 3 got through)."""
    port = gw.mqtt.port if gw.mqtt else 0

    def burst() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string("dev-burst")))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        topic = _string(wire.topic("dev-burst", "telemetry"))
        sock.sendall(b"".join(_packet(0x30, topic + _telemetry("dev-burst", s)) for s in range(1, 5001)) + b"\xe0\x00")
        sock.close()

    await asyncio.to_thread(burst)
    await _until(lambda: gw.stats()["ingest"]["messages"] >= 5000, 60, "5,000 messages ingested",
                 lambda: {k: gw.stats()[k] for k in ("ingest", "mqtt", "registry", "refused")})
    stats = gw.stats()
    assert stats["ingest"]["messages"] == 5000
    assert stats["registry"]["missing"] == 0 and stats["registry"]["duplicates"] == 0


@pytest.mark.parametrize("qos", [1, 2])
async def test_qos1_and_qos2_readings_arrive_exactly_once(gw: Gateway, qos: int) -> None:
    port = gw.mqtt.port if gw.mqtt else 0
    device = f"dev-q{qos}"

    def publish() -> None:
        done = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
        c.on_connect = lambda *a: done.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert done.wait(10)
        for info in [c.publish(wire.topic(device, "telemetry"), _telemetry(device, s), qos=qos)
                     for s in range(1, 301)]:
            info.wait_for_publish(30)
        gone = threading.Event()
        c.on_disconnect = lambda *a: gone.set()
        c.disconnect()
        gone.wait(10)
        c.loop_stop()

    await asyncio.to_thread(publish)
    await _until(lambda: gw.stats()["ingest"]["messages"] >= 300, 60, "300 messages ingested")
    stats = gw.stats()
    assert stats["ingest"]["messages"] == 300
    assert stats["registry"]["duplicates"] == 0 and stats["registry"]["missing"] == 0
    assert stats["mqtt"]["qos2_duplicates"] == 0


def test_ingest_watch_warns_once_then_at_most_every_repeat(caplog: pytest.LogCaptureFixture) -> None:
    w = IngestWatch(threshold=100, limit=150, interval=10, repeat=600)
    with caplog.at_level(logging.WARNING, logger="edgewire.embedded_broker"):
        w.sample(0, now=0)
        w.sample(500, now=10)        # 50 msg/s: below
        assert (w.rate, w.warnings) == (50, 0)
        w.sample(1500, now=20)       # 100 msg/s: at the threshold
        w.sample(3500, now=30)       # 200 msg/s: still high, but warned 10 s ago
        assert (w.rate, w.warnings) == (200, 1)
        w.sample(4000, now=620)      # long quiet stretch: under the threshold
        w.sample(6000, now=630)      # 200 msg/s again, 610 s after the warning
        assert w.warnings == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "100 msg/s" in messages[0] and "embedded broker" in messages[0] and "mosquitto" in messages[0]
    assert "[mqtt] url" in messages[0]


def test_ingest_watch_off_and_default_threshold() -> None:
    w = IngestWatch(threshold=0)
    w.sample(0, now=0)
    w.sample(10**9, now=1)
    assert w.warnings == 0
    assert 0 < EmbeddedBrokerConfig().warn_rate < MEASURED_LIMIT


@pytest.mark.slow
async def test_gateway_warns_when_ingest_nears_the_embedded_limit(caplog: pytest.LogCaptureFixture,
                                                                  tmp_path: Path) -> None:
    """warn_rate 20 msg/s (a test setting: the default is 70% of the measured
    limit) and 60 msg/s offered: one warning, through the real gateway."""
    with caplog.at_level(logging.WARNING, logger="edgewire.embedded_broker"):
        async with Gateway(embedded_config(tmp_path, warn_rate=20)) as g:
            assert g.mqtt is not None
            await g.mqtt.wait_connected(15)
            port = g.mqtt.port
            stop = threading.Event()

            def publish() -> None:
                c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-busy")
                c.connect("127.0.0.1", port)
                c.loop_start()
                seq = 0
                while not stop.is_set():
                    seq += 1
                    c.publish(wire.topic("dev-busy", "telemetry"), _telemetry("dev-busy", seq), qos=0)
                    stop.wait(1 / 60)
                c.disconnect()
                c.loop_stop()

            t = threading.Thread(target=publish)
            t.start()
            try:
                await _until(lambda: g.stats()["mqtt"]["embedded"]["warnings"] >= 1, 60, "the warning")
            finally:
                stop.set()
                await asyncio.to_thread(t.join, 10)
            embedded = g.stats()["mqtt"]["embedded"]
            assert embedded["warnings"] == 1 and embedded["warn_rate"] == 20 and embedded["ingest_rate"] >= 20
    warnings = [r.getMessage() for r in caplog.records if "near the embedded broker's limit" in r.getMessage()]
    assert len(warnings) == 1, warnings
