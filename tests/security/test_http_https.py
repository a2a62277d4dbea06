"""Optional HTTPS ([http] cert_file, key_file) and the CORS allow-list."""
from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from edgewire.gateway.config import GatewayConfig, HttpConfig, JournalConfig
from edgewire.gateway.preflight import preflight
from tests.gateway.test_mqtt_tls import make_ca_and_server
from tests.security.http_support import make_tokens, running, secured_config
from tests.support.broker import Mosquitto


async def test_https_serves_the_api_and_marks_the_cookie_secure(broker: Mosquitto, tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    tokens = make_tokens(tmp_path)
    problems = preflight(GatewayConfig(http=HttpConfig(port=0, cert_file=str(cert), key_file=str(key)),
                                       journal=JournalConfig(path=str(tmp_path / "j.db"))))
    assert [p.level for p in problems] == ["error"] and "readable by everyone" in problems[0].message
    key.chmod(0o600)
    async with running(secured_config(broker, tokens, cert_file=str(cert), key_file=str(key))) as gw:
        assert gw.http_url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            r = await http.get(gw.http_url + "/api/v1/devices", ssl=trust, headers=tokens.header("read"))
            assert r.status == 200 and await r.json() == {"devices": []}
            r = await http.post(gw.http_url + "/api/v1/login", ssl=trust, json={"token": tokens.read})
            assert r.status == 200 and "Secure" in r.headers["Set-Cookie"]
            with pytest.raises(aiohttp.ClientSSLError):
                await http.get(gw.http_url + "/healthz", ssl=ssl.create_default_context())  # not trusted
            with pytest.raises(aiohttp.ClientError):
                await http.get(gw.http_url.replace("https", "http") + "/healthz")  # no plain HTTP on that port
    assert preflight(GatewayConfig(http=HttpConfig(port=0, cert_file=str(cert), key_file=str(key)),
                                   journal=JournalConfig(path=str(tmp_path / "j.db")))) == []


async def test_cors_is_closed_unless_the_origin_is_listed(broker: Mosquitto, tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    allowed = "https://grafana.example"
    async with running(secured_config(broker, tokens, cors_origins=(allowed,))) as gw, \
            aiohttp.ClientSession() as http:
        preflight_headers = {"Access-Control-Request-Method": "POST",
                             "Access-Control-Request-Headers": "authorization, content-type"}
        r = await http.options(gw.http_url + "/api/v1/devices/x/commands/ping",
                               headers={"Origin": allowed, **preflight_headers})
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == allowed
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        assert "Access-Control-Allow-Credentials" not in r.headers  # bearer tokens only, never cookies
        r = await http.options(gw.http_url + "/api/v1/devices", headers={"Origin": "https://evil.example",
                                                                         **preflight_headers})
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        r = await http.get(gw.http_url + "/api/v1/devices", headers={"Origin": allowed, **tokens.header("read")})
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == allowed
        r = await http.get(gw.http_url + "/api/v1/devices",
                           headers={"Origin": "https://evil.example", **tokens.header("read")})
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers  # the browser hides it
        # a listed origin may send a command with a bearer token (no device here: 404, but not 403)
        r = await http.post(gw.http_url + "/api/v1/devices/ghost/commands/ping",
                            headers={"Origin": allowed, **tokens.header("command")})
        assert r.status == 404
        r = await http.post(gw.http_url + "/api/v1/devices/ghost/commands/ping",
                            headers={"Origin": "https://evil.example", **tokens.header("command")})
        assert r.status == 403 and (await r.json())["error"] == "cross_origin"
