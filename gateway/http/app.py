"""The aiohttp application: routes, dashboard files, and the server
(`HttpServer`: runner, guarded listening socket, throttled error logs)."""
from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from edgewire.gateway.http import api, sse, ws
from edgewire.gateway.http.access import Access, ssl_context
from edgewire.gateway.http.common import ACCESS, GATEWAY, GatewayView, error
from edgewire.gateway.http.guard import ConnectionGuard, GuardedSite
from edgewire.gateway.refusals import ThrottleFilter, throttled_exception_handler

log = logging.getLogger("edgewire.gateway.http")

# aiohttp's per-request error log (a traceback for every malformed request)
# goes through this logger, rate-limited by kind.
SERVER_LOG = logging.getLogger("edgewire.gateway.http.server")
_SERVER_FILTER = ThrottleFilter(interval=60.0)
SERVER_LOG.addFilter(_SERVER_FILTER)

# Descriptors kept below the file limit: the MQTT link, journal, logs and the
# like (64), refused connections reading their 503 (guard.MAX_LINGERING, 64),
# and the accept() bursts whose evictions have not closed yet: asyncio accepts
# up to guard.ACCEPT_BACKLOG (128) at once, before any can be turned away, and
# under a flood about three bursts are on their way (seen: 256 was not enough).
FD_HEADROOM = 512

STATIC = Path(__file__).parent / "static"


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Unknown routes and wrong methods answer in JSON under /api/."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if request.path.startswith("/api/") and e.status >= 400:
            return error(e.status, "not_found" if e.status == 404 else "http_error",
                         f"{request.method} {request.path[:200]}: {e.reason}")
        raise


async def _metrics(request: web.Request) -> web.StreamResponse:
    from edgewire.gateway.metrics import CONTENT_TYPE, render

    return web.Response(body=render(request.app[GATEWAY]), headers={"Content-Type": CONTENT_TYPE})


def build_app(gw: GatewayView, guard: ConnectionGuard | None = None, access: Access | None = None) -> web.Application:
    access = access or Access(gw.config.http)
    middlewares: list[Any] = [access.middleware, _json_errors]
    if guard is not None:
        middlewares.insert(0, guard.middleware)
    app = web.Application(middlewares=middlewares, client_max_size=256 * 1024)
    app[GATEWAY] = gw
    app[ACCESS] = access
    app.on_response_prepare.append(access.on_prepare)
    app.add_routes(api.routes)
    app.router.add_post("/api/v1/login", access.login)
    app.router.add_post("/api/v1/logout", access.logout)
    app.router.add_get("/api/v1/whoami", access.whoami)
    app.router.add_post("/api/v1/admin/reload", access.reload_route)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/stream", sse.stream)
    app.router.add_get("/api/v1/ws", ws.websocket)
    if gw.config.http.dashboard:
        app.router.add_get("/", _index)
        app.router.add_static("/static/", STATIC, append_version=False)
    return app


def connection_limit(configured: int) -> int:
    """[http] max_connections, or from the file limit when 0; never more than
    the file limit allows after FD_HEADROOM."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = 1_000_000 if soft == resource.RLIM_INFINITY else max(16, soft - FD_HEADROOM)
    if configured == 0:
        return min(room, 4096)
    if configured > room:
        log.warning("[http] max_connections %d exceeds what the file limit (%d) allows; using %d",
                    configured, soft, room)
        return room
    return configured


class HttpServer:
    """The REST/SSE/WebSocket server of one gateway: `await start()`, `port`,
    `stats()`, `await stop()`."""

    def __init__(self, gw: GatewayView, *, log_interval: float) -> None:
        cfg = gw.config.http
        self._gw = gw
        self._log_interval = log_interval
        self.guard = ConnectionGuard(max_connections=connection_limit(cfg.max_connections),
                                     max_per_peer=cfg.max_connections_per_peer, idle_timeout=cfg.idle_timeout,
                                     request_timeout=cfg.request_timeout, write_timeout=cfg.write_timeout)
        self.access = Access(cfg)  # reads the token file: TokenFileError before anything is bound
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._old_handler: Any = None
        self.port = 0

    async def start(self) -> None:
        cfg = self._gw.config.http
        _SERVER_FILTER.throttle.interval = self._log_interval
        loop = self._loop = asyncio.get_running_loop()
        self._old_handler = loop.get_exception_handler()
        loop.set_exception_handler(throttled_exception_handler(self._log_interval))
        self._runner = web.AppRunner(build_app(self._gw, self.guard, self.access), access_log=None,
                                     shutdown_timeout=1.0, handle_signals=False, handler_cancellation=True, logger=SERVER_LOG,
                                     # the guard closes idle connections (and counts them); aiohttp's
                                     # own keep-alive timer is only the backstop
                                     keepalive_timeout=2 * cfg.idle_timeout + cfg.request_timeout)
        await self._runner.setup()
        site = GuardedSite(self._runner, cfg.host, cfg.port, self.guard, ssl_context=ssl_context(cfg))
        await site.start()
        self.port = site.port
        log.info("HTTP: at most %d connections, %d per address", self.guard.max_connections,
                 self.guard.max_per_peer)
        if self.access.enabled:
            log.info("HTTP: authentication on, %d tokens from %s", len(self.access.store.records), cfg.token_file)
        else:
            log.info("HTTP: authentication off (no [http] token_file): anyone on this machine may read and "
                     "command; the gateway listens on %s only", cfg.host)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.guard.stop()
        if self._loop is not None:
            self._loop.set_exception_handler(self._old_handler)
            self._loop = None

    def reload(self) -> bool:
        """Read the token file again (SIGHUP)."""
        return self.access.reload()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self.guard.stats()
        out["log_suppressed"] = _SERVER_FILTER.suppressed
        out["auth"] = self.access.stats()
        return out
