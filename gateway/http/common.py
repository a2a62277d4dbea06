"""What the HTTP handlers need from the gateway, JSON replies that are always
valid JSON, and the checks REST, SSE and WebSocket share."""
from __future__ import annotations

import json
import math
from typing import Any, Protocol

from aiohttp import web

from edgewire import wire
from edgewire.gateway.config import GatewayConfig
from edgewire.gateway.core import Core
from edgewire.gateway.hub import valid_filter


class GatewayView(Protocol):
    @property
    def config(self) -> GatewayConfig: ...

    @property
    def core(self) -> Core: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...


GATEWAY: web.AppKey[GatewayView] = web.AppKey("gateway")
ACCESS: web.AppKey[Any] = web.AppKey("access")  # the server's http.access.Access


# ---------------------------------------------------------------- JSON out

def _finite(obj: Any, depth: int = 0) -> Any:
    """A copy with NaN/Infinity as null and what JSON cannot hold as text."""
    if depth > 64:
        return "<nested too deeply>"
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else repr(k): _finite(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, depth + 1) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    return repr(obj)


def dumps(obj: Any) -> str:
    """json.dumps that never emits NaN/Infinity (invalid JSON): non-finite
    floats become null, as in every event (docs/api.md)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(_finite(obj), allow_nan=False)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=dumps)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    body.update(extra)
    return json_response(body, status=status)


# ---------------------------------------------------------------- JSON in

MAX_DEPTH = 32
"""Deepest nesting accepted in a REST body or WebSocket message."""


class BadJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise BadJson(f"{name} is not a JSON number")


def loads(text: str | bytes, what: str = "body") -> Any:
    """Strict JSON: no NaN/Infinity, nothing non-finite (1e999), at most
    MAX_DEPTH levels of nesting. Raises BadJson with a message for the client."""
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise BadJson(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except BadJson as e:
        raise BadJson(f"{what} is not valid JSON: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadJson(f"{what} is not JSON: {e}") from None
    check_value(obj, what)
    return obj


def check_value(obj: Any, what: str) -> None:
    """Reject nesting deeper than MAX_DEPTH and non-finite numbers, without
    recursion (so any depth is refused cleanly)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                raise BadJson(f"{what} holds a number that is not finite ({v!r}); JSON numbers must be finite")
        elif isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadJson(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)


# ---------------------------------------------------------------- filters

_SEGMENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")

FILTER_HELP = "use <device>/<stream> with MQTT wildcards, e.g. 'dev-01/#', '+/temperature' or '#'"


def check_filter(flt: object) -> str:
    """A live filter that can match something, or ValueError saying why not.
    Subjects are '<device>/<stream>' (two levels at least), so '+' alone or a
    bare device id can never match and are refused rather than left silent."""
    if not isinstance(flt, str):
        raise ValueError(f"filter {flt!r} is not a string; {FILTER_HELP}")
    shown = repr(flt[:140])
    if not valid_filter(flt):
        raise ValueError(f"filter {shown} is invalid: {FILTER_HELP}")
    if flt == "#":
        return flt
    parts = flt.split("/")
    if len(parts) < 2:
        raise ValueError(f"filter {shown} can never match: readings are '<device>/<stream>', so a filter needs "
                         f"a stream level too (e.g. '{flt}/#')")
    device, streams = parts[0], parts[1:]
    if device not in ("+", "#") and not wire.valid_id(device):
        raise ValueError(f"filter {shown} can never match: {device[:80]!r} is not a device id "
                         "(1-64 of A-Z a-z 0-9 _ -)")
    for p in streams:
        if p not in ("+", "#") and not set(p) <= _SEGMENT:
            raise ValueError(f"filter {shown} can never match: stream level {p[:80]!r} has characters no "
                             "stream name has (A-Z a-z 0-9 _ - .)")
    if "+" not in streams and "#" not in streams and not wire.valid_stream("/".join(streams)):
        raise ValueError(f"filter {shown} can never match: {'/'.join(streams)[:80]!r} is not a stream name")
    return flt


# ---------------------------------------------------------------- live clients

def live_refusal(gw: GatewayView, peer: str) -> str | None:
    """Why a new SSE/WebSocket client from `peer` may not open, or None.
    One address holds at most [http] max_live_per_peer live clients, and the
    last [http] live_reserve slots of [hub] max_clients are kept for addresses
    that hold none yet, so one class of client (or one host) cannot take every
    slot from the dashboard."""
    cfg = gw.config.http
    hub = gw.core.hub
    subs = hub.subscribers.values()
    mine = sum(1 for s in subs if s.peer == peer)
    if mine >= cfg.max_live_per_peer:
        return (f"{mine} live clients from {peer} already ([http] max_live_per_peer); "
                "close one or use filters on one connection")
    free = hub.max_clients - len(hub.subscribers)
    if mine and free <= cfg.live_reserve:
        return (f"only {free} live-client slots left, kept for addresses that hold none "
                "([http] live_reserve, [hub] max_clients)")
    return None
