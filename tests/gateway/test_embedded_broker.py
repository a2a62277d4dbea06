"""The embedded amqtt broker, in its own process, against real MQTT clients
(paho, and raw sockets where the exact bytes matter): delivery at the QoS
MQTT 3.1.1 prescribes, everything a client wrote before it left, retained
messages, last wills, port fallback and a clean stop.

No test here waits a fixed time: where a test shows that something did NOT
arrive, it first waits for a later barrier that must arrive after it (a SUBACK,
or a message published afterwards)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from edgewire.gateway.embedded_broker import (
    EmbeddedBroker,
    EmbeddedBrokerError,
    PortInUseError,
    start_embedded_broker,
)


class Recorder:
    """A paho client that records what it receives, thread-safely."""

    def __init__(self, port: int, client_id: str, *, will: tuple[str, bytes, int, bool] | None = None,
                 keepalive: int = 60) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self._cond = threading.Condition()
        connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda *a: connected.set()
        if will:
            self.client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.client.loop_start()
        assert connected.wait(10), f"{client_id}: no CONNACK"

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def subscribe(self, flt: str, qos: int) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(flt, qos)
        assert done.wait(5), f"no SUBACK for {flt}"

    def wait_for(self, n: int, timeout: float = 5.0) -> list[tuple[str, bytes, int, bool]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        # Stop the network thread only once paho has sent DISCONNECT and closed
        # the socket; stopping it earlier leaves the socket open.
        gone = threading.Event()
        self.client.on_disconnect = lambda *a: gone.set()
        self.client.disconnect()
        gone.wait(10)
        self.client.loop_stop()


def _cut(rec: Recorder) -> None:
    """Abrupt end: close the TCP socket without sending DISCONNECT."""
    rec.client.loop_stop()
    sock = rec.client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def embedded() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(port=0).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_qos_delivery_is_acknowledged_and_complete(embedded: EmbeddedBroker, qos: int) -> None:
    sub = Recorder(embedded.port, "sub")
    sub.subscribe("t/#", qos)
    pub = Recorder(embedded.port, "pub")
    infos = [pub.client.publish("t/x", b"m%d" % i, qos=qos) for i in range(50)]
    for info in infos:
        info.wait_for_publish(5)
        assert info.is_published()  # PUBACK (QoS 1) / PUBCOMP (QoS 2) came back
    got = sub.wait_for(50)
    pub.close()
    sub.close()
    assert [m[1] for m in got] == [b"m%d" % i for i in range(50)]
    assert {m[2] for m in got} == {qos}


def test_retained_message_reaches_late_subscriber_only(embedded: EmbeddedBroker) -> None:
    pub = Recorder(embedded.port, "pub")
    pub.client.publish("r/a", b"last", qos=1, retain=True).wait_for_publish(5)
    pub.client.publish("other/b", b"x", qos=1, retain=True).wait_for_publish(5)
    late = Recorder(embedded.port, "late")
    late.subscribe("r/#", 1)
    # A bystander that subscribed to nothing must receive nothing, even though
    # "r/#" is now a live subscription (amqtt 0.12 would leak it; we fix that).
    bystander = Recorder(embedded.port, "bystander")
    got = late.wait_for(1)
    assert got == [("r/a", b"last", 1, True)]
    # Barriers: the broker sends retained messages at CONNACK and right after
    # each SUBACK, so anything due comes before the SUBACK of a later subscription.
    late.subscribe("barrier/late", 1)
    bystander.subscribe("barrier/bystander", 1)
    assert late.messages == got
    assert bystander.messages == []
    # An empty retained payload clears it.
    pub.client.publish("r/a", b"", qos=1, retain=True).wait_for_publish(5)
    later = Recorder(embedded.port, "later")
    later.subscribe("r/#", 1)
    later.subscribe("barrier/later", 1)
    assert later.messages == []
    for c in (pub, late, bystander, later):
        c.close()


def test_last_will_on_abrupt_close(embedded: EmbeddedBroker) -> None:
    watcher = Recorder(embedded.port, "watcher")
    watcher.subscribe("dev/+/status", 1)
    dev = Recorder(embedded.port, "dev-1", will=("dev/dev-1/status", b"lost", 1, True))
    _cut(dev)
    got = watcher.wait_for(1)
    assert got[:1] == [("dev/dev-1/status", b"lost", 1, False)]
    # The will was retained: a newcomer sees it.
    newcomer = Recorder(embedded.port, "newcomer")
    newcomer.subscribe("dev/+/status", 1)
    assert newcomer.wait_for(1) == [("dev/dev-1/status", b"lost", 1, True)]
    watcher.close()
    newcomer.close()


def test_clean_disconnect_sends_no_will(embedded: EmbeddedBroker) -> None:
    watcher = Recorder(embedded.port, "watcher")
    watcher.subscribe("dev/#", 1)
    dev = Recorder(embedded.port, "dev-2", will=("dev/dev-2/status", b"lost", 1, False))
    dev.client.publish("dev/dev-2/last", b"bye", qos=0)
    dev.close()
    # Barrier: the same client id connects again, which the broker allows
    # once it has read the first session's DISCONNECT, and publishes; a will
    # queued when the first session ended comes to the watcher before that.
    again = Recorder(embedded.port, "dev-2")
    again.client.publish("dev/dev-2/after", b"x", qos=1).wait_for_publish(5)
    got = watcher.wait_for(2, timeout=10)
    again.close()
    watcher.close()
    assert got == [("dev/dev-2/last", b"bye", 0, False), ("dev/dev-2/after", b"x", 1, False)]


async def test_port_taken_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        taken = occupier.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="edgewire.embedded_broker"):
            async with await start_embedded_broker(port=taken) as b:
                assert b.fell_back
                assert b.port != taken and b.requested_port == taken
                assert b.url == f"mqtt://127.0.0.1:{b.port}"
                _, w = await asyncio.open_connection("127.0.0.1", b.port)
                w.close()
                await w.wait_closed()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"port {taken}" in m and "already in use" in m and str(b.port) in m for m in warnings), warnings


async def test_port_taken_without_fallback_raises() -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        taken = occupier.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {taken} on 127.0.0.1 is already in use"):
            await start_embedded_broker(port=taken, allow_fallback=False)


async def test_requested_free_port_is_used_and_stop_frees_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = await start_embedded_broker(port=port, allow_fallback=False)
    assert isinstance(b, EmbeddedBroker)
    assert (b.port, b.fell_back, b.running) == (port, False, True)
    # Neither an MQTT client nor a socket that never sent CONNECT may keep
    # the broker from stopping; both see their connection closed.
    # The silent socket connects first: the broker accepts in order, so once
    # the MQTT client has its CONNACK the silent one has been taken in too.
    r, w = await asyncio.open_connection("127.0.0.1", port)
    gone = threading.Event()
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stays")
    client.on_disconnect = lambda *a: gone.set()
    client.on_connect = lambda *a: connected.set()
    client.reconnect_delay_set(30, 30)
    await asyncio.to_thread(client.connect, "127.0.0.1", port)
    client.loop_start()
    assert await asyncio.to_thread(connected.wait, 10)
    await b.aclose()
    await b.aclose()  # idempotent
    assert not b.running
    try:
        assert await asyncio.wait_for(r.read(), 5) == b""
        assert await asyncio.to_thread(gone.wait, 5)
    finally:
        w.close()
        await w.wait_closed()
        client.loop_stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_bad_arguments_are_refused_before_io() -> None:
    with pytest.raises(EmbeddedBrokerError, match="port 70000 is not an integer"):
        await start_embedded_broker(port=70000)
    with pytest.raises(EmbeddedBrokerError, match="host '' is not"):
        await start_embedded_broker(host="")


def test_sync_api_reports_start_errors() -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        taken = occupier.getsockname()[1]
        with pytest.raises(PortInUseError):
            EmbeddedBroker(port=taken, allow_fallback=False).start()
        with EmbeddedBroker(port=taken) as b:
            assert b.fell_back and b.port != taken


# ---------------------------------------------------------------- its own process

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited too
        return f.read().split(") ", 1)[1][0] != "Z"


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_runs_in_a_process_of_its_own_and_stops_with_it() -> None:
    with EmbeddedBroker(port=0) as b:
        pid = b.pid
        assert pid is not None and pid != os.getpid() and _alive(pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"edgewire.gateway.embedded_broker" in f.read()
        sub = Recorder(b.port, "sub")
        sub.subscribe("t", 1)
        sub.close()
    assert not b.running and _wait_gone(pid)


def test_the_broker_dies_with_its_parent_however_it_dies() -> None:
    """A gateway killed with SIGKILL must not leave a broker holding its port."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from edgewire.gateway.embedded_broker import EmbeddedBroker\n"
         "b = EmbeddedBroker(port=0).start()\n"
         "print(b.pid, b.port, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid, port = map(int, parent.stdout.readline().split())
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(pid), "the broker outlived its parent"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()


