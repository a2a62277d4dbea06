"""Live delivery under stress: a stalled SSE client, SSE resume, a broker
restart under the gateway."""
from __future__ import annotations

import asyncio
import dataclasses
import socket

import aiohttp

from edgewire import wire
from edgewire.gateway.config import HubConfig
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import (Publisher, gateway_config, read_readings, read_readings_fast, sse_events,
                                    wait_for)
from tests.support.broker import Mosquitto


def burst(publisher: Publisher, device: str, first: int, n: int, per_msg: int = 1, qos: int = 1) -> None:
    for s in range(first, first + n):
        if per_msg == 1:
            readings = [["t", s, s]]
        else:
            readings = [[f"s{i}", f"{s}-{i}-" + "x" * 200, s] for i in range(per_msg)]
        publisher.telemetry(device, 1, s, readings, qos=qos)


async def test_stalled_sse_client_does_not_slow_others(burst_broker: Mosquitto, http: aiohttp.ClientSession) -> None:
    cfg = gateway_config(burst_broker, hub=HubConfig(client_queue=1000))
    publisher = Publisher(burst_broker.port)
    async with Gateway(cfg) as gw:
        await gw.mqtt.wait_connected(5)  # type: ignore[union-attr]
        port = gw.http_port
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(f"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        try:
            await wait_for(lambda: any(s.kind == "sse" for s in gw.hub.subscribers.values()), what="stalled client")
            async with http.get(gw.http_url + "/api/v1/stream") as healthy:
                # 1200 messages of 16 readings with 200-character values: ~7 MB of SSE,
                # more than the kernel buffers between the gateway and the stalled socket
                n_msgs, per = 1200, 16
                t0 = asyncio.get_running_loop().time()
                pub = asyncio.create_task(asyncio.to_thread(burst, publisher, "dev-load", 1, n_msgs, per))
                got = await read_readings_fast(healthy, n_msgs * per, timeout=30)
                await pub
                elapsed = asyncio.get_running_loop().time() - t0
            assert [e["id"] for e in got] == list(range(1, n_msgs * per + 1))
            assert elapsed < 20
            stats = await (await http.get(gw.http_url + "/api/v1/stats")).json()
            sse_clients = [c for c in stats["hub"]["clients"] if c["kind"] == "sse"]
            assert len(sse_clients) == 1  # the healthy one has gone, the stalled one stays
            # its queue overflowed: it went back to reading the journal, holding nothing in memory
            # and losing nothing (it resumes from its cursor when it reads again)
            stalled_stats = sse_clients[0]
            assert stalled_stats["overflows"] >= 1 and not stalled_stats["live"]
            assert stalled_stats["queued"] <= 1000 and stalled_stats["behind"] > 0
            assert stalled_stats["dropped"] == 0 and stats["hub"]["dropped_total"] == 0
        finally:
            stalled.close()
            publisher.close()


async def test_sse_resume_with_last_event_id(gateway: Gateway, publisher: Publisher,
                                             http: aiohttp.ClientSession) -> None:
    url = gateway.http_url + "/api/v1/stream?device=dev-res"
    async with http.get(url) as first:
        await asyncio.to_thread(burst, publisher, "dev-res", 1, 5)
        got = await read_readings(first, 5)
    last = got[-1]["id"]
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
    await asyncio.to_thread(burst, publisher, "dev-res", 6, 5)  # while nobody listens
    await wait_for(lambda: gateway.hub.last_id == 10, what="10 events")
    async with http.get(url, headers={"Last-Event-ID": str(last)}) as second:
        await asyncio.to_thread(burst, publisher, "dev-res", 11, 2)
        resumed = await read_readings(second, 7)
    assert [e["seq"] for e in resumed] == list(range(6, 13))
    ids = [e["id"] for e in got + resumed]
    assert ids == sorted(set(ids))  # none twice, none missing


async def test_sse_resume_older_than_retention_gets_a_gap(burst_broker: Mosquitto,
                                                          http: aiohttp.ClientSession) -> None:
    # A 1 MiB journal (the smallest allowed) and a small ring, so that the resume point
    # is gone from both: 400 messages of 16 readings of 200 characters are ~2 MB.
    cfg = gateway_config(burst_broker, hub=HubConfig(ring=5))
    cfg = cfg.replace(journal=dataclasses.replace(cfg.journal, max_bytes=1 << 20, retention_interval=0.05))
    publisher = Publisher(burst_broker.port)
    async with Gateway(cfg) as gw:
        await gw.mqtt.wait_connected(5)  # type: ignore[union-attr]
        await asyncio.to_thread(burst, publisher, "dev-ring", 1, 400, 16)
        await wait_for(lambda: gw.hub.last_id == 400 * 16, timeout=30, what="6400 events")
        await wait_for(lambda: gw.journal.first_id > 3, timeout=10, what="retention to remove the oldest")
        first = gw.journal.first_id
        async with http.get(gw.http_url + "/api/v1/stream", headers={"Last-Event-ID": "2"}) as r:
            events = []
            async with asyncio.timeout(10):
                async for ev in sse_events(r):
                    if "event" not in ev:
                        continue  # the "retry:" preamble
                    events.append(ev)
                    if len(events) == 6:
                        break
        stats = gw.journal.stats()
    publisher.close()
    assert events[0]["event"] == "gap"
    assert events[0].data_json == {"after": 2, "first_available": first, "missed": first - 3, "reason": "retention"}
    assert [int(e["id"]) for e in events[1:]] == list(range(first, first + 5))
    assert stats["removed_ids"] == stats["first_id"] - 1 and stats["removed_by_size"] > 0


async def test_bad_stream_requests(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    for q, hdr in [("?filter=a/%23/b", {}), ("?filter=", {}), ("", {"Last-Event-ID": "x1"})]:
        r = await http.get(gateway.http_url + "/api/v1/stream" + q, headers=hdr)
        assert r.status == 400, q
        assert (await r.json())["error"] == "bad_request"


async def test_broker_restart_reconnects_and_resumes(broker: Mosquitto, gateway: Gateway,
                                                     http: aiohttp.ClientSession) -> None:
    mqtt = gateway.mqtt
    assert mqtt is not None
    async with http.get(gateway.http_url + "/api/v1/stream?filter=%2B/t") as sse:
        p = Publisher(broker.port)
        try:
            await asyncio.to_thread(p.pub, wire.topic("dev-rs", "telemetry"), wire.encode_telemetry("dev-rs", 1, 1, 0, [["t", 1, 0]]))
            assert [e["value"] for e in await read_readings(sse, 1)] == [1]
        finally:
            p.close()
        # Down, and held down until the health check has been read: 503.
        broker.kill()
        await wait_for(lambda: mqtt.stats.disconnects >= 1, what="the gateway to notice")
        health = await http.get(gateway.http_url + "/healthz")
        assert health.status == 503
        down = await health.json()
        assert down["status"] == "degraded" and down["mqtt"]["connected"] is False
        broker.start()
        await wait_for(lambda: mqtt.connected, timeout=10, what="reconnect")
        assert mqtt.stats.connects == 2
        p = Publisher(broker.port)
        try:
            await asyncio.to_thread(p.pub, wire.topic("dev-rs", "telemetry"), wire.encode_telemetry("dev-rs", 1, 2, 0, [["t", 2, 0]]))
            assert [e["value"] for e in await read_readings(sse, 1)] == [2]  # resubscribed
        finally:
            p.close()
    up = await http.get(gateway.http_url + "/healthz")
    assert up.status == 200
    body = await up.json()
    assert body["status"] == "ok"
    assert body["mqtt"]["connected"] is True and body["mqtt"]["disconnects"] == 1
