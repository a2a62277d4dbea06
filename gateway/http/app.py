"""The aiohttp application: routes, dashboard files, and the server runner."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from edgewire.gateway.http import api, sse, ws
from edgewire.gateway.http.common import GATEWAY, GatewayView, error

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


def build_app(gw: GatewayView) -> web.Application:
    app = web.Application(middlewares=[_json_errors], client_max_size=256 * 1024)
    app[GATEWAY] = gw
    app.add_routes(api.routes)
    app.router.add_get("/api/v1/stream", sse.stream)
    app.router.add_get("/api/v1/ws", ws.websocket)
    if gw.config.http.dashboard:
        app.router.add_get("/", _index)
        app.router.add_static("/static/", STATIC, append_version=False)
    return app
