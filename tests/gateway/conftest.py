"""Fixtures for gateway tests: an in-process Gateway on the private mosquitto,
a paho publisher for hand-made messages, an SSE reader, device subprocesses."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest

from edgewire import wire
from edgewire.gateway.config import CommandsConfig, GatewayConfig, HttpConfig, HubConfig, JournalConfig, MqttConfig
from edgewire.gateway.service import Gateway
from tests.support.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


def gateway_config(broker: Mosquitto, **sections: Any) -> GatewayConfig:
    cfg = GatewayConfig(
        mqtt=MqttConfig(url=broker.url, client_id="gw-" + uuid.uuid4().hex[:8], keepalive=5,
                        reconnect_min=0.05, reconnect_max=0.5, connect_timeout=2.0),
        http=HttpConfig(host="127.0.0.1", port=0, heartbeat=0.5),
        commands=CommandsConfig(timeout=3.0),
        hub=HubConfig(),
        # the default settings, in the test's own folder
        journal=JournalConfig(path=str(broker.workdir / f"journal-{uuid.uuid4().hex[:8]}.db")),
    )
    return cfg.replace(**sections) if sections else cfg


@pytest.fixture
async def gateway(broker: Mosquitto) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_config(broker)) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        yield gw


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def wait_for(cond: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 5.0,
                   what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Publisher:
    """A paho client that publishes hand-made protocol bytes and waits for each."""

    def __init__(self, port: int, client_id: str = "") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "pub-" + uuid.uuid4().hex[:8])
        self._up = threading.Event()
        self.client.on_connect = lambda *a: self._up.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._up.wait(5):
            raise RuntimeError("publisher could not connect")

    def pub(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def telemetry(self, device: str, boot: int, seq: int, readings: list[list[Any]], qos: int = 1,
                  uptime: int | None = None) -> None:
        """`uptime`: the envelope's send time on the device clock (default seq * 10 ms)."""
        up = seq * 10 if uptime is None else uptime
        self.pub(wire.topic(device, "telemetry"), wire.encode_telemetry(device, boot, seq, up, readings), qos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def burst_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto for tests that publish a burst faster than the
    gateway commits it. Why not the defaults: mosquitto queues at most
    max_queued_messages (default 1000) per client beyond the 20 in flight and
    DROPS the rest, so a burst that outruns the gateway loses messages at the
    broker before the gateway sees them, which is not what such tests are
    about. Sites size this setting for their bursts (docs/gateway.md, "Broker
    settings"); max_inflight_messages stays at its default."""
    b = Mosquitto(tmp_path, extra_conf="max_queued_messages 1000000\n").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def publisher(broker: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    try:
        yield p
    finally:
        p.close()


class SseEvent(dict[str, str]):
    @property
    def data_json(self) -> Any:
        return json.loads(self["data"])


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Parse an SSE response into events (dicts of field -> value); comments skipped."""
    ev = SseEvent()
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if ev:
                yield ev
                ev = SseEvent()
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        ev[field] = value


async def read_readings(resp: aiohttp.ClientResponse, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next n reading events of an SSE response (with their SSE id checked)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for ev in sse_events(resp):
            if ev.get("event") == "reading":
                d = ev.data_json
                assert ev["id"] == str(d["id"])
                out.append(d)
                if len(out) >= n:
                    break
    return out


async def read_readings_fast(resp: aiohttp.ClientResponse, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Like read_readings for high rates: reads raw chunks, parses at the end."""
    buf = bytearray()
    marker = b"event: reading\n"
    async with asyncio.timeout(timeout):
        async for chunk in resp.content.iter_any():
            buf += chunk
            if buf.count(marker) >= n and buf.endswith(b"\n\n"):
                break
    out = []
    for block in bytes(buf).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields.get("event") == "reading":
            d = json.loads(fields["data"])
            assert fields["id"] == str(d["id"])
            out.append(d)
    return out


def spawn_hand_device(port: int, device: str, *, qos: str = "0,1,2", count: int = 10, boot: int = 1,
                      conn: int = 1) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.gateway.handdevice", "--port", str(port), "--id", device,
                             "--qos", qos, "--count", str(count), "--boot", str(boot), "--conn", str(conn)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"device never printed {prefix!r}; output: {''.join(seen)[-2000:]}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts; killed at the end whatever happens."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait(5)
            if p.stdout is not None:
                p.stdout.close()
