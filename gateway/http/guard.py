"""Connection limits for the HTTP server, so careless or hostile clients cannot
take the descriptors that /healthz and the dashboard need.

Every accepted TCP connection is wrapped before aiohttp sees it:

- at most `max_connections` at once, and `max_per_peer` from one address;
- at either limit an idle connection (no request being handled) is closed
  to make room, the way a proxy reuses idle keep-alive connections: the
  oldest one that never completed a request (opened and silent, or still
  sending its head), else the longest idle kept-alive one, but only once it
  has been idle for KEEPALIVE_GRACE (a connection a client is about to use
  is left alone: closing it under the client's request would lose that
  request). Only when no connection qualifies is the new one refused, with
  a 503 written before closing;
- an idle connection is closed after `idle_timeout`, a request head that has
  not arrived complete after `request_timeout` (slow or stalled clients);
- accepted sockets get TCP keep-alive probes and a TCP user timeout, so a
  peer that vanished without a FIN (half-open) is found within about a
  minute even while a stream is being written to it.

"Busy" is known from `middleware`: a request is being handled from the
moment its head is complete until its handler returns, which for SSE and
WebSocket is the whole stream. Counters are in `stats()`."""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from edgewire.gateway.aio import cancel_and_wait
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("edgewire.gateway.http.guard")

__all__ = ["ConnectionGuard", "GuardedSite"]

KEEPALIVE_GRACE = 1.0  # seconds a kept-alive connection is idle before it may be taken
REFUSAL_LINGER = 1.0   # seconds a refused connection may read our 503 before it is cut
MAX_LINGERING = 64     # refused connections reading their 503 at once; beyond, cut at once
# The listen backlog, which is also how many connections asyncio accepts in one
# go before any of them can be turned away (descriptors over the limit for a
# moment; app.FD_HEADROOM allows for it). A smaller one makes a flood's SYNs
# wait for retries instead, which slows everyone's connects.
ACCEPT_BACKLOG = 128

_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Retry-After: 5\r\nContent-Length: %d\r\n\r\n%s")


def _tune_socket(transport: asyncio.BaseTransport, user_timeout_s: float) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", int(user_timeout_s * 1000))):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, opt, value in opts:
        try:
            sock.setsockopt(level, opt, value)
        except OSError:
            pass  # not a TCP socket, or not this platform: the timeouts still apply


