"""mqtt.py against exact bytes and a scripted peer on a real socketpair (CPython,
fast), and the packet encoders again on MicroPython."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from edgewire import mqtt
from tests.support import micropython

def test_connect_with_will_exact_bytes() -> None:
    pkt = mqtt.encode_connect("dev-1", 30, False, None, None, ("a/b", b"xy", 1, True))
    assert pkt == bytes.fromhex(
        "10" "1a"                 # CONNECT, remaining length 26
        "0004" "4d515454" "04"    # "MQTT", level 4
        "2c"                      # flags: will, will QoS 1, will retain; persistent session
        "001e"                    # keepalive 30 s
        "0005" "6465762d31"       # client id "dev-1"
        "0003" "612f62"           # will topic "a/b"
        "0002" "7879")            # will payload "xy"
    pkt = mqtt.encode_connect("c", 60, True, "u", "p")
    assert pkt == bytes.fromhex("1013" "00044d51545404" "c2" "003c" "000163" "000175" "000170")


def test_publish_qos2_dup_exact_bytes() -> None:
    hdr = mqtt.publish_header("t/x", 3, qos=2, retain=True, dup=True, pid=0x1234)
    assert bytes(hdr) + b"abc" == bytes.fromhex("3d" "0a" "0003" "742f78" "1234" "616263")
    big = mqtt.publish_header("t", 200, qos=1, pid=7)
    assert bytes(big) == bytes.fromhex("32" "cd01" "0001" "74" "0007")  # 205 = 0xcd 0x01


def test_subscribe_exact_bytes() -> None:
    assert mqtt.encode_subscribe(3, "edgewire/v1/d/cmd", 1) == bytes.fromhex(
        "82" "16" "0003" "0011" + "edgewire/v1/d/cmd".encode().hex() + "01")


class Peer:
    """The broker side of a socketpair, driven by the test."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair()
        self.a.settimeout(2)

    def read(self) -> bytes:
        first = self.a.recv(1)
        rl, shift = 0, 0
        while True:
            b = self.a.recv(1)[0]
            rl |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        body = b""
        while len(body) < rl:
            body += self.a.recv(rl - len(body))
        return first + bytes([rl]) + body if rl < 128 else first + body

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


def connected(peer: Peer, **kw: object) -> mqtt.MQTTClient:
    c = mqtt.MQTTClient("t1", keepalive=10, timeout_ms=300, retry_ms=100000, **kw)  # type: ignore[arg-type]
    peer.a.sendall(b"\x20\x02\x00\x00")
    assert c.connect(peer.b) is False
    assert peer.read()[0] == 0x10
    return c


def test_qos2_outbound_flow_and_resend_after_reconnect(peer: Peer) -> None:
    acks: list[tuple[int, int]] = []
    c = connected(peer)
    c.on_ack = lambda pid, q: acks.append((pid, q))
    p1 = c.publish("t", b"one", 2)
    assert peer.read() == bytes.fromhex("3408" "000174") + p1.to_bytes(2, "big") + b"one"
    peer.a.sendall(b"\x50\x02" + p1.to_bytes(2, "big"))  # PUBREC
    c.poll(200)
    assert peer.read() == b"\x62\x02" + p1.to_bytes(2, "big")  # PUBREL
    p2 = c.publish("t", b"two", 1)
    peer.read()
    # the connection dies: PUBREL for p1 and PUBLISH (DUP) for p2 are resent, in order
    peer.close()
    fresh = Peer()
    try:
        fresh.a.sendall(b"\x20\x02\x01\x00")
        assert c.connect(fresh.b) is True
        assert fresh.read()[0] == 0x10
        assert fresh.read() == b"\x62\x02" + p1.to_bytes(2, "big")
        assert fresh.read() == bytes.fromhex("3a08" "000174") + p2.to_bytes(2, "big") + b"two"
        fresh.a.sendall(b"\x70\x02" + p1.to_bytes(2, "big") + b"\x40\x02" + p2.to_bytes(2, "big"))
        c.poll(200)
        assert sorted(acks) == sorted([(p1, 2), (p2, 1)])
        assert len(c.window) == 0
    finally:
        c.close()
        fresh.close()


