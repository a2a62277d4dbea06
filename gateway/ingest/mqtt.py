"""MQTT ingest: the broker (configured, or the embedded one) -> our MQTT
client -> decode -> Core, with each batch's ack handle; commands go down the
same connection (one MQTT session per gateway)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from edgewire import wire
from edgewire.gateway.certs import client_context
from edgewire.gateway.config import GatewayConfig, read_password
from edgewire.gateway.core import MESSAGE_COST, Core
from edgewire.gateway.decode import Decoder, ProtocolError, Telemetry
from edgewire.gateway.errors import MqttNotConnected
from edgewire.gateway.mqtt import Batch, Message, MqttClient
from edgewire.gateway.aio import cancel_and_wait

log = logging.getLogger("edgewire.gateway.ingest.mqtt")

__all__ = ["MqttIngest", "SUBSCRIPTIONS", "build"]

# One subscription for the whole protocol tree, so that wrong topics under it
# are seen and counted (kind `topic`) rather than silently never delivered.
SUBSCRIPTIONS = [(wire.ROOT + "/#", 2)]


def build(config: GatewayConfig, core: Core) -> MqttIngest:
    return MqttIngest(config=config, core=core)


class MqttIngest:
    """The MQTT ingest adapter (see gateway/ingest/__init__.py for the contract)."""

    name = "mqtt"

    def __init__(self, *, core: Core, config: GatewayConfig | None = None, client: MqttClient | None = None,
                 decoder: Decoder | None = None) -> None:
        self.config = config or GatewayConfig()
        self.client = client
        self.core = core
        self.decoder = decoder or Decoder()
        self.url = ""
        self.broker: Any = None   # the embedded broker, when it runs
        self.broker_watch: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the embedded broker if no [mqtt] url is set, connect, consume."""
        cfg = self.config
        tls = client_context(cfg.mqtt) if cfg.mqtt.tls else None
        if cfg.mqtt.url:
            host, port = cfg.mqtt.host_port
            self.url = cfg.mqtt.url
        else:
            from edgewire.gateway.embedded_broker import IngestWatch, TlsListener, start_embedded_broker

            eb = cfg.embedded_broker
            self.broker = await start_embedded_broker(host=eb.host, port=eb.port, allow_fallback=eb.allow_fallback,
                                                      auth_dir=cfg.mqtt_auth.dir, gateway_user=cfg.mqtt.username,
                                                      tls=TlsListener.of(eb))
            host, port, self.url, tls = self.broker.endpoint(eb.ca_file)  # over TLS when it has a TLS listener
            self.broker_watch = IngestWatch(threshold=eb.warn_rate)
            log.info("no [mqtt] url: embedded broker at %s (process %s)", self.url, self.broker.pid)
        if self.client is None:
            m = cfg.mqtt
            self.client = MqttClient(host=host, port=port, client_id=m.client_id, subscriptions=SUBSCRIPTIONS,
                                     keepalive=m.keepalive, clean_session=m.clean_session,
                                     username=m.username or None, password=read_password(m),
                                     connect_timeout=m.connect_timeout, reconnect_min=m.reconnect_min,
                                     reconnect_max=m.reconnect_max, max_packet=m.max_packet,
                                     queue_limit=m.queue_limit, max_inflight=max(16, cfg.commands.max_pending),
                                     name="mqtt-ingest", tls_context=tls)
        self.client.start()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="ingest-mqtt")
        if self.broker_watch is not None:  # warns when ingest nears the embedded broker's limit
            client = self.client
            self._watch_task = asyncio.get_running_loop().create_task(
                self.broker_watch.run(lambda: client.stats.received), name="embedded-broker-watch")

    async def drain(self) -> None:
        """Stop taking batches; what was taken is in the core's hands (committed,
        then acknowledged while the connection is still up)."""
        await cancel_and_wait(self._task)
        self._task = None

    async def stop(self) -> None:
        await self.drain()
        if self.client is not None:
            await self.client.stop()
        await cancel_and_wait(self._watch_task)
        self._watch_task = None
        if self.broker is not None:
            await self.broker.aclose()
            self.broker = None

    async def downlink(self, device: str, kind: str, payload: bytes) -> None:
        """QoS 1 to edgewire/v1/<device>/<kind>; returns on the broker's PUBACK."""
        if self.client is None:
            raise MqttNotConnected("the gateway is not started")
        await self.client.publish(wire.topic(device, kind), payload, qos=1)

    def health(self) -> tuple[bool, dict[str, Any]]:
        st = self.stats()
        return bool(st["connected"]), st

    def stats(self) -> dict[str, Any]:
        c = self.client
        if c is None:
            return {"connected": False, "url": self.url}
        s = c.stats
        embedded: dict[str, Any] | bool = False
        if self.broker is not None and self.broker_watch is not None:
            w = self.broker_watch
            embedded = {"pid": self.broker.pid, "ingest_rate": round(w.rate, 1), "warn_rate": w.threshold,
                        "warnings": w.warnings}
        return {"connected": c.connected, "url": self.url, "embedded": embedded,
                "client_id": c.client_id, "connects": s.connects, "disconnects": s.disconnects,
                "received": s.received, "reads": s.reads, "oversized": s.oversized,
                "qos2_duplicates": s.duplicates_qos2, "paused": s.paused,
                "acks_sent": s.acks_sent, "acks_moot": s.acks_moot, "last_error": s.last_error}

    async def run(self) -> None:
        """Consume until the client stops. Each batch is accounted, then handed
        to the journal with its ack handle: the broker hears PUBACK/PUBREC only
        after the batch is committed."""
        core = self.core
        assert self.client is not None
        async for batch in self.client.batches():
            self.take(batch)
            await core.ready()  # journal backlog full: stop reading (the broker holds the rest)

    def take(self, batch: Batch) -> None:
        """One batch: accounted, then handed to the journal with its ack
        handle alone (not the batch: what waits for the commit keeps no
        payloads alive; at QoS 0 there is nothing to acknowledge)."""
        self.handle(batch)
        self.core.commit(batch.ack_handle)

    def handle(self, batch: Sequence[Message]) -> None:
        now_ms = int(time.time() * 1000)
        core = self.core
        topic = self.decoder.topic
        telemetry = self.decoder.telemetry
        pending: list[Telemetry] = []
        add = pending.append
        # The journal's backlog is at its limit: QoS 0 telemetry is dropped here,
        # counted, and reading goes on, so that QoS 1/2 messages behind it still
        # come in (a paused socket makes the broker drop QoS 0 uncounted and, past
        # its queue limit, QoS 1 too). What needs an ack is always taken; reading
        # stops at 1.25x the limit (run(), core.ready()).
        room = core.room()
        shed = 0
        # A Message's fields by unpacking, not by name: a namedtuple field is a descriptor
        # that LOAD_ATTR does not specialize (~200 instructions each, five per message).
        for topic_b, payload, qos, retain, _dup, _pid, size in batch:
            try:
                device, kind = topic(topic_b)
                if size:  # larger than [mqtt] max_packet: refused unread
                    raise ProtocolError("oversized", f"message of {size} bytes exceeds the MQTT packet limit")
                if kind == "telemetry":
                    if retain:  # the broker's stored copy, replayed at every subscribe: not a new reading
                        raise ProtocolError("retained", "retained telemetry ignored (publish telemetry "
                                                        "without the retain flag)")
                    room -= len(payload) + MESSAGE_COST
                    if room < 0 and not qos:
                        shed += 1
                        continue
                    add(telemetry(payload, device))
                elif kind == "status" or kind == "result":
                    if pending:  # keep the journal in arrival order
                        core.accept_telemetry(pending, now_ms)
                        pending = []
                        add = pending.append
                    if kind == "status":
                        core.accept_status(self.decoder.status(payload, device), now_ms, retained=retain)
                    else:
                        core.accept_result(self.decoder.result(payload, device), now_ms)
                # kind "cmd": our own commands, echoed by the '#' subscription
            except ProtocolError as e:
                core.refuse(e.kind, f"{topic_b[:120].decode('utf-8', 'replace')}: {e}")
        if pending:
            core.accept_telemetry(pending, now_ms)
        if shed:
            core.shed(shed, f"{shed} QoS 0 telemetry message(s) dropped: the journal's backlog is full "
                            "(the disk is slower than ingest; QoS 1/2 are held back at the broker instead)")
