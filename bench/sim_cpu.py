"""Simulator benchmark: CPU per delivered message, and start-up at 10,000 devices.

What does it cost to run the real device SDK per device, compared with the
least work that produces the same traffic? The baseline is a bare publisher:
one process holding the same number of MQTT connections and writing
pre-encoded PUBLISH packets (QoS 1, the simulator's own telemetry bytes) on a
timer, reading the PUBACKs in bulk: no device logic, no encoding, no sensors.
Both send 1,000 msg/s in total, from 1,000 devices (1 msg/s each) and from
10,000 devices (0.1 msg/s each), for the same time, to a private mosquitto,
and both count CPU over the whole run (connecting included) of every process
they use. The result is the ratio simulator/baseline per delivered
(acknowledged) message, from one run. The simulator runs here without its
observer (observe=False), since the baseline has none.

Start-up: seconds until 10,000 simulator devices are connected (births out,
commands subscribed) with the ramp unbounded, against the bare publisher
connecting 10,000 sockets (CONNECT/CONNACK only), and mosquitto's CPU seconds
meanwhile in each.

    .venv/bin/python bench/sim_cpu.py                 # ~3 minutes
    .venv/bin/python bench/sim_cpu.py --seconds 20 --json

Needs a hard file limit above 10,100 (one descriptor per connection, in the
benchmark and in mosquitto).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from edgewire import wire
from edgewire.mqtt import encode_connect, publish_header

ROOT = Path(__file__).resolve().parents[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / f"mosquitto-{self.port}.conf"
        # Default limits, except the file limit (set below): 10,000 clients need 10,000 descriptors.
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=raise_nofile)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _cpu_self_and_children() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


# ---------------------------------------------------------------- baseline

def bare_publisher(port: int, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    """Run in its own process: connect `devices` sockets, then write pre-encoded
    QoS 1 PUBLISH packets at `rate` msg/s per device, round robin; count PUBACKs."""
    raise_nofile()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(devices):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(encode_connect(f"bare-{i:05d}", 60, True))
        socks.append(s)
    for s in socks:   # CONNACKs
        got = b""
        while len(got) < 4:
            got += s.recv(4 - len(got))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    connect_s = time.monotonic() - t0
    # The packets, built once: the simulator's telemetry bytes for one reading.
    pkts = []
    for i in range(devices):
        topic = wire.topic(f"bare-{i:05d}", wire.KIND_TELEMETRY)
        payload = wire.encode_telemetry(f"bare-{i:05d}", 1, 1, 1000, [("temperature", 21.5, 1000)],
                                        int(time.time() * 1000))
        pid = (i % 65535) + 1
        pkts.append(bytes(publish_header(topic, len(payload), 1, False, False, pid)) + payload)
    total = devices * rate
    interval = 1.0 / total
    acked = sent = 0
    start = time.monotonic()
    nxt = start
    k = 0
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        while nxt <= now:
            j = k % devices
            try:
                socks[j].send(pkts[j])
                sent += 1
            except BlockingIOError:
                pass
            k += 1
            nxt += interval
        for key, _ in sel.select(max(0.0, min(nxt, end) - time.monotonic())):
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            acked += len(data) // 4   # PUBACKs are 4 bytes each
    drain = time.monotonic() + 5
    while acked < sent and time.monotonic() < drain:
        for key, _ in sel.select(0.1):
            try:
                acked += len(key.fileobj.recv(65536)) // 4  # type: ignore[union-attr]
            except BlockingIOError:
                pass
    cpu = time.process_time() - cpu0
    for s in socks:
        s.close()
    return {"connect_s": connect_s, "sent": sent, "acked": acked, "cpu_s": cpu}


def run_baseline(broker: Broker, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    cpu0 = broker.cpu()
    p = subprocess.run([sys.executable, __file__, "--bare", str(broker.port), str(devices), str(rate), str(seconds)],
                       capture_output=True, text=True, timeout=seconds + 300)
    if p.returncode:
        raise RuntimeError(p.stderr)
    r: dict[str, Any] = json.loads(p.stdout)
    r["broker_cpu_s"] = broker.cpu() - cpu0
    r["cpu_per_msg_us"] = 1e6 * r["cpu_s"] / max(1, r["acked"])
    return r


# ---------------------------------------------------------------- simulator

def run_sim(broker: Broker, devices: int, rate: float, seconds: float, ramp: float) -> dict[str, Any]:
    from edgewire.sim import Fleet

    cpu0 = _cpu_self_and_children()
    bcpu0 = broker.cpu()
    fleet = Fleet(broker.url, devices=devices, rate=rate, qos=1, seed=1, fault_rate=0, procs=os.cpu_count() or 1,
                  ramp=ramp, observe=False)
    t0 = time.monotonic()
    fleet.start(wait_connected=600)
    connect_s = time.monotonic() - t0
    broker_connect_cpu = broker.cpu() - bcpu0
    time.sleep(max(0.0, seconds - connect_s))
    fleet.stop()
    rep = fleet.report()
    cpu = _cpu_self_and_children() - cpu0
    acked = rep.totals["acked"]
    return {"connect_s": connect_s, "broker_cpu_connect_s": broker_connect_cpu, "sent": rep.totals["messages"],
            "acked": acked, "cpu_s": cpu, "cpu_per_msg_us": 1e6 * cpu / max(1, acked),
            "broker_cpu_s": broker.cpu() - bcpu0}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        port, devices, rate, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(bare_publisher(port, devices, rate, seconds)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each CPU run (default 40)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 10_200:
        print(f"bench/sim_cpu.py: the file limit is {soft}; 10,000 connections need more (ulimit -Hn)",
              file=sys.stderr)
        return 2
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for devices, rate in ((1000, 1.0), (10000, 0.1)):
            b = Broker(Path(tmp))
            try:
                base = run_baseline(b, devices, rate, args.seconds)
            finally:
                b.stop()
            b = Broker(Path(tmp))
            try:
                sim = run_sim(b, devices, rate, args.seconds, ramp=1000)
            finally:
                b.stop()
            out[f"cpu_{devices}"] = {"baseline": base, "sim": sim,
                                     "ratio": sim["cpu_per_msg_us"] / base["cpu_per_msg_us"]}
        b = Broker(Path(tmp))
        try:
            bcpu0 = b.cpu()
            base = run_baseline(b, 10000, 0.001, 1.0)
            base_start = {"connect_s": base["connect_s"], "broker_cpu_s": b.cpu() - bcpu0}
        finally:
            b.stop()
        b = Broker(Path(tmp))
        try:
            sim = run_sim(b, 10000, 0.001, 1.0, ramp=1e9)
            sim_start = {"connect_s": sim["connect_s"], "broker_cpu_s": sim["broker_cpu_connect_s"]}
        finally:
            b.stop()
        out["startup_10000"] = {"baseline": base_start, "sim": sim_start,
                                "ratio": sim_start["connect_s"] / base_start["connect_s"]}
    out["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"load average before {out['load_before'][0]:.2f}, after {out['load_after'][0]:.2f} "
          f"(a shared machine inflates both sides alike)")
    for devices in (1000, 10000):
        r = out[f"cpu_{devices}"]
        print(f"{devices:>6,} devices, 1,000 msg/s, QoS 1: simulator {r['sim']['cpu_per_msg_us']:.0f} us CPU per "
              f"acknowledged message ({r['sim']['acked']:,} msgs), bare publisher {r['baseline']['cpu_per_msg_us']:.0f} "
              f"us ({r['baseline']['acked']:,}): ratio {r['ratio']:.1f}x; mosquitto {r['sim']['broker_cpu_s']:.1f} s vs "
              f"{r['baseline']['broker_cpu_s']:.1f} s CPU")
    s = out["startup_10000"]
    print(f"start-up, 10,000 devices connected: simulator {s['sim']['connect_s']:.1f} s (mosquitto "
          f"{s['sim']['broker_cpu_s']:.1f} s CPU meanwhile), bare connects {s['baseline']['connect_s']:.1f} s "
          f"(mosquitto {s['baseline']['broker_cpu_s']:.1f} s CPU): ratio {s['ratio']:.1f}x; goal: within 60 s "
          f"{'met' if s['sim']['connect_s'] <= 60 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