def test_inbound_qos2_delivered_exactly_once(peer: Peer) -> None:
    got: list[tuple[str, bytes]] = []
    c = connected(peer)
    c.on_message = lambda t, p, r: got.append((t, p))
    pub = bytes.fromhex("3407" "0001" "61" "0009") + b"hi"
    peer.a.sendall(pub)
    c.poll(200)
    assert peer.read() == b"\x50\x02\x00\x09"  # PUBREC
    peer.a.sendall(b"\x3c" + pub[1:])  # redelivered with DUP before PUBREL
    c.poll(200)
    assert peer.read() == b"\x50\x02\x00\x09"
    peer.a.sendall(b"\x62\x02\x00\x09")
    c.poll(200)
    assert peer.read() == b"\x70\x02\x00\x09"  # PUBCOMP
    assert got == [("a", b"hi")]
    peer.a.sendall(bytes.fromhex("3205" "0001" "62" "0003") + b"\x32\x05\x00\x01c\x00\x04")
    c.poll(200)
    assert peer.read() == b"\x40\x02\x00\x03" and peer.read() == b"\x40\x02\x00\x04"
    assert got[1:] == [("b", b""), ("c", b"")]
    c.close()


def test_window_bounds_and_packet_ids(peer: Peer) -> None:
    c = connected(peer, max_inflight=2)
    c.last_pid = 65534
    assert c.publish("t", b"x", 1) == 65535
    assert c.publish("t", b"x", 1) == 1  # wraps and skips nothing in use
    peer.read(), peer.read()
    t0 = time.monotonic()
    with pytest.raises(mqtt.MQTTTimeout):
        c.publish("t", b"x", 1)  # window full and no ack comes
    assert 0.25 < time.monotonic() - t0 < 1.0
    assert not c.connected and len(c.window) == 2


def test_dead_connection_verdict_from_missing_pingresp(peer: Peer) -> None:
    c = mqtt.MQTTClient("t1", keepalive=1, timeout_ms=300)
    peer.a.sendall(b"\x20\x02\x00\x00")
    c.connect(peer.b)
    peer.read()
    t0 = time.monotonic()
    with pytest.raises(mqtt.MQTTTimeout, match="PINGRESP"):
        while time.monotonic() - t0 < 3:
            c.poll(100)
    assert peer.read() == b"\xc0\x00"
    assert 0.7 < time.monotonic() - t0 < 1.5


BAD = [
    (b"\x20\x02\x00\x04", mqtt.ConnectRefused, "bad user name or password"),
    (b"\x20\x02\x00\x09", mqtt.ConnectRefused, "unknown reason"),
    (b"\x20\x02\x02\x00", mqtt.MQTTProtocolError, "malformed CONNACK"),
    (b"\x30\x00", mqtt.MQTTProtocolError, "expected CONNACK"),
    (b"\x20\x80\x80\x80\x80\x01", mqtt.MQTTProtocolError, "remaining length"),
    (b"\xf0\x00", mqtt.MQTTProtocolError, "unknown packet type 15"),
    (b"\x20\x02\x00", mqtt.MQTTTimeout, "timed out"),     # truncated, then silence
    (b"", mqtt.MQTTTimeout, "no CONNACK"),
]


@pytest.mark.parametrize("data,exc,text", BAD)
def test_bad_connack(peer: Peer, data: bytes, exc: type, text: str) -> None:
    c = mqtt.MQTTClient("t1", timeout_ms=200)
    peer.a.sendall(data)
    with pytest.raises(exc, match=text):
        c.connect(peer.b)
    assert not c.connected


AFTER_CONNECT = [
    (b"\x30\x10\x00\x03a/b", "closed"),                     # truncated PUBLISH then close
    (b"\x90\xff\xff\x7f", "exceeds"),                       # oversized SUBACK (a PUBLISH is read past)
    (b"\x32\xff\x0f\x00\x01a\x00\x00" + bytes(2042), "packet id 0"),  # oversized PUBLISH, packet id 0
    (b"\x32\xff\x0f\x10\x00a" + bytes(2044), "malformed PUBLISH"),  # oversized, topic longer than its head
    (b"\x36\x03\x00\x01a", "malformed PUBLISH"),            # QoS 3
    (b"\x30\x02\x00\x05", "malformed PUBLISH"),             # topic longer than packet
    (b"\x32\x05\x00\x01a\x00\x00", "packet id 0"),
    (b"\x30\x03\x00\x01\xff", "UTF-8"),
    (b"\x40\x01\x00", "malformed packet type 4"),
    (b"\x60\x02\x00\x01", "malformed packet type 6"),       # PUBREL with flags 0
    (b"\x90\x02\x00\x01", "malformed SUBACK"),
    (b"\xc0\x00", "unexpected packet type 12"),
    (b"\x10\x00", "unexpected packet type 1"),
    (b"\x20\x02\x00\x00", "unexpected packet type 2"),
    (b"\xe0\x00", "unexpected packet type 14"),
    (b"\x00\x00", "unknown packet type 0"),
]


