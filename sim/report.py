"""What a simulated fleet did: per-device counters and fleet totals, as a
table for people and as JSON for programs.

Every number comes from the device SDK's own counters, so the report says what
the firmware believes it sent; an independent subscriber can check it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Counter fields summed into the fleet totals, in table order.
COUNTERS = ("messages", "readings", "sampled", "acked", "unacked", "dropped", "queued", "connects",
            "reconnects", "conn_failures", "resets", "faults")
TABLE = ("messages", "acked", "unacked", "dropped", "queued", "reconnects", "faults")

HEADINGS = {
    "messages": "messages sent",
    "readings": "readings sent",
    "sampled": "readings sampled",
    "acked": "acknowledged",
    "unacked": "unacknowledged",
    "dropped": "dropped",
    "queued": "still queued",
    "connects": "connects",
    "reconnects": "reconnects",
    "conn_failures": "connect failures",
    "resets": "reboots",
    "faults": "faults",
}


@dataclass
class DeviceReport:
    """One device's run.

    boot          the boot id of the device's last boot; boots: all of them, in order
    messages      telemetry messages the device published (written to its socket)
    readings      readings in those messages
    sampled       readings the device took (sent, dropped or still queued)
    acked         messages the broker acknowledged: PUBACK (QoS 1), PUBCOMP (QoS 2);
                  for QoS 0, every message written counts (there is no ack)
    unacked       QoS 1/2 messages still waiting for their ack when the device stopped
    dropped       readings the device discarded (its bounded queue was full)
    queued        readings sampled but not sent when the device stopped
    connects      successful connections (CONNACK); reconnects: those after the first
    conn_failures connection attempts that failed
    resets        reboots (a new boot id each)
    faults        sensor reads that failed (sent as error readings), plus 1 if the
                  device's thread died (see `error`)
    """

    device: str
    boot: int | None = None
    boots: list[int] = field(default_factory=list)
    messages: int = 0
    readings: int = 0
    sampled: int = 0
    acked: int = 0
    unacked: int = 0
    dropped: int = 0
    queued: int = 0
    connects: int = 0
    reconnects: int = 0
    conn_failures: int = 0
    resets: int = 0
    faults: int = 0
    connected: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FleetReport:
    broker: str
    devices: int
    rate: float
    configured_rate: float
    qos: int
    seconds: float
    seed: int | None
    embedded_broker: bool = False
    per_device: list[DeviceReport] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(getattr(d, name)) for d in self.per_device)

    @property
    def totals(self) -> dict[str, int]:
        return {c: self.total(c) for c in COUNTERS}

    @property
    def devices_with_errors(self) -> list[DeviceReport]:
        return [d for d in self.per_device if d.error]

    @property
    def messages_per_second(self) -> float:
        return self.total("messages") / self.seconds if self.seconds > 0 else 0.0

    def device(self, device_id: str) -> DeviceReport:
        for d in self.per_device:
            if d.device == device_id:
                return d
        raise KeyError(device_id)

    def to_dict(self, per_device: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "broker": self.broker,
            "embedded_broker": self.embedded_broker,
            "devices": self.devices,
            "rate": self.rate,
            "configured_rate": round(self.configured_rate, 4),
            "qos": self.qos,
            "seconds": round(self.seconds, 3),
            "seed": self.seed,
            "fleet": dict(self.totals, messages_per_second=round(self.messages_per_second, 1),
                          devices_connected=sum(1 for d in self.per_device if d.connects),
                          devices_with_errors=len(self.devices_with_errors)),
        }
        if per_device:
            out["per_device"] = [d.to_dict() for d in self.per_device]
        return out

    def to_json(self, per_device: bool = True) -> str:
        return json.dumps(self.to_dict(per_device), indent=2)

    def render(self, per_device: bool = False, max_rows: int = 20) -> str:
        """A table: the fleet's totals, then (per_device) one row per device."""
        t = self.totals
        lines = [
            f"fleet: {self.devices} devices x {self.rate:g} msg/s at QoS {self.qos} for {self.seconds:.1f} s "
            f"against {self.broker}{' (embedded broker)' if self.embedded_broker else ''}",
            f"seed {self.seed}" if self.seed is not None else "seed: random",
            "",
        ]
        width = max(len(h) for h in HEADINGS.values())
        for c in COUNTERS:
            lines.append(f"  {HEADINGS[c]:<{width}}  {t[c]:>12,}")
        lines.append(f"  {'messages/s':<{width}}  {self.messages_per_second:>12,.1f}"
                     f"   (configured {self.devices * self.configured_rate:,.1f})")
        if self.qos:
            share = 100.0 * t["acked"] / t["messages"] if t["messages"] else 0.0
            lines.append(f"  {'acked %':<{width}}  {share:>12.2f}")
        errs = self.devices_with_errors
        if errs:
            lines.append("")
            lines.append(f"{len(errs)} device(s) reported errors, e.g. {errs[0].device}: {errs[0].error}")
        if per_device:
            lines.append("")
            short = {"messages": "sent", "acked": "acked", "unacked": "unacked", "dropped": "dropped",
                     "queued": "queued", "reconnects": "reconn", "faults": "faults"}
            idw = max([len("device")] + [len(d.device) for d in self.per_device])
            lines.append("  ".join(["device".ljust(idw)] + [short[c].rjust(9) for c in TABLE]))
            rows = self.per_device if len(self.per_device) <= max_rows else self.per_device[:max_rows]
            for d in rows:
                lines.append("  ".join([d.device.ljust(idw)] + [f"{getattr(d, c):>9,}" for c in TABLE]))
            if len(rows) < len(self.per_device):
                lines.append(f"... {len(self.per_device) - len(rows)} more devices (use --json for all)")
        return "\n".join(lines)
