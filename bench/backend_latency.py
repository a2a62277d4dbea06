"""End-to-end latency to a backend: simulated devices (edgewire.sim, the real
device SDK on simulated boards) -> mosquitto -> `edgewire gateway` (a
process, default config plus an amqp sink) -> RabbitMQ -> a pika consumer,
at a target rate of readings per second. Latency of a reading: the time the
consumer got it minus the reading's `ts`, the device's timestamp when it
sampled (a simulated board's clock is the host's), so it includes the
device's own send delay. The first `--warmup` seconds are left out.

Reported per rate: p50, p99, max (ms), the readings per second the consumer
actually got, and the ratio of p50/p99 to the same path without the gateway
(the baseline: devices -> mosquitto -> a paho subscriber in this process, the
broker's own relay latency, measured in the same run). Beside it, RabbitMQ's
own share: a bare aio-pika publisher sending persistent messages with
confirms at the same rate (in 10 ms ticks, confirms awaited in the
background) to the same kind of exchange and pika consumer.

    .venv/bin/python bench/backend_latency.py                    # 1,000 and 10,000 readings/s, 10 s each
    .venv/bin/python bench/backend_latency.py --rates 1000 --seconds 5 --json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgewire import wire  # noqa: E402
from edgewire.sim import Fleet  # noqa: E402
from tests.support.broker import Mosquitto, free_port, wait_port  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PER_DEVICE = 50.0   # messages per second per simulated device (one reading each)


class Latencies:
    def __init__(self, warmup_until: float) -> None:
        self.warmup_until = warmup_until
        self.ms: list[float] = []
        self.first = self.last = 0.0
        self.lock = threading.Lock()

    def add(self, ts_ms: int) -> None:
        now = time.time()
        if now < self.warmup_until:
            return
        with self.lock:
            if not self.ms:
                self.first = now
            self.last = now
            self.ms.append(now * 1000 - ts_ms)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            xs = sorted(self.ms)
            span = self.last - self.first
        if not xs:
            return {"count": 0}
        return {"count": len(xs), "per_s": round(len(xs) / span) if span > 0 else 0,
                "p50_ms": round(xs[len(xs) // 2], 1), "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 1),
                "max_ms": round(xs[-1], 1), "mean_ms": round(statistics.fmean(xs), 1)}


class PikaConsumer(threading.Thread):
    def __init__(self, exchange: str, lat: Latencies) -> None:
        super().__init__(daemon=True)
        self.exchange, self.queue, self.lat = exchange, "q-" + exchange, lat
        self.stop_flag = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        ch = conn.channel()
        ch.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        ch.queue_declare(self.queue, durable=True)
        ch.queue_bind(self.queue, self.exchange, routing_key="#")
        ch.basic_qos(prefetch_count=2000)

        unacked = [0]   # the newest delivery tag not acked yet

        def got(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.lat.add(json.loads(body)["ts"])
            unacked[0] = method.delivery_tag
            if method.delivery_tag % 200 == 0:   # ack in groups (multiple): one ack per message caps pika
                ch.basic_ack(method.delivery_tag, multiple=True)
                unacked[0] = 0

        ch.basic_consume(self.queue, got)
        self.ready.set()
        while not self.stop_flag.is_set():
            conn.process_data_events(time_limit=0.05)
            if unacked[0]:
                ch.basic_ack(unacked[0], multiple=True)
                unacked[0] = 0
        ch.queue_delete(self.queue)
        ch.exchange_delete(self.exchange)
        conn.close()


class PahoSubscriber:
    """The baseline's end: the telemetry straight from mosquitto."""

    def __init__(self, port: int, lat: Latencies) -> None:
        self.lat = lat
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat-" + uuid.uuid4().hex[:8])
        up = threading.Event()
        self.client.on_connect = lambda *a: (self.client.subscribe(wire.ROOT + "/+/telemetry", qos=1), up.set())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not up.wait(10):
            raise RuntimeError("the subscriber could not connect")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        env = msgpack.unpackb(msg.payload)
        for r in env["r"]:   # readings carry the device's uptime; "t" is its wall time when it sent
            self.lat.add(env["t"] - (env["u"] - r[2]))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_fleet(broker: Mosquitto, rate: int, seconds: float, qos: int) -> dict[str, Any]:
    devices = max(1, round(rate / PER_DEVICE))
    fleet = Fleet(broker.url, devices=devices, rate=rate / devices, qos=qos, prefix=f"lat{rate}",
                  fault_rate=0.0, observe=False, procs=2 if rate > 2000 else 0)
    fleet.start(wait_connected=60)
    try:
        time.sleep(seconds)   # the run's length (a benchmark: it is what is measured)
    finally:
        fleet.stop()
    rep = fleet.report()
    return {"devices": devices, "sent_per_s": round(rep.totals.get("readings", 0) / max(rep.seconds, 1e-9))}


