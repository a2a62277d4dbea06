"""REST: devices, commands, health and stats."""
from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

from edgewire import wire
from edgewire.gateway.command_call import call_command
from edgewire.gateway.errors import CommandRejected
from edgewire.gateway.http.common import GATEWAY, BadJson, error, json_response, loads

routes = web.RouteTableDef()


@routes.get("/api/v1/devices")
async def devices(request: web.Request) -> web.Response:
    reg = request.app[GATEWAY].core.registry
    return json_response({"devices": [d.summary() for d in sorted(reg.devices.values(), key=lambda d: d.id)]})


@routes.get("/api/v1/devices/{device}")
async def device(request: web.Request) -> web.Response:
    device_id = request.match_info["device"]
    dev = request.app[GATEWAY].core.registry.get(device_id)
    if dev is None:
        return error(404, "unknown_device", f"no device {device_id[:80]!r} has been seen")
    return json_response(dev.detail())


def _queue(request: web.Request) -> bool:
    raw = request.query.get("queue", "false").lower()
    if raw not in ("true", "false", "1", "0", "yes", "no", ""):
        raise CommandRejected(f"queue {raw[:40]!r} is not true or false")
    return raw in ("true", "1", "yes")


def _timeout(request: web.Request) -> float | None:
    raw = request.query.get("timeout")
    if raw is None:
        return None
    try:
        t = float(raw)
    except ValueError:
        raise CommandRejected(f"timeout {raw[:40]!r} is not a number of seconds") from None
    if not math.isfinite(t):
        raise CommandRejected(f"timeout {raw[:40]!r} is not a number of seconds")
    return t


@routes.post("/api/v1/devices/{device}/commands/{name}")
async def command(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    device_id = request.match_info["device"]
    name = request.match_info["name"]
    try:
        timeout = _timeout(request)
        queue = _queue(request)
        try:
            async with asyncio.timeout(gw.config.http.request_timeout):  # a body that trickles in
                raw = await request.read()
        except TimeoutError:
            return error(408, "request_timeout", f"the body did not arrive within "
                         f"{gw.config.http.request_timeout:g} s ([http] request_timeout); nothing was sent")
        args: Any = None
        if raw.strip():
            try:
                args = loads(raw)
            except BadJson as e:
                raise CommandRejected(f"{e}; nothing was sent") from None
    except CommandRejected as e:
        return error(400, "bad_request", str(e))
    # the outcomes are shared with the other command fronts (gateway/command_call.py)
    status, body = await call_command(gw.core, device_id, name, args, timeout=timeout, queue=queue)
    return json_response(body, status=status)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    ok, body = request.app[GATEWAY].health()
    return json_response(body, status=200 if ok else 503)


@routes.get("/api/v1/sinks")
async def sinks(request: web.Request) -> web.Response:
    """Each sink's state, cursor, lag (ids and seconds), last error and counters."""
    return json_response({"sinks": [s.stats() for s in request.app[GATEWAY].sinks.values()]})


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[GATEWAY].stats())


def valid_device(device_id: str) -> bool:
    return bool(wire.valid_id(device_id))
