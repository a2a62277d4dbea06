"""/metrics scraped by a real Prometheus (the Debian package, a private
instance on a free port): it authenticates with a bearer token the way a
site configures it, and its HTTP query API returns the gateway's ingest
counter. The exposition follows Prometheus' naming conventions, and /metrics
needs a token unless [http] metrics_auth = false."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Publisher, wait_for
from tests.security.http_support import make_tokens, running, secured_config
from tests.support.broker import Mosquitto, free_port, terminate


def prometheus_path() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else "")
    if not path:
        raise RuntimeError("prometheus is not installed: apt-get install prometheus (make test does it as root)")
    return path


def _query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


async def test_prometheus_scrapes_the_ingest_counter(broker: Mosquitto, tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    secret = tmp_path / "prometheus-token"
    secret.write_text(tokens.read)
    async with running(secured_config(broker, tokens)) as gw:
        pub = Publisher(broker.port)
        try:
            for seq in range(1, 8):
                pub.telemetry("prom-dev", 7, seq, [["temperature", 20.0 + seq, seq]])
        finally:
            pub.close()
        await wait_for(lambda: gw.stats()["ingest"]["messages"] == 7, what="7 messages ingested")
        port = free_port()
        target = gw.http_url.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: edgewire\n    metrics_path: /metrics\n"
            f"    authorization:\n      type: Bearer\n      credentials_file: {secret}\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        proc = subprocess.Popen([prometheus_path(), f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def counter() -> list[dict[str, object]]:
                if proc.poll() is not None:
                    raise AssertionError(f"prometheus exited: {proc.stderr.read() if proc.stderr else ''}")
                try:
                    return _query(port, 'edgewire_ingest_messages_total{job="edgewire"}')
                except OSError:
                    return []  # not listening yet

            got = await wait_for(lambda: asyncio.to_thread(counter), timeout=60, what="the counter in Prometheus")
            assert float(got[0]["value"][1]) == 7.0, got  # type: ignore[index]
            up = await asyncio.to_thread(_query, port, 'up{job="edgewire"}')
            assert up[0]["value"][1] == "1", up  # type: ignore[index]
        finally:
            terminate(proc, 15)
            if proc.stderr:
                proc.stderr.close()
        # the scrapes were authenticated: no failure was counted
        assert gw.stats()["http"]["auth"]["failures"] == 0


async def test_metrics_names_units_and_auth(broker: Mosquitto, tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    cfg = secured_config(broker, tokens).replace(sinks=({"type": "jsonl", "path": str(tmp_path / "out.jsonl")},))
    async with running(cfg) as gw, aiohttp.ClientSession() as http:
        pub = Publisher(broker.port)
        try:
            pub.telemetry("names-dev", 1, 1, [["temperature", 20.5, 1]])
            pub.pub("edgewire/v1/names-dev/telemetry", b"\xc1 not msgpack")
        finally:
            pub.close()
        await wait_for(lambda: gw.stats()["refused_total"] >= 1, what="the malformed message refused")
        r = await http.get(gw.http_url + "/metrics")
        assert r.status == 401
        r = await http.get(gw.http_url + "/metrics", headers=tokens.header("read"))
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, fam in families.items():
        assert name.startswith("edgewire_"), name
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("edgewire_ingest_messages_total", ())] == 1
    assert samples[("edgewire_refused_messages_total", (("kind", "malformed"),))] == 1
    seen = samples[("edgewire_device_last_seen_timestamp_seconds", (("device", "names-dev"),))]
    assert abs(seen - time.time()) < 120
    assert samples[("edgewire_journal_size_bytes", ())] > 0
    assert (("edgewire_sink_lag_seconds", (("sink", "jsonl"), ("type", "jsonl")))) in samples
    assert (("edgewire_sink_lag_entries", (("sink", "jsonl"), ("type", "jsonl")))) in samples
    for name in ("edgewire_hub_dropped_events_total", "edgewire_registry_missing_readings",
                 "edgewire_http_auth_failures_total", "edgewire_uptime_seconds"):
        assert (name, ()) in samples, name

    async with running(secured_config(broker, tokens, metrics_auth=False)) as gw, aiohttp.ClientSession() as http:
        r = await http.get(gw.http_url + "/metrics")
        assert r.status == 200 and "edgewire_ingest_messages_total" in await r.text()
        r = await http.get(gw.http_url + "/api/v1/stats")
        assert r.status == 401  # only /metrics was opened
