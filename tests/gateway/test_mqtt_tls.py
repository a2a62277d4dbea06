"""The gateway's MQTT client over TLS, against a real mosquitto with a TLS
listener and a throwaway CA made here (the `cryptography` package): the
caller injects the ssl.SSLContext, the client verifies the broker with it."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgewire.gateway.mqtt import MqttClient
from tests.support.broker import Mosquitto, free_port


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("edgewire test CA")).issuer_name(_name("edgewire test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o644)  # mosquitto runs as its own user
    return paths


@pytest.fixture
def tls_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    # mosquitto reads the certificates after dropping to its own user, which
    # cannot enter pytest's private tmp_path: the files go to a readable folder.
    with tempfile.TemporaryDirectory(prefix="edgewire-tls-") as d:
        certs = Path(d)
        certs.chmod(0o755)
        yield from _tls_broker(tmp_path, certs)


def _tls_broker(tmp_path: Path, certs: Path):  # type: ignore[no-untyped-def]
    ca, cert, key = make_ca_and_server(certs)
    tls_port = free_port()
    b = Mosquitto(tmp_path, extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    b.start()
    try:
        yield b, tls_port, ca
    finally:
        b.stop()


async def test_client_connects_subscribes_and_receives_over_tls(tls_broker) -> None:  # type: ignore[no-untyped-def]
    broker, tls_port, ca = tls_broker
    ctx = ssl.create_default_context(cafile=str(ca))
    client = MqttClient(host="127.0.0.1", port=tls_port, client_id="tls-gw", subscriptions=[("tls/#", 1)],
                        tls_context=ctx)
    assert client.url == f"mqtts://127.0.0.1:{tls_port}"
    async with client:
        await client.wait_connected(timeout=20)
        await client.publish("tls/x", b"over TLS", qos=1)  # returns once the broker's PUBACK came back
        async with asyncio.timeout(20):
            async for batch in client.batches():
                assert [(m.topic, m.payload, m.qos) for m in batch] == [(b"tls/x", b"over TLS", 1)]
                ack = getattr(batch, "ack", None)
                if ack is not None:
                    ack()
                break
    assert client.stats.connects == 1


async def test_client_refuses_a_broker_its_context_does_not_trust(tls_broker) -> None:  # type: ignore[no-untyped-def]
    broker, tls_port, ca = tls_broker
    ctx = ssl.create_default_context()  # system CAs only: the throwaway CA is unknown
    client = MqttClient(host="127.0.0.1", port=tls_port, client_id="tls-gw-2", subscriptions=[("tls/#", 1)],
                        tls_context=ctx, reconnect_min=0.05, reconnect_max=0.1)
    async with client:
        async with asyncio.timeout(20):
            while "CERTIFICATE_VERIFY_FAILED" not in client.stats.last_error:
                await asyncio.sleep(0.02)
        assert not client.connected and client.stats.connects == 0
