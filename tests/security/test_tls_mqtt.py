"""TLS to the broker (issue #11, item 3), with certificates from
`edgewire certs init` and a device provisioned by `edgewire device provision
--ca`: the gateway (mqtts://, [mqtt] ca_file) and a MicroPython device (unix
port, the real firmware) both reach a mosquitto TLS listener that also
requires their accounts; telemetry goes up and a command comes back down
over TLS. A gateway or a device holding another CA is refused, with an error
that says so (the gateway's names the CA file and the broker). The device's
heap cost of TLS is measured against the same device in plain TCP."""
from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgewire.app.cli import main as cli
from edgewire.gateway.config import load_config
from edgewire.gateway.service import Gateway
from tests.firmware.helpers import device_config, start_device
from tests.firmware.test_heap import Output, stats_samples
from tests.security.mqtt_support import GATEWAY_USER, auth_conf, site_dir, start_mosquitto
from tests.support.broker import Mosquitto, free_port

# TLS costs the device ~5.5 KB of GC heap (docs/firmware.md, "TLS"), more
# than a 64K device has spare on the 64-bit unix port: the TLS device runs
# with more heap, and the plain device it is measured against too.
TLS_HEAP = "128K"
STREAMS = [{"name": "temp", "source": "sim:temperature", "interval_ms": 200, "qos": 1}]


class Site:
    def __init__(self, root: Path, broker: Mosquitto, tls_port: int) -> None:
        self.root, self.broker, self.tls_port = root, broker, tls_port
        self.toml = root / "gw.toml"
        self.ca = root / "tls" / "ca.pem"


def gateway_toml(root: Path, url: str, ca: Path) -> str:
    return (f'[mqtt]\nurl = "{url}"\nca_file = "{ca}"\nusername = "{GATEWAY_USER}"\n'
            f'password_file = "{root / "gateway.password"}"\nreconnect_min = 0.05\nreconnect_max = 0.5\n'
            f'[mqtt_auth]\ndir = "{root / "auth"}"\n'
            f'[http]\nhost = "127.0.0.1"\nport = 0\n'
            f'[journal]\npath = "{root / "journal.db"}"\n')


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with site_dir() as root:
        assert cli(["certs", "init", str(root / "tls"), "--name", "localhost"]) == 0
        tls_port = free_port()
        (root / "gw.toml").write_text(gateway_toml(root, f"mqtts://127.0.0.1:{tls_port}", root / "tls" / "ca.pem"))
        assert cli(["device", "provision", "tls-dev", "--config", str(root / "gw.toml"), "--ca",
                    str(root / "tls" / "ca.pem"), "--out", str(root / "tls-dev"), "--broker-host", "127.0.0.1",
                    "--broker-port", str(tls_port)]) == 0
        t = root / "tls"
        broker = start_mosquitto(tmp_path, f"listener {tls_port} 127.0.0.1\ncafile {t / 'ca.pem'}\n"
                                           f"certfile {t / 'server.pem'}\nkeyfile {t / 'server.key'}\n"
                                           + auth_conf(root))
        try:
            yield Site(root, broker, tls_port)
        finally:
            broker.stop()


def provisioned(site: Site, **over: Any) -> dict[str, Any]:
    """The provisioned config.json plus the test timings (helpers.BASE_CONFIG)."""
    cfg = json.loads((site.root / "tls-dev" / "config.json").read_text())
    cfg.pop("device_id")
    return device_config(cfg.pop("broker_port"), STREAMS, **cfg, debug=True, stats_ms=1000, **over)


def run_device(tmp: Path, site: Site, cfg: dict[str, Any], heap: str = TLS_HEAP, ca: bytes | None = None) -> Output:
    """The device with its provisioned ca.der (or `ca`) in its storage."""
    store = tmp / "tls-dev"
    store.mkdir(parents=True, exist_ok=True)
    (store / "ca.der").write_bytes(ca or (site.root / "tls-dev" / "ca.der").read_bytes())
    return Output(start_device(tmp, "tls-dev", cfg, heap=heap))


