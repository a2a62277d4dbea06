"""Authentication on every HTTP route, the SSE stream and the WebSocket
(issue #11 item 1): without a token 401, a `read` token cannot command (403),
a `command` token can, `admin` alone reloads; a wrong token is counted,
rate-limited per address and logged without its secret; a revoked token stops
working at the reload (SIGHUP), and the SSE streams and WebSockets it opened
are closed then.
The commands go to a simulated device running the real device SDK."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
import websockets

from edgewire.gateway.auth import revoke_token
from edgewire.gateway.http.app import build_app
from tests.gateway.conftest import read_readings
from tests.security.http_support import Tokens, make_tokens, running, secured_config, sim_device
from tests.support.broker import Mosquitto

# Every route the app serves, with the scope it needs (None: public). The
# first test fails when a route is added without being listed here.
ROUTES = [
    ("GET", "/", None),
    ("GET", "/static/dashboard.js", None),
    ("POST", "/api/v1/login", None),
    ("POST", "/api/v1/logout", None),
    ("GET", "/api/v1/whoami", "read"),
    ("GET", "/api/v1/devices", "read"),
    ("GET", "/api/v1/devices/{device}", "read"),
    ("POST", "/api/v1/devices/{device}/commands/{name}", "command"),
    ("GET", "/healthz", "read"),
    ("GET", "/api/v1/sinks", "read"),
    ("GET", "/api/v1/stats", "read"),
    ("GET", "/metrics", "read"),
    ("POST", "/api/v1/admin/reload", "admin"),
    ("GET", "/api/v1/stream", "read"),  # SSE: also streamed below
    ("GET", "/api/v1/ws", "read"),      # WebSocket: also driven below
]
PLAIN = [r for r in ROUTES if r[1] not in ("/api/v1/stream", "/api/v1/ws", "/api/v1/login")]


def _url(base: str, path: str, device: str) -> str:
    return base + path.replace("{device}", device).replace("{name}", "ping")


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return make_tokens(tmp_path)


async def test_every_route_needs_its_scope(broker: Mosquitto, tokens: Tokens) -> None:
    async with running(secured_config(broker, tokens)) as gw, sim_device(broker, gw, "authdev") as device, \
            aiohttp.ClientSession() as http:
        served = set()
        for route in build_app(gw).router.routes():
            if route.method != "HEAD":
                served.add((route.method, route.resource.canonical if route.resource else ""))
        listed = {(m, "/static" if p.startswith("/static/") else p) for m, p, _ in ROUTES}
        assert served == listed, f"routes without an access test: {served - listed}; gone: {listed - served}"

        for method, path, need in PLAIN:
            url = _url(gw.http_url, path, device)
            r = await http.request(method, url)
            body = await r.text()
            if need is None:
                assert r.status == 200, (method, path, r.status, body)
                continue
            assert r.status == 401, (method, path, r.status, body)
            assert json.loads(body)["error"] == "unauthorized" and need in json.loads(body)["message"]
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            for scope in ("read", "command", "admin"):
                r = await http.request(method, url, headers=tokens.header(scope))
                body = await r.text()
                allowed = ("read", "command", "admin").index(scope) >= ("read", "command", "admin").index(need)
                if allowed:
                    assert r.status == 200, (method, path, scope, r.status, body)
                else:
                    assert r.status == 403, (method, path, scope, r.status, body)
                    assert json.loads(body)["error"] == "forbidden" and repr(need) in json.loads(body)["message"]
        # the command really went to the device and came back
        r = await http.post(_url(gw.http_url, "/api/v1/devices/{device}/commands/{name}", device),
                            headers=tokens.header("command"))
        body = await r.json()
        assert r.status == 200 and body["ok"] is True and body["value"] == "pong", body
        sent = gw.commands.sent
        r = await http.post(gw.http_url + f"/api/v1/devices/{device}/commands/set_interval",
                            json={"stream": "x", "ms": 5000}, headers=tokens.header("read"))
        assert r.status == 403 and gw.commands.sent == sent  # nothing was sent for the read token
        r = await http.get(gw.http_url + "/api/v1/whoami", headers=tokens.header("command"))
        assert await r.json() == {"auth": True, "id": tokens.command[3:15], "name": "test-command",
                                  "scope": "command", "via": "bearer"}


async def test_sse_stream_needs_a_token(broker: Mosquitto, tokens: Tokens) -> None:
    async with running(secured_config(broker, tokens)) as gw, sim_device(broker, gw, "ssedev") as device, \
            aiohttp.ClientSession() as http:
        url = gw.http_url + f"/api/v1/stream?filter={device}/%23"
        r = await http.get(url)
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        r = await http.get(url, headers={"Authorization": "Bearer ew_000000000000_" + "A" * 43})
        assert r.status == 401 and "unknown token id" in (await r.json())["message"]
        async with http.get(url, headers=tokens.header("read")) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            got = await read_readings(r, 2, timeout=20)
            assert {e["device"] for e in got} == {device}
            # the token is revoked and the file reloaded: the stream ends
            revoke_token(tokens.path, "test-read")
            gw.reload()
            async with asyncio.timeout(10):
                while await r.content.readany():
                    pass
        assert not [c for c in gw.hub.stats()["clients"] if c["kind"] == "sse"]


async def _ws_command(ws: websockets.ClientConnection, device: str, ref: str) -> dict[str, object]:
    await ws.send(json.dumps({"op": "command", "device": device, "name": "ping", "ref": ref}))
    async with asyncio.timeout(15):
        while True:
            m = json.loads(await ws.recv())
            if m.get("ref") == ref:
                return m  # type: ignore[no-any-return]


async def test_websocket_needs_a_token_and_command_scope(broker: Mosquitto, tokens: Tokens) -> None:
    async with running(secured_config(broker, tokens)) as gw, sim_device(broker, gw, "wsdev") as device:
        url = gw.http_url.replace("http", "ws") + "/api/v1/ws"
        with pytest.raises(websockets.InvalidStatus) as e:
            async with websockets.connect(url):
                pass
        assert e.value.response.status_code == 401
        sent = gw.commands.sent
        async with websockets.connect(url, additional_headers=tokens.header("read")) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(json.dumps({"op": "subscribe", "filter": f"{device}/#", "ref": "s"}))
            replies = []
            async with asyncio.timeout(15):
                while not any(m.get("type") == "readings" for m in replies):
                    replies.append(json.loads(await ws.recv()))
            m = await _ws_command(ws, device, "r1")
            assert (m["type"], m["error"]) == ("error", "forbidden") and "'command'" in str(m["message"]), m
        assert gw.commands.sent == sent
        async with websockets.connect(url, additional_headers=tokens.header("command")) as ws:
            m = await _ws_command(ws, device, "c1")
            assert (m["type"], m["ok"], m["value"]) == ("result", True, "pong"), m
            # revoked and reloaded (what SIGHUP does): the open connection is closed, 1008
            revoke_token(tokens.path, "test-command")
            gw.reload()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await _ws_command(ws, device, "c2")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
        with pytest.raises(websockets.InvalidStatus) as e:
            async with websockets.connect(url, additional_headers=tokens.header("command")):
                pass
        assert e.value.response.status_code == 401


async def test_failed_attempts_are_rate_limited_and_logged_without_the_secret(
        broker: Mosquitto, tokens: Tokens, caplog: pytest.LogCaptureFixture) -> None:
    wrong = tokens.read[:16] + ("B" if tokens.read[16] != "B" else "C") + tokens.read[17:]  # right id, wrong secret
    caplog.set_level(logging.INFO, logger="edgewire.gateway.http")
    cfg = secured_config(broker, tokens, auth_max_failures=3, auth_failure_window=60.0)
    async with running(cfg) as gw, aiohttp.ClientSession() as http:
        url = gw.http_url + "/api/v1/devices"
        for _ in range(3):
            r = await http.get(url, headers={"Authorization": f"Bearer {wrong}"})
            body = await r.json()
            assert r.status == 401 and "wrong secret for token id" in body["message"], body
            assert wrong not in json.dumps(body) and wrong[16:] not in json.dumps(body)
        # the address is now refused, even with the right token, until the window ends
        r = await http.get(url, headers=tokens.header("read"))
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0
        assert (await r.json())["error"] == "too_many_failures"
        r = await http.post(gw.http_url + "/api/v1/login", json={"token": tokens.read})
        assert r.status == 429
        stats = gw.stats()["http"]["auth"]
        assert stats["failures"] == 3 and stats["refused"]["rate_limited"] == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "authentication failed from 127.0.0.1" in logged and "refused for up to 60s" in logged
    assert wrong[16:] not in logged and tokens.read[16:] not in logged


async def test_login_cookie_reads_but_needs_the_own_origin_to_command(broker: Mosquitto, tokens: Tokens) -> None:
    """The cookie flow outside a browser: login sets an HttpOnly SameSite=Strict
    cookie; it reads; a command with it needs the gateway's own Origin."""
    async with running(secured_config(broker, tokens)) as gw, sim_device(broker, gw, "cookiedev") as device:
        jar = aiohttp.CookieJar(unsafe=True)  # the cookie is for the IP address 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            r = await http.post(gw.http_url + "/api/v1/login", json={"token": "ew_nonsense"})
            assert r.status == 401
            r = await http.post(gw.http_url + "/api/v1/login", json={"token": tokens.command})
            assert r.status == 200, await r.text()
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and tokens.command[16:] not in cookie
            r = await http.get(gw.http_url + "/api/v1/whoami")
            assert (await r.json())["via"] == "cookie"
            cmd = gw.http_url + f"/api/v1/devices/{device}/commands/ping"
            r = await http.post(cmd)
            assert r.status == 403 and (await r.json())["error"] == "cross_origin"
            r = await http.post(cmd, headers={"Origin": "http://127.0.0.1:1"})
            assert r.status == 403
            r = await http.post(cmd, headers={"Origin": gw.http_url})
            body = await r.json()
            assert r.status == 200 and body["value"] == "pong", body
            r = await http.post(gw.http_url + "/api/v1/logout", headers={"Origin": gw.http_url})
            assert r.status == 200
            r = await http.get(gw.http_url + "/api/v1/devices")
            assert r.status == 401


