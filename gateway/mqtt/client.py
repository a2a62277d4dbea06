"""An asyncio MQTT 3.1.1 client built for ingest throughput.

One `MqttClient` owns one supervised connection: it connects, subscribes,
keeps alive, and on any loss reconnects with jittered exponential backoff and
subscribes again. With clean_session=False and a stable client id the broker
keeps the session while the gateway is away and delivers what QoS 1/2 traffic
was queued meanwhile.

    async with MqttClient(host="127.0.0.1", port=1883, client_id="gw",
                          subscriptions=[("edgewire/v1/#", 2)]) as client:
        async for batch in client.batches():     # Batch: list[Message], many per read
            ...                                  # journal it; once it is committed:
            batch.ack()                          # now the PUBACK/PUBREC go to the broker
        await client.publish("t", b"x", qos=1)   # returns when the broker's PUBACK arrives

TLS: pass `tls_context=` (an ssl.SSLContext the caller built: CA, client
certificate, verification); the server name checked is `server_hostname`,
or the host.

Inbound: QoS 0, 1 (PUBACK) and 2 (PUBREC/PUBREL/PUBCOMP; a PUBLISH
redelivered before its PUBREL is not delivered twice). Acknowledgement is
explicit: nothing is acknowledged until the consumer calls the batch's
`ack()`, which the gateway does only after the journal has committed the
batch (ack after durable). Call ack() in the order the batches came; a batch
can be acknowledged after later ones were received (pipelining), up to the
broker's in-flight limit. A batch may be empty and carry only the
acknowledgement of a QoS 2 redelivery, which must wait for its original's
commit like any other. Acks of a connection that has since been lost are not
sent (packet ids belong to their connection; the broker redelivers in the
kept session). Between socket and consumer at most `queue_limit` messages
wait; beyond that the socket is not read (TCP back-pressure to the broker).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

from edgewire.gateway.errors import MqttError, MqttNotConnected, MqttProtocolError
from edgewire.gateway.mqtt import packets as P
from edgewire.gateway.aio import cancel_and_wait

log = logging.getLogger("edgewire.gateway.mqtt")

__all__ = ["AckHandle", "Batch", "Message", "MqttClient", "MqttStats", "backoff_delay"]


Message = P.Publish
"""One inbound PUBLISH: topic, payload, qos, retain, dup, pid, and `size` > 0
with an empty payload for a packet larger than max_packet (refused unread)."""


class AckHandle:
    """The acknowledgement of one read: the PUBACK/PUBREC of its messages.
    Calling it sends them (once; later calls do nothing). It holds the packet
    ids alone, not the messages, so a pipeline that keeps it until a commit
    keeps no payloads alive meanwhile."""

    __slots__ = ("_client", "_conn", "_acks")

    def __init__(self, client: MqttClient, conn: _Conn, acks: list[tuple[int, int]]) -> None:
        self._client = client
        self._conn = conn
        self._acks = acks

    def __call__(self) -> None:
        acks, self._acks = self._acks, []
        if acks:
            self._client._send_acks(self._conn, acks)


class Batch(list[Message]):
    """Messages of one read, in order, with their acknowledgement handle."""

    __slots__ = ("_handle",)

    def __init__(self, messages: list[Message], client: MqttClient, conn: _Conn, acks: list[tuple[int, int]]) -> None:
        super().__init__(messages)
        self._handle = AckHandle(client, conn, acks) if acks else None

    @property
    def needs_ack(self) -> bool:
        return self._handle is not None and bool(self._handle._acks)

    @property
    def ack_handle(self) -> AckHandle | None:
        """What `ack()` calls, apart from the messages (None: nothing to
        acknowledge, e.g. a read of QoS 0 messages only)."""
        return self._handle

    def ack(self) -> None:
        """Send this batch's PUBACK/PUBREC. Call it only once what the batch
        carries is durable. Idempotent."""
        if self._handle is not None:
            self._handle()


@dataclass(slots=True)
class MqttStats:
    connects: int = 0
    disconnects: int = 0
    reads: int = 0
    received: int = 0
    oversized: int = 0
    duplicates_qos2: int = 0
    published: int = 0
    paused: int = 0
    acks_sent: int = 0
    acks_moot: int = 0       # acks of a connection lost before the commit (the broker redelivers)
    last_error: str = ""


def backoff_delay(attempt: int, *, low: float, high: float) -> float:
    """Full-jitter exponential backoff: uniform in [low, min(high, low*2**attempt)]."""
    cap = min(high, low * (2 ** min(attempt, 32)))
    return random.uniform(low, max(low, cap))


class _Conn(asyncio.Protocol):
    """One TCP connection's protocol. Parses in data_received, hands complete
    PUBLISH batches to the client, answers PUBREL at once."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.reader = P.PacketReader(max_packet=client.max_packet)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[P.ConnAck] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subacks: dict[int, asyncio.Future[P.SubAck]] = {}
        self.last_rx = time.monotonic()
        self.paused = False
        self.error: BaseException | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.client.stats.reads += 1
        try:
            packets = self.reader.feed(data)
        except MqttProtocolError as e:
            self.fail(e)
            return
        batch: list[Message] = []
        acks: list[tuple[int, int]] = []
        client = self.client
        publish = P.Publish
        for pkt in packets:
            if type(pkt) is publish:
                qos = pkt[2]       # .qos, .size: by index, which the interpreter specializes (hot path)
                if pkt[6]:
                    client.stats.oversized += 1
                if qos == 0:
                    batch.append(pkt)
                elif qos == 1:
                    batch.append(pkt)
                    acks.append((P.PUBACK, pkt.pid))
                else:
                    if pkt.pid in client._qos2_received:
                        client.stats.duplicates_qos2 += 1
                    else:
                        client._qos2_received.add(pkt.pid)
                        batch.append(pkt)
                    acks.append((P.PUBREC, pkt.pid))
            else:
                self._control(pkt)
            if self.error is not None:
                return
        if batch or acks:
            client._deliver(self, batch, acks)

    def _control(self, pkt: P.Packet) -> None:
        client = self.client
        if isinstance(pkt, P.Ack):
            if pkt.type == P.PUBREL:
                client._qos2_received.discard(pkt.pid)
                self.write(P.ack(P.PUBCOMP, pkt.pid))
            elif pkt.type == P.PUBACK:
                client._puback(pkt.pid)
            # PUBREC/PUBCOMP: we never publish at QoS 2; UNSUBACK: we never unsubscribe
        elif isinstance(pkt, P.ConnAck):
            if self.connack.done():
                self.fail(MqttProtocolError("second CONNACK"))
            else:
                self.connack.set_result(pkt)
        elif isinstance(pkt, P.SubAck):
            fut = self.subacks.pop(pkt.pid, None)
            if fut is not None and not fut.done():
                fut.set_result(pkt)
        # PingResp: last_rx already updated

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = exc or MqttError("connection closed by the broker")
        futures: list[asyncio.Future[P.ConnAck] | asyncio.Future[P.SubAck]] = [self.connack, *self.subacks.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(MqttError(f"connection lost: {self.error}"))
                # Mark it seen: after a cancelled connect (a failed start) nobody
                # awaits it, and asyncio would log "never retrieved" at collection.
                fut.exception()
        if not self.closed.done():
            self.closed.set_result(None)
        self.client._lost(self)

    # helpers
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.client.stats.paused += 1
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.last_rx = time.monotonic()
            self.transport.resume_reading()


class MqttClient:
    """See the module docstring. Construct, then `async with` it (or start/stop)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        keepalive: int = 30,
        clean_session: bool = False,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 10.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        max_packet: int = 65536,
        queue_limit: int = 20000,
        max_inflight: int = 1024,
        name: str = "mqtt",
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if not subscriptions:
            raise ValueError("at least one subscription is needed")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.username = username
        self._password = password
        self.connect_timeout = connect_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.max_packet = max_packet
        self.queue_limit = queue_limit
        self.max_inflight = max_inflight
        self.name = name
        # TLS by injection: the caller builds the context (CA, client
        # certificate, verification), nothing here reads certificates.
        self.tls_context = tls_context
        self.server_hostname = server_hostname
        self.stats = MqttStats()
        self.up = asyncio.Event()      # set while connected and subscribed
        self.down = asyncio.Event()    # set while not
        self.down.set()
        self._conn: _Conn | None = None
        self._queue: collections.deque[tuple[_Conn, list[Message], list[tuple[int, int]]]] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._qos2_received: set[int] = set()
        self._next_pid = 0
        self._inflight: dict[int, tuple[bytes, asyncio.Future[None]]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._consumer_active = False

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> MqttClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_context is not None else 'mqtt'}://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self.up.is_set()

    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"{self.name}-supervisor")

    async def stop(self) -> None:
        """Send DISCONNECT if connected, close, and end batches()."""
        self._closing = True
        conn = self._conn
        if conn is not None and conn.transport is not None and self.connected:
            conn.write(P.DISCONNECT_BYTES)
            conn.transport.close()
        await cancel_and_wait(self._supervisor)
        self._supervisor = None
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()
        for _, fut in self._inflight.values():
            if not fut.done():
                fut.set_exception(MqttNotConnected("client stopped"))
        self._inflight.clear()
        self._wake.set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.up.wait()

    # ------------------------------------------------------------ supervisor
    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                conn = await self._connect()
            except (OSError, MqttError, TimeoutError) as e:
                self.stats.last_error = f"{type(e).__name__}: {e}"
                log.warning("%s: cannot connect to %s (%s)", self.name, self.url, self.stats.last_error)
            else:
                attempt = 0
                keeper = asyncio.get_running_loop().create_task(self._keepalive(conn), name=f"{self.name}-keepalive")
                try:
                    await conn.closed
                finally:
                    keeper.cancel()
                self._set_down()
                self.stats.disconnects += 1
                if self._closing:
                    return
                self.stats.last_error = f"{type(conn.error).__name__}: {conn.error}"
                log.warning("%s: connection to %s lost (%s); reconnecting", self.name, self.url, self.stats.last_error)
            delay = backoff_delay(attempt, low=self.reconnect_min, high=self.reconnect_max)
            attempt += 1
            await asyncio.sleep(delay)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            tls = self.tls_context
            _, conn = await loop.create_connection(
                lambda: _Conn(self), self.host, self.port, ssl=tls,
                server_hostname=(self.server_hostname or self.host) if tls is not None else None)
            try:
                conn.write(P.connect(client_id=self.client_id, keepalive=self.keepalive,
                                     clean_session=self.clean_session, username=self.username,
                                     password=self._password))
                ack = await conn.connack
                if ack.code:
                    reason = P.CONNACK_CODES.get(ack.code, f"code {ack.code}")
                    raise MqttError(f"broker refused the connection: {reason}")
                if not ack.session_present:
                    # No session on the broker: nothing of the old one will come back.
                    self._qos2_received.clear()
                self._conn = conn
                pid = self._pid()
                fut: asyncio.Future[P.SubAck] = loop.create_future()
                conn.subacks[pid] = fut
                conn.write(P.subscribe(pid, self.subscriptions))
                suback = await fut
            except BaseException:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
        refused = [f for (f, _), c in zip(self.subscriptions, suback.codes) if c == 0x80]
        if refused or len(suback.codes) != len(self.subscriptions):
            conn.fail(MqttError(f"broker refused subscriptions {refused}"))
            raise MqttError(f"broker refused subscriptions {refused}")
        # Unacknowledged QoS 1 publishes go again, marked DUP.
        for pid, (packet, _) in self._inflight.items():
            conn.write(bytes((packet[0] | 0x08,)) + packet[1:])
        self.stats.connects += 1
        self.down.clear()
        self.up.set()
        log.info("%s: connected to %s as %r (session present: %s)", self.name, self.url,
                 self.client_id, ack.session_present)
        return conn

    async def _keepalive(self, conn: _Conn) -> None:
        # PINGREQ every keepalive/2; the link is dead once 1.5 x keepalive
        # pass without a byte from the broker (the server's rule in MQTT
        # 3.1.1, 3.1.2.10, applied to our side). Wake at whichever comes
        # first, so detection never takes longer than 1.5 x.
        interval = self.keepalive / 2
        dead_after = self.keepalive * 1.5
        next_ping = time.monotonic() + interval
        while True:
            # while we pause reading (back-pressure) silence is ours, not the broker's
            wake = next_ping if conn.paused else min(next_ping, conn.last_rx + dead_after)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            if not conn.paused and now - conn.last_rx >= dead_after:
                conn.fail(MqttError(f"no answer from the broker for {dead_after:g} s"))
                return
            if now >= next_ping:
                conn.write(P.PINGREQ_BYTES)
                next_ping = now + interval

    def _set_down(self) -> None:
        self.up.clear()
        self.down.set()

    def _lost(self, conn: _Conn) -> None:
        if conn is self._conn:
            self._set_down()

    # ------------------------------------------------------------ inbound
    def _deliver(self, conn: _Conn, batch: list[Message], acks: list[tuple[int, int]]) -> None:
        self._queue.append((conn, batch, acks))
        self._queued += len(batch)
        self.stats.received += len(batch)
        self._wake.set()
        if self._queued >= self.queue_limit:
            conn.pause()

    async def batches(self) -> AsyncIterator[Batch]:
        """Yield received messages in batches (`Batch`), in order, until stop().
        One consumer at a time. Nothing is acknowledged until the consumer
        calls `batch.ack()`."""
        if self._consumer_active:
            raise RuntimeError("batches() already has a consumer")
        self._consumer_active = True
        try:
            while True:
                # Let other tasks (the live clients' senders) run between
                # batches, also when batches are waiting.
                await asyncio.sleep(0)
                while not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                conn, batch, acks = self._queue.popleft()
                self._queued -= len(batch)
                if conn.paused and self._queued <= self.queue_limit // 2:
                    conn.resume()
                yield Batch(batch, self, conn, acks)
        finally:
            self._consumer_active = False

    def _send_acks(self, conn: _Conn, acks: list[tuple[int, int]]) -> None:
        # Packet ids belong to their connection: a dead one's acks are moot,
        # the broker redelivers on the next (session kept).
        if conn is not self._conn or conn.transport is None or conn.transport.is_closing():
            self.stats.acks_moot += len(acks)
            return
        self.stats.acks_sent += len(acks)
        conn.write(P.ack_list(acks))

    # ------------------------------------------------------------ outbound
    def _pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._inflight:
                return self._next_pid
        raise MqttError("no free packet id")

    def _puback(self, pid: int) -> None:
        item = self._inflight.pop(pid, None)
        if item is not None and not item[1].done():
            item[1].set_result(None)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; at QoS 1 return once the broker acknowledged (resent after a
        reconnect until it does). Raises MqttNotConnected when the broker is down
        right now, MqttError when too many publishes are in flight."""
        conn = self._conn
        if not self.connected or conn is None:
            raise MqttNotConnected(f"not connected to {self.url}")
        if qos == 0:
            conn.write(P.publish(topic, payload, qos=0, retain=retain))
            self.stats.published += 1
            return
        if qos != 1:
            raise ValueError("only QoS 0 and 1 are supported for publishing")
        if len(self._inflight) >= self.max_inflight:
            raise MqttError(f"{self.max_inflight} publishes already wait for the broker")
        pid = self._pid()
        packet = P.publish(topic, payload, qos=1, pid=pid, retain=retain)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[pid] = (packet, fut)
        conn.write(packet)
        self.stats.published += 1
        try:
            await fut
        finally:
            self._inflight.pop(pid, None)