async def until(cond: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@pytest.mark.micropython
async def test_gateway_and_micropython_device_over_tls(site: Site, tmp_path: Path, firmware_build: Path) -> None:
    cfg = load_config(site.toml)
    assert cfg.mqtt.tls and cfg.mqtt.host_port == ("127.0.0.1", site.tls_port)
    dev = run_device(tmp_path, site, provisioned(site))
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None and gw.mqtt.url.startswith("mqtts://")
            await gw.mqtt.wait_connected(20)

            def streaming() -> bool:
                d = gw.registry.get("tls-dev")
                return d is not None and d.online and d.messages >= 3

            await until(streaming, 60, "the TLS device's birth and telemetry at the gateway")
            res = await gw.commands.send("tls-dev", "ping", timeout=20)  # down and up again over TLS
            assert res.ok and res.value == "pong"
            info = await gw.commands.send("tls-dev", "info", timeout=20)
            assert info.ok
        # the device stayed on one connection: the read path never stalled into a keepalive timeout
        await asyncio.to_thread(dev.wait, lambda s: bool(s) and s[-1][0]["connects"] >= 1, 30, "a stats line")
    finally:
        out = dev.stop()
    samples = stats_samples(out)
    assert samples and samples[-1][0]["connects"] == 1 and samples[-1][0]["reconnects"] == 0, out[-2000:]


@pytest.mark.micropython
def test_tls_heap_cost_on_the_unix_port(site: Site, tmp_path: Path, firmware_build: Path) -> None:
    """The same device, same streams, same heap: plain TCP to the plain
    listener vs TLS to the TLS listener. Printed for docs/firmware.md ("TLS")."""
    free: dict[str, list[int]] = {}
    for mode in ("plain", "tls"):
        over = {"tls_ca": None, "broker_port": site.broker.port} if mode == "plain" else {}
        cfg = provisioned(site)
        cfg.update(over)
        dev = run_device(tmp_path / mode, site, cfg)
        try:
            dev.wait(lambda s: len([m for st, m in s if st["connects"] >= 1]) >= 4, 60, f"four {mode} stats lines")
        finally:
            out = dev.stop()
        free[mode] = [m for st, m in stats_samples(out) if st["connects"] >= 1]
    cost = min(free["plain"]) - min(free["tls"])
    print(f"gc.mem_free() online at {TLS_HEAP}: plain {free['plain']}, TLS {free['tls']}; TLS costs {cost} B")
    # On the unix port mbedTLS takes its record buffers (16 KB in, 4 KB out)
    # from malloc, not the GC heap: what the heap pays is the context with the
    # parsed CA (~3.5 KB), the TLS socket and edgewire.tls (measured: ~5.5 KB).
    assert 2 * 1024 <= cost <= 12 * 1024, free


async def test_gateway_with_another_ca_is_refused_with_a_clear_error(site: Site) -> None:
    with site_dir() as other:
        assert cli(["certs", "init", str(other / "tls")]) == 0
        wrong = other / "tls" / "ca.pem"
        cfg = load_config(site.toml)
        cfg = cfg.replace(mqtt=dataclasses.replace(cfg.mqtt, ca_file=str(wrong)))
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await until(lambda: "not trusted" in gw.mqtt.stats.last_error, 30, "a TLS refusal")  # type: ignore[union-attr]
            err = gw.mqtt.stats.last_error
            assert str(wrong) in err and "127.0.0.1" in err, err
            assert not gw.mqtt.connected and gw.mqtt.stats.connects == 0
            assert gw.stats()["mqtt"]["last_error"] == err  # shown in /api/v1/stats


@pytest.mark.micropython
def test_device_with_another_ca_is_refused_with_a_clear_error(site: Site, tmp_path: Path,
                                                              firmware_build: Path) -> None:
    with site_dir() as other:
        assert cli(["certs", "init", str(other / "tls")]) == 0
        import ssl

        wrong_der = ssl.PEM_cert_to_DER_cert((other / "tls" / "ca.pem").read_text())
    dev = run_device(tmp_path, site, provisioned(site), ca=wrong_der)
    try:
        dev.wait(lambda s: bool(s) and s[-1][0]["conn_failures"] >= 2, 60, "two failed connects")
    finally:
        out = dev.stop()
    # mbedTLS's reason, as the device logs it (with debug): "connection lost (\nThe certificate ...\n); retry in N ms"
    assert "connection lost (" in out and "The certificate is not correctly signed by the trusted CA" in out, out[-2000:]
    assert all(st["connects"] == 0 for st, _ in stats_samples(out)), out[-2000:]


def client_certificate(site: Site) -> tuple[Path, Path]:
    """A client certificate for the gateway signed by the site's CA (a PKI would issue it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    t = site.root / "tls"
    ca = x509.load_pem_x509_certificate((t / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((t / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GATEWAY_USER)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pem, key_pem = t / "gw-client.pem", t / "gw-client.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pem, key_pem


async def test_gateway_client_certificate_for_a_broker_that_requires_one(site: Site, tmp_path: Path) -> None:
    cert, key = client_certificate(site)
    port = free_port()
    t = site.root / "tls"
    broker = start_mosquitto(tmp_path, f"listener {port} 127.0.0.1\ncafile {t / 'ca.pem'}\ncertfile {t / 'server.pem'}\n"
                                       f"keyfile {t / 'server.key'}\nrequire_certificate true\n" + auth_conf(site.root))
    try:
        base = load_config(site.toml)
        url = f"mqtts://127.0.0.1:{port}"
        without = base.replace(mqtt=dataclasses.replace(base.mqtt, url=url, client_id="gw-nocert"))
        async with Gateway(without) as gw:
            assert gw.mqtt is not None
            await until(lambda: gw.mqtt.stats.last_error, 30, "a refused handshake")  # type: ignore[union-attr]
            assert gw.mqtt.stats.connects == 0
        with_cert = base.replace(mqtt=dataclasses.replace(base.mqtt, url=url, cert_file=str(cert), key_file=str(key)),
                                 journal=dataclasses.replace(base.journal, path=str(site.root / "j2.db")))
        async with Gateway(with_cert) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(20)
    finally:
        broker.stop()
