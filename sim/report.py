"""What a simulated fleet did, as a table for people, JSON for programs and
an HTML page with plots (edgewire.sim.html).

Two sources, kept apart: the device SDK's own counters (what the firmware
believes it sampled, sent and had acknowledged) and the observer (what an MQTT
subscriber actually received, de-duplicated by (device, boot, seq), and the
latency from each reading's sample time to its arrival). lost = acknowledged
(QoS 1/2) or written (QoS 0) but never received; duplicated = received again
after the first copy."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgewire.sim.fleet import Fleet

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
                  device crashed (see `error`)
    sent_q, acked_q  messages per QoS 0, 1, 2
    outages       [lost, back] epoch seconds of each lost connection (back -1: still down)
    received_q, duplicated_q, lost_q  the observer's counts per QoS (None without observer)
    """

    device: str
    group: str = "default"
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
    sent_q: list[int] = field(default_factory=lambda: [0, 0, 0])
    acked_q: list[int] = field(default_factory=lambda: [0, 0, 0])
    outages: list[tuple[float, float]] = field(default_factory=list)
    received_q: list[int] | None = None
    duplicated_q: list[int] | None = None
    lost_q: list[int] | None = None

    @property
    def received(self) -> int:
        return sum(self.received_q or ())

    @property
    def lost(self) -> int:
        return sum(self.lost_q or ())

    @property
    def duplicated(self) -> int:
        return sum(self.duplicated_q or ())

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
    observed: bool = False
    by_qos: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, float] | None = None
    series: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    shard: str = "0/1"
    failure: str | None = None
    observer_late: str | None = None

    def assert_no_loss(self, qos: int | None = None, *, duplicates: bool = True) -> None:
        """AssertionError naming devices, unless every message the broker
        acknowledged (QoS 1/2; for QoS 0: every message written) at `qos` (None:
        every QoS) reached the observer, and (duplicates=True) none came twice."""
        if not self.observed:
            raise AssertionError("the fleet ran without its observer: nothing to check (observe=True)")
        qs = (0, 1, 2) if qos is None else (qos,)
        lost = [(d.device, q, (d.lost_q or [0, 0, 0])[q]) for d in self.per_device for q in qs
                if (d.lost_q or [0, 0, 0])[q]]
        dup = [(d.device, q, (d.duplicated_q or [0, 0, 0])[q]) for d in self.per_device for q in qs
               if (d.duplicated_q or [0, 0, 0])[q]] if duplicates else []
        if lost or dup:
            what = []
            if lost:
                what.append(f"{sum(n for _, _, n in lost)} lost on {len(lost)} device/QoS pairs, e.g. "
                            + ", ".join(f"{d} QoS {q}: {n}" for d, q, n in lost[:5]))
            if dup:
                what.append(f"{sum(n for _, _, n in dup)} duplicated, e.g. "
                            + ", ".join(f"{d} QoS {q}: {n}" for d, q, n in dup[:5]))
            raise AssertionError("; ".join(what))

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
            "observed": self.observed,
            "by_qos": self.by_qos,
            "groups": self.groups,
            "latency_ms": self.latency,
            "events": self.events,
            "started_at": self.started_at,
            "shard": self.shard,
            "failure": self.failure,
            "observer_late": self.observer_late,
            "series": self.series,
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
        if self.by_qos:
            lines.append("")
            cols = ("sent", "acked", "received", "lost", "duplicated")
            lines.append("  " + "QoS".ljust(6) + "".join(c.rjust(12) for c in cols))
            for row in self.by_qos:
                lines.append("  " + str(row["qos"]).ljust(6)
                             + "".join(("-" if row.get(c) is None else f"{row[c]:,}").rjust(12) for c in cols))
        if self.groups:
            lines.append("")
            cols = ("devices", "sampled", "sent", "acked", "received", "lost", "duplicated", "reconnects")
            gw = max(len("group"), *(len(g["group"]) for g in self.groups))
            lines.append("  " + "group".ljust(gw) + "".join(c.rjust(11) for c in cols) + "  reconnect s p50/max")
            for g in self.groups:
                rt = g.get("reconnect_s")
                lines.append("  " + g["group"].ljust(gw)
                             + "".join(("-" if g.get(c) is None else f"{g[c]:,}").rjust(11) for c in cols)
                             + (f"  {rt['p50']:.1f}/{rt['max']:.1f}" if rt else "  -"))
        if self.latency:
            la = self.latency
            lines.append("")
            lines.append(f"  latency, sample to observer (ms): p50 {la['p50']:.1f}  p95 {la['p95']:.1f}  "
                         f"p99 {la['p99']:.1f}  max {la['max']:.1f}  ({int(la['count']):,} readings)")
        if self.observer_late:
            lines.append("")
            lines.append(f"note: {self.observer_late}")
        if self.failure:
            lines.append("")
            lines.append(f"run failed: {self.failure}")
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


