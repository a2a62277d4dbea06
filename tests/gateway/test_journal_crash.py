"""Nothing lost, nothing twice, across gateway crashes.

A simulated fleet (the real device SDK on simulated boards) sends 10,000
readings at QoS 1, and again at QoS 2, through a private mosquitto with its
default in-flight limit, while the gateway process is killed with SIGKILL
twice and restarted, each time while its journal is stalled with messages
received but not yet committed. Then:

- the journal holds every reading an independent subscriber saw, exactly once;
- an SSE client that reconnected with Last-Event-ID across both restarts got
  every event exactly once, in id order;
- after one more SIGKILL and restart the device list is what it was."""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import paho.mqtt.client as mqtt
import pytest

from edgewire import wire
from edgewire.sim import Fleet
from tests.gateway.conftest import wait_for
from tests.support.broker import Mosquitto, free_port, wait_port

READINGS = 10_000
DEVICES = 20
RATE = 50.0  # messages per second per device: 1,000 readings/s in all, ~10 s per run

# The gateway is away for a second or two at each SIGKILL; meanwhile mosquitto
# queues its session's messages, and its default max_queued_messages (1000) is
# less than the fleet sends in that time: mosquitto would drop the rest (it
# logs "Outgoing messages are being dropped"). A site must size this queue for
# its gateway's restart time (docs/gateway.md, "Broker settings"), so this test
# does too. max_inflight_messages stays at its default of 20.
BROKER_CONF = "max_queued_messages 100000\n"


