"""The embedded amqtt broker against a real MQTT client (paho): QoS 1/2
delivery, retained messages, last wills, port fallback and a clean stop."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from edgewire.gateway.embedded_broker import (
    EmbeddedBroker,
    EmbeddedBrokerError,
    EmbeddedBrokerThread,
    PortInUseError,
    start_embedded_broker,
)


class Recorder:
    """A paho client that records what it receives, thread-safely."""

    def __init__(self, port: int, client_id: str, *, will: tuple[str, bytes, int, bool] | None = None,
                 keepalive: int = 60) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        if will:
            self.client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.client.loop_start()

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
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def embedded() -> Iterator[EmbeddedBrokerThread]:
    b = EmbeddedBrokerThread(port=0).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_qos_delivery_is_acknowledged_and_complete(embedded: EmbeddedBrokerThread, qos: int) -> None:
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


def test_retained_message_reaches_late_subscriber_only(embedded: EmbeddedBrokerThread) -> None:
    pub = Recorder(embedded.port, "pub")
    pub.client.publish("r/a", b"last", qos=1, retain=True).wait_for_publish(5)
    pub.client.publish("other/b", b"x", qos=1, retain=True).wait_for_publish(5)
    late = Recorder(embedded.port, "late")
    late.subscribe("r/#", 1)
    # A bystander that subscribed to nothing must receive nothing, even though
    # "r/#" is now a live subscription (amqtt 0.12 would leak it; we fix that).
    bystander = Recorder(embedded.port, "bystander")
    got = late.wait_for(1)
    time.sleep(0.3)
    assert got == [("r/a", b"last", 1, True)]
    assert late.messages == got
    assert bystander.messages == []
    # An empty retained payload clears it.
    pub.client.publish("r/a", b"", qos=1, retain=True).wait_for_publish(5)
    later = Recorder(embedded.port, "later")
    later.subscribe("r/#", 1)
    time.sleep(0.3)
    assert later.messages == []
    for c in (pub, late, bystander, later):
        c.close()


def test_last_will_on_abrupt_close(embedded: EmbeddedBrokerThread) -> None:
    watcher = Recorder(embedded.port, "watcher")
    watcher.subscribe("dev/+/status", 1)
    dev = Recorder(embedded.port, "dev-1", will=("dev/dev-1/status", b"lost", 1, True))
    time.sleep(0.2)
    # Abrupt: close the TCP socket without sending DISCONNECT.
    dev.client.loop_stop()
    sock = dev.client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    got = watcher.wait_for(1)
    assert got[:1] == [("dev/dev-1/status", b"lost", 1, False)]
    # The will was retained: a newcomer sees it.
    newcomer = Recorder(embedded.port, "newcomer")
    newcomer.subscribe("dev/+/status", 1)
    assert newcomer.wait_for(1) == [("dev/dev-1/status", b"lost", 1, True)]
    watcher.close()
    newcomer.close()


def test_clean_disconnect_sends_no_will(embedded: EmbeddedBrokerThread) -> None:
    watcher = Recorder(embedded.port, "watcher")
    watcher.subscribe("dev/#", 1)
    dev = Recorder(embedded.port, "dev-2", will=("dev/dev-2/status", b"lost", 1, False))
    time.sleep(0.2)
    dev.close()
    time.sleep(0.5)
    watcher.close()
    assert watcher.messages == []


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
    gone = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stays")
    client.on_disconnect = lambda *a: gone.set()
    client.reconnect_delay_set(30, 30)
    await asyncio.to_thread(client.connect, "127.0.0.1", port)
    client.loop_start()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.2)
    await b.stop()
    await b.stop()  # idempotent
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


def test_thread_helper_reports_start_errors() -> None:
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen()
        taken = occupier.getsockname()[1]
        with pytest.raises(PortInUseError):
            EmbeddedBrokerThread(port=taken, allow_fallback=False).start()
        with EmbeddedBrokerThread(port=taken) as b:
            assert b.fell_back and b.port != taken
