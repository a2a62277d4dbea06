"""End-to-end latency to a backend: simulated devices (edgewire.sim, the real
device SDK on simulated boards) -> mosquitto -> `edgewire gateway` (a
process, default config plus an amqp sink) -> RabbitMQ -> a pika consumer,
at a target rate of readings per second. Latency of a reading: the time the
consumer got it minus the reading's `ts`, the device's timestamp when it
sampled (a simulated board's clock is the host's), so it includes the
device's own send delay. The first `--warmup` seconds after every device connected are left out.

A rate is `R` (one reading per MQTT message, one per AMQP message: the
default sink) or `RxN`: each device samples N streams together and sends
them in one MQTT message (Fleet batch=N), and the amqp sink sets
`readings_per_message` (--amqp-batch, default 100) so that the readings of
one device and stream that a delivery round holds go in one AMQP message:
what a deployment at that rate would configure. Devices send 50 messages/s
each (--per-device): R / (50 N) devices.

Reported per rate: p50, p99, max (ms), the readings per second the consumer
actually got, and the ratio of p50/p99 to the same path without the gateway
(the baseline: devices -> mosquitto -> a paho subscriber in this process, the
broker's own relay latency, measured in the same run). For each phase, what
the fleet itself achieved over the measured window (readings sampled and
messages sent per second, the latest a device step ran): if the fleet falls
short of the target, the figures are not those of the target rate, and the
run says so. Beside it, RabbitMQ's own share: a bare publisher in a process
of its own (aio-pika's connection, aiormq's basic_publish with wait=False, as
the sink publishes) sending persistent messages with confirms at the same
readings per second (in 10 ms ticks, confirms awaited in the background) to
the same kind of exchange and pika consumer, with as many readings per AMQP
message (JSON arrays, rounded) and as many routing keys as the gateway's sink
used in the same run.

    .venv/bin/python bench/backend_latency.py                    # 1,000 and 10,000x10 readings/s, 10 s each
    .venv/bin/python bench/backend_latency.py --rates 1000,1000x10,10000x10
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
FLEET_SHORT = 0.97   # the fleet sampled less than this share of the target: the rate was not reached


def parse_rate(text: str) -> tuple[int, int]:
    """'10000x10' -> (10000 readings/s, 10 readings per MQTT message); '1000' -> (1000, 1)."""
    r, _, n = text.strip().partition("x")
    return int(r), int(n or 1)


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
            doc = json.loads(body)
            if isinstance(doc, list):   # a batched message: each reading has its own ts
                for r in doc:
                    self.lat.add(r["ts"])
            else:
                self.lat.add(doc["ts"])
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


def fleet_shape(rate: int, batch: int, per_device: float) -> tuple[int, float]:
    """(devices, messages per second per device) for `rate` readings/s in messages of `batch`."""
    devices = max(1, round(rate / (per_device * batch)))
    return devices, rate / (devices * batch)


def run_fleet(broker: Mosquitto, rate: int, batch: int, seconds: float, warmup: float, qos: int,
              per_device: float, procs: int, lat: Latencies, cpu_of: int = 0) -> dict[str, Any]:
    """Run the fleet for warmup + seconds after all devices connected; what it
    achieved over the last `seconds` (from its own counters, every 0.5 s):
    readings sampled and messages sent per second, and the latest a device's
    timed step ran (lag); with cpu_of (a pid), the share of one core that process
    used. `lat` counts from the same moment."""
    devices, msg_rate = fleet_shape(rate, batch, per_device)
    fleet = Fleet(broker.url, devices=devices, rate=msg_rate, qos=qos, prefix=f"lat{rate}x{batch}",
                  fault_rate=0.0, observe=False, procs=procs, batch=batch)
    fleet.start(wait_connected=60)
    try:
        time.sleep(warmup)   # the run's length (a benchmark: it is what is measured)
        p0 = shard_progress(fleet)
        lat.warmup_until = time.time()
        c0, w0 = cpu_seconds(cpu_of), time.monotonic()
        lag = 0.0
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            lag = max(lag, fleet.progress().get("lag", 0.0))
        cpu = (cpu_seconds(cpu_of) - c0) / (time.monotonic() - w0)
        time.sleep(0.6)   # one more progress report from every shard
        p1 = shard_progress(fleet)
    finally:
        fleet.stop()
    # Each shard's counts over its own report times (reports come every 0.5 s: the
    # fleet's receive times would be off by up to that much).
    sampled = sum((b["sampled"] - a["sampled"]) / (b["t"] - a["t"]) for a, b in zip(p0, p1))
    sent = sum((b["sent"] - a["sent"]) / (b["t"] - a["t"]) for a, b in zip(p0, p1))
    return {"devices": devices, "streams_per_device": len(fleet.streams), "readings_per_mqtt_message": batch,
            "fleet_procs": procs, "fleet_readings_per_s": round(sampled), "fleet_messages_per_s": round(sent),
            "fleet_lag_max_s": lag, "fleet_short": sampled < FLEET_SHORT * rate,
            **({"gateway_cpu_share": round(cpu, 2)} if cpu_of else {})}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 for pid 0)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shard_progress(fleet: Fleet) -> list[dict[str, Any]]:
    """The latest progress report of each shard (its counters and the time it took them)."""
    out = []
    for ln in fleet.links:
        with ln.cond:
            out.append(dict(ln.progress))
    return out


def gateway_figures(port: int) -> dict[str, Any]:
    """Where the gateway's time went: its journal's commit times and the sink's counters."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/stats", timeout=10) as r:
        st = json.load(r)
    j, sink = st["journal"], st["sinks"][0]
    msgs, readings = sink.get("published_messages") or 0, sink.get("delivered_readings") or 0
    return {"journal_commit_ms_avg": j.get("commit_ms_avg"), "journal_commit_ms_max": j.get("commit_ms_max"),
            "journal_append_to_commit_ms_p99": j.get("append_to_commit_ms_p99"),
            "sink_failures": sink.get("failures"), "sink_published_messages": msgs,
            "sink_delivered_entries": sink.get("delivered_entries"), "sink_delivered_readings": readings,
            "sink_deliveries": sink.get("deliveries"), "sink_deliver_ms_avg": sink.get("deliver_ms_avg"),
            "sink_read_wait_ms_total": sink.get("read_wait_ms_total"),
            "sink_readings_per_message": round(readings / msgs, 2) if msgs else None}


