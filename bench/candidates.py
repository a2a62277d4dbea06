"""The gateway with another MQTT client in place of ours, for the client
decision (docs/decisions.md): gmqtt in its optimistic_acknowledgement=False
mode (acknowledges once the handler returns, MQTT 5 only) and aiomqtt 2.x
(over paho-mqtt, with paho's manual acknowledgement). Each adapter offers the
surface the gateway uses of `edgewire.gateway.mqtt.MqttClient`: batches()
yielding a list of messages with an explicit `ack()` that the pipeline calls
after the journal commit, publish(), start()/stop(), up/down, stats.

    .venv/bin/python bench/candidates.py --client gmqtt --config gateway.toml

run by bench/relay.py (--clients ours,gmqtt,aiomqtt); not part of the product.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from edgewire.gateway.mqtt import Message, MqttStats

log = logging.getLogger("bench.candidates")


class CandidateBatch(list[Message]):
    """Messages with one acknowledgement handle, as the gateway's own Batch."""

    def __init__(self, messages: list[Message], acks: list[Callable[[], None]]) -> None:
        super().__init__(messages)
        self._acks = acks

    @property
    def needs_ack(self) -> bool:
        return bool(self._acks)

    @property
    def ack_handle(self) -> Callable[[], None] | None:
        return self.ack if self._acks else None

    def ack(self) -> None:
        acks, self._acks = self._acks, []
        for a in acks:
            a()


class _Adapter:
    def __init__(self, *, host: str, port: int, client_id: str, subscriptions: Sequence[tuple[str, int]],
                 keepalive: int = 30, clean_session: bool = False, username: str | None = None,
                 password: str | None = None, queue_limit: int = 20000, name: str = "mqtt", **_: Any) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.username = username
        self.password = password
        self.queue_limit = queue_limit
        self.name = name
        self.stats = MqttStats()
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        self.down.set()
        self._pending: list[Message] = []
        self._pending_acks: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self.up.is_set()

    async def __aenter__(self) -> _Adapter:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-candidate")

    async def _run(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._wake.set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.up.wait()

    def _set_up(self, up: bool) -> None:
        (self.up if up else self.down).set()
        (self.down if up else self.up).clear()

    def _add(self, m: Message, ack: Callable[[], None] | None) -> None:
        self._pending.append(m)
        if ack is not None:
            self._pending_acks.append(ack)
        self.stats.received += 1
        self._wake.set()

    async def batches(self) -> AsyncIterator[CandidateBatch]:
        last: CandidateBatch | None = None
        while True:
            if last is not None:
                last.ack()  # a consumer that does not call ack(): after it asked for more (idempotent)
            await asyncio.sleep(0)
            while not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            batch = CandidateBatch(self._pending, self._pending_acks)
            self._pending, self._pending_acks = [], []
            self.stats.reads += 1
            last = batch
            yield batch


class GmqttAdapter(_Adapter):
    """gmqtt 0.8 over MQTT 5 with optimistic_acknowledgement=False: the PUBACK
    goes once on_message returns, so on_message waits for the batch's ack."""

    async def _run(self) -> None:
        import gmqtt
        from gmqtt.mqtt.constants import MQTTv50

        loop = asyncio.get_running_loop()
        ack_future: list[asyncio.Future[None] | None] = [None]

        def make_ack() -> Callable[[], None]:
            fut: asyncio.Future[None] = loop.create_future()
            ack_future[0] = fut

            def ack() -> None:
                if not fut.done():
                    fut.set_result(None)
            return ack

        async def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
            ack = None
            if qos:
                if ack_future[0] is None or ack_future[0].done() or not self._pending_acks:
                    ack = make_ack()
                fut = ack_future[0]
            self._add(Message(topic.encode(), payload, qos, bool(properties.get("retain")),
                              bool(properties.get("dup")), 0, 0), ack)
            if qos:
                assert fut is not None
                await fut
            return 0

        def on_connect(client: Any, flags: Any, rc: Any, properties: Any) -> None:
            self.stats.connects += 1
            for topic, qos in self.subscriptions:
                client.subscribe(topic, qos=qos)

        def on_subscribe(client: Any, mid: Any, qos: Any, properties: Any) -> None:
            self._set_up(True)

        def on_disconnect(client: Any, packet: Any, exc: Any = None) -> None:
            self.stats.disconnects += 1
            self._set_up(False)

        kwargs: dict[str, Any] = {"clean_session": self.clean_session, "optimistic_acknowledgement": False}
        if not self.clean_session:
            kwargs["session_expiry_interval"] = 0xFFFFFFFF
        c = gmqtt.Client(self.client_id, **kwargs)
        c.on_message = on_message
        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_disconnect = on_disconnect
        if self.username:
            c.set_auth_credentials(self.username, self.password)
        self._client = c
        await c.connect(self.host, self.port, keepalive=self.keepalive, version=MQTTv50)
        try:
            await asyncio.Event().wait()
        finally:
            await c.disconnect()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)
        self.stats.published += 1


class AiomqttAdapter(_Adapter):
    """aiomqtt 2.x: messages from `client.messages`; acknowledgement by paho's
    manual_ack (aiomqtt 2.x has no acknowledgement API of its own)."""

    async def _run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client(self.host, self.port, identifier=self.client_id, clean_session=self.clean_session,
                                  keepalive=self.keepalive, username=self.username, password=self.password) as c:
            self._client = c
            paho = c._client  # noqa: SLF001  (manual acknowledgement is paho's)
            paho.manual_ack_set(True)
            for topic, qos in self.subscriptions:
                await c.subscribe(topic, qos=qos)
            self.stats.connects += 1
            self._set_up(True)
            async for m in c.messages:
                ack = None
                if m.qos:
                    mid, q = m.mid, m.qos

                    def ack(mid: int = mid, q: int = q) -> None:
                        paho.ack(mid, q)
                payload = m.payload if isinstance(m.payload, bytes) else bytes(str(m.payload), "utf-8")
                self._add(Message(m.topic.value.encode(), payload, m.qos, bool(m.retain), False, m.mid, 0), ack)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=qos, retain=retain)
        self.stats.published += 1


ADAPTERS: dict[str, type[_Adapter]] = {"gmqtt": GmqttAdapter, "aiomqtt": AiomqttAdapter}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the gateway with a candidate MQTT client (bench only)")
    ap.add_argument("--client", choices=sorted(ADAPTERS), required=True)
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    import edgewire.gateway.ingest.mqtt as ingest_mqtt
    import edgewire.gateway.mqtt as mqtt_pkg
    import edgewire.gateway.service as service

    adapter = ADAPTERS[args.client]
    # The MQTT ingest adapter builds its client by this name; swap it before it does.
    for mod in (ingest_mqtt, service, mqtt_pkg):
        if hasattr(mod, "MqttClient"):
            setattr(mod, "MqttClient", adapter)
    return int(service.gateway_main(argparse.Namespace(config=args.config, check=None, log_level=None)))


if __name__ == "__main__":
    sys.exit(main())