async def test_without_auth_only_local_host_names_are_served(broker: Mosquitto) -> None:
    """Loopback without a token file (the default) is allowed, but not under a
    dotted name: a page whose DNS name was rebound to 127.0.0.1 (Host:
    evil.example) gets 403, so it cannot read or command; addresses and
    one-label names (localhost, the Pi's own name) are served."""
    from tests.gateway.conftest import gateway_config

    async with running(gateway_config(broker)) as gw, aiohttp.ClientSession() as http:
        port = gw.http_port
        for host, status in (("evil.example", 403), (f"evil.example:{port}", 403), ("rebind.evil.example.", 403),
                             (f"localhost:{port}", 200), ("raspberrypi", 200), (f"127.0.0.1:{port}", 200),
                             (f"[::1]:{port}", 200), ("127.1.2.3", 200), ("app.localhost", 200)):
            r = await http.get(gw.http_url + "/api/v1/devices", headers={"Host": host})
            assert r.status == status, (host, await r.text())
        r = await http.post(gw.http_url + "/api/v1/devices/x/commands/ping", headers={"Host": "evil.example"})
        assert r.status == 403 and (await r.json())["error"] == "bad_host"
        r = await http.get(gw.http_url + "/api/v1/whoami")
        assert await r.json() == {"auth": False, "id": None, "name": "anonymous (authentication off)",
                                  "scope": "admin", "via": "none"}
