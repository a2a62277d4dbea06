"""The gateway core that every ingest adapter feeds: decoded input goes
through the registry (sessions, gaps, duplicates) into the live hub; results
go to the pending commands; refusals are counted. No transport in here."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from edgewire.gateway.commands import Commands
from edgewire.gateway.decode import Result, Status, Telemetry
from edgewire.gateway.hub import Event, Hub
from edgewire.gateway.refusals import Refusals
from edgewire.gateway.registry import Registry, RegistryFull

log = logging.getLogger("edgewire.gateway.core")

__all__ = ["Core"]


class Core:
    def __init__(self, *, registry: Registry, hub: Hub, commands: Commands, refusals: Refusals) -> None:
        self.registry = registry
        self.hub = hub
        self.commands = commands
        self.refusals = refusals
        self.messages = 0
        self.readings = 0

    def refuse(self, kind: str, detail: str) -> None:
        self.refusals.count(kind, detail)

    def accept_telemetry(self, batch: Sequence[Telemetry], received_ms: int) -> None:
        """Account, deduplicate and publish a batch of telemetry messages."""
        registry = self.registry
        reg_telemetry = registry.telemetry
        remember = registry.remember
        devices = registry.devices
        events: list[Event] = []
        add = events.append
        accepted = 0
        for t in batch:
            try:
                if not reg_telemetry(t, received_ms):
                    continue  # duplicate: counted by the registry, never forwarded
            except RegistryFull as e:
                self.refuse("capacity", str(e))
                continue
            accepted += 1
            device = t["device"]
            boot = t["boot"]
            seq = t["seq"]
            tm = t["time"]
            base = (received_ms if tm is None else tm) - t["uptime"]
            dev = devices[device]
            for stream, value, up, error in t["readings"]:
                ts = base + up
                add(Event(device, stream, value, error, ts, boot, seq))
                remember(dev, stream, value, ts, error)
        self.messages += accepted
        self.readings += len(events)
        self.hub.publish(events)

    def accept_status(self, status: Status, received_ms: int, *, retained: bool = False) -> None:
        try:
            outcome = self.registry.status(status, received_ms, retained=retained)
        except RegistryFull as e:
            self.refuse("capacity", str(e))
            return
        if outcome == "stale":
            log.info("device %s: ignored a death for session (boot %d, conn %d): not the current session",
                     status.device, status.boot, status.conn)
        else:
            log.info("device %s is %s (boot %d, conn %d%s)", status.device, outcome, status.boot, status.conn,
                     f", {status.why}" if status.why else "")

    def accept_result(self, result: Result) -> None:
        if not self.commands.resolve(result):
            self.refuse("unmatched_result",
                        f"result {result.id!r} from {result.device!r} matches no pending command (late or repeated)")
