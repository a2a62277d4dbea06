"""What the HTTP handlers need from the gateway, and JSON error replies."""
from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from edgewire.gateway.config import GatewayConfig
from edgewire.gateway.core import Core


class GatewayView(Protocol):
    @property
    def config(self) -> GatewayConfig: ...

    @property
    def core(self) -> Core: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...


GATEWAY: web.AppKey[GatewayView] = web.AppKey("gateway")


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    body.update(extra)
    return web.json_response(body, status=status)