def _pct(values: list[float]) -> dict[str, float] | None:
    from edgewire.sim.observer import percentiles
    return percentiles(values)


def merge_series(progress: list[dict[str, Any]], observer: Any, started: float | None) -> list[dict[str, Any]]:
    """Per second since the start: messages sent/s, devices connected, observed/s,
    latency p50/p95/p99 (ms) of the readings that arrived in that second."""
    if started is None:
        return []
    by_sec: dict[int, dict[int, dict[str, Any]]] = {}
    for p in progress:   # each shard's last progress within each second
        sec = int(p["t"] - started)
        by_sec.setdefault(sec, {})[id(p) if "shard" not in p else p["shard"]] = p
    out: list[dict[str, Any]] = []
    if not by_sec:
        return out
    last_sent = 0
    shards_last: dict[Any, dict[str, Any]] = {}
    for sec in range(0, max(by_sec) + 1):
        for k, p in by_sec.get(sec, {}).items():
            shards_last[k] = p
        sent = sum(p["sent"] for p in shards_last.values())
        row: dict[str, Any] = {"t": sec, "sent_per_s": sent - last_sent,
                               "connected": sum(p["connected"] for p in shards_last.values())}
        last_sent = sent
        if observer is not None:
            wall = int(started) + sec
            row["received_per_s"] = observer.received_per_second.get(wall, 0)
            lat = _pct(observer.per_second.get(wall, []))
            if lat:
                row.update(p50=round(lat["p50"], 2), p95=round(lat["p95"], 2), p99=round(lat["p99"], 2))
        out.append(row)
    return out


def build_report(fleet: "Fleet", per_device: list[DeviceReport], *, embedded_broker: bool = False) -> FleetReport:
    obs = fleet._observer
    if obs is not None:
        with obs.lock:
            for d in per_device:
                got = list(obs.received.get(d.device, [0, 0, 0]))
                d.received_q = got
                d.duplicated_q = list(obs.duplicates.get(d.device, [0, 0, 0]))
                # QoS 1/2: acknowledged but never received; QoS 0: written but never received.
                done = [d.sent_q[0], d.acked_q[1], d.acked_q[2]]
                d.lost_q = [max(0, done[q] - got[q]) for q in (0, 1, 2)]
    by_qos = []
    for q in (0, 1, 2):
        if not any(d.sent_q[q] for d in per_device):
            continue
        row: dict[str, Any] = {"qos": q, "sent": sum(d.sent_q[q] for d in per_device),
                               "acked": sum(d.acked_q[q] for d in per_device)}
        if obs is not None:
            row.update(received=sum((d.received_q or [0, 0, 0])[q] for d in per_device),
                       lost=sum((d.lost_q or [0, 0, 0])[q] for d in per_device),
                       duplicated=sum((d.duplicated_q or [0, 0, 0])[q] for d in per_device))
        else:
            row.update(received=None, lost=None, duplicated=None)
        by_qos.append(row)
    groups = []
    for g in fleet.groups:
        ds = [d for d in per_device if d.group == g.name]
        outs = [b - a for d in ds for a, b in d.outages if b >= 0]
        groups.append({
            "group": g.name, "devices": len(ds), "sampled": sum(d.sampled for d in ds),
            "sent": sum(d.messages for d in ds), "acked": sum(d.acked for d in ds),
            "received": sum(d.received for d in ds) if obs is not None else None,
            "lost": sum(d.lost for d in ds) if obs is not None else None,
            "duplicated": sum(d.duplicated for d in ds) if obs is not None else None,
            "reconnects": sum(d.reconnects for d in ds),
            "reconnect_s": _pct(outs),
            "still_down": sum(1 for d in ds for _, b in d.outages if b < 0),
        })
    observer_late = None
    if obs is not None and fleet._started_wall is not None and (
            obs.subscribed_at is None or obs.subscribed_at > fleet._started_wall + 0.001):
        observer_late = ("the observer subscribed " + (f"{obs.subscribed_at - fleet._started_wall:.1f} s after the "
                         "devices started" if obs.subscribed_at else "never") +
                         ": messages sent before it may show as lost")
    latency = None
    if obs is not None:
        with obs.lock:
            latency = _pct(list(obs.latency))
    started = fleet._started_wall
    return FleetReport(
        broker=fleet.address.url, devices=len(fleet.specs), rate=fleet.rate,
        configured_rate=fleet.configured_rate, qos=fleet.qos, seconds=fleet.seconds, seed=fleet.seed,
        embedded_broker=embedded_broker, per_device=per_device, observed=obs is not None, by_qos=by_qos,
        groups=groups, latency=latency, series=merge_series(fleet._series, obs, started),
        events=list(fleet.events), started_at=started, shard=f"{fleet.shard[0]}/{fleet.shard[1]}",
        failure=fleet.failure, observer_late=observer_late)