def gateway_figures(port: int) -> dict[str, Any]:
    """Where the gateway's time went: its journal's commit times and the sink's counters."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/stats", timeout=10) as r:
        st = json.load(r)
    j, sink = st["journal"], st["sinks"][0]
    return {"journal_commit_ms_avg": j.get("commit_ms_avg"), "journal_commit_ms_max": j.get("commit_ms_max"),
            "journal_append_to_commit_ms_p99": j.get("append_to_commit_ms_p99"),
            "sink_failures": sink.get("failures"), "sink_published_messages": sink.get("published_messages"),
            "sink_delivered_entries": sink.get("delivered_entries")}


def phase(workdir: Path, rate: int, seconds: float, warmup: float, qos: int, via_gateway: bool) -> dict[str, Any]:
    broker = Mosquitto(workdir).start()
    lat = Latencies(time.time() + warmup + 3)
    gw = consumer = sub = None
    port = 0
    try:
        if via_gateway:
            exchange = "ew-lat-" + uuid.uuid4().hex[:8]
            consumer = PikaConsumer(exchange, lat)
            consumer.start()
            if not consumer.ready.wait(30):
                raise RuntimeError("the pika consumer did not start")
            port = free_port()
            conf = workdir / "gateway.toml"
            conf.write_text(f'[mqtt]\nurl = "{broker.url}"\n[http]\nhost = "127.0.0.1"\nport = {port}\n'
                            f'[journal]\npath = "{workdir / "journal.db"}"\n'
                            f'[[sinks]]\ntype = "amqp"\nurl = "{AMQP_URL}"\nexchange = "{exchange}"\n')
            gw = subprocess.Popen([str(Path(sys.executable).parent / "edgewire"), "gateway", "--config", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=open(workdir / "gateway.log", "ab"))
            wait_port(port, timeout=30)
        else:
            sub = PahoSubscriber(broker.port, lat)
        lat.warmup_until = time.time() + warmup + 3   # fleet start-up included
        sent = run_fleet(broker, rate, seconds + warmup, qos)
        time.sleep(2.0)   # let the tail arrive (readings still in flight are late, not missing)
        return {**lat.summary(), **sent, **(gateway_figures(port) if via_gateway else {})}
    finally:
        if consumer is not None:
            consumer.stop_flag.set()
            consumer.join(30)
        if sub is not None:
            sub.close()
        if gw is not None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(30)
            except subprocess.TimeoutExpired:
                gw.kill()
        broker.stop()


def rabbit_phase(rate: int, seconds: float, warmup: float) -> dict[str, Any]:
    """RabbitMQ's own latency at `rate`: publisher (aio-pika, confirms) -> exchange -> pika consumer."""
    import asyncio

    import aio_pika

    exchange = "ew-lat-" + uuid.uuid4().hex[:8]
    lat = Latencies(time.time() + warmup)
    consumer = PikaConsumer(exchange, lat)
    consumer.start()
    if not consumer.ready.wait(30):
        raise RuntimeError("the pika consumer did not start")

    async def publish() -> None:
        conn = await aio_pika.connect(AMQP_URL)
        try:
            ch = await conn.channel(publisher_confirms=True)
            ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            pending: set[asyncio.Future[Any]] = set()
            per_tick = max(1, round(rate / 100))
            t0 = time.monotonic()
            tick = 0
            while time.monotonic() - t0 < seconds + warmup:
                now = int(time.time() * 1000)
                for _ in range(per_tick):
                    f = asyncio.ensure_future(ex.publish(aio_pika.Message(
                        json.dumps({"ts": now}).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json"), "lat.dev.t", mandatory=False))
                    pending.add(f)
                    f.add_done_callback(pending.discard)
                tick += 1
                await asyncio.sleep(max(0.0, t0 + tick * 0.01 - time.monotonic()))   # pacing
            await asyncio.gather(*pending)
        finally:
            await conn.close()

    try:
        asyncio.run(publish())
        time.sleep(2.0)
        return lat.summary()
    finally:
        consumer.stop_flag.set()
        consumer.join(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="1000,10000", help="readings per second, comma separated")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"qos": args.qos, "rates": {}}
    for rate in (int(r) for r in args.rates.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            base = phase(Path(tmp) / "b", rate, args.seconds, args.warmup, args.qos, False) \
                if (Path(tmp) / "b").mkdir() is None else {}
            gw = phase(Path(tmp) / "g", rate, args.seconds, args.warmup, args.qos, True) \
                if (Path(tmp) / "g").mkdir() is None else {}
        ratio = {k: round(gw[k] / base[k], 2) if base.get(k) else None for k in ("p50_ms", "p99_ms")}
        rabbit = rabbit_phase(rate, args.seconds, args.warmup)
        out["rates"][rate] = {"baseline": base, "gateway": gw, "ratio": ratio, "rabbitmq_alone": rabbit}
    if args.json:
        print(json.dumps(out))
        return
    print(f"End-to-end latency, simulated devices at QoS {args.qos} -> mosquitto -> gateway -> RabbitMQ -> pika "
          f"(baseline: devices -> mosquitto -> paho), {args.seconds:g} s after {args.warmup:g} s warm-up")
    for rate, r in out["rates"].items():
        b, g = r["baseline"], r["gateway"]
        print(f"  {rate:>6} readings/s target: gateway p50 {g.get('p50_ms')} ms p99 {g.get('p99_ms')} ms "
              f"max {g.get('max_ms')} ms at {g.get('per_s')}/s; baseline p50 {b.get('p50_ms')} ms "
              f"p99 {b.get('p99_ms')} ms at {b.get('per_s')}/s; ratio p50 {r['ratio']['p50_ms']} "
              f"p99 {r['ratio']['p99_ms']}")
        print(f"         journal commit avg {g.get('journal_commit_ms_avg')} ms max {g.get('journal_commit_ms_max')} "
              f"ms, append->commit p99 {g.get('journal_append_to_commit_ms_p99')} ms; sink "
              f"{g.get('sink_delivered_entries')} entries in {g.get('sink_published_messages')} messages, "
              f"{g.get('sink_failures')} failures")
        q = r["rabbitmq_alone"]
        print(f"         RabbitMQ alone (aio-pika publisher -> pika, persistent, confirms): p50 {q.get('p50_ms')} ms "
              f"p99 {q.get('p99_ms')} ms max {q.get('max_ms')} ms at {q.get('per_s')}/s")


if __name__ == "__main__":
    main()