@pytest.mark.parametrize("data,text", AFTER_CONNECT)
def test_bad_packets_after_connect(peer: Peer, data: bytes, text: str) -> None:
    c = connected(peer, max_packet=1024)
    peer.a.sendall(data)
    if text == "closed":
        peer.a.shutdown(socket.SHUT_WR)
    with pytest.raises(mqtt.MQTTError, match=text):
        for _ in range(5):
            c.poll(200)
    assert not c.connected


def test_subscribe_refused_and_granted(peer: Peer) -> None:
    c = connected(peer)
    def answer(code: int) -> None:
        pkt = peer.read()
        peer.a.sendall(b"\x90\x03" + pkt[2:4] + bytes([code]))
    t = threading.Thread(target=answer, args=(1,))
    t.start()
    assert c.subscribe("a/#", 2) == 1
    t.join()
    t = threading.Thread(target=answer, args=(0x80,))
    t.start()
    assert c.subscribe("b", 1) == mqtt.REFUSED  # returned, not raised: the session goes on
    t.join()
    assert c.connected
    assert c.publish("t", b"x", 1) and peer.read()[0] == 0x32


def oversized_publish(topic: bytes, qos: int, pid: int, payload: bytes, dup: bool = False) -> bytes:
    var = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"")
    rl = len(var) + len(payload)
    enc = b""
    while True:
        enc += bytes([(rl & 0x7F) | (0x80 if rl > 0x7F else 0)])
        rl >>= 7
        if not rl:
            break
    return bytes([0x30 | (8 if dup else 0) | (qos << 1)]) + enc + var + payload


def test_oversized_publish_is_read_past_and_acknowledged_at_its_qos(peer: Peer) -> None:
    # #6.1: a PUBLISH over max_packet is not buffered and does not end the session
    # (a persistent session would redeliver it on every reconnect): it is read past,
    # acknowledged at its QoS, counted and reported with its size and first bytes.
    got: list[tuple[str, object]] = []
    c = connected(peer, max_packet=256)
    c.on_message = lambda t, p, r: got.append((t, p))
    big = bytes(range(256)) * 40  # 10,240 bytes
    peer.a.sendall(oversized_publish(b"d/cmd", 1, 7, big))
    c.poll(500)
    assert peer.read() == b"\x40\x02\x00\x07"  # PUBACK
    peer.a.sendall(oversized_publish(b"d/cmd", 2, 8, big))
    c.poll(500)
    assert peer.read() == b"\x50\x02\x00\x08"  # PUBREC
    peer.a.sendall(oversized_publish(b"d/cmd", 2, 8, big, dup=True))  # redelivered before PUBREL
    c.poll(500)
    assert peer.read() == b"\x50\x02\x00\x08"
    peer.a.sendall(b"\x62\x02\x00\x08")
    c.poll(500)
    assert peer.read() == b"\x70\x02\x00\x08"  # PUBCOMP
    peer.a.sendall(oversized_publish(b"d/x", 0, 0, b"z" * 300) + bytes.fromhex("3205" "0001" "61" "0009"))
    c.poll(500)
    assert peer.read() == b"\x40\x02\x00\x09"  # the next packet is read from the right place
    assert c.connected and c.oversized == 4  # packets read past; the QoS 2 repeat is reported once
    size = 2 + 5 + 2 + len(big)
    # an oversized one comes with (its size, its first 80 payload bytes) as payload
    assert got == [("d/cmd", (size, big[:80])), ("d/cmd", (size, big[:80])), ("d/x", (2 + 3 + 300, b"z" * 80)),
                   ("a", b"")]
    c.close()


