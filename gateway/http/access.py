"""Who may do what over HTTP: every request passes `Access.middleware`
(docs/api.md "Authentication"; decision D20).

In order, for each request:
1. CORS preflight (OPTIONS) is answered here: allowed only for an origin in
   [http] cors_origins; closed otherwise.
2. With authentication off (no [http] token_file, loopback only), the Host
   header must be an address or a name without a dot (localhost, the Pi's
   own name): a page that rebinds its own DNS name to 127.0.0.1 gets 403,
   not the API.
3. A state-changing request (any method but GET/HEAD) and a WebSocket
   handshake carrying an `Origin` (browsers always send it there) must come
   from the gateway's own origin or one in cors_origins, whatever the
   authentication: a page on another origin can neither POST a command (also
   not a `no-cors` text/plain one) nor open the WebSocket. Without Origin,
   `Sec-Fetch-Site` must not say cross-site or same-site.
4. With authentication on: a Bearer token (Authorization header) or the
   session cookie from POST /api/v1/login, checked against the token file;
   none: 401; a scope too low: 403; a wrong one: 401, counted per address,
   and after [http] auth_max_failures within auth_failure_window the address
   gets 429 until the window ends. A cookie-authenticated state change (or
   WebSocket) must carry the gateway's own Origin (or Sec-Fetch-Site
   same-origin): a cookie alone never commands.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edgewire.gateway.auth import ANONYMOUS, PUBLIC, AuthFailure, FailureLimiter, Principal, TokenFileError, TokenStore
from edgewire.gateway.config import HttpConfig, is_loopback
from edgewire.gateway.http.common import BadJson, error, json_response, loads

log = logging.getLogger("edgewire.gateway.http.auth")

COOKIE = "edgewire_session"
SAFE = frozenset(("GET", "HEAD"))
# aiohttp 3.13+ wants typed request keys; a plain string on older ones
PRINCIPAL: Any = web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "edgewire.principal"
_PUBLIC = frozenset(("/", "/api/v1/login", "/api/v1/logout"))
_PREFLIGHT_HEADERS = "Authorization, Content-Type, Last-Event-ID"


def _host_name(host: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1'; '[::1]:80' -> '::1'."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _local_host(host: str) -> bool:
    """Whether a Host header may reach a gateway without authentication: an
    IP address, or a name with no dot (`localhost`, the Pi's own name from
    /etc/hosts) or under `.localhost`. DNS rebinding, a page of another site
    whose name is made to resolve to 127.0.0.1, always comes with a dotted
    public name (evil.example) and is refused."""
    name = _host_name(host).rstrip(".").lower()
    if is_loopback(name) or "." not in name or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Access:
    """The token store, the failure limiter and the rules, for one server."""

    def __init__(self, cfg: HttpConfig) -> None:
        self.cfg = cfg
        self.enabled = bool(cfg.token_file)
        self.store = TokenStore.load(cfg.token_file) if self.enabled else TokenStore()
        self.limiter = FailureLimiter(max_failures=cfg.auth_max_failures, window=cfg.auth_failure_window)
        self.origins = frozenset(cfg.cors_origins)
        self.tls = bool(cfg.cert_file)
        self.refused = {"unauthorized": 0, "forbidden": 0, "cross_origin": 0, "bad_host": 0, "rate_limited": 0}
        self.reloads = 0
        self.reload_failures = 0
        # token id -> closers of the live streams (SSE, WebSocket) it opened: a revoked token's end at the reload
        self._streams: dict[str, dict[int, Callable[[], None]]] = {}
        self._next_stream = 0

    # ------------------------------------------------------------ the token file
    def reload(self) -> bool:
        """Read the token file again (SIGHUP); a file that cannot be read keeps
        the tokens in force, and says why."""
        if not self.enabled:
            return True
        try:
            self.store = TokenStore.load(self.cfg.token_file)
        except TokenFileError as e:
            self.reload_failures += 1
            log.error("token file not reloaded, the previous %d tokens stay in force: %s",
                      len(self.store.records), e)
            return False
        self.reloads += 1
        log.info("token file %s reloaded: %d tokens", self.cfg.token_file, len(self.store.records))
        for token_id in [t for t in self._streams if t not in self.store.records]:
            closers = self._streams.pop(token_id)
            log.info("token %s was revoked: closing its %d live streams", token_id, len(closers))
            for close in closers.values():
                close()
        return True

    def track(self, who: Principal, close: Callable[[], None]) -> Callable[[], None]:
        """Remember a live stream opened with `who`'s token, to be closed if a
        reload revokes the token; returns the function that forgets it."""
        if who.via == "none":
            return lambda: None
        self._next_stream += 1
        key = self._next_stream
        self._streams.setdefault(who.id, {})[key] = close

        def forget() -> None:
            mine = self._streams.get(who.id)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self._streams[who.id]
        return forget

    def current(self, who: Principal) -> Principal | None:
        return who if not self.enabled else self.store.current(who)

    # ------------------------------------------------------------ rules
    def needed_scope(self, request: web.Request) -> str | None:
        path = request.path
        if path in _PUBLIC or path.startswith("/static/"):
            return None  # the page, its script and the login: no data
        if path == "/metrics":
            return "read" if self.cfg.metrics_auth else None
        if path.startswith("/api/v1/admin/"):
            return "admin"
        return "read" if request.method in SAFE else "command"

    def own_origin(self, request: web.Request) -> str:
        return f"{'https' if self.tls else 'http'}://{request.host}".lower()

    def _cross_origin(self, request: web.Request, *, own_only: bool) -> str | None:
        """Why this request is not from the gateway's own page (or an allowed
        origin, unless own_only), or None."""
        origin = request.headers.get("Origin")
        if origin is not None:
            o = origin.lower()
            if o == self.own_origin(request) or (not own_only and o in self.origins):
                return None
            return f"Origin {origin[:100]!r} is not this gateway's ({self.own_origin(request)})" + (
                "" if own_only else " nor in [http] cors_origins")
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site {site[:20]!r}: the request comes from another site's page"
        return None

    def _refuse(self, kind: str, status: int, code: str, message: str, **headers: str) -> web.Response:
        self.refused[kind] += 1
        resp = error(status, code, message)
        resp.headers.update(headers)
        return resp

    def authenticate(self, request: web.Request) -> Principal | None:
        """The request's principal; None when it carries no credential;
        AuthFailure when it carries a wrong one."""
        header = request.headers.get("Authorization")
        if header is not None:
            kind, _, token = header.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise AuthFailure("Authorization header is not 'Bearer <token>'")
            return self.store.verify(token.strip())
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return self.store.verify_session(cookie)
        return None

    def _failed(self, request: web.Request, why: str) -> web.Response:
        peer = request.remote or ""
        n = self.limiter.fail(peer)
        log.warning("HTTP authentication failed from %s (%s %s): %s [%d in %gs]", peer, request.method,
                    request.path[:100], why, n, self.cfg.auth_failure_window)
        if n == self.cfg.auth_max_failures:
            log.warning("HTTP: %s refused for up to %gs after %d failed attempts ([http] auth_max_failures)",
                        peer, self.cfg.auth_failure_window, n)
        return self._refuse("unauthorized", 401, "unauthorized", f"authentication failed: {why}",
                            **{"WWW-Authenticate": 'Bearer realm="edgewire", error="invalid_token"'})

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return self._preflight(request)
        if not self.enabled and not _local_host(request.host):
            return self._refuse("bad_host", 403, "bad_host",
                                f"Host {request.host[:100]!r}: with authentication off the gateway answers only "
                                "to addresses and to names without a dot (localhost, this host's name): a dotted "
                                "name could be another site's, rebound to this machine (set [http] token_file to "
                                "serve such names)")
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        changes = request.method not in SAFE or is_ws
        if changes:
            why = self._cross_origin(request, own_only=False)
            if why is not None:
                log.info("HTTP: refused a cross-origin %s %s from %s: %s", request.method, request.path[:100],
                         request.remote, why)
                return self._refuse("cross_origin", 403, "cross_origin", f"{why}; nothing was done")
        need = self.needed_scope(request)
        who: Principal | None = ANONYMOUS if not self.enabled else PUBLIC
        if self.enabled and need is not None:
            peer = request.remote or ""
            wait = self.limiter.retry_after(peer)
            if wait:
                return self._refuse("rate_limited", 429, "too_many_failures",
                                    f"too many failed authentication attempts from {peer}; try again in "
                                    f"{wait:.0f} s", **{"Retry-After": str(max(1, round(wait)))})
            try:
                who = self.authenticate(request)
            except AuthFailure as e:
                return self._failed(request, str(e))
            if who is None:
                return self._refuse("unauthorized", 401, "unauthorized",
                                    f"{request.method} {request.path[:100]} needs a token with scope {need!r}: "
                                    "send 'Authorization: Bearer <token>' (`edgewire token create`), or log in "
                                    "on the dashboard", **{"WWW-Authenticate": 'Bearer realm="edgewire"'})
            self.limiter.succeed(peer)
            if who.via == "cookie" and changes:
                why = self._cross_origin(request, own_only=True)
                if why is None and "Origin" not in request.headers and "Sec-Fetch-Site" not in request.headers:
                    why = "a request authenticated by the session cookie must say where it comes from (Origin)"
                if why is not None:
                    return self._refuse("cross_origin", 403, "cross_origin", f"{why}; nothing was done")
            if not who.allows(need):
                return self._refuse("forbidden", 403, "forbidden",
                                    f"token {who.name!r} has scope {who.scope!r}; {request.method} "
                                    f"{request.path[:100]} needs {need!r}")
        request[PRINCIPAL] = who
        return await handler(request)

    def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if origin.lower() not in self.origins:
            return self._refuse("cross_origin", 403, "cross_origin",
                                f"cross-origin requests from {origin[:100]!r} are not allowed ([http] cors_origins)")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": _PREFLIGHT_HEADERS,
            "Access-Control-Max-Age": "600"})

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers on every response, streams included: CORS for allowed
        origins, and no sniffing, framing or referrers."""
        h = response.headers
        origin = request.headers.get("Origin", "")
        if origin and origin.lower() in self.origins:
            h["Access-Control-Allow-Origin"] = origin
            h.add("Vary", "Origin")
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        if request.path == "/":
            h.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                       "frame-ancestors 'none'")

    # ------------------------------------------------------------ routes
    async def login(self, request: web.Request) -> web.StreamResponse:
        """POST /api/v1/login {"token": "..."} (or Authorization: Bearer):
        sets the session cookie the dashboard and EventSource use."""
        if not self.enabled:
            return json_response({"auth": False, "message": "authentication is off ([http] token_file unset)"})
        peer = request.remote or ""
        wait = self.limiter.retry_after(peer)
        if wait:
            return self._refuse("rate_limited", 429, "too_many_failures",
                                f"too many failed authentication attempts from {peer}; try again in {wait:.0f} s",
                                **{"Retry-After": str(max(1, round(wait)))})
        token = ""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        else:
            try:
                async with asyncio.timeout(self.cfg.request_timeout):  # a body that trickles in
                    raw = await request.read()
                body = loads(raw)
            except TimeoutError:
                return error(408, "request_timeout", f"the body did not arrive within {self.cfg.request_timeout:g} s")
            except BadJson as e:
                return error(400, "bad_request", f"{e}: send {{\"token\": \"ew_...\"}}")
            if not isinstance(body, dict) or not isinstance(body.get("token"), str):
                return error(400, "bad_request", "send {\"token\": \"ew_...\"} or 'Authorization: Bearer <token>'")
            token = body["token"].strip()
        try:
            who = self.store.verify(token)
        except AuthFailure as e:
            return self._failed(request, str(e))
        self.limiter.succeed(peer)
        value, expires = self.store.make_session(who.id, self.cfg.session_lifetime)
        resp = json_response({"auth": True, "id": who.id, "name": who.name, "scope": who.scope, "expires": expires})
        resp.set_cookie(COOKIE, value, max_age=int(self.cfg.session_lifetime), path="/", httponly=True,
                        samesite="Strict", secure=self.tls)
        log.info("HTTP: %s logged in from %s with token %s (%r)", who.scope, peer, who.id, who.name)
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        resp = json_response({"auth": self.enabled, "logged_out": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        who: Principal = request[PRINCIPAL]
        return json_response({"auth": self.enabled, "id": who.id or None, "name": who.name, "scope": who.scope,
                              "via": who.via})

    async def reload_route(self, request: web.Request) -> web.StreamResponse:
        ok = self.reload()
        if not ok:
            return error(409, "reload_failed", "the token file could not be read (see the gateway's log); the "
                         f"previous {len(self.store.records)} tokens stay in force")
        return json_response({"reloaded": True, "tokens": len(self.store.records)})

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "tokens": len(self.store.records), "reloads": self.reloads,
                "reload_failures": self.reload_failures,
                "failures": self.limiter.failures, "refused": dict(self.refused)}


def ssl_context(cfg: HttpConfig) -> ssl.SSLContext | None:
    """The server's TLS context from [http] cert_file and key_file, or None."""
    if not cfg.cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx
