"""The dashboard and the API in a real browser (headless Debian Chromium):
the dashboard works with the cookie flow (a token typed once, exchanged for
an HttpOnly session cookie that fetch and EventSource send), and a page on
another origin cannot command a device: not with a `no-cors` text/plain POST
(which needs no CORS preflight), not over a WebSocket, whether authentication
is on (the browser holds a session cookie for the gateway, and the attacking
page is same-site: same address, another port) or off (loopback default)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.gateway.conftest import gateway_config
from tests.security.http_support import Tokens, make_tokens, running, secured_config, sim_device
from tests.support.broker import Mosquitto
from tests.support.browser import Browser


def row_text(device: str) -> str:
    return f"(() => {{ const r = document.querySelector('tr[data-device=\"{device}\"]'); return r ? r.innerText : ''; }})()"


async def wait(b: Browser, expression: str, timeout: float = 20.0) -> object:
    # the browser calls block: off the loop, so the in-process gateway keeps serving
    return await asyncio.to_thread(b.wait_for, expression, timeout)


async def run(b: Browser, expression: str) -> object:
    return await asyncio.to_thread(b.evaluate, expression)


# null-safe: right after Page.navigate the old document (about:blank) may still be the one evaluated
LOGIN_SHOWN = "(e => !!e && !e.hidden)(document.getElementById('login'))"


def login_js(token: str) -> str:
    return ("(() => { document.getElementById('token').value = " + json.dumps(token) + ";"
            " document.getElementById('login').requestSubmit(); return true; })()")


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return make_tokens(tmp_path)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    b = await asyncio.to_thread(Browser)
    try:
        yield b
    finally:
        await asyncio.to_thread(b.close)


async def test_dashboard_logs_in_with_a_token_and_shows_live_values(broker: Mosquitto, tokens: Tokens,
                                                                    browser: Browser) -> None:
    async with running(secured_config(broker, tokens)) as gw, sim_device(broker, gw, "uidev") as device:
        await asyncio.to_thread(browser.goto, gw.http_url + "/")
        await wait(browser, LOGIN_SHOWN)
        assert await run(browser, "document.getElementById('status').textContent") == "logged out"
        assert await run(browser, "document.querySelectorAll('#devices tbody tr').length") == 0
        # a wrong token: the form says why and nothing is shown
        await run(browser, login_js("ew_000000000000_" + "A" * 43))
        await wait(browser, "document.getElementById('login-error').textContent.includes('unknown token id')")
        # the right one: rows and live values over EventSource, with the cookie only
        await run(browser, login_js(tokens.read))
        await wait(browser, f"{row_text(device)}.includes('online')")
        await wait(browser, "document.getElementById('status').textContent.startsWith('live, ')")
        await wait(browser, f"{row_text(device)}.includes(' = ')")
        assert await run(browser, "document.getElementById('who-name').textContent") == "test-read (read)"
        assert await run(browser, "document.cookie") == ""  # HttpOnly: page scripts cannot read the session
        clients = [c for c in gw.hub.stats()["clients"] if c["kind"] == "sse"]
        assert len(clients) == 1
        # log out: the stream closes and the form is back
        await run(browser, "document.getElementById('logout').click()")
        await wait(browser, LOGIN_SHOWN)
        r = await run(browser, "fetch('/api/v1/devices').then(r => window.__after = r.status), 1")
        assert r == 1
        assert await wait(browser, "window.__after") == 401


ATTACK = """<!doctype html><meta charset="utf-8"><title>not the gateway</title><script>
window.results = {};
fetch(GW + "/api/v1/devices/" + DEV + "/commands/set_interval", {
  method: "POST", mode: "no-cors", credentials: "include",
  headers: {"Content-Type": "text/plain"}, body: JSON.stringify({stream: "temperature", ms: 60000}),
}).then(() => { results.post = "sent"; }, (e) => { results.post = "failed: " + e; });
const ws = new WebSocket(GW.replace("http", "ws") + "/api/v1/ws");
ws.onopen = () => { results.ws_open = true;
  ws.send(JSON.stringify({op: "command", device: DEV, name: "reboot", ref: 1})); };
ws.onmessage = (m) => { results.ws_message = m.data; };
ws.onclose = (e) => { results.ws_closed = e.code; };
</script>"""


async def attacker_site(gateway_url: str, device: str) -> web.AppRunner:
    """Another origin on the same address (another port): same-site, so a
    SameSite=Strict cookie of the gateway's is still sent from it."""
    page = ATTACK.replace("<script>", "<script>const GW = %s, DEV = %s;" % (json.dumps(gateway_url),
                                                                          json.dumps(device)), 1)

    async def evil(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize("auth", ["token", "off"])
async def test_a_page_on_another_origin_cannot_command(broker: Mosquitto, tokens: Tokens, browser: Browser,
                                                       auth: str) -> None:
    cfg = secured_config(broker, tokens) if auth == "token" else gateway_config(broker)
    async with running(cfg) as gw, sim_device(broker, gw, f"csrf{auth}") as device:
        await asyncio.to_thread(browser.goto, gw.http_url + "/")
        if auth == "token":  # the victim is logged in with a token that may command
            await wait(browser, LOGIN_SHOWN)
            await run(browser, login_js(tokens.command))
        await wait(browser, f"{row_text(device)}.includes('online')")
        # the control: the gateway's own page, with the same browser state, can command
        await run(browser, "fetch('/api/v1/devices/%s/commands/ping', {method: 'POST'})"
                           ".then(r => r.json()).then(b => { window.__own = b; }), 1" % device)
        own = await wait(browser, "window.__own")
        assert isinstance(own, dict) and own.get("value") == "pong", own
        sent = gw.commands.sent
        refused = gw.stats()["http"]["auth"]["refused"]["cross_origin"]

        evil = await attacker_site(gw.http_url, device)
        try:
            site = evil.addresses[0]
            await asyncio.to_thread(browser.goto, f"http://127.0.0.1:{site[1]}/")
            # settled: the POST went out, and the WebSocket was closed or (the failure) answered
            results = await wait(browser, "window.results && window.results.post && (window.results.ws_closed "
                                          "!== undefined || window.results.ws_message !== undefined) && window.results")
        finally:
            await evil.cleanup()
        assert isinstance(results, dict)
        assert "ws_open" not in results and "ws_message" not in results, results  # the handshake was refused
        assert gw.commands.sent == sent, "a command from another origin reached the device"
        assert gw.stats()["http"]["auth"]["refused"]["cross_origin"] >= refused + 2
