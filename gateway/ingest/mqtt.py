"""MQTT ingest: batches from our MQTT client -> decode -> Core."""
from __future__ import annotations

import time
from collections.abc import Sequence

from edgewire import wire
from edgewire.gateway.core import Core
from edgewire.gateway.decode import Decoder, ProtocolError, Telemetry
from edgewire.gateway.mqtt import Message, MqttClient

__all__ = ["MqttIngest", "SUBSCRIPTIONS"]

# One subscription for the whole protocol tree, so that wrong topics under it
# are seen and counted (kind `topic`) rather than silently never delivered.
SUBSCRIPTIONS = [(wire.ROOT + "/#", 2)]


class MqttIngest:
    name = "mqtt"

    def __init__(self, *, client: MqttClient, core: Core, decoder: Decoder | None = None) -> None:
        self.client = client
        self.core = core
        self.decoder = decoder or Decoder()

    async def run(self) -> None:
        """Consume until the client stops. Each batch is accounted, then handed
        to the journal with its ack handle: the broker hears PUBACK/PUBREC only
        after the batch is committed."""
        core = self.core
        async for batch in self.client.batches():
            self.handle(batch)
            core.commit(batch.ack)
            await core.ready()  # journal backlog full: stop reading (the broker holds the rest)

    def handle(self, batch: Sequence[Message]) -> None:
        now_ms = int(time.time() * 1000)
        core = self.core
        topic = self.decoder.topic
        telemetry = self.decoder.telemetry
        pending: list[Telemetry] = []
        add = pending.append
        for m in batch:
            try:
                device, kind = topic(m.topic)
                if m.size:  # larger than [mqtt] max_packet: refused unread
                    raise ProtocolError("oversized", f"message of {m.size} bytes exceeds the MQTT packet limit")
                if kind == "telemetry":
                    if m.retain:  # the broker's stored copy, replayed at every subscribe: not a new reading
                        raise ProtocolError("retained", "retained telemetry ignored (publish telemetry "
                                                        "without the retain flag)")
                    add(telemetry(m.payload, device))
                elif kind == "status" or kind == "result":
                    if pending:  # keep the journal in arrival order
                        core.accept_telemetry(pending, now_ms)
                        pending = []
                        add = pending.append
                    if kind == "status":
                        core.accept_status(self.decoder.status(m.payload, device), now_ms, retained=m.retain)
                    else:
                        core.accept_result(self.decoder.result(m.payload, device), now_ms)
                # kind "cmd": our own commands, echoed by the '#' subscription
            except ProtocolError as e:
                core.refuse(e.kind, f"{m.topic[:120].decode('utf-8', 'replace')}: {e}")
        if pending:
            core.accept_telemetry(pending, now_ms)