def phase(workdir: Path, rate: int, batch: int, amqp_batch: int, seconds: float, warmup: float, qos: int,
          per_device: float, procs: int, via_gateway: bool) -> dict[str, Any]:
    broker = Mosquitto(workdir).start()
    lat = Latencies(time.time() + 3600)
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
                            f'[[sinks]]\ntype = "amqp"\nurl = "{AMQP_URL}"\nexchange = "{exchange}"\n'
                            f'readings_per_message = {amqp_batch}\n')
            gw = subprocess.Popen([str(Path(sys.executable).parent / "edgewire"), "gateway", "--config", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=open(workdir / "gateway.log", "ab"))
            wait_port(port, timeout=30)
        else:
            sub = PahoSubscriber(broker.port, lat)
        lat.warmup_until = time.time() + 3600   # run_fleet sets it when the measured window starts
        sent = run_fleet(broker, rate, batch, seconds, warmup, qos, per_device, procs, lat,
                         gw.pid if gw is not None else 0)
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


def _publish(exchange: str, rate: int, per_message: int, keys: int, seconds: float) -> None:
    """The RabbitMQ-alone publisher, in a process of its own (sharing the consumer's
    GIL would make it the client's figure): persistent messages with confirms,
    published as the sink does (aio-pika's connection, aiormq's basic_publish
    with wait=False), in 10 ms ticks, confirms awaited in the background."""
    import asyncio

    import aio_pika
    from aiormq import spec

    async def publish() -> None:
        conn = await aio_pika.connect(AMQP_URL)
        try:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            raw = await ch.get_underlay_channel()
            props = spec.Basic.Properties(content_type="application/json", delivery_mode=2)
            pending: set[asyncio.Future[Any]] = set()
            per_s = rate / per_message   # messages per second (fractional: sent as they fall due)
            t0 = time.monotonic()
            tick = k = sent = 0
            while time.monotonic() - t0 < seconds:
                now = int(time.time() * 1000)
                due = int(per_s * (tick + 1) / 100) - sent
                sent += due
                for _ in range(due):
                    body = json.dumps({"ts": now} if per_message == 1 else [{"ts": now}] * per_message).encode()
                    k = (k + 1) % keys
                    f = asyncio.ensure_future(raw.basic_publish(body, exchange=exchange, routing_key=f"lat.dev{k}.t",
                                                                properties=props, wait=False))
                    pending.add(f)
                    f.add_done_callback(pending.discard)
                tick += 1
                await asyncio.sleep(max(0.0, t0 + tick * 0.01 - time.monotonic()))   # pacing
            await asyncio.gather(*pending)
        finally:
            await conn.close()

    asyncio.run(publish())


def rabbit_phase(rate: int, per_message: int, keys: int, seconds: float, warmup: float) -> dict[str, Any]:
    """RabbitMQ's own latency at `rate` readings/s: a publisher process (confirms) -> exchange ->
    pika consumer, `per_message` readings per message (a JSON array when > 1) over `keys` routing keys."""
    import multiprocessing

    exchange = "ew-lat-" + uuid.uuid4().hex[:8]
    lat = Latencies(time.time() + 3600)
    consumer = PikaConsumer(exchange, lat)
    consumer.start()
    if not consumer.ready.wait(30):
        raise RuntimeError("the pika consumer did not start")
    try:
        pub = multiprocessing.get_context("spawn").Process(
            target=_publish, args=(exchange, rate, per_message, keys, seconds + warmup), daemon=True)
        pub.start()
        time.sleep(warmup + 1.0)   # the child's start-up (imports) and the warm-up
        lat.warmup_until = time.time()
        pub.join(seconds + warmup + 120)
        if pub.exitcode != 0:
            raise RuntimeError(f"the RabbitMQ-alone publisher failed (exit code {pub.exitcode})")
        time.sleep(2.0)
        return {**lat.summary(), "readings_per_message": per_message, "routing_keys": keys,
                "messages_per_s": round(rate / per_message, 1)}
    finally:
        consumer.stop_flag.set()
        consumer.join(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="1000,10000x10",
                    help="readings per second, comma separated; RxN: N readings per MQTT message (default "
                         "1000,10000x10)")
    ap.add_argument("--amqp-batch", type=int, default=100,
                    help="the amqp sink's readings_per_message for RxN rates with N > 1 (R alone: 1)")
    ap.add_argument("--per-device", type=float, default=50.0, help="MQTT messages per second per device")
    ap.add_argument("--procs", type=int, default=-1,
                    help="fleet shard processes (default: 2 above 2,000 readings/s, else a thread)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"qos": args.qos, "loadavg": _loadavg(), "rates": {}}
    for spec in args.rates.split(","):
        rate, batch = parse_rate(spec)
        amqp_batch = args.amqp_batch if batch > 1 else 1
        procs = args.procs if args.procs >= 0 else (2 if rate > 2000 else 0)
        common = (rate, batch, amqp_batch, args.seconds, args.warmup, args.qos, args.per_device, procs)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "b").mkdir()
            (Path(tmp) / "g").mkdir()
            base = phase(Path(tmp) / "b", *common, via_gateway=False)
            gw = phase(Path(tmp) / "g", *common, via_gateway=True)
        ratio = {k: round(gw[k] / base[k], 2) if base.get(k) else None for k in ("p50_ms", "p99_ms")}
        # RabbitMQ alone with the batching the sink used: its readings per AMQP message, one routing
        # key per device and stream.
        per_msg = max(1, round(gw.get("sink_readings_per_message") or 1))
        rabbit = rabbit_phase(rate, per_msg, gw["devices"] * gw["streams_per_device"], args.seconds, args.warmup)
        out["rates"][spec] = {"rate": rate, "readings_per_mqtt_message": batch, "amqp_readings_per_message": amqp_batch,
                              "baseline": base, "gateway": gw, "ratio": ratio, "rabbitmq_alone": rabbit}
    out["loadavg_end"] = _loadavg()
    if args.json:
        print(json.dumps(out))
        return
    print(f"End-to-end latency, simulated devices at QoS {args.qos} -> mosquitto -> gateway -> RabbitMQ -> pika "
          f"(baseline: devices -> mosquitto -> paho), {args.seconds:g} s after {args.warmup:g} s warm-up; "
          f"load average {out['loadavg']} at the start, {out['loadavg_end']} at the end")
    for spec, r in out["rates"].items():
        b, g = r["baseline"], r["gateway"]
        print(f"  {r['rate']:>6} readings/s target: {g['devices']} devices x {g['streams_per_device']} streams, "
              f"{r['readings_per_mqtt_message']} reading(s) per MQTT message, amqp readings_per_message "
              f"{r['amqp_readings_per_message']}, fleet in {'%d processes' % g['fleet_procs'] if g['fleet_procs'] else 'a thread'}")
        for name, x in (("baseline", b), ("gateway", g)):
            print(f"         fleet ({name} phase): {x['fleet_readings_per_s']} readings/s sampled, "
                  f"{x['fleet_messages_per_s']} messages/s sent, step lag max {x['fleet_lag_max_s']} s"
                  + ("  ** SHORT OF THE TARGET: not the target rate's figures **" if x["fleet_short"] else ""))
        print(f"         gateway p50 {g.get('p50_ms')} ms p99 {g.get('p99_ms')} ms max {g.get('max_ms')} ms at "
              f"{g.get('per_s')}/s; baseline p50 {b.get('p50_ms')} ms p99 {b.get('p99_ms')} ms at "
              f"{b.get('per_s')}/s; ratio p50 {r['ratio']['p50_ms']} p99 {r['ratio']['p99_ms']}")
        print(f"         journal commit avg {g.get('journal_commit_ms_avg')} ms max {g.get('journal_commit_ms_max')} "
              f"ms, append->commit p99 {g.get('journal_append_to_commit_ms_p99')} ms; sink "
              f"{g.get('sink_delivered_readings')} readings ({g.get('sink_delivered_entries')} entries) in "
              f"{g.get('sink_published_messages')} messages ({g.get('sink_readings_per_message')} per message), "
              f"{g.get('sink_failures')} failures; the gateway process used {g.get('gateway_cpu_share')} of a core")
        q = r["rabbitmq_alone"]
        print(f"         RabbitMQ alone (publisher process -> pika, persistent, confirms, {q['readings_per_message']} "
              f"reading(s) per message over {q['routing_keys']} keys, {q['messages_per_s']} messages/s): "
              f"p50 {q.get('p50_ms')} ms p99 {q.get('p99_ms')} ms max {q.get('max_ms')} ms at {q.get('per_s')} readings/s")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
