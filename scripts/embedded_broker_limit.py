"""How many messages per second the embedded broker relays, beside mosquitto.

A first figure for the gateway's warning threshold (MEASURED_LIMIT in
gateway/embedded_broker.py); the benchmark harness in bench/ is the place for
repeated, reported runs. Run from the repository root with the test extra
installed (paho-mqtt publishes):

    .venv/bin/python scripts/embedded_broker_limit.py [--seconds 8] [--publishers 2]

Two figures per broker and QoS 0, 1, 2. Publishers: `--publishers`
processes with 5 paho clients each, 100-byte messages, up to 50 in flight per
client. Subscriber: the gateway's own MQTT client, subscribed to
edgewire/v1/# at QoS 2 as the gateway is. Rates are the subscriber's, over
`--seconds` after a 2 s warm-up, with the broker process's CPU use over the
same window (100% = one core).

- flat out: publishers send as fast as the broker takes them. For mosquitto
  this is its relay limit (the baseline). The embedded broker accepts faster
  than it relays, queues the rest in memory, and this is its rate when overloaded.
- sustained (embedded broker only): publishers offer a fixed total rate,
  stepped up (250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000 msg/s) until
  the subscriber gets less than 95% of it; the figure is the last rate it
  kept up with. This is the limit the gateway's warning is set from."""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgewire.gateway.embedded_broker import EmbeddedBroker  # noqa: E402
from edgewire.gateway.mqtt import MqttClient  # noqa: E402
from tests.support.broker import free_port, wait_port  # noqa: E402

CLIENTS_PER_PROCESS = 5
STEPS = (250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000)


def _publish(port: int, qos: int, index: int, stop: "mp.synchronize.Event", rate: float) -> None:
    """Publish until `stop`; `rate` msg/s from this process (0: flat out)."""
    import paho.mqtt.client as mqtt

    clients = []
    for i in range(CLIENTS_PER_PROCESS):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{index}-{i}")
        c.max_inflight_messages_set(50)
        c.max_queued_messages_set(200)
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        clients.append(c)
    payload = os.urandom(100)
    topics = [f"edgewire/v1/bench-{index}-{i}/telemetry" for i in range(CLIENTS_PER_PROCESS)]
    if rate:
        gap, due, k = 1.0 / rate, time.monotonic(), 0
        while not stop.is_set():
            k += 1
            clients[k % len(clients)].publish(topics[k % len(clients)], payload, qos=qos)
            due += gap
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    while not rate and not stop.is_set():
        full = 0
        for c, t in zip(clients, topics):
            if c.publish(t, payload, qos=qos).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                full += 1
        if full == len(clients):
            time.sleep(0.001)
    for c in clients:
        c.disconnect()
        c.loop_stop()


async def _measure(port: int, broker_pid: int, qos: int, publishers: int, seconds: float,
                   rate: float = 0.0) -> tuple[float, float]:
    client = MqttClient(host="127.0.0.1", port=port, client_id=f"bench-sub-{qos}-{int(rate)}",
                        subscriptions=[("edgewire/v1/#", 2)], clean_session=True, queue_limit=1_000_000)
    client.start()
    await client.wait_connected(10)
    received = 0

    async def consume() -> None:
        nonlocal received
        async for batch in client.batches():
            received += len(batch)
            batch.ack()  # PUBACK/PUBREC: the gateway sends them after its commit, here at once

    task = asyncio.create_task(consume())
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_publish, args=(port, qos, i, stop, rate / publishers)) for i in range(publishers)]
    for p in procs:
        p.start()
    broker = psutil.Process(broker_pid)
    await asyncio.sleep(2.0)  # warm-up: a benchmark window, not a test wait
    n0, t0, cpu0 = received, time.monotonic(), broker.cpu_times()
    await asyncio.sleep(seconds)
    n1, t1, cpu1 = received, time.monotonic(), broker.cpu_times()
    stop.set()
    for p in procs:
        p.join(30)
    if any(p.exitcode != 0 for p in procs):  # a dead publisher would pass for a slow broker
        raise RuntimeError(f"a publisher process failed: exit codes {[p.exitcode for p in procs]}")
    await client.stop()
    task.cancel()
    rate = (n1 - n0) / (t1 - t0)
    cpu = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0) * 100
    return rate, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--qos", type=int, nargs="+", choices=(0, 1, 2), default=[0, 1, 2])
    args = ap.parse_args()
    levels = tuple(args.qos)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    results: dict[str, dict[int, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "m.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            results["mosquitto"] = {q: asyncio.run(_measure(port, proc.pid, q, args.publishers, args.seconds))
                                    for q in levels}
        finally:
            proc.terminate()
            proc.wait()
    with EmbeddedBroker(port=0) as eb:
        assert eb.pid is not None
        results["embedded"] = {q: asyncio.run(_measure(eb.port, eb.pid, q, args.publishers, args.seconds))
                               for q in levels}
    sustained: dict[int, tuple[float, float]] = {}
    for q in levels:
        best = (0.0, 0.0)
        for offered in STEPS:
            with EmbeddedBroker(port=0) as eb:  # a fresh broker: no backlog from the step before
                assert eb.pid is not None
                got, cpu = asyncio.run(_measure(eb.port, eb.pid, q, args.publishers, args.seconds, offered))
            print(f"  embedded QoS {q}: offered {offered:,} msg/s, relayed {got:,.0f} ({cpu:.0f}% cpu)", flush=True)
            if got < 0.95 * offered:
                break
            best = (offered, cpu)
        sustained[q] = best
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{args.publishers * CLIENTS_PER_PROCESS} publishers, subscriber at QoS 2, {args.seconds:g} s windows")
    print("flat out:")
    print(f"{'QoS':>4} {'mosquitto msg/s':>16} {'(cpu)':>6} {'embedded msg/s':>15} {'(cpu)':>6} {'ratio':>6}")
    for q in levels:
        (mr, mc), (er, ec) = results["mosquitto"][q], results["embedded"][q]
        print(f"{q:>4} {mr:>16,.0f} {mc:>5.0f}% {er:>15,.0f} {ec:>5.0f}% {er / mr if mr else 0:>6.3f}")
    print("sustained by the embedded broker (>= 95% of the offered rate relayed):")
    for q in levels:
        print(f"{q:>4} {sustained[q][0]:>10,.0f} msg/s at {sustained[q][1]:.0f}% cpu")
    print(f"embedded limit (lowest sustained): {min(r for r, _ in sustained.values()):,.0f} msg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
