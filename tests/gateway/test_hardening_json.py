"""Issue #6 item 7: the gateway speaks valid JSON everywhere and refuses
hostile JSON cleanly: no NaN/Infinity out, deep nesting in a REST body or a
WebSocket frame is a 400 / error frame (never a 500 or a RecursionError),
NaN and 1e999 are not sent to devices, and Last-Event-ID is ASCII digits."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import msgpack
import websockets

from edgewire import wire
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, wait_for


def strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"invalid JSON constant {name} in {text[:300]}")
    return json.loads(text, parse_constant=refuse)


async def test_device_detail_is_valid_json_with_non_finite_values(gateway: Gateway, publisher: Publisher,
                                                                   http: aiohttp.ClientSession) -> None:
    dev = "dev-nan"
    # stream metadata is free-form in the protocol: a NaN can arrive there too
    publisher.pub(wire.topic(dev, "status"), msgpack.packb(
        {"v": 1, "d": dev, "b": 1, "c": 1, "st": "on", "u": 1, "fw": "1", "hw": "x",
         "m": {"t": {"u": "C", "lo": float("-inf"), "hi": float("nan")}}}))
    publisher.telemetry(dev, 1, 1, [["t", float("nan"), 0], ["p", float("inf"), 0], ["ok", 1.5, 0]])
    await wait_for(lambda: (d := gateway.registry.get(dev)) is not None and d.messages == 1, what="telemetry")
    for path in (f"/api/v1/devices/{dev}", "/api/v1/devices"):
        r = await http.get(gateway.http_url + path)
        assert r.status == 200
        strict_json(await r.text())
    body = strict_json(await (await http.get(gateway.http_url + f"/api/v1/devices/{dev}")).text())
    assert body["values"]["t"]["value"] is None and body["values"]["p"]["value"] is None
    assert body["values"]["ok"]["value"] == 1.5
    assert body["streams"]["t"] == {"u": "C", "lo": None, "hi": None}


async def test_hostile_command_bodies_get_400_and_nothing_is_sent(gateway: Gateway, publisher: Publisher,
                                                                  http: aiohttp.ClientSession) -> None:
    publisher.pub(wire.topic("dev-j", "status"), wire.encode_birth("dev-j", 1, 1, 1, "1", "x", {}))
    await wait_for(lambda: gateway.registry.get("dev-j") is not None, what="device")
    url = gateway.http_url + "/api/v1/devices/dev-j/commands/set"
    cases = {
        b"[" * 50_000: "nested too deeply",
        b"[" * 40 + b"]" * 40: "nested too deeply",          # valid JSON, deeper than 32 levels
        b"NaN": "not valid JSON",
        b'{"ms": Infinity}': "not valid JSON",
        b"1e999": "not finite",
        b'{"x": [-1e999]}': "not finite",
    }
    for raw, why in cases.items():
        r = await http.post(url, data=raw, headers={"Content-Type": "application/json"})
        text = await r.text()
        assert r.status == 400, (raw[:20], r.status, text[:300])
        body = strict_json(text)
        assert body["error"] == "bad_request" and why in body["message"], body
    assert gateway.commands.stats()["sent"] == 0


async def test_deep_websocket_frame_gets_an_error_frame(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    try:
        async with websockets.connect(gateway.http_url.replace("http", "ws") + "/api/v1/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send("[" * 30_000)
            m = strict_json(await asyncio.wait_for(ws.recv(), 10))
            assert m["type"] == "error" and m["error"] == "bad_request" and "nested too deeply" in m["message"]
            await ws.send(json.dumps({"op": "command", "device": "dev-x", "name": "set", "args": float("nan"),
                                      "ref": 7}))
            m = strict_json(await asyncio.wait_for(ws.recv(), 10))
            assert m["type"] == "error" and m["ref"] is None and "not valid JSON" in m["message"]
            # the connection still works
            await ws.send(json.dumps({"op": "subscribe", "filter": "#", "ref": 8}))
            m = strict_json(await asyncio.wait_for(ws.recv(), 10))
            assert m["type"] == "subscribed" and m["ref"] == 8
    finally:
        loop.set_exception_handler(loop_handler)
    assert errors == []


async def test_last_event_id_is_ascii_digits_only(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    url = gateway.http_url + "/api/v1/stream"
    for bad in ("١٢٣", "１２３", "12a", "-1"):
        r = await http.get(url, params={"last_event_id": bad})
        assert r.status == 400, bad
        assert "ASCII" in (await r.json())["message"]
    r = await http.get(url, headers={"Last-Event-ID": "١٢٣".encode().decode("latin-1")})
    assert r.status == 400
    async with http.get(url, params={"last_event_id": "0"}) as r:
        assert r.status == 200
