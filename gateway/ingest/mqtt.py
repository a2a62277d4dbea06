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
        """Consume until the client stops."""
        async for batch in self.client.batches():
            self.handle(batch)

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
                elif kind == "status":
                    if pending:
                        core.accept_telemetry(pending, now_ms)
                        pending = []
                        add = pending.append
                    core.accept_status(self.decoder.status(m.payload, device), now_ms, retained=m.retain)
                elif kind == "result":
                    core.accept_result(self.decoder.result(m.payload, device))
                # kind "cmd": our own commands, echoed by the '#' subscription
            except ProtocolError as e:
                core.refuse(e.kind, f"{m.topic[:120].decode('utf-8', 'replace')}: {e}")
        if pending:
            core.accept_telemetry(pending, now_ms)
