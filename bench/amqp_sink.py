"""AMQP sink benchmark: readings/s the gateway's amqp sink forwards from its
journal to RabbitMQ, against bare clients publishing the same messages with
the same batch confirms to the same RabbitMQ, in the same run.

  aio-pika  the issue's baseline: pre-built persistent aio_pika.Message
            objects (the sink's own bodies, message ids and headers), `batch`
            readings published at once with Exchange.publish, then every
            confirm awaited; repeat.
  aiormq    the fastest way known here, one layer down (aio-pika's own
            protocol library): pre-built properties, basic_publish with
            wait=False (queued for the writer without waiting for each
            socket drain), then every confirm awaited; repeat.
  sink      a journal (SQLite, WAL) pre-filled with the same readings; the
            amqp sink started on it; time from start to its cursor at the
            journal's end (reads, builds the messages, publishes, confirms,
            saves its cursor).

Every phase is timed from nothing (connect, open a channel, declare the
exchange) to the last confirm: the sink connects at its first delivery, so
its connection is part of its time, and so it is of the baselines'.

Both publish to a fresh durable topic exchange with one durable queue bound
(`#`), so every message is routed and written by RabbitMQ; the queue is
purged between phases and deleted at the end. Goal (issue #8): sink >= 0.9x
the aio-pika baseline; the ratio to aiormq is reported beside it. Each
repeat starts with a different phase (the queue is purged before each); the
report gives each repeat's ratios and the medians.

    .venv/bin/python bench/amqp_sink.py                       # 20,000 readings, 3 repeats
    .venv/bin/python bench/amqp_sink.py --readings 2000 --repeat 1 --json
    AMQP_URL=amqp://user:pw@host:5672/ .venv/bin/python bench/amqp_sink.py
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiormq

from edgewire.gateway.journal import KIND_TELEMETRY, Journal, Row, pack
from edgewire.gateway.sinks import build_sink, validate_sink
from edgewire.gateway.sinks.amqp import Sink

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
READINGS_PER_MESSAGE = 4   # an MQTT telemetry message carries a few readings (one entry in the journal)


def fill(journal: Journal, readings: int) -> None:
    now = int(time.time() * 1000)
    for seq in range(readings // READINGS_PER_MESSAGE):
        body = pack([[f"s{i}", seq * 0.5 + i, now, None] for i in range(READINGS_PER_MESSAGE)])
        journal.append([Row(journal.reserve(READINGS_PER_MESSAGE), READINGS_PER_MESSAGE, KIND_TELEMETRY,
                            f"dev-{seq % 50}", 1, seq, now, body)])


async def setup(exchange: str) -> tuple[Any, Any]:
    conn = await aio_pika.connect(AMQP_URL)
    ch = await conn.channel()
    ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    q = await ch.declare_queue("q-" + exchange, durable=True)
    await q.bind(ex, "#")
    return conn, q


async def baseline(exchange: str, msgs: list[tuple[str, bytes, Any]], batch: int) -> float:
    """aio-pika, pre-built Message objects; -> seconds."""
    ready = [(rk, aio_pika.Message(body, content_type=p.content_type, delivery_mode=p.delivery_mode,
                                   message_id=p.message_id, app_id=p.app_id, type=p.message_type,
                                   headers=p.headers)) for rk, body, p in msgs]
    t0 = time.perf_counter()
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for i in range(0, len(ready), batch):
            await asyncio.gather(*(ex.publish(m, rk, mandatory=False) for rk, m in ready[i:i + batch]))
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def baseline_aiormq(exchange: str, msgs: list[tuple[str, bytes, Any]], batch: int) -> float:
    """aiormq, pre-built properties, wait=False; -> seconds."""
    t0 = time.perf_counter()
    conn = await aiormq.connect(AMQP_URL)
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        for i in range(0, len(msgs), batch):
            await asyncio.gather(*(ch.basic_publish(body, exchange=exchange, routing_key=rk, properties=p, wait=False)
                                   for rk, body, p in msgs[i:i + batch]))
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def sink_phase(journal: Journal, exchange: str, name: str, batch_entries: int) -> float:
    table = validate_sink({"type": "amqp", "name": name, "url": AMQP_URL, "exchange": exchange,
                           "batch": batch_entries}, site="bench")
    return await time_sink(build_sink(table, journal), journal)


async def time_sink(sink: Any, journal: Journal) -> float:
    """Seconds from the sink's start until its cursor reaches the journal's end
    (both sink benches: the same measurement)."""
    t0 = time.perf_counter()
    await sink.start()
    try:
        while sink.cursor < journal.last_id:
            if sink.failures:
                raise RuntimeError(f"the sink failed: {sink.last_error}")
            await asyncio.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        await sink.stop()


async def run(readings: int, repeat: int, batch_entries: int) -> dict[str, Any]:
    exchange = "ew-bench-" + uuid.uuid4().hex[:8]
    conn, q = await setup(exchange)
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "bench.db")
        journal.open()
        try:
            fill(journal, readings)
            await journal.flush()
            n = journal.last_id
            entries, _ = await journal.read(0, n + 1)
            proto = Sink(validate_sink({"type": "amqp", "url": AMQP_URL, "exchange": exchange}, site="bench"),
                         journal)
            batch_readings = batch_entries * READINGS_PER_MESSAGE
            for r in range(repeat):
                phases = {"aio-pika": lambda: baseline(exchange, proto.messages(entries), batch_readings),
                          "aiormq": lambda: baseline_aiormq(exchange, proto.messages(entries), batch_readings),
                          "sink": lambda r=r: sink_phase(journal, exchange, f"bench-{r}", batch_entries)}
                order = list(phases)[r % 3:] + list(phases)[:r % 3]   # each phase first in turn
                took: dict[str, float] = {}
                for name in order:
                    await q.purge()
                    await asyncio.sleep(1.0)   # let RabbitMQ settle the purge before the next phase is timed
                    took[name] = await phases[name]()
                b, m, s = took["aio-pika"], took["aiormq"], took["sink"]
                results.append({"baseline_per_s": n / b, "aiormq_per_s": n / m, "sink_per_s": n / s,
                                "ratio": b / s, "ratio_aiormq": m / s, "order": order})
        finally:
            await journal.close()
    await q.delete(if_unused=False, if_empty=False)
    ch = await conn.channel()
    await ch.exchange_delete(exchange)
    await conn.close()
    ratios = [x["ratio"] for x in results]
    return {"readings": readings, "batch_readings": batch_entries * READINGS_PER_MESSAGE, "repeats": results,
            "median_ratio": statistics.median(ratios),
            "median_ratio_aiormq": statistics.median(x["ratio_aiormq"] for x in results),
            "goal": 0.9, "met": statistics.median(ratios) >= 0.9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="journal entries per delivery (the sink's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(run(args.readings, args.repeat, args.batch))
    if args.json:
        print(json.dumps(out))
        return
    print(f"AMQP sink vs bare aio-pika and bare aiormq with batch confirms, {out['readings']} readings, "
          f"{out['batch_readings']} readings per confirmed batch, RabbitMQ at {AMQP_URL.rpartition('@')[2]}")
    for i, r in enumerate(out["repeats"], 1):
        print(f"  repeat {i}: aio-pika {r['baseline_per_s']:8.0f}/s   aiormq {r['aiormq_per_s']:8.0f}/s   "
              f"sink {r['sink_per_s']:8.0f}/s   sink/aio-pika {r['ratio']:.2f}   sink/aiormq {r['ratio_aiormq']:.2f}")
    print(f"median sink/aio-pika {out['median_ratio']:.2f} (goal >= {out['goal']}): "
          f"{'met' if out['met'] else 'NOT met'}; median sink/aiormq {out['median_ratio_aiormq']:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
