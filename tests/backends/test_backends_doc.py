"""docs/backends.md's consumers run: docs/examples/amqp_consume_pika.py and
amqp_consume_aiopika.py, started as a user starts them, get every reading a
gateway's amqp sink forwards, bound by a routing-key pattern."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pika

from edgewire.gateway.config import SiteConfig
from edgewire.gateway.service import Gateway
from tests.backends.conftest import AMQP_URL
from tests.gateway.conftest import ROOT, Publisher, gateway_config, wait_for
from tests.support.broker import Mosquitto


def _cleanup(exchange: str, queues: list[str]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    for q in queues:
        ch.queue_delete(q)
    ch.exchange_delete(exchange)
    conn.close()


async def test_the_documented_consumers_get_every_reading(tmp_path: Path, broker: Mosquitto, publisher: Publisher,
                                                          exchange_name: str) -> None:
    doc = (ROOT / "docs/backends.md").read_text()
    assert "examples/amqp_consume_pika.py" in doc and "examples/amqp_consume_aiopika.py" in doc
    queues = [exchange_name + "-pika", exchange_name + "-aio"]
    procs = []
    outs = [tmp_path / "pika.out", tmp_path / "aio.out"]
    files = [open(o, "w") for o in outs]
    try:
        for script, queue, out in zip(("amqp_consume_pika.py", "amqp_consume_aiopika.py"), queues, files):
            extra = ["--store", str(tmp_path / "readings.db")] if "pika" in queue else []
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "docs" / "examples" / script), "--url", AMQP_URL, "--exchange",
                 exchange_name, "--queue", queue, "--binding", "docs.dev-doc.*", "--count", "20", *extra],
                stdout=out, stderr=subprocess.STDOUT))
        # each consumer declares its queue; wait until both exist before anything is published
        def declared() -> bool:
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                for q in queues:
                    conn.channel().queue_declare(q, passive=True)
                return True
            except pika.exceptions.ChannelClosedByBroker:
                return False
            finally:
                if conn.is_open:
                    conn.close()

        await wait_for(lambda: asyncio.to_thread(declared), timeout=60, what="the consumers' queues")
        cfg = gateway_config(broker, gateway=SiteConfig(site="docs")).replace(
            sinks=({"type": "amqp", "url": AMQP_URL, "exchange": exchange_name},))
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            for seq in range(1, 11):
                await asyncio.to_thread(publisher.telemetry, "dev-doc", 1, seq, [["t", seq, 0], ["h", seq, 0]])
                await asyncio.to_thread(publisher.telemetry, "dev-other", 1, seq, [["t", seq, 0]])  # not bound
            for p in procs:
                await asyncio.to_thread(p.wait, 60)
        for f in files:
            f.close()
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out.read_text()
            got = [json.loads(x) for x in out.read_text().splitlines()]
            assert sorted((r["stream"], r["seq"]) for r in got) == sorted(
                (st, s) for s in range(1, 11) for st in ("t", "h"))
            assert {r["device"] for r in got} == {"dev-doc"}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
        await asyncio.to_thread(_cleanup, exchange_name, queues)


def test_the_amqp_benchmark_runs(exchange_name: str) -> None:
    """bench/amqp_sink.py measures both phases against the real RabbitMQ and cleans up (figures: docs/benchmarks.md)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "amqp_sink.py"), "--readings", "400", "--repeat", "1",
                          "--json"], capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                                       "AMQP_URL": AMQP_URL})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["readings"] == 400 and len(got["repeats"]) == 1
    r = got["repeats"][0]
    assert r["baseline_per_s"] > 0 and r["sink_per_s"] > 0 and r["ratio"] > 0


def test_the_grpc_benchmark_runs() -> None:
    """bench/grpc_sink.py measures both phases against a server in its own process (figures: docs/benchmarks.md)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "grpc_sink.py"), "--readings", "2000", "--repeat", "1",
                          "--store", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["readings"] == 2000 and got["store"] is True and len(got["repeats"]) == 1
    r = got["repeats"][0]
    assert r["baseline_per_s"] > 0 and r["sink_per_s"] > 0 and r["ratio"] > 0
