"""The grpc sink and the reference backend (`edgewire backend`) over real
HTTP/2: every reading an independent MQTT subscriber saw is stored once; the
backend killed mid-stream and restarted loses nothing; a backend that never
acknowledges shows as lag without slowing live clients or the other sink;
the generated code matches protos/."""
from __future__ import annotations

import asyncio
import filecmp
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgewire.gateway.config import GatewayConfig, SiteConfig
from edgewire.gateway.errors import ConfigError
from edgewire.gateway.service import Gateway
from edgewire.sim.proxy import ProxyProcess
from tests.backends.conftest import AMQP_URL, Backend, PikaQueue
from tests.gateway.conftest import ROOT, Publisher, gateway_config, read_readings, wait_for
from tests.gateway.test_journal_crash import Recorder
from tests.support.broker import Mosquitto, free_port


def readings_of(rec: Recorder) -> set[tuple[str, int, int, str, Any]]:
    with rec.lock:
        return {(d, b, s, st, v) for (d, b, s), rs in rec.seen.items() for st, v in rs}


def stored(b: Backend) -> set[tuple[str, int, int, str, Any]]:
    return b.readings()


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    written = gen_protos.generate(tmp_path)
    assert {p.name for p in written} == {f"{m}{x}" for m in ("forward", "gateway")
                                         for x in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
    for p in written:
        assert filecmp.cmp(p, ROOT / "gateway" / "grpcapi" / p.name, shallow=False), \
            f"gateway/grpcapi/{p.name} is stale: run scripts/gen_protos.py"


async def test_every_reading_reaches_the_reference_backend_once(tmp_path: Path, broker: Mosquitto,
                                                                publisher: Publisher) -> None:
    backend = Backend(tmp_path / "store.db", free_port())
    rec = Recorder(broker.port)
    cfg = gateway_config(broker, gateway=SiteConfig(site="g1")).replace(
        sinks=({"type": "grpc", "target": f"127.0.0.1:{backend.port}"},))
    try:
        backend.start()
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            for seq in range(1, 31):
                await asyncio.to_thread(publisher.telemetry, "dev-g", 1, seq,
                                        [["t", seq + 0.25, 0], ["n", seq, 0], ["on", seq % 2 == 0, 0],
                                         ["s", f"x{seq}", 0], ["bad", None, 0, "no sensor"]])
            await wait_for(lambda: len(readings_of(rec)) == 150, timeout=30, what="the MQTT subscriber")
            await wait_for(lambda: gw.sinks["grpc"].cursor == gw.journal.last_id == 150, timeout=30, what="the cursor")
        out = backend.stop()
    finally:
        backend.stop()
        rec.close()
    assert stored(backend) == readings_of(rec)
    assert {row[5] for row in backend.rows()} == {"g1"}
    assert "stored 150 readings" in out and "dropped 0 repeats" in out


@pytest.mark.parametrize("outage_s", [0, pytest.param(30, marks=pytest.mark.slow)])
@pytest.mark.timeout(300)
async def test_backend_killed_and_restarted_mid_stream_loses_nothing(tmp_path: Path, broker: Mosquitto,
                                                                     publisher: Publisher, outage_s: int) -> None:
    """The backend SIGKILLed while devices go on publishing; restarted as soon as the sink has
    failed, or after the issue's 30 s (under the default backoff, 0.5-30 s): nothing missing."""
    backend = Backend(tmp_path / "store.db", free_port())
    rec = Recorder(broker.port)
    # the quick case: short backoff so that the test does not wait out the default 0.5-30 s retries
    quick = {} if outage_s else {"retry_min": 0.05, "retry_max": 0.5, "connect_timeout": 1.0}
    cfg = gateway_config(broker).replace(sinks=({"type": "grpc", "target": f"127.0.0.1:{backend.port}",
                                                 "batch": 10, **quick},))
    try:
        backend.start()
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            sink = gw.sinks["grpc"]
            for seq in range(1, 41):
                await asyncio.to_thread(publisher.telemetry, "dev-k", 1, seq, [["t", seq, 0], ["h", seq, 0]])
            await wait_for(lambda: len(backend.rows()) >= 20, timeout=30, what="the first readings stored")
            backend.kill()
            end = time.monotonic() + outage_s
            seq = 40
            while seq < 120 or time.monotonic() < end:
                seq += 1
                await asyncio.to_thread(publisher.telemetry, "dev-k", 1, seq, [["t", seq, 0], ["h", seq, 0]])
                if outage_s:
                    await asyncio.sleep(0.05)   # pacing: a steady stream through the outage, not a wait
            await wait_for(lambda: sink.failures >= 2 and sink.state == "retrying", timeout=60,
                           what="the sink to fail and back off")
            assert sink.stats()["lag"] > 0 and sink.stats()["lag_seconds"] >= outage_s * 0.9
            backend.start()
            await wait_for(lambda: sink.cursor == gw.journal.last_id == seq * 2, timeout=120,
                           what="the sink to catch up")
            assert sink.connects >= 2
        backend.stop()
    finally:
        backend.stop()
        rec.close()
    assert stored(backend) == readings_of(rec)
    assert len(readings_of(rec)) == seq * 2 >= 240 + outage_s * 20


async def test_a_backend_that_never_acks_lags_visibly_without_slowing_live_clients(
        tmp_path: Path, broker: Mosquitto, publisher: Publisher, exchange_name: str, pika_queue: PikaQueue) -> None:
    """The gRPC backend behind the fault proxy, which from some point on lets nothing through (the
    backend is connected but never acknowledges): the grpc sink's lag grows and shows, while SSE
    clients and the amqp sink (straight to RabbitMQ) get every reading meanwhile."""
    backend = Backend(tmp_path / "store.db", free_port())
    backend.start()
    proxy = ProxyProcess(("127.0.0.1", backend.port))
    # ack_timeout 1 s instead of 30 so that the test sees the sink give up and retry
    cfg = gateway_config(broker).replace(sinks=(
        {"type": "grpc", "target": f"127.0.0.1:{proxy.port}", "ack_timeout": 1.0, "connect_timeout": 1.0,
         "retry_min": 0.05, "retry_max": 0.3},
        {"type": "amqp", "name": "rabbit", "url": AMQP_URL, "exchange": exchange_name}))
    try:
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as http:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            sink = gw.sinks["grpc"]
            await asyncio.to_thread(publisher.telemetry, "dev-stuck", 1, 1, [["t", 1, 0]])
            await wait_for(lambda: sink.cursor == 1 and len(backend.rows()) == 1, timeout=30, what="the first reading")
            proxy.rule(None, {"partition": "drop"})   # connected, and from now on nothing passes: no Acks
            async with http.get(gw.http_url + "/api/v1/stream?device=dev-stuck") as sse:
                for seq in range(2, 42):
                    await asyncio.to_thread(publisher.telemetry, "dev-stuck", 1, seq, [["t", seq, 0]])
                live = await read_readings(sse, 40)   # live clients get everything meanwhile
            assert [e["seq"] for e in live] == list(range(2, 42))
            await wait_for(lambda: gw.sinks["rabbit"].cursor == 41 and pika_queue.count() >= 41, timeout=30,
                           what="the other sink")

            async def lagging() -> Any:
                async with http.get(gw.http_url + "/api/v1/sinks") as r:
                    s = {x["name"]: x for x in (await r.json())["sinks"]}["grpc"]
                return s if s["failures"] >= 1 and s["lag_seconds"] > 0 else None

            s = await wait_for(lagging, timeout=60, what="the lag to show")
            assert s["lag"] == 40 and s["cursor"] == 1 and s["state"] == "retrying" and "Ack" in s["last_error"]
            proxy.rule(None, {"partition": None})
            await wait_for(lambda: sink.cursor == 41, timeout=60, what="the sink to catch up")
        backend.stop()
    finally:
        backend.stop()
        proxy.close()
    assert sorted(r[2] for r in backend.rows()) == list(range(1, 42))


def test_batches_hold_what_the_events_hold() -> None:
    """batch_of (the sink's fast path) builds exactly the Readings reading_message makes of each
    event, for every kind of value, skipping entries that are not telemetry."""
    from edgewire.gateway.grpcapi import forward_pb2 as fpb
    from edgewire.gateway.grpcapi.convert import batch_of, reading_message
    from edgewire.gateway.hub import events_of
    from edgewire.gateway.journal import KIND_TELEMETRY, Entry

    entries = [Entry(5, 5, KIND_TELEMETRY, "d", 2, 3, 1, [["a", 1.5, 10, None], ["b", 7, 11, None],
                                                          ["c", True, 12, None], ["d", "x", 13, "oops"],
                                                          ["e", None, 14, "no sensor"]]),
               Entry(10, 1, KIND_TELEMETRY + 1, "d", 2, 4, 1, []),
               Entry(11, 2, KIND_TELEMETRY, "e", 1, 1, 1, [["f", 2 ** 70, 1, None], ["g", -2 ** 63, 2, None]])]
    want = fpb.Batch(site="s", first_id=5, last_id=12,
                     readings=[reading_message(e) for en in entries for e in events_of(en)])
    assert batch_of(entries, "s") == want and len(want.readings) == 7
    assert batch_of([entries[1]], "s") is None


def test_grpc_config_is_validated_before_any_io() -> None:
    good = {"type": "grpc", "target": "127.0.0.1:50051"}
    for change, key in [({"target": "nohost"}, "target"), ({"target": "h:0"}, "target"), ({"target": 5}, "target"),
                        ({"ack_timeout": 0}, "ack_timeout"), ({"colour": 1}, "colour")]:
        with pytest.raises(ConfigError, match=key):
            GatewayConfig(sinks=({**good, **change},))
    assert dict(GatewayConfig(sinks=(good,)).sinks[0])["ack_timeout"] == 30.0