def test_new_session_republishes_unacknowledged_and_drops_past_pubrec(peer: Peer) -> None:
    # #6.3: a clean session holds nothing of the old one (MQTT-3.1.2-6), so nothing
    # is resent with DUP and no PUBREL goes out; what the broker never acknowledged
    # is published again as a new message, a QoS 2 message past PUBREC is dropped
    # and counted (docs/decisions.md, D9).
    c = connected(peer)
    p1 = c.publish("t", b"one", 2)
    peer.read()
    peer.a.sendall(b"\x50\x02" + p1.to_bytes(2, "big"))  # PUBREC: the broker has it
    c.poll(200)
    assert peer.read() == b"\x62\x02" + p1.to_bytes(2, "big")
    p2 = c.publish("t", b"two", 2)
    p3 = c.publish("t", b"three", 1)
    peer.read(), peer.read()
    peer.close()
    fresh = Peer()
    try:
        fresh.a.sendall(b"\x20\x02\x00\x00")  # session present 0
        assert c.connect(fresh.b) is False
        assert fresh.read()[0] == 0x10
        assert fresh.read() == bytes.fromhex("3408" "000174") + p2.to_bytes(2, "big") + b"two"    # DUP 0
        assert fresh.read() == bytes.fromhex("320a" "000174") + p3.to_bytes(2, "big") + b"three"  # DUP 0
        assert c.q2_dropped == 1 and len(c.window) == 2 and p1 not in c.window
        fresh.a.settimeout(0.3)
        with pytest.raises(socket.timeout):
            fresh.a.recv(1)  # nothing else: no PUBREL for p1
    finally:
        c.close()
        fresh.close()


def test_lost_persistent_session_forgets_inbound_qos2(peer: Peer) -> None:
    # #6.3: clean_session false, but the broker answers session-present 0 (it lost
    # the session): its packet ids start again, so a remembered inbound QoS 2 id
    # would swallow a new message as a redelivery.
    got: list[bytes] = []
    c = connected(peer, clean_session=False)
    c.on_message = lambda t, p, r: got.append(p)
    peer.a.sendall(bytes.fromhex("3408" "0001" "61" "0001") + b"one")
    c.poll(200)
    assert peer.read() == b"\x50\x02\x00\x01"  # PUBREC; the PUBREL never comes
    peer.close()
    fresh = Peer()
    try:
        fresh.a.sendall(b"\x20\x02\x00\x00")
        assert c.connect(fresh.b) is False
        fresh.read()
        fresh.a.sendall(bytes.fromhex("3408" "0001" "61" "0001") + b"two")  # a new message, same id
        c.poll(200)
        assert fresh.read() == b"\x50\x02\x00\x01"
        assert got == [b"one", b"two"]
    finally:
        c.close()
        fresh.close()


def test_on_wait_runs_in_every_wait_and_can_end_the_session(peer: Peer) -> None:
    calls: list[int] = []
    c = connected(peer)
    c.on_wait = lambda: calls.append(1)
    assert c.poll(1200) == 0
    assert len(calls) == 3  # slices of at most 500 ms: 500 + 500 + 200

    def down() -> None:
        raise mqtt.MQTTError("network link down")
    c.on_wait = down
    with pytest.raises(mqtt.MQTTError, match="link down"):
        c.poll(1000)
    assert not c.connected


MICROPYTHON_BYTES = r"""
from edgewire import mqtt
ok = []
ok.append(mqtt.encode_connect("dev-1", 30, False, None, None, ("a/b", b"xy", 1, True)) == bytes.fromhex("101a00044d515454042c001e00056465762d310003612f6200027879"))
ok.append(bytes(mqtt.publish_header("t/x", 3, 2, True, True, 0x1234)) + b"abc" == bytes.fromhex("3d0a0003742f781234616263"))
ok.append(mqtt.encode_subscribe(3, "edgewire/v1/d/cmd", 1) == bytes.fromhex("82160003001165646765776972652f76312f642f636d6401"))
try:
    mqtt.MQTTClient("x").publish("t", b"", 3)
except ValueError as e:
    ok.append("qos" in str(e))
try:
    mqtt.MQTTClient("x").publish("t", b"", True)
except ValueError:
    ok.append(True)
print("ok", ok)
"""


@pytest.mark.micropython
def test_encoders_on_micropython(firmware_build: Path) -> None:
    proc = micropython.run_script(MICROPYTHON_BYTES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok [True, True, True, True, True]", proc.stdout + proc.stderr
