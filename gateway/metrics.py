"""Prometheus metrics at GET /metrics, in the text format of prometheus-client.

One source of truth: every value is read at scrape time from what the
components already report (`Gateway.stats()`, `health()` and the registry's
device summaries, the same numbers /api/v1/stats shows), never counted a
second time. Names follow Prometheus conventions: `edgewire_` prefix,
counters end in `_total`, units in the name (`_seconds`, `_bytes`), times as
Unix seconds (`_timestamp_seconds`). docs/deploy-pi.md lists them.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["CONTENT_TYPE", "GatewayCollector", "render"]

# the classic text format (0.0.4), which every Prometheus 2.x parses; the names need no escaping
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _n(value: Any) -> float:
    """A number from a stats field (None, missing or non-numeric: 0)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(bool(value))


def _get(d: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)  # type: ignore[assignment]
    return d


class GatewayCollector:
    """A prometheus-client collector over one gateway (a GatewayView)."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Metric]:
        gw = self.gw
        stats: dict[str, Any] = gw.stats()
        ok, health = gw.health()

        def counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
            return CounterMetricFamily(f"edgewire_{name}", doc, value=_n(value))

        def gauge(name: str, doc: str, value: Any, unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(f"edgewire_{name}", doc, value=_n(value), unit=unit)

        yield gauge("healthy", "1 when /healthz answers 200 (broker connected, journal writing)", ok)
        yield gauge("uptime_seconds", "seconds since the gateway started", health.get("uptime"))

        ingest = stats.get("ingest", {})
        yield counter("ingest_messages", "telemetry messages accepted", ingest.get("messages"))
        yield counter("ingest_readings", "readings accepted (after duplicates are removed)", ingest.get("readings"))

        refused = CounterMetricFamily("edgewire_refused_messages", "messages refused, by kind (docs/api.md)",
                                      labels=["kind"])
        for kind, n in sorted((stats.get("refused") or {}).items()):
            refused.add_metric([str(kind)], _n(n))
        yield refused

        reg = stats.get("registry", {})
        yield gauge("devices", "devices in the registry", reg.get("devices"))
        yield gauge("devices_online", "devices whose last status is a birth", reg.get("online"))
        yield gauge("registry_missing_readings", "sequence numbers never received (registry loss; a late "
                    "message lowers it)", reg.get("missing"))
        yield counter("registry_duplicates", "duplicate messages removed by the registry", reg.get("duplicates"))
        yield counter("registry_suspect", "sequence jumps held as suspect", reg.get("suspect"))
        yield counter("registry_evicted", "devices evicted at [registry] max_devices", reg.get("evicted"))
        yield counter("registry_stale_deaths", "deaths that named an old session", reg.get("stale_deaths"))

        hub = stats.get("hub", {})
        yield counter("hub_published_events", "events offered to live clients", hub.get("published"))
        yield counter("hub_dropped_events", "events live clients lost (beyond what the journal still held)",
                      hub.get("dropped_total"))
        yield gauge("hub_clients", "live SSE and WebSocket clients", len(hub.get("clients") or ()))
        yield gauge("hub_last_event_id", "id of the newest event", hub.get("last_id"))

        j = stats.get("journal", {})
        yield gauge("journal_size_bytes", "size of the journal file", j.get("size_bytes"))
        yield gauge("journal_max_bytes", "retention limit by size (0: none)", j.get("max_bytes"))
        yield gauge("journal_backlog_entries", "entries received, not yet committed", j.get("backlog"))
        yield gauge("journal_last_id", "id of the newest journal entry", j.get("last_id"))
        yield counter("journal_commits", "journal commits", j.get("commits"))
        yield counter("journal_write_errors", "failed journal writes", j.get("write_errors"))
        yield counter("journal_removed_entries", "entries removed by retention", j.get("removed_entries"))
        yield gauge("journal_commit_max_seconds", "longest commit so far", _n(j.get("commit_ms_max")) / 1000)

        mqtt = stats.get("mqtt", {})
        yield gauge("mqtt_connected", "1 while the broker connection is up", mqtt.get("connected"))
        yield counter("mqtt_connects", "broker connections made", mqtt.get("connects"))
        yield counter("mqtt_disconnects", "broker connections lost", mqtt.get("disconnects"))
        yield counter("mqtt_received_messages", "PUBLISH packets received", mqtt.get("received"))
        yield counter("mqtt_oversized_messages", "PUBLISH packets above [mqtt] max_packet", mqtt.get("oversized"))

        cmd = stats.get("commands", {})
        yield counter("commands_sent", "commands sent to devices", cmd.get("sent"))
        yield counter("commands_answered", "commands a device answered", cmd.get("answered"))
        yield counter("commands_timed_out", "commands with no result in time", cmd.get("timed_out"))
        yield gauge("commands_pending", "commands waiting for a result", cmd.get("pending"))

        sinks = stats.get("sinks") or []
        lag = GaugeMetricFamily("edgewire_sink_lag_entries", "journal entries a sink's backend has not confirmed",
                                labels=["sink", "type"])
        lag_s = GaugeMetricFamily("edgewire_sink_lag_seconds", "age of the oldest unconfirmed entry (0: none)",
                                  labels=["sink", "type"])
        up = GaugeMetricFamily("edgewire_sink_running", "1 while the sink delivers (state running)",
                               labels=["sink", "type"])
        delivered = CounterMetricFamily("edgewire_sink_delivered_readings", "readings a backend confirmed",
                                        labels=["sink", "type"])
        failures = CounterMetricFamily("edgewire_sink_failures", "failed deliveries (retried)", labels=["sink", "type"])
        lost = CounterMetricFamily("edgewire_sink_lost_to_retention_entries",
                                   "entries retention removed before the sink delivered them", labels=["sink", "type"])
        for s in sinks:
            labels = [str(s.get("name", "")), str(s.get("type", ""))]
            lag.add_metric(labels, _n(s.get("lag")))
            lag_s.add_metric(labels, _n(s.get("lag_seconds")))
            up.add_metric(labels, float(s.get("state") == "running"))
            delivered.add_metric(labels, _n(s.get("delivered_readings")))
            failures.add_metric(labels, _n(s.get("failures")))
            lost.add_metric(labels, _n(s.get("lost_to_retention")))
        yield from (lag, lag_s, up, delivered, failures, lost)

        http = stats.get("http", {})
        yield gauge("http_connections", "open HTTP connections", http.get("open"))
        yield counter("http_connections_refused", "connections refused at the limits", http.get("refused"))
        auth = http.get("auth") or {}
        yield counter("http_auth_failures", "failed authentication attempts", auth.get("failures"))
        denied = CounterMetricFamily("edgewire_http_denied_requests", "requests refused by the access rules, "
                                     "by kind", labels=["kind"])
        for kind, n in sorted((auth.get("refused") or {}).items()):
            denied.add_metric([str(kind)], _n(n))
        yield denied

        seen = GaugeMetricFamily("edgewire_device_last_seen_timestamp_seconds",
                                 "when the gateway last heard from the device (Unix time)", labels=["device"])
        online = GaugeMetricFamily("edgewire_device_online", "1 online, 0 offline or unknown", labels=["device"])
        loss = GaugeMetricFamily("edgewire_device_loss_ratio", "missing / expected readings of the device",
                                 labels=["device"])
        for dev in list(gw.core.registry.devices.values()):
            d = dev.summary()
            if d.get("last_seen") is not None:
                seen.add_metric([d["id"]], _n(d["last_seen"]) / 1000)
            online.add_metric([d["id"]], float(bool(d.get("online"))))
            loss.add_metric([d["id"]], _n(d.get("loss")))
        yield from (seen, online, loss)


def render(gw: Any) -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gw))  # type: ignore[arg-type]
    return generate_latest(registry)
