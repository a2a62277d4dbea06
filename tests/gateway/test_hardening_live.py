"""Issue #6 item 6: one client class (or one host) cannot starve the others.
Idle SSE streams are limited per address, and the last live-client slots are
kept for addresses that hold none, so the dashboard and health checks still
work."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import websockets

from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, read_readings

REQUEST = b"GET /api/v1/stream HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n"


async def _idle_sse(port: int, source: str) -> tuple[int, asyncio.StreamWriter]:
    """An SSE client that never reads past the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(REQUEST)
    line = await asyncio.wait_for(reader.readline(), 10)
    return (int(line.split()[1]) if line else 0), writer  # 0: cut at once (a flood of refusals)


async def _dashboard_works(gw: Gateway, http: aiohttp.ClientSession, publisher: Publisher) -> None:
    base = gw.http_url
    assert (await http.get(base + "/")).status == 200
    assert (await http.get(base + "/api/v1/devices")).status == 200
    assert (await http.get(base + "/healthz")).status == 200
    async with http.get(base + "/api/v1/stream?device=dash-dev") as sse:
        assert sse.status == 200, await sse.text()
        await asyncio.to_thread(publisher.telemetry, "dash-dev", 1, 1, [["t", 7, 0]])
        assert [e["value"] for e in await read_readings(sse, 1)] == [7]
    async with websockets.connect(base.replace("http", "ws") + "/api/v1/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"


async def test_idle_sse_from_one_address_cannot_take_every_slot(gateway: Gateway, http: aiohttp.ClientSession,
                                                                publisher: Publisher) -> None:
    writers = []
    try:
        statuses = []
        for _ in range(gateway.config.hub.max_clients):  # the 256 idle SSE connections
            status, w = await _idle_sse(gateway.http_port, "127.0.0.2")
            statuses.append(status)
            writers.append(w)
        per_peer = gateway.config.http.max_live_per_peer
        # the rest are refused: 503 from the live-client limit, or from the per-address
        # connection limit (item 4), or cut at once when too many refusals linger
        assert statuses.count(200) == per_peer
        assert statuses.count(503) + statuses.count(0) == len(statuses) - per_peer
        assert len(gateway.hub.subscribers) == per_peer
        await _dashboard_works(gateway, http, publisher)
    finally:
        for w in writers:
            w.close()


async def test_a_reserve_is_kept_for_addresses_that_hold_none(gateway: Gateway, http: aiohttp.ClientSession,
                                                              publisher: Publisher) -> None:
    cfg = gateway.config
    writers = []
    try:
        admitted = 0
        for host in range(3, 3 + cfg.hub.max_clients // cfg.http.max_live_per_peer):  # many hosts, each at its limit
            for _ in range(cfg.http.max_live_per_peer):
                status, w = await _idle_sse(gateway.http_port, f"127.0.0.{host}")
                writers.append(w)
                admitted += status == 200
        assert admitted == cfg.hub.max_clients - cfg.http.live_reserve
        # a newcomer still gets in, in the reserve
        await _dashboard_works(gateway, http, publisher)
        status, w = await _idle_sse(gateway.http_port, "127.0.0.99")
        writers.append(w)
        assert status == 200
    finally:
        for w in writers:
            w.close()