# ---------------------------------------------------------------- delivery QoS

@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivery_qos_is_the_lower_of_publish_and_subscription(embedded: EmbeddedBroker, sub_qos: int) -> None:
    """MQTT 3.1.1 section 3.3.5: a subscriber gets each message at min(publish
    QoS, subscription QoS). amqtt delivered everything at the subscription's
    QoS, so a gateway subscribed at QoS 2 paid a four-packet handshake for
    every QoS 0 reading."""
    sub = Recorder(embedded.port, "sub")
    sub.subscribe("q/#", sub_qos)
    pub = Recorder(embedded.port, "pub")
    for pub_qos in (0, 1, 2):
        pub.client.publish(f"q/{pub_qos}", b"%d" % pub_qos, qos=pub_qos).wait_for_publish(5)
    got = sub.wait_for(3)
    pub.close()
    sub.close()
    assert sorted((t, q) for t, _, q, _ in got) == [(f"q/{p}", min(p, sub_qos)) for p in (0, 1, 2)]


def test_will_is_delivered_at_the_lower_qos(embedded: EmbeddedBroker) -> None:
    watcher = Recorder(embedded.port, "watcher")
    watcher.subscribe("w/#", 2)
    dev = Recorder(embedded.port, "dev-w", will=("w/dev-w", b"lost", 1, False))
    _cut(dev)
    assert watcher.wait_for(1) == [("w/dev-w", b"lost", 1, False)]
    watcher.close()


