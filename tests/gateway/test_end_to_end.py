"""A device publishes at QoS 0, 1 and 2; SSE and WebSocket clients both get
every reading with the right values; the device list shows it online, then
offline after the device process is SIGKILLed (its last will)."""
from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import websockets

from edgewire.gateway.service import Gateway
from tests.gateway.conftest import read_readings, spawn_hand_device, wait_for, wait_line
from tests.support.broker import Mosquitto

COUNT = 20  # messages per QoS


async def test_hand_device_end_to_end(broker: Mosquitto, gateway: Gateway, http: aiohttp.ClientSession,
                                      procs: list[subprocess.Popen[str]]) -> None:
    base = gateway.http_url
    async with http.get(base + "/api/v1/stream?filter=dev-e2e/%23") as sse, \
            websockets.connect(base.replace("http", "ws") + "/api/v1/ws") as ws:
        assert sse.status == 200
        assert sse.headers["Content-Type"].startswith("text/event-stream")
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        await ws.send(json.dumps({"op": "subscribe", "filter": "dev-e2e/+", "ref": 1}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "subscribed" and ack["ref"] == 1 and ack["count"] == 1

        dev = spawn_hand_device(broker.port, "dev-e2e", qos="0,1,2", count=COUNT)
        procs.append(dev)
        assert (await asyncio.to_thread(wait_line, dev, "published")).split() == ["published", str(3 * COUNT)]

        got_sse = await read_readings(sse, 3 * COUNT)
        ws_events: list[dict[str, object]] = []
        async with asyncio.timeout(10):
            while len(ws_events) < 3 * COUNT:
                frame = json.loads(await ws.recv())
                if frame["type"] == "readings":
                    ws_events.extend(frame["events"])

    # every reading exactly once, with its value (the sequence number) and stream (q<qos>)
    for events in (got_sse, ws_events):
        assert len(events) == 3 * COUNT
        by_seq = {e["seq"]: e for e in events}
        assert sorted(by_seq) == list(range(1, 3 * COUNT + 1))
        for seq, e in by_seq.items():
            assert e["device"] == "dev-e2e"
            assert e["value"] == seq
            assert e["stream"] == f"q{(seq - 1) % 3}"
            assert e["boot"] == 1
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["id"] for e in got_sse] == [e["id"] for e in ws_events]

    r = await http.get(base + "/api/v1/devices")
    devices = {d["id"]: d for d in (await r.json())["devices"]}
    d = devices["dev-e2e"]
    assert (d["state"], d["online"], d["fw"], d["hw"]) == ("online", True, "hand-1.0", "paho")
    assert (d["messages"], d["missing"], d["duplicates"]) == (3 * COUNT, 0, 0)
    detail = await (await http.get(base + "/api/v1/devices/dev-e2e")).json()
    assert detail["streams"]["q2"] == {"u": "n", "q": 2, "i": 0}
    assert detail["values"]["q0"]["value"] == 3 * COUNT - 2

    dev.kill()  # no DISCONNECT: the broker publishes the last will
    dev.wait(5)

    async def offline() -> bool:
        d = await (await http.get(base + "/api/v1/devices/dev-e2e")).json()
        return d["state"] == "offline" and d["why_offline"] == "lost"

    await wait_for(offline, timeout=15, what="the device to go offline")  # keepalive 5 s * 1.5


async def test_unknown_device_is_404_json(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    r = await http.get(gateway.http_url + "/api/v1/devices/nobody")
    assert r.status == 404
    assert (await r.json())["error"] == "unknown_device"
    r = await http.get(gateway.http_url + "/api/v1/nothing-here")
    assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_dashboard_and_health(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    r = await http.get(gateway.http_url + "/")
    assert r.status == 200
    page = await r.text()
    assert "/static/dashboard.js" in page
    js = await (await http.get(gateway.http_url + "/static/dashboard.js")).text()
    assert "EventSource" in js and "/api/v1/devices" in js
    r = await http.get(gateway.http_url + "/healthz")
    body = await r.json()
    assert r.status == 200 and body["status"] == "ok" and body["mqtt"]["connected"] is True