class Recorder:
    """An independent subscriber (paho, QoS 2) that records every reading."""

    def __init__(self, port: int) -> None:
        self.seen: dict[tuple[str, int, int], list[tuple[str, Any]]] = {}
        self.readings = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rec-" + uuid.uuid4().hex[:8])
        self.client.on_message = self._on_message
        up = threading.Event()
        self.client.on_connect = lambda *a: (self.client.subscribe(wire.ROOT + "/+/telemetry", qos=2), up.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not up.wait(10):
            raise RuntimeError("recorder could not connect")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        env = msgpack.unpackb(msg.payload)
        device = msg.topic.split("/")[2]
        key = (device, env["b"], env["s"])
        readings = [(r[0], r[1]) for r in env["r"]]
        with self.lock:
            if key not in self.seen:
                self.seen[key] = readings
                self.readings += len(readings)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class GatewayProcess:
    """`edgewire gateway --config FILE`, as a user runs it; killable."""

    def __init__(self, workdir: Path, broker: Mosquitto) -> None:
        self.port = free_port()
        self.journal = workdir / "journal.db"
        self.conf = workdir / "gateway.toml"
        self.conf.write_text(f'[mqtt]\nurl = "{broker.url}"\nclient_id = "gw-crash"\nkeepalive = 5\n'
                             f'reconnect_min = 0.05\nreconnect_max = 0.5\n'
                             f'[http]\nhost = "127.0.0.1"\nport = {self.port}\nheartbeat = 0.5\n'
                             f'[journal]\npath = "{self.journal}"\n')
        self.log = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "edgewire"), "gateway", "--config",
                                          str(self.conf)], stdout=log, stderr=log)
        self.starts += 1
        wait_port(self.port, timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SseClient:
    """Reads /api/v1/stream and reconnects with Last-Event-ID whenever the
    connection ends, as a browser's EventSource does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.connects = 0
        self.gaps: list[str] = []
        self.last_id: str | None = None

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
                try:
                    async with http.get(self.url + "/api/v1/stream", headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=5)) as r:
                        self.connects += 1
                        await self._read(r)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                    pass
                await asyncio.sleep(0.05)

    async def _read(self, r: aiohttp.ClientResponse) -> None:
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                              if line and not line.startswith(":") and ": " in line)
                if fields.get("event") == "reading":
                    d = json.loads(fields["data"])
                    assert fields["id"] == str(d["id"])
                    self.events.append(d)
                    self.last_id = fields["id"]
                elif fields.get("event") == "gap":
                    self.gaps.append(fields["data"])


def journal_readings(path: Path) -> tuple[list[tuple[str, int, int, str, Any]], list[int]]:
    """(device, boot, seq, stream, value) of every reading in the journal, and the event ids."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out, ids = [], []
        for i, device, boot, seq, body in conn.execute(
                "SELECT id, device, boot, seq, body FROM journal WHERE kind = 0 ORDER BY id"):
            for k, (stream, value, _ts, _err) in enumerate(msgpack.unpackb(body)):
                out.append((device, boot, seq, stream, value))
                ids.append(i + k)
        return out, ids
    finally:
        conn.close()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            return await r.json()


async def crash_run(tmp_path: Path, qos: int) -> None:
    broker = Mosquitto(tmp_path, extra_conf=BROKER_CONF).start()
    gw = GatewayProcess(tmp_path, broker)
    rec = Recorder(broker.port)
    fleet = Fleet(broker.url, devices=DEVICES, rate=RATE, qos=qos, prefix=f"crash{qos}", fault_rate=0.0)
    sse = SseClient(gw.url)
    sse_task: asyncio.Task[None] | None = None
    try:
        gw.start()
        await wait_for(lambda: get_json(gw.url + "/healthz"), timeout=15, what="the gateway")
        await wait_for(lambda: _connected(gw.url), timeout=15, what="the gateway's MQTT session")
        sse_task = asyncio.create_task(sse.run())
        await wait_for(lambda: sse.connects >= 1, timeout=10, what="the SSE client")
        await asyncio.to_thread(fleet.start, wait_connected=30)
        for third in (1, 2):
            await wait_for(lambda t=third: rec.readings >= READINGS * t // 3, timeout=60,
                           what=f"{READINGS * third // 3} readings at the subscriber")
            # The disk stalls (another process holds SQLite's write lock), messages pile up
            # received but not committed, and then the gateway dies: none of them may have
            # been acknowledged, or the broker would not deliver them again.
            stall = sqlite3.connect(f"file:{gw.journal}", uri=True, isolation_level=None, timeout=30)
            try:
                stall.execute("BEGIN IMMEDIATE")
                await wait_for(lambda: _backlog(gw.url), timeout=15, what="messages waiting for the stalled journal")
                gw.kill()                  # no goodbye
            finally:
                stall.close()
            gw.start()
        await wait_for(lambda: rec.readings >= READINGS, timeout=60, what=f"{READINGS} readings at the subscriber")
        await asyncio.to_thread(fleet.stop)
        report = fleet.report()
        assert sum(d.unacked + d.dropped for d in report.per_device) == 0  # the devices lost nothing either
        state: dict[str, Any] = {}

        async def settled() -> bool:
            devs = (await get_json(gw.url + "/api/v1/devices"))["devices"]
            stats = await get_json(gw.url + "/api/v1/stats")
            with rec.lock:
                sent, readings = len(rec.seen), rec.readings
            conn = sqlite3.connect(f"file:{gw.journal}?mode=ro", uri=True)
            deaths = conn.execute("SELECT count(DISTINCT device) FROM journal WHERE kind = 2").fetchone()[0]
            conn.close()
            state.update(journaled=sum(d["messages"] for d in devs), seen=sent, sse=len(sse.events),
                         readings=readings, deaths=deaths, online=[d["id"] for d in devs if d["online"]],
                         backlog=stats["journal"]["backlog"], mqtt=stats["mqtt"])
            # every device offline: also where a shutdown death reached the gateway before the
            # device's last QoS 2 telemetry (sent before it, so no sign of life)
            return (state["journaled"] == sent and deaths == DEVICES and state["backlog"] == 0
                    and len(sse.events) >= readings and not state["online"])

        try:
            await wait_for(settled, timeout=60, what="every message and every death journaled, SSE caught up")
        except AssertionError as e:
            conn = sqlite3.connect(f"file:{gw.journal}?mode=ro", uri=True)
            tail = {d: conn.execute("SELECT id, kind, seq, received FROM journal WHERE device = ? ORDER BY id DESC "
                                    "LIMIT 4", (d,)).fetchall() for d in state["online"][:3]}
            conn.close()
            details = [await get_json(gw.url + f"/api/v1/devices/{d}") for d in state["online"][:2]]
            raise AssertionError(f"{e}: {state}; journal tails {tail}; {details}") from None
        with rec.lock:
            seen = {(d, b, s, st, v) for (d, b, s), rs in rec.seen.items() for st, v in rs}
        stats = await get_json(gw.url + "/api/v1/stats")
        journal, ids = journal_readings(gw.journal)
        # every reading the subscriber saw is in the journal, exactly once (and nothing else is)
        assert len(journal) == len(set(journal)) == len(seen) >= READINGS
        assert set(journal) == seen
        # the SSE client got every event exactly once, in id order, across both restarts
        got_ids = [e["id"] for e in sse.events]
        assert got_ids == ids
        assert [(e["device"], e["boot"], e["seq"], e["stream"], e["value"]) for e in sse.events] == journal
        assert sse.gaps == [] and sse.connects >= 3 and gw.starts == 3
        assert stats["journal"]["recovered_last_id"] > 0

        # the device list after a crash and restart is what it was
        before = await get_json(gw.url + "/api/v1/devices")
        gw.kill()
        gw.start()
        after = await get_json(gw.url + "/api/v1/devices")
        assert after == before
    finally:
        if sse_task is not None:
            sse_task.cancel()
            try:
                await sse_task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(fleet.stop)
        rec.close()
        gw.stop()
        broker.stop()


async def _backlog(url: str) -> bool:
    return bool((await get_json(url + "/api/v1/stats"))["journal"]["backlog"] > 0)


async def _connected(url: str) -> bool:
    return bool((await get_json(url + "/healthz"))["mqtt"]["connected"])


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("qos", [1, 2])
async def test_sigkill_twice_loses_nothing_and_duplicates_nothing(tmp_path: Path, qos: int) -> None:
    await crash_run(tmp_path, qos)


def test_example_broker_config_is_one_mosquitto_accepts(tmp_path: Path) -> None:
    """deploy/mosquitto.conf, as shipped, starts mosquitto (on a free port) and
    raises the queue that ack-after-commit needs (docs/gateway.md, "Broker settings")."""
    import shutil

    src = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto.conf"
    text = src.read_text()
    queued = int(text.split("\nmax_queued_messages ")[1].split()[0])
    assert queued >= 100_000 and "\npersistence true" in text
    import tempfile

    port = free_port()
    # mosquitto started as root saves its store as its own user: a folder it can reach
    store = Path(tempfile.mkdtemp(prefix="edgewire-mosq-"))
    store.chmod(0o777)
    conf = tmp_path / "m.conf"
    conf.write_text(text.replace("listener 1883", f"listener {port} 127.0.0.1")
                    + f"persistence_location {store}/\nlog_dest stderr\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    p = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, timeout=10)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=10)
        shutil.rmtree(store, ignore_errors=True)
    assert b"Error" not in err, err
