"""GET /api/v1/stream: Server-Sent Events.

Query: `filter=` (repeatable) over "<device>/<stream>" with MQTT wildcards, or
`device=` and/or `stream=` (each may be '+'); default every reading. Each
reading is `id: N` / `event: reading` / `data: {json}`. Resume with the
Last-Event-ID header (or `?last_event_id=`): the ids are journal sequence
numbers, so this works across gateway restarts; missed events come first, in
id order, none twice; if some are gone from the journal (retention) an
`event: gap` says how many and where the stream resumes. A client too slow
for the live stream is served from the journal, so it loses nothing the
journal still holds. A comment line is sent every [http] heartbeat seconds."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from edgewire.gateway.http.access import PRINCIPAL
from edgewire.gateway.http.common import ACCESS, GATEWAY, check_filter, error, live_refusal
from edgewire.gateway.hub import HubFull

log = logging.getLogger("edgewire.gateway.http.sse")

MAX_EVENTS_PER_WRITE = 5000


def filters_from_query(request: web.Request, max_filters: int) -> list[str]:
    filters = request.query.getall("filter", [])
    device = request.query.get("device")
    stream = request.query.get("stream")
    if device is not None or stream is not None:
        filters.append(f"{device or '+'}/{stream or '#'}")
    if not filters:
        filters = ["#"]
    if len(filters) > max_filters:
        raise ValueError(f"{len(filters)} filters: at most {max_filters} per client ([http] max_filters)")
    for f in filters:
        check_filter(f)
    return list(dict.fromkeys(filters))


def parse_last_id(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    # ASCII digits only: str.isdigit() also takes other scripts' digits ('١٢٣')
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise ValueError(f"Last-Event-ID {raw[:40]!r} is not an event id (ASCII digits)")
    return int(raw)


async def stream(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    try:
        filters = filters_from_query(request, gw.config.http.max_filters)
        after = parse_last_id(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"))
    except ValueError as e:
        return error(400, "bad_request", str(e))
    hub = gw.core.hub
    peer = request.remote or ""
    refusal = live_refusal(gw, peer)
    if refusal is not None:
        return error(503, "busy", refusal)
    try:
        sub = hub.open(filters, after=after, kind="sse", peer=peer)
    except HubFull as e:
        return error(503, "busy", str(e))
    forget = request.app[ACCESS].track(request[PRINCIPAL], lambda: hub.close(sub))  # revoked: the stream ends
    heartbeat = gw.config.http.heartbeat
    write_timeout = gw.config.http.write_timeout
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    async def write(data: bytes) -> None:
        # a client that stops reading (or vanished) is cut after write_timeout
        async with asyncio.timeout(write_timeout):
            await resp.write(data)

    try:
        await resp.prepare(request)
        await write(f"retry: 2000\n: edgewire stream, last id {hub.last_id}\n\n".encode())
        while not sub.closed:
            if not await sub.wait(heartbeat):
                await write(b": heartbeat\n\n")
                continue
            events = await sub.next(MAX_EVENTS_PER_WRITE)
            parts: list[str] = []
            gap = sub.take_gap()
            if gap is not None:
                parts.append(f"event: gap\ndata: {gap.json}\n\n")
            for ev in events:
                parts.append(f"id: {ev.id}\nevent: reading\ndata: {ev.json}\n\n")
            if parts:
                await write("".join(parts).encode())
    except ConnectionError:
        pass  # the client left
    except TimeoutError:
        log.info("SSE client %s read nothing for %gs: closed", peer, write_timeout)
        if request.transport is not None:
            request.transport.abort()
    finally:
        forget()
        hub.close(sub)
    return resp