# ---------------------------------------------------------------- what was written before leaving

def _packet(kind: int, body: bytes) -> bytes:
    out, n = bytearray([kind]), len(body)
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _string(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def _burst_publisher(broker: EmbeddedBroker, client_id: str, count: int, end: str) -> None:
    """CONNECT, wait for CONNACK, then write `count` small QoS 0 PUBLISH
    packets and a DISCONNECT (or nothing) in one go and close the socket.

    The broker is paused (SIGSTOP) while the burst is written, so that all of
    it and the end of the connection are waiting when it reads: the worst case,
    made certain. Keepalive 0 because then amqtt parses a buffered burst
    without yielding to its event loop (on Python 3.12+ it does so with any
    keepalive), which is where the loss happened."""
    assert broker.pid is not None
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)))
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        assert chunk, "broker closed before CONNACK"
        connack += chunk
    assert connack == b"\x20\x02\x00\x00", connack
    burst = b"".join(_packet(0x30, _string("burst/t") + b"%04d" % i) for i in range(count))
    if end == "disconnect":
        burst += b"\xe0\x00"
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        sock.sendall(burst)  # 55 KB: fits the loopback socket buffers
        sock.close()
    finally:
        os.kill(broker.pid, signal.SIGCONT)


@pytest.mark.parametrize("end", ["disconnect", "close"])
def test_qos0_burst_written_just_before_leaving_arrives_whole(embedded: EmbeddedBroker, end: str) -> None:
    """5,000 QoS 0 messages written at once, then DISCONNECT (or a bare
    close): every one reaches the subscriber, in order. amqtt cancelled the
    handling of every packet not yet processed when the connection ended:
    1 of 5,000 got through here."""
    sub = Recorder(embedded.port, "sub")
    sub.subscribe("burst/#", 2)
    _burst_publisher(embedded, "burster", 5000, end)
    got = sub.wait_for(5000, timeout=90)
    # Barrier: nothing more (no duplicates) after a message published later.
    tail = Recorder(embedded.port, "tail")
    tail.client.publish("burst/zz-after", b"after", qos=1).wait_for_publish(5)
    got = sub.wait_for(5001, timeout=30)
    tail.close()
    sub.close()
    payloads = [p for t, p, _, _ in got if t == "burst/t"]
    assert len(payloads) == 5000, f"{len(payloads)} of 5000 arrived"
    assert payloads == [b"%04d" % i for i in range(5000)]
    assert {q for t, _, q, _ in got if t == "burst/t"} == {0}
    assert got[-1][:2] == ("burst/zz-after", b"after")
