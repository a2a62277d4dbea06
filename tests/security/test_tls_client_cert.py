"""Device client certificates: `edgewire device provision --client-cert`
issues one signed by the site's CA (CN = device id, DER as the device reads
it) and names it in config.json (tls_cert; the key is cert.key beside it). mosquitto with
`require_certificate true` and `use_identity_as_username true` accepts the
MicroPython device (unix port, the real firmware presenting it through the
port's tls module) as that device, under the generated ACL; the same device
without its certificate is refused at the handshake."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from edgewire.app.cli import main as cli
from tests.firmware.helpers import device_config, start_device
from tests.firmware.test_heap import Output, stats_samples
from tests.security.mqtt_support import Client, auth_conf, site_dir, start_mosquitto, wait
from tests.security.test_tls_mqtt import STREAMS, TLS_HEAP, gateway_toml
from tests.support.broker import Mosquitto, free_port


class CertSite:
    def __init__(self, root: Path, broker: Mosquitto, port: int) -> None:
        self.root, self.broker, self.port = root, broker, port


@pytest.fixture
def site(tmp_path: Path) -> Iterator[CertSite]:
    with site_dir() as root:
        t = root / "tls"
        assert cli(["certs", "init", str(t)]) == 0
        port = free_port()
        (root / "gw.toml").write_text(gateway_toml(root, f"mqtts://127.0.0.1:{port}", t / "ca.pem"))
        assert cli(["device", "provision", "cert-dev", "--config", str(root / "gw.toml"), "--ca", str(t / "ca.pem"),
                    "--client-cert", "--out", str(root / "cert-dev"), "--broker-host", "127.0.0.1",
                    "--broker-port", str(port)]) == 0
        broker = start_mosquitto(tmp_path, f"listener {port} 127.0.0.1\ncafile {t / 'ca.pem'}\n"
                                           f"certfile {t / 'server.pem'}\nkeyfile {t / 'server.key'}\n"
                                           "require_certificate true\nuse_identity_as_username true\n"
                                           + auth_conf(root))
        try:
            yield CertSite(root, broker, port)
        finally:
            broker.stop()


def run_device(tmp: Path, site: CertSite, with_cert: bool) -> Output:
    src = site.root / "cert-dev"
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["tls_cert"] == "cert.der" and (src / "cert.key").exists()
    cfg.pop("device_id")
    if not with_cert:
        cfg["tls_cert"] = None
    store = tmp / "cert-dev"
    store.mkdir(parents=True, exist_ok=True)
    for f in ("ca.der", "cert.der", "cert.key"):
        (store / f).write_bytes((src / f).read_bytes())
    return Output(start_device(tmp, "cert-dev", device_config(cfg.pop("broker_port"), STREAMS, **cfg, debug=True,
                                                               stats_ms=1000), heap=TLS_HEAP))


@pytest.mark.micropython
def test_device_client_certificate_accepted_by_mosquitto(site: CertSite, tmp_path: Path,
                                                         firmware_build: Path) -> None:
    # the gateway's role played by paho over plain TCP on the broker's other listener:
    # it reads with the gateway's account what the device publishes under its own id
    gw_password = (site.root / "gateway.password").read_text().strip()
    watcher = Client(site.broker.port, "edgewire-gateway", gw_password, client_id="watch").start()
    try:
        assert watcher.accepted
        watcher.subscribe("edgewire/v1/#")
        dev = run_device(tmp_path / "with", site, with_cert=True)
        try:
            wait(lambda: len(watcher.got("edgewire/v1/cert-dev/telemetry")) >= 3, 60,
                 "the device's telemetry over TLS with its client certificate")
            dev.wait(lambda s: bool(s) and s[-1][0]["connects"] >= 1, 30, "a stats line")
        finally:
            out = dev.stop()
        assert watcher.got("edgewire/v1/cert-dev/status"), "no birth"
        samples = stats_samples(out)
        assert samples and samples[-1][0]["connects"] == 1, out[-2000:]
    finally:
        watcher.close()


@pytest.mark.micropython
def test_device_without_its_certificate_is_refused(site: CertSite, tmp_path: Path, firmware_build: Path) -> None:
    dev = run_device(tmp_path / "without", site, with_cert=False)
    try:
        dev.wait(lambda s: bool(s) and s[-1][0]["conn_failures"] >= 2, 60, "two failed connects")
    finally:
        out = dev.stop()
    assert all(st["connects"] == 0 for st, _ in stats_samples(out)), out[-2000:]
    assert "connection lost (" in out, out[-2000:]


def test_certs_device_cli(tmp_path: Path) -> None:
    import ssl

    from cryptography import x509

    t = tmp_path / "tls"
    assert cli(["certs", "init", str(t)]) == 0
    assert cli(["certs", "device", str(t), "--device", "dev-9", "--out", str(tmp_path / "dev-9")]) == 0
    cert = x509.load_der_x509_certificate((tmp_path / "dev-9" / "cert.der").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=dev-9"
    assert ((tmp_path / "dev-9" / "cert.key").stat().st_mode & 0o777) == 0o600
    # signed by the site's CA: CPython's ssl verifies it as a client certificate
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(t / "ca.pem"))
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert cli(["certs", "device", str(tmp_path / "nowhere"), "--device", "x"]) == 2
