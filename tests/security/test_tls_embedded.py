"""TLS on the embedded amqtt broker (no mosquitto): with [embedded_broker]
cert_file/key_file from `edgewire certs init` the broker gets a TLS listener
(amqtt's own, `ssl` listener keys). The gateway's own client connects over
it, verifying with [embedded_broker] ca_file; a MicroPython device (unix port,
the real firmware) provisioned with `--ca` streams over it with its account
and answers a command; a gateway and a client holding another CA are refused."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from pathlib import Path
from typing import Iterator

import pytest

from edgewire.app.cli import main as cli
from edgewire.gateway.config import load_config
from edgewire.gateway.service import Gateway
from tests.security.mqtt_support import GATEWAY_USER, site_dir
from tests.security.test_tls_mqtt import Site, provisioned, run_device, until


def embedded_toml(root: Path, ca: Path) -> str:
    t = root / "tls"
    return (f'[mqtt]\nusername = "{GATEWAY_USER}"\npassword_file = "{root / "gateway.password"}"\n'
            f'reconnect_min = 0.05\nreconnect_max = 0.5\n'
            f'[embedded_broker]\nport = 0\ntls_port = 0\ncert_file = "{t / "server.pem"}"\n'
            f'key_file = "{t / "server.key"}"\nca_file = "{ca}"\n'
            f'[mqtt_auth]\ndir = "{root / "auth"}"\n'
            f'[http]\nhost = "127.0.0.1"\nport = 0\n'
            f'[journal]\npath = "{root / "journal.db"}"\n')


@pytest.fixture
def site() -> Iterator[Site]:
    with site_dir() as root:
        assert cli(["certs", "init", str(root / "tls")]) == 0
        (root / "gw.toml").write_text(embedded_toml(root, root / "tls" / "ca.pem"))
        assert cli(["device", "provision", "tls-dev", "--config", str(root / "gw.toml"), "--ca",
                    str(root / "tls" / "ca.pem"), "--out", str(root / "tls-dev"), "--broker-host", "127.0.0.1"]) == 0
        yield Site(root, None, 0)  # type: ignore[arg-type]  # the broker is the gateway's own


def handshake(port: int, ca: Path) -> None:
    """A TLS handshake with the CPython ssl module (an independent client), verifying against `ca`."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
            pass


@pytest.mark.micropython
async def test_device_and_gateway_over_tls_to_the_embedded_broker(site: Site, tmp_path: Path,
                                                                   firmware_build: Path) -> None:
    cfg = load_config(site.toml)
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        broker = gw.adapters["mqtt"].broker  # type: ignore[attr-defined]
        assert broker.tls_port and broker.tls_port != broker.port
        assert gw.mqtt.url == f"mqtts://127.0.0.1:{broker.tls_port}"  # the gateway's own client over TLS
        await gw.mqtt.wait_connected(30)
        # the site's CA vouches for the listener; a plain MQTT CONNECT on it gets no CONNACK
        await asyncio.to_thread(handshake, broker.tls_port, site.ca)
        site.tls_port = broker.tls_port
        dev = run_device(tmp_path, site, provisioned(site, broker_port=broker.tls_port))
        try:
            def streaming() -> bool:
                d = gw.registry.get("tls-dev")
                return d is not None and d.online and d.messages >= 3

            await until(streaming, 90, "the TLS device's birth and telemetry through the embedded broker")
            res = await gw.commands.send("tls-dev", "ping", timeout=30)  # down and up again over TLS
            assert res.ok and res.value == "pong"
        finally:
            out = dev.stop()
        assert "connection lost" not in out, out[-2000:]


async def test_another_ca_is_refused_by_the_embedded_brokers_clients(site: Site) -> None:
    with site_dir() as other:
        assert cli(["certs", "init", str(other / "tls")]) == 0
        wrong = other / "tls" / "ca.pem"
        cfg = load_config(site.toml)
        cfg = cfg.replace(embedded_broker=dataclasses.replace(cfg.embedded_broker, ca_file=str(wrong)))
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await until(lambda: "not trusted" in gw.mqtt.stats.last_error, 30, "a TLS refusal")  # type: ignore[union-attr]
            err = gw.mqtt.stats.last_error
            assert f"[embedded_broker] ca_file {wrong}" in err, err
            assert gw.mqtt.stats.connects == 0
            port = gw.adapters["mqtt"].broker.tls_port  # type: ignore[attr-defined]
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.to_thread(handshake, port, wrong)
            await asyncio.to_thread(handshake, port, site.ca)  # the listener itself is fine


def test_tls_keys_are_checked() -> None:
    from edgewire.gateway.config import EmbeddedBrokerConfig, ConfigError

    with pytest.raises(ConfigError, match="key_file"):
        EmbeddedBrokerConfig(cert_file="server.pem")
    with pytest.raises(ConfigError, match="needs cert_file"):
        EmbeddedBrokerConfig(ca_file="ca.pem")
    with pytest.raises(ConfigError, match="tls_port"):
        EmbeddedBrokerConfig(tls_port=70000)
