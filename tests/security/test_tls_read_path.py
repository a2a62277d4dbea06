"""The device's MQTT client must not stall on data buffered inside the TLS
layer: a broker that sends several packets in one TLS record leaves all but
the first decrypted inside the TLS object, where poll() on the socket cannot
see them. The client reads until the socket would block and polls only then.

A TLS peer (CPython's ssl, certificates from `edgewire certs init`) sends
CONNACK and two PUBLISH packets in ONE record; the client (firmware mqtt.py
through firmware tls.py on CPython) reads the CONNACK during connect(). The
two PUBLISH packets are then only in the TLS buffer: poll(0) must hand both
over at once (a poll-first client returns 0, and waits for the keepalive)."""
from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from edgewire import mqtt, tls
from edgewire.boards.sim import SimBoard
from edgewire.gateway.certs import init_site


def publish(topic: str, payload: bytes) -> bytes:
    return bytes(mqtt.publish_header(topic, len(payload))) + payload


def test_packets_buffered_in_one_tls_record_are_read_without_waiting(tmp_path: Path) -> None:
    paths = init_site(tmp_path / "tls")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "ca.der").write_bytes(ssl.PEM_cert_to_DER_cert(paths["ca.pem"].read_text()))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths["server.pem"], paths["server.key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()
    errors: list[BaseException] = []

    def broker() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.settimeout(10)
                first = s.recv(2)  # CONNECT's fixed header, then the rest
                s.recv(first[1])
                # one write, one TLS record: CONNACK + two PUBLISH (QoS 0)
                s.sendall(b"\x20\x02\x00\x00" + publish("a/1", b"one") + publish("a/2", b"two"))
                done.wait(10)
        except BaseException as e:  # reported by the test
            errors.append(e)

    t = threading.Thread(target=broker, daemon=True)
    t.start()
    board = SimBoard("tls-read", storage=str(tmp_path / "dev"))
    cfg = {"tls_ca": "ca.der", "broker_host": "127.0.0.1", "timeout_ms": 5000}
    got: list[tuple[str, bytes]] = []
    client = mqtt.MQTTClient("tls-read", keepalive=60)
    client.on_message = lambda topic, payload, retained: got.append((topic, payload))
    try:
        sock = tls.wrap(board.connect("127.0.0.1", port, 5000), board, cfg)
        assert client.connect(sock) is False
        assert client.poll(0) == 2  # both, from the TLS buffer, without waiting
        assert got == [("a/1", b"one"), ("a/2", b"two")]
    finally:
        done.set()
        client.close()
        t.join(10)
        listener.close()
    assert not errors, errors
