"""Issue #6 item 5: no command lockout. Commands wait in bounded numbers per
device as well as in total, and a command to a device the registry knows to be
offline is answered at once (409 with the reason) unless the caller asks to
queue it."""
from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import websockets

from edgewire import wire
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, spawn_hand_device, wait_for, wait_line
from tests.support.broker import Mosquitto


async def _offline_device(gateway: Gateway, publisher: Publisher, name: str) -> None:
    publisher.pub(wire.topic(name, "status"), wire.encode_birth(name, 5, 1, 100, "1.0", "sim", {}))
    publisher.pub(wire.topic(name, "status"), wire.encode_death(name, 5, 1, "lost"))
    await wait_for(lambda: (d := gateway.registry.get(name)) is not None and d.online is False,
                   what=f"{name} offline")


async def _online_device(broker: Mosquitto, gateway: Gateway, procs: list[subprocess.Popen[str]],
                         name: str) -> None:
    dev = spawn_hand_device(broker.port, name, qos="1", count=1)
    procs.append(dev)
    await asyncio.to_thread(wait_line, dev, "published")
    await wait_for(lambda: (d := gateway.registry.get(name)) is not None and d.online, what=f"{name} online")


async def test_offline_device_answers_at_once_unless_queued(gateway: Gateway, publisher: Publisher,
                                                           http: aiohttp.ClientSession) -> None:
    await _offline_device(gateway, publisher, "dev-off")
    url = gateway.http_url + "/api/v1/devices/dev-off/commands/ping?timeout=30"
    r = await asyncio.wait_for(http.post(url), 10)  # before: waited the whole 30 s, then 504
    body = await r.json()
    assert r.status == 409, body
    assert body["error"] == "device_offline" and body["why_offline"] == "lost"
    assert "offline (lost)" in body["message"] and "queue" in body["message"]
    assert gateway.commands.stats()["sent"] == 0  # nothing went to the broker

    # queue=true sends it anyway and waits for the device up to the timeout
    r = await http.post(gateway.http_url + "/api/v1/devices/dev-off/commands/ping?timeout=0.3&queue=true")
    assert r.status == 504 and (await r.json())["device_state"] == "offline"
    assert gateway.commands.stats()["sent"] == 1
    r = await http.post(gateway.http_url + "/api/v1/devices/dev-off/commands/ping?queue=maybe")
    assert r.status == 400

    async with websockets.connect(gateway.http_url.replace("http", "ws") + "/api/v1/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"op": "command", "device": "dev-off", "name": "ping", "timeout": 30, "ref": 1}))
        m = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert m["type"] == "error" and m["error"] == "device_offline" and m["ref"] == 1
        await ws.send(json.dumps({"op": "command", "device": "dev-off", "name": "ping", "timeout": 0.3,
                                  "queue": True, "ref": 2}))
        m = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert m["type"] == "error" and m["error"] == "timeout" and m["ref"] == 2


async def test_slow_commands_to_one_device_do_not_lock_out_the_others(
        broker: Mosquitto, gateway: Gateway, publisher: Publisher, http: aiohttp.ClientSession,
        procs: list[subprocess.Popen[str]]) -> None:
    await _offline_device(gateway, publisher, "dev-slow")
    await _online_device(broker, gateway, procs, "dev-ok")
    per_device = gateway.config.commands.max_pending_per_device
    url = gateway.http_url + "/api/v1/devices/dev-slow/commands/ping?timeout=120&queue=true"
    statuses: list[int] = []

    async def slow() -> None:
        try:
            r = await http.post(url)
        except aiohttp.ServerDisconnectedError:
            statuses.append(0)  # refused by the per-address connection limit (item 4) in the flood
        else:
            statuses.append(r.status)

    # the attack: 256 slow (queued) commands to a device that never answers
    tasks = [asyncio.create_task(slow()) for _ in range(gateway.config.commands.max_pending)]
    try:
        await wait_for(lambda: len(statuses) == len(tasks) - per_device, timeout=30,
                       what="all but the per-device bound refused at once")
        assert set(statuses) <= {503, 0} and gateway.commands.pending == per_device
        r = await http.post(url)
        body = await r.json()
        assert r.status == 503 and body["error"] == "busy" and "dev-slow" in body["message"]
        # everyone else's commands still go through
        for _ in range(3):
            r = await http.post(gateway.http_url + "/api/v1/devices/dev-ok/commands/ping")
            body = await r.json()
            assert r.status == 200 and body["value"] == "pong", body
        # (some of the 503s came from the per-address connection limit, item 4, before a handler ran)
        assert gateway.commands.stats()["busy"] >= 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
