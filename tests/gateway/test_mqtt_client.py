"""Our MQTT client and its sans-io parser, byte for byte. A scripted broker
(a real TCP server that speaks exact MQTT bytes) covers what mosquitto will
not do on demand: a QoS 2 redelivery before PUBREL, a protocol violation."""
from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from edgewire.gateway.errors import MqttProtocolError
from edgewire.gateway.mqtt import MqttClient, backoff_delay
from edgewire.gateway.mqtt import packets as P


def test_parser_many_packets_any_split() -> None:
    stream = (P.publish("a/b", b"x" * 300, qos=1, pid=7) + P.publish("a/c", b"z", qos=2, pid=8, retain=True)
              + P.ack(P.PUBACK, 9) + bytes((0xD0, 0)) + P.publish("a/d", b"", qos=0))
    whole = P.PacketReader(max_packet=1000).feed(stream)
    for step in (1, 2, 3, 7, 64):
        r = P.PacketReader(max_packet=1000)
        got: list[P.Packet] = []
        for i in range(0, len(stream), step):
            got += r.feed(stream[i:i + step])
        assert got == whole and r.buffered == 0
    assert whole == [P.Publish(b"a/b", b"x" * 300, 1, False, False, 7), P.Publish(b"a/c", b"z", 2, True, False, 8),
                     P.Ack(P.PUBACK, 9), P.PingResp(), P.Publish(b"a/d", b"", 0, False)]


def test_parser_oversized_publish_is_skipped_unbuffered() -> None:
    big = P.publish("t/x", b"y" * 5000, qos=1, pid=3)
    r = P.PacketReader(max_packet=4200)
    got: list[P.Packet] = []
    for i in range(0, len(big), 100):
        got += r.feed(big[i:i + 100])
        assert r.buffered < 200  # never holds the payload
    got += r.feed(P.ack(P.PUBACK, 4))
    assert got == [P.Publish(b"t/x", b"", 1, False, False, 3, len(big) - 3), P.Ack(P.PUBACK, 4)]


@pytest.mark.parametrize("data", [
    bytes((0x10, 0)),                       # CONNECT from a broker
    bytes((0x62, 3, 0, 1, 0)),              # PUBREL with 3 bytes
    bytes((0x41, 2, 0, 1)),                 # PUBACK with flags (0x40 2 0 1 is a valid one)
    bytes((0x36, 5, 0, 1, 97, 0, 1)),       # PUBLISH QoS 3
    bytes((0x32, 3, 0, 1, 97)),             # QoS 1 without a packet id
    bytes((0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01)),  # 5-byte remaining length
    bytes((0x90, 3, 0, 1, 7)),              # SUBACK with return code 7
])
def test_parser_refuses_protocol_violations(data: bytes) -> None:
    with pytest.raises(MqttProtocolError):
        P.PacketReader(max_packet=1000).feed(data)


@pytest.mark.parametrize("first, name", [(0x40, "PUBACK"), (0x50, "PUBREC"), (0x62, "PUBREL"), (0x70, "PUBCOMP")])
@pytest.mark.parametrize("flip", [0x1, 0x2, 0x4, 0x8])
def test_ack_with_wrong_flags_is_refused_and_nothing_else_is_wrong(first: int, name: str, flip: int) -> None:
    """Only the fixed header's flags differ from a valid ack, so the refusal can
    only come from the flags check (MQTT-2.2.2-1, -2)."""
    good = bytes((first, 2, 0, 1))
    assert [type(p).__name__ for p in P.PacketReader(max_packet=1000).feed(good)] == ["Ack"], name
    with pytest.raises(MqttProtocolError, match="flags"):
        P.PacketReader(max_packet=1000).feed(bytes((first ^ flip, 2, 0, 1)))


def test_backoff_is_jittered_and_capped() -> None:
    delays = [backoff_delay(a, low=0.5, high=8) for a in range(12) for _ in range(20)]
    assert min(delays) >= 0.5 and max(delays) <= 8
    assert len({round(d, 6) for d in delays}) > 100