class _Conn(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection and keeps its state."""

    __slots__ = ("guard", "inner", "transport", "peer", "busy", "served", "idle_since", "head_since", "refused")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.busy = 0
        self.served = 0
        self.idle_since = time.monotonic()
        self.head_since: float | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if not self.guard._admit(self):
            self.refused = True
            return
        _tune_socket(transport, self.guard.write_timeout)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy and self.head_since is None:
            self.head_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._forget(self)
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class ConnectionGuard:
    def __init__(self, *, max_connections: int, max_per_peer: int, idle_timeout: float,
                 request_timeout: float, write_timeout: float) -> None:
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self._conns: dict[_Conn, None] = {}             # oldest idle first
        self._peers: dict[str, dict[_Conn, None]] = {}
        self._by_transport: dict[Any, _Conn] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._lingering = 0
        self.accepted = 0
        self.refused = 0
        self.evicted = 0
        self.idle_closed = 0
        self.slow_closed = 0
        self.peak = 0

    # ------------------------------------------------------------ wiring
    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Conn(self, factory())

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        conn = self._by_transport.get(request.transport)
        if conn is None:
            return await handler(request)
        conn.busy += 1
        conn.served += 1
        conn.head_since = None
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            if not conn.busy and conn in self._conns:
                conn.idle_since = time.monotonic()
                self._touch(conn)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="http-guard")

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    # ------------------------------------------------------------ admission
    def _admit(self, conn: _Conn) -> bool:
        mine = self._peers.get(conn.peer)
        if mine is not None and len(mine) >= self.max_per_peer:
            if not self._evict(mine, f"{self.max_per_peer} connections from {conn.peer} ([http] "
                                     "max_connections_per_peer)"):
                return self._refuse(conn, f"{self.max_per_peer} busy connections from {conn.peer} already "
                                          "([http] max_connections_per_peer)")
        if len(self._conns) >= self.max_connections:
            if not self._evict(self._conns, f"{self.max_connections} connections ([http] max_connections)"):
                return self._refuse(conn, f"{self.max_connections} busy connections already "
                                          "([http] max_connections)")
        self._conns[conn] = None
        self._peers.setdefault(conn.peer, {})[conn] = None
        self._by_transport[conn.transport] = conn
        self.accepted += 1
        self.peak = max(self.peak, len(self._conns))
        return True

    def _victim(self, pool: dict[_Conn, None]) -> _Conn | None:
        ripe = time.monotonic() - KEEPALIVE_GRACE
        kept: _Conn | None = None
        for c in pool:  # oldest idle first
            if c.busy or c.idle_since > ripe:
                continue
            if not c.served:
                return c
            if kept is None:
                kept = c
        return kept

    def _evict(self, pool: dict[_Conn, None], why: str) -> bool:
        victim = self._victim(pool)
        if victim is None:
            return False
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 1000 == 0:
            log.warning("HTTP: at %s: closing an idle one to make room (%d so far)", why, self.evicted)
        self._forget(victim)
        victim.close()
        return True

    def _refuse(self, conn: _Conn, why: str) -> bool:
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("HTTP: refused a connection from %s: %s (%d refused so far)", conn.peer, why, self.refused)
        body = ('{"error":"busy","message":"%s"}' % why.replace('"', "'")).encode()
        t = conn.transport
        if t is None:
            return False
        if self._lingering >= MAX_LINGERING:
            t.abort()  # a flood: descriptors matter more than a polite answer
            return False
        # answer, then stop writing and let the client close: closing at once
        # with its request unread would reset the connection and lose the
        # answer; cut it after REFUSAL_LINGER whatever happens
        self._lingering += 1
        t.write(_REFUSAL % (len(body), body))
        if t.can_write_eof():
            t.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, self._cut, t)
        return False

    def _cut(self, t: asyncio.Transport) -> None:
        self._lingering -= 1
        t.abort()

    def _touch(self, conn: _Conn) -> None:
        """Move to the young end: most recently idle last."""
        self._conns.pop(conn, None)
        self._conns[conn] = None
        mine = self._peers.get(conn.peer)
        if mine is not None:
            mine.pop(conn, None)
            mine[conn] = None

    def _forget(self, conn: _Conn) -> None:
        if conn in self._conns:
            del self._conns[conn]
            mine = self._peers.get(conn.peer)
            if mine is not None:
                mine.pop(conn, None)
                if not mine:
                    del self._peers[conn.peer]
            self._by_transport.pop(conn.transport, None)

    # ------------------------------------------------------------ timeouts
    async def _sweep(self) -> None:
        period = min(1.0, max(0.05, min(self.idle_timeout, self.request_timeout) / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    def sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns):
            if conn.busy:
                continue
            if conn.head_since is not None:
                if now - conn.head_since > self.request_timeout:
                    self.slow_closed += 1
                    self._forget(conn)
                    conn.close()
            elif now - conn.idle_since > self.idle_timeout:
                self.idle_closed += 1
                self._forget(conn)
                conn.close()

    def stats(self) -> dict[str, int]:
        return {"open": len(self._conns), "peak": self.peak, "peers": len(self._peers),
                "max": self.max_connections, "accepted": self.accepted, "refused": self.refused,
                "evicted": self.evicted, "idle_closed": self.idle_closed, "slow_closed": self.slow_closed}


class GuardedSite(web.BaseSite):
    """web.TCPSite with every connection going through a ConnectionGuard."""

    __slots__ = ("_host", "_port", "_guard", "_bound")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._guard = guard
        self._bound = port

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._bound}"

    @property
    def port(self) -> int:
        return self._bound

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server), self._host, self._port, reuse_address=True, backlog=ACCEPT_BACKLOG,
            ssl=self._ssl_context)
        self._bound = int(self._server.sockets[0].getsockname()[1])
        self._guard.start()

    async def stop(self) -> None:
        await self._guard.stop()
        await super().stop()
