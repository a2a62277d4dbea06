"""The sinks' TLS options with a throwaway CA made here (`cryptography`).

gRPC, for real: the reference backend serves TLS and requires a client
certificate (`--cert --key --client-ca`); the grpc sink with `ca_file`,
`cert_file`, `key_file` delivers, and a sink that trusts another CA or has no
client certificate is refused and says so, with nothing stored.

AMQP: the shared RabbitMQ cannot be given a TLS listener, so a TLS
terminator made here (Python's ssl, requiring a client certificate) stands in
front of its plain port: the amqp sink's amqps:// path (aio-pika with the
sink's ssl context: verification, host name, client certificate) is
exercised for real up to RabbitMQ's TCP port; RabbitMQ's own TLS listener
and its ssl_options are not tested here."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgewire.gateway.config import GatewayConfig
from edgewire.gateway.errors import ConfigError
from edgewire.gateway.service import Gateway
from tests.backends.conftest import AMQP_URL, Backend, PikaQueue, amqp_address
from tests.gateway.conftest import Publisher, gateway_config, wait_for
from tests.support.broker import Mosquitto, free_port


class Pki:
    """A CA in `d` that issues PEM certificates: `ca.pem`, `<name>.pem` + `<name>.key`."""

    def __init__(self, d: Path, name: str = "ca") -> None:
        self.d = d
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgewire test {name}")])
        self.cert = self._builder(self.name, self.key).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(self.key, hashes.SHA256())
        self.ca = d / f"{name}.pem"
        self.ca.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.now - datetime.timedelta(minutes=5))
                .not_valid_after(self.now + datetime.timedelta(days=1)))

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key)
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(self.key, hashes.SHA256())
        paths = (self.d / f"{name}.pem", self.d / f"{name}.key")
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return paths


class TlsTerminator:
    """TLS on a loopback port (requiring a client certificate of `client_ca`), plain TCP to `upstream`."""

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path, client_ca: Path) -> None:
        self.upstream = upstream
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.clients: list[str] = []   # the client certificates' common names
        self.server: Any = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peer = w.get_extra_info("peercert") or {}
        self.clients.append(dict(x[0] for x in peer.get("subject", ())).get("commonName", ""))
        ur, uw = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        for t in (asyncio.ensure_future(pump(r, uw)), asyncio.ensure_future(pump(ur, w))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.server.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, other = Pki(tmp_path, "ca"), Pki(tmp_path, "other-ca")
    server, server_key = ca.issue("server", server=True)
    client, client_key = ca.issue("gateway-1", server=False)
    stranger, stranger_key = other.issue("stranger", server=False)
    return {"ca": ca.ca, "other_ca": other.ca, "server": server, "server_key": server_key, "client": client,
            "client_key": client_key, "stranger": stranger, "stranger_key": stranger_key}


async def test_grpc_sink_over_tls_with_client_certificates(tmp_path: Path, broker: Mosquitto, publisher: Publisher,
                                                           pki: dict[str, Path]) -> None:
    backend = Backend(tmp_path / "store.db", free_port(), tls=(pki["server"], pki["server_key"], pki["ca"]))
    target = f"127.0.0.1:{backend.port}"
    client = {"cert_file": str(pki["client"]), "key_file": str(pki["client_key"])}
    cfg = gateway_config(broker).replace(sinks=(
        {"type": "grpc", "name": "good", "target": target, "ca_file": str(pki["ca"]), **client},
        # by name: the certificate is for 127.0.0.1 and localhost
        {"type": "grpc", "name": "by-name", "target": f"localhost:{backend.port}", "ca_file": str(pki["ca"]),
         **client},
        {"type": "grpc", "name": "wrong-ca", "target": target, "ca_file": str(pki["other_ca"]), **client,
         "retry_min": 0.05, "retry_max": 0.2, "connect_timeout": 2.0},
        {"type": "grpc", "name": "no-client-cert", "target": target, "ca_file": str(pki["ca"]),
         "retry_min": 0.05, "retry_max": 0.2, "connect_timeout": 2.0},
        {"type": "grpc", "name": "plaintext", "target": target, "retry_min": 0.05, "retry_max": 0.2,
         "connect_timeout": 2.0},
        {"type": "grpc", "name": "wrong-name", "target": target, "ca_file": str(pki["ca"]), **client,
         "server_name": "backend.example", "retry_min": 0.05, "retry_max": 0.2, "connect_timeout": 2.0}))
    try:
        backend.start()
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            for seq in range(1, 11):
                await asyncio.to_thread(publisher.telemetry, "dev-tls", 1, seq, [["t", seq, 0]])
            await wait_for(lambda: gw.sinks["good"].cursor == gw.sinks["by-name"].cursor == gw.journal.last_id == 10,
                           timeout=30, what="the TLS sinks' cursors")
            refused = ("wrong-ca", "no-client-cert", "plaintext", "wrong-name")
            await wait_for(lambda: all(gw.sinks[n].failures >= 2 for n in refused), timeout=60,
                           what="the other sinks to be refused")
            stats = {n: gw.sinks[n].stats() for n in refused}
        out = backend.stop()
    finally:
        backend.stop()
    assert backend.readings() == {("dev-tls", 1, s, "t", s) for s in range(1, 11)}
    for n, st in stats.items():
        assert st["cursor"] == 0 and st["lag"] == 10 and st["state"] == "retrying" and st["last_error"], (n, st)
    assert "stored 10 readings" in out and "dropped 10 repeats" in out   # good and by-name both sent all ten


async def test_amqps_sink_verifies_rabbitmq_and_presents_its_certificate(
        broker: Mosquitto, publisher: Publisher, exchange_name: str, pika_queue: PikaQueue,
        pki: dict[str, Path]) -> None:
    tls = TlsTerminator(amqp_address(), pki["server"], pki["server_key"], pki["ca"])
    await tls.start()
    cred = AMQP_URL.split("://", 1)[1].rpartition("@")[0]
    url = f"amqps://{cred}@127.0.0.1:{tls.port}/"
    quick = {"retry_min": 0.05, "retry_max": 0.2, "connect_timeout": 2.0}
    base = {"type": "amqp", "url": url, "exchange": exchange_name}
    cfg = gateway_config(broker).replace(sinks=(
        {**base, "name": "good", "ca_file": str(pki["ca"]), "cert_file": str(pki["client"]),
         "key_file": str(pki["client_key"])},
        {**base, "name": "wrong-ca", "ca_file": str(pki["other_ca"]), "cert_file": str(pki["client"]),
         "key_file": str(pki["client_key"]), **quick},
        {**base, "name": "stranger", "ca_file": str(pki["ca"]), "cert_file": str(pki["stranger"]),
         "key_file": str(pki["stranger_key"]), **quick},
        {**base, "name": "system-cas", **quick}))
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            for seq in range(1, 11):
                await asyncio.to_thread(publisher.telemetry, "dev-amqps", 1, seq, [["t", seq, 0]])
            await wait_for(lambda: gw.sinks["good"].cursor == gw.journal.last_id == 10, timeout=30,
                           what="the amqps sink's cursor")
            await wait_for(lambda: pika_queue.count() >= 10, timeout=30, what="10 messages at the consumer")
            refused = ("wrong-ca", "stranger", "system-cas")
            await wait_for(lambda: all(gw.sinks[n].failures >= 2 for n in refused), timeout=60,
                           what="the other sinks to be refused")
            stats = {n: gw.sinks[n].stats() for n in refused}
    finally:
        await tls.close()
    assert pika_queue.count() == len(pika_queue.unique()) == 10   # only the good sink got through
    assert set(tls.clients) <= {"gateway-1", ""} and "gateway-1" in tls.clients
    for n, st in stats.items():
        assert st["cursor"] == 0 and st["state"] == "retrying" and st["last_error"], (n, st)
    assert "CERTIFICATE_VERIFY_FAILED" in stats["wrong-ca"]["last_error"] + stats["system-cas"]["last_error"]
    assert "guest" not in str(stats)


async def test_tls_files_that_cannot_be_used_stop_the_start(tmp_path: Path, broker: Mosquitto,
                                                            pki: dict[str, Path]) -> None:
    notpem = tmp_path / "not.pem"
    notpem.write_text("hello")
    for sink, key in [({"type": "amqp", "url": "amqps://127.0.0.1/", "ca_file": str(tmp_path / "missing.pem")},
                       "ca_file"),
                      ({"type": "amqp", "url": "amqps://127.0.0.1/", "ca_file": str(notpem)}, "ca_file"),
                      ({"type": "amqp", "url": "amqps://127.0.0.1/", "cert_file": str(pki["client"]),
                        "key_file": str(pki["stranger_key"])}, "cert_file"),   # not its key
                      ({"type": "grpc", "target": "127.0.0.1:1", "ca_file": str(notpem)}, "ca_file")]:
        with pytest.raises(ConfigError, match=key):
            async with Gateway(gateway_config(broker).replace(sinks=(sink,))):
                pass


def test_tls_options_are_validated_before_any_io() -> None:
    amqps = {"type": "amqp", "url": "amqps://127.0.0.1/", "exchange": "x"}
    grpc = {"type": "grpc", "target": "127.0.0.1:50051"}
    for sink, key in [({**amqps, "url": "amqp://127.0.0.1/", "ca_file": "/ca.pem"}, "ca_file"),
                      ({**amqps, "cert_file": "/c.pem"}, "key_file"), ({**amqps, "key_file": "/k.pem"}, "cert_file"),
                      ({**amqps, "ca_file": 5}, "ca_file"), ({**grpc, "cert_file": "/c.pem"}, "key_file"),
                      ({**grpc, "tls": "yes"}, "tls"), ({**grpc, "tls": False, "ca_file": "/ca.pem"}, "tls"),
                      ({**grpc, "server_name": "x"}, "server_name")]:
        with pytest.raises(ConfigError, match=key):
            GatewayConfig(sinks=(sink,))
    g = dict(GatewayConfig(sinks=({**grpc, "ca_file": "/ca.pem"},)).sinks[0])
    assert g["tls"] is True and g["cert_file"] == ""
    assert dict(GatewayConfig(sinks=({**grpc, "tls": True},)).sinks[0])["ca_file"] == ""   # the system's CAs
    assert dict(GatewayConfig(sinks=(grpc,)).sinks[0])["tls"] is False
