"""Commands over REST and WebSocket reach a device and its result comes back;
a command to an absent device times out with a clear 504."""
from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import websockets

from edgewire.gateway.service import Gateway
from tests.gateway.conftest import spawn_hand_device, wait_for, wait_line
from tests.support.broker import Mosquitto


async def _device(broker: Mosquitto, gateway: Gateway, procs: list[subprocess.Popen[str]], name: str) -> subprocess.Popen[str]:
    dev = spawn_hand_device(broker.port, name, qos="1", count=1)
    procs.append(dev)
    await asyncio.to_thread(wait_line, dev, "published")
    await wait_for(lambda: (d := gateway.registry.get(name)) is not None and d.online, what="device online")
    return dev


async def test_rest_command_round_trip(broker: Mosquitto, gateway: Gateway, http: aiohttp.ClientSession,
                                       procs: list[subprocess.Popen[str]]) -> None:
    await _device(broker, gateway, procs, "dev-cmd")
    base = gateway.http_url + "/api/v1/devices/dev-cmd/commands/"
    r = await http.post(base + "ping")
    body = await r.json()
    assert r.status == 200, body
    assert (body["ok"], body["value"], body["command"], body["device"]) == (True, "pong", "ping", "dev-cmd")
    assert len(body["id"]) == 16

    r = await http.post(base + "echo", json={"stream": "t", "ms": 500, "nested": [1, 2.5, None]})
    body = await r.json()
    assert r.status == 200 and body["value"] == {"stream": "t", "ms": 500, "nested": [1, 2.5, None]}

    r = await http.post(base + "selfdestruct")
    body = await r.json()
    assert r.status == 200 and body["ok"] is False and body["error"] == "unknown command 'selfdestruct'"

    # bad requests: nothing is sent
    sent = gateway.commands.sent
    for url, data, code in [(base + "ping?timeout=abc", b"", 400), (base + "ping?timeout=-1", b"", 400),
                            (base + "ping", b"{not json", 400), (base + "bad name!", b"", 400),
                            (gateway.http_url + "/api/v1/devices/ghost/commands/ping", b"", 404)]:
        r = await http.post(url, data=data)
        assert r.status == code, (url, await r.text())
        assert "message" in await r.json()
    assert gateway.commands.sent == sent


async def test_ws_command_round_trip(broker: Mosquitto, gateway: Gateway, procs: list[subprocess.Popen[str]]) -> None:
    await _device(broker, gateway, procs, "dev-wscmd")
    async with websockets.connect(gateway.http_url.replace("http", "ws") + "/api/v1/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"op": "command", "device": "dev-wscmd", "name": "echo", "args": [1, "two"],
                                  "ref": "a"}))
        await ws.send(json.dumps({"op": "command", "device": "dev-wscmd", "name": "ping", "ref": "b"}))
        await ws.send(json.dumps({"op": "command", "device": "dev-wscmd", "name": "bad name", "ref": "c"}))
        await ws.send(json.dumps({"op": "fly", "ref": "d"}))
        replies = {}
        async with asyncio.timeout(10):
            while len(replies) < 4:
                m = json.loads(await ws.recv())
                replies[m["ref"]] = m
    assert replies["a"]["type"] == "result" and replies["a"]["ok"] is True and replies["a"]["value"] == [1, "two"]
    assert replies["b"]["type"] == "result" and replies["b"]["value"] == "pong"
    assert replies["c"]["type"] == "error" and replies["c"]["error"] == "bad_request"
    assert replies["d"]["type"] == "error" and "unknown op" in replies["d"]["message"]


async def test_command_to_absent_device_times_out_504(broker: Mosquitto, gateway: Gateway,
                                                      http: aiohttp.ClientSession,
                                                      procs: list[subprocess.Popen[str]]) -> None:
    dev = await _device(broker, gateway, procs, "dev-gone")
    dev.kill()
    dev.wait(5)
    await wait_for(lambda: gateway.registry.get("dev-gone").online is False, what="device offline")  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # queued on purpose (an offline device is otherwise refused at once, 409: test_hardening_commands)
    r = await http.post(gateway.http_url + "/api/v1/devices/dev-gone/commands/ping?timeout=0.5&queue=true")
    elapsed = loop.time() - t0
    body = await r.json()
    assert r.status == 504, body
    assert body["error"] == "timeout" and body["device_state"] == "offline"
    assert "dev-gone" in body["message"] and "0.5 s" in body["message"] and "offline" in body["message"]
    assert 0.5 <= elapsed < 3
    assert gateway.commands.stats()["timed_out"] == 1 and gateway.commands.pending == 0