class ScriptedBroker:
    """Accepts one connection at a time; records what the client sends."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.session_present = False

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                first = await reader.readexactly(1)
                n, mult = 0, 1
                while True:
                    b = (await reader.readexactly(1))[0]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                body = await reader.readexactly(n)
                t = first[0] >> 4
                if t == P.CONNECT:
                    writer.write(bytes((0x20, 2, 1 if self.session_present else 0, 0)))
                elif t == P.SUBSCRIBE:
                    writer.write(bytes((0x90, 3)) + body[:2] + bytes((2,)))
                elif t == P.PINGREQ:
                    writer.write(bytes((0xD0, 0)))
                await self.received.put(first + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def expect(self, ptype: int) -> bytes:
        async with asyncio.timeout(5):
            while True:
                pkt = await self.received.get()
                if pkt[0] >> 4 == ptype:
                    return pkt

    async def until(self, ptype: int) -> list[bytes]:
        """Every packet received up to and including the next one of ptype."""
        out: list[bytes] = []
        async with asyncio.timeout(5):
            while not out or out[-1][0] >> 4 != ptype:
                out.append(await self.received.get())
        return out

    def send(self, data: bytes) -> None:
        self.writers[-1].write(data)

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedBroker, int]]:
    b = ScriptedBroker()
    port = await b.start()
    try:
        yield b, port
    finally:
        await b.close()


async def test_qos2_redelivery_is_delivered_once_and_acks_wait_for_ack(scripted: tuple[ScriptedBroker, int]) -> None:
    broker, port = scripted
    async with MqttClient(host="127.0.0.1", port=port, client_id="gw-test", subscriptions=[("x/#", 2)],
                          reconnect_min=0.05, reconnect_max=0.1) as c:
        await c.wait_connected(5)
        connect = await broker.expect(P.CONNECT)
        assert b"gw-test" in connect and connect[9] & 0x02 == 0  # clean_session=False
        sub = await broker.expect(P.SUBSCRIBE)
        assert sub.endswith(b"x/#\x02")
        batches = c.batches()
        broker.send(P.publish("x/1", b"once", qos=2, pid=11))
        first = await anext(batches)
        assert [m.payload for m in first] == [b"once"]
        broker.send(P.publish("x/1", b"once", qos=2, pid=11, dup=True)   # redelivered before PUBREC
                    + P.publish("x/2", b"q1", qos=1, pid=12))
        second = await anext(batches)                  # received, but nothing acknowledged yet
        assert [m.payload for m in second] == [b"q1"]
        assert c.stats.duplicates_qos2 == 1
        # a marker the client writes after anything it might have acknowledged on its own
        await c.publish("x/marker", b"", qos=0)
        assert [p[0] >> 4 for p in await broker.until(P.PUBLISH)] == [P.PUBLISH]
        first.ack()                                    # the pipeline says: durable
        assert await broker.expect(P.PUBREC) == bytes((0x50, 0, 11))
        second.ack()                                   # the duplicate's PUBREC travels with the later batch
        assert await broker.expect(P.PUBREC) == bytes((0x50, 0, 11))
        assert await broker.expect(P.PUBACK) == bytes((0x40, 0, 12))
        second.ack()                                   # idempotent
        broker.send(P.ack(P.PUBREL, 11))
        assert await broker.expect(P.PUBCOMP) == bytes((0x70, 0, 11))
        broker.send(P.publish("x/1", b"again", qos=2, pid=11))          # after PUBREL: a new message
        later = await anext(batches)
        assert [m.payload for m in later] == [b"again"]
        later.ack()
        assert await broker.expect(P.PUBREC) == bytes((0x50, 0, 11))
        assert c.stats.acks_sent == 4
        await batches.aclose()


async def test_protocol_violation_drops_connection_and_reconnects(scripted: tuple[ScriptedBroker, int]) -> None:
    broker, port = scripted
    async with MqttClient(host="127.0.0.1", port=port, client_id="gw-test", subscriptions=[("x/#", 1)],
                          reconnect_min=0.05, reconnect_max=0.1) as c:
        await c.wait_connected(5)
        broker.send(bytes((0x10, 0)))  # a CONNECT from the broker: not allowed
        await asyncio.wait_for(c.down.wait(), 5)
        assert "MqttProtocolError" in c.stats.last_error
        await c.wait_connected(5)
        assert c.stats.connects == 2 and len(broker.writers) == 2


async def test_qos1_publish_resent_with_dup_after_reconnect(scripted: tuple[ScriptedBroker, int]) -> None:
    broker, port = scripted
    async with MqttClient(host="127.0.0.1", port=port, client_id="gw-test", subscriptions=[("x/#", 1)],
                          reconnect_min=0.05, reconnect_max=0.1) as c:
        await c.wait_connected(5)
        pub = asyncio.ensure_future(c.publish("edgewire/v1/d/cmd", b"cmd", qos=1))
        first = await broker.expect(P.PUBLISH)
        pid = struct.unpack(">H", first[2 + 18:2 + 18 + 2])[0]
        broker.writers[-1].transport.abort()  # lost before the PUBACK
        again = await broker.expect(P.PUBLISH)
        assert again[0] == first[0] | 0x08 and again[1:] == first[1:]  # same packet, DUP set
        broker.send(P.ack(P.PUBACK, pid))
        await asyncio.wait_for(pub, 5)
