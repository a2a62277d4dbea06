"""The real firmware (firmware/main.py, edgewire.device.Device on a SimBoard)
on the MicroPython unix port, through mosquitto, to the gateway: streams at
QoS 0, 1 and 2 reach SSE and WebSocket clients exactly as the device sent them
(checked against an independent paho subscriber); commands come back; SIGKILL
turns the device offline."""
from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import paho.mqtt.client as mqtt
import pytest
import websockets

from edgewire.gateway.service import Gateway
from tests.gateway.conftest import sse_events, wait_for
from tests.support import micropython
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.micropython

DEVICE = "mp-gw-01"
STREAMS = [
    {"name": "temperature", "source": "sim:temperature", "interval_ms": 150, "qos": 0, "unit": "C"},
    {"name": "humidity", "source": "sim:humidity", "interval_ms": 150, "qos": 1, "unit": "%"},
    {"name": "door", "source": "sim:door", "interval_ms": 150, "qos": 2, "unit": ""},
]


def spawn_device(tmp: Path, port: int) -> subprocess.Popen[str]:
    store = tmp / DEVICE
    store.mkdir()
    cfg = {"broker_host": "127.0.0.1", "broker_port": port, "keepalive_s": 2, "timeout_ms": 1000,
           "backoff_min_ms": 200, "backoff_max_ms": 800, "streams": STREAMS, "batch_max": 4}
    (store / "config.json").write_text(json.dumps(cfg))
    code = ("from edgewire.boards.sim import SimBoard\nimport main\n"
            f"main.main(SimBoard({DEVICE!r}, storage={str(store)!r}, seed=3))\n")
    return micropython.spawn(code)


class Recorder:
    """An independent paho subscriber: what the device really published."""

    def __init__(self, port: int) -> None:
        self.readings: list[tuple[int, str, Any]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rec-gw")
        self.c.on_connect = lambda c, *a: c.subscribe(f"edgewire/v1/{DEVICE}/telemetry", qos=2)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(5)

    def _msg(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        env = msgpack.unpackb(m.payload)
        for r in env["r"]:
            self.readings.append((env["s"], r[0], r[1]))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def test_micropython_device_end_to_end(broker: Mosquitto, gateway: Gateway, http: aiohttp.ClientSession,
                                             firmware_build: Path, tmp_path: Path) -> None:
    base = gateway.http_url
    sse_got: list[dict[str, Any]] = []
    ws_got: list[dict[str, Any]] = []

    async def read_sse() -> None:
        async with http.get(base + f"/api/v1/stream?device={DEVICE}") as r:
            async for ev in sse_events(r):
                if ev.get("event") == "reading":
                    sse_got.append(ev.data_json)

    async def read_ws(ready: asyncio.Event) -> None:
        async with websockets.connect(base.replace("http", "ws") + "/api/v1/ws") as ws:
            await ws.send(json.dumps({"op": "subscribe", "filter": f"{DEVICE}/#"}))
            async for frame in ws:
                m = json.loads(frame)
                if m["type"] == "subscribed":
                    ready.set()
                elif m["type"] == "readings":
                    ws_got.extend(m["events"])

    rec = Recorder(broker.port)
    ws_ready = asyncio.Event()
    readers = [asyncio.create_task(read_sse()), asyncio.create_task(read_ws(ws_ready))]
    dev = None
    try:
        await asyncio.wait_for(ws_ready.wait(), 5)
        await wait_for(lambda: sum(s.kind == "sse" for s in gateway.hub.subscribers.values()) == 1, what="SSE")
        dev = spawn_device(tmp_path, broker.port)
        await wait_for(lambda: (d := gateway.registry.get(DEVICE)) is not None and d.online, timeout=15,
                       what="the MicroPython device online")
        d = await (await http.get(base + f"/api/v1/devices/{DEVICE}")).json()
        assert d["hw"] == "sim" and d["fw"] and set(d["streams"]) == {"temperature", "humidity", "door"}
        assert {k: v["q"] for k, v in d["streams"].items()} == {"temperature": 0, "humidity": 1, "door": 2}

        r = await http.post(base + f"/api/v1/devices/{DEVICE}/commands/ping")
        assert r.status == 200 and (await r.json())["value"] == "pong"
        async with websockets.connect(base.replace("http", "ws") + "/api/v1/ws") as ws:
            await ws.recv()
            # the device loads its command code on demand within a 64K heap: slow on a loaded machine
            await ws.send(json.dumps({"op": "command", "device": DEVICE, "name": "info", "timeout": 20, "ref": 1}))
            async with asyncio.timeout(30):  # a result, or an error frame (timeout, device_offline): never a hang
                while (m := json.loads(await ws.recv()))["type"] not in ("result", "error"):
                    pass
            assert m["type"] == "result" and m["ok"] is True and m["ref"] == 1, m

        await wait_for(lambda: {e["stream"] for e in sse_got} == {"temperature", "humidity", "door"}
                       and len(sse_got) >= 15, timeout=15, what="readings of every stream")
        dev.kill()
        dev.wait(5)
        await wait_for(lambda: gateway.registry.get(DEVICE).online is False, timeout=10,  # type: ignore[union-attr]
                       what="the device offline after SIGKILL")
        await wait_for(lambda: len(rec.readings) == len(sse_got) == len(ws_got), timeout=5,
                       what=f"every reading everywhere ({len(rec.readings)}, {len(sse_got)}, {len(ws_got)})")
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        rec.close()
        if dev is not None:
            if dev.poll() is None:
                dev.kill()
            dev.communicate(timeout=10)

    sent = sorted(rec.readings, key=lambda r: (r[0], r[1]))
    for got in (sse_got, ws_got):
        assert sorted(((e["seq"], e["stream"], e["value"]) for e in got), key=lambda r: (r[0], r[1])) == sent
    dd = await (await http.get(base + f"/api/v1/devices/{DEVICE}")).json()
    assert dd["state"] == "offline" and dd["duplicates"] == 0 and dd["missing"] == 0
