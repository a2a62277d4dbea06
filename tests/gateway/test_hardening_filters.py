"""Issue #6 item 10: filters that can never match are refused with a clear
error, unsubscribing an unknown filter says so, subscribe replies stay small,
and a connection holds a bounded number of filters."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import websockets

from edgewire.gateway.service import Gateway

NEVER = ["+", "dev-01", "bad id!/t", "dev-01/bad stream", "+/t°"]


async def test_sse_refuses_filters_that_can_never_match(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    url = gateway.http_url + "/api/v1/stream"
    for flt in NEVER:
        r = await http.get(url, params={"filter": flt})
        body = await r.json()
        assert r.status == 400 and "can never match" in body["message"], (flt, body)
    r = await http.get(url, params={"device": "dev-01", "stream": "t", "filter": "x/#"})
    r.close()
    assert r.status == 200
    cap = gateway.config.http.max_filters
    r = await http.get(url, params=[("filter", f"dev-{i}/#") for i in range(cap + 1)])
    body = await r.json()
    assert r.status == 400 and "max_filters" in body["message"]


async def test_ws_filters_refused_unknown_unsubscribe_small_replies_and_cap(gateway: Gateway) -> None:
    async with websockets.connect(gateway.http_url.replace("http", "ws") + "/api/v1/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"

        async def ask(msg: dict[str, Any]) -> tuple[dict[str, Any], int]:
            await ws.send(json.dumps(msg))
            raw = await asyncio.wait_for(ws.recv(), 10)
            return json.loads(raw), len(raw)

        for i, flt in enumerate(NEVER):
            m, _ = await ask({"op": "subscribe", "filter": flt, "ref": i})
            assert m["type"] == "error" and m["error"] == "bad_request" and "can never match" in m["message"], m
        m, _ = await ask({"op": "unsubscribe", "filter": "dev-01/#", "ref": "u"})
        assert m["type"] == "error" and m["error"] == "not_subscribed" and m["ref"] == "u", m

        cap = gateway.config.http.max_filters
        sizes = []
        for i in range(cap):
            m, size = await ask({"op": "subscribe", "filter": f"device-{i:04d}/+", "ref": i})
            assert m["type"] == "subscribed" and m["count"] == i + 1 and "filters" not in m
            sizes.append(size)
        assert max(sizes) < 150  # the reply no longer repeats every filter held
        m, _ = await ask({"op": "subscribe", "filter": "one-more/#", "ref": "x"})
        assert m["type"] == "error" and m["error"] == "too_many_filters", m
        m, _ = await ask({"op": "unsubscribe", "filter": "device-0000/+", "ref": "y"})
        assert m["type"] == "unsubscribed" and m["count"] == cap - 1
        m, _ = await ask({"op": "subscribe", "filter": "one-more/#", "ref": "z"})
        assert m["type"] == "subscribed" and m["count"] == cap
