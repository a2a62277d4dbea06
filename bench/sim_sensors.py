"""Simulator benchmark: the cost of one sensor reading on a SimBoard, a driver
source (the SDK's real driver over a simulated chip) against a `sim:*` model.

Baseline: `sim:temperature`, the cheapest way the simulator makes a reading
(the model's drift and noise, no bus). Each driver source is read the same
number of times, every read a fresh measurement (the board's clock moves 5 s
between reads, past drivers.FRESH_MS and the DHT22's 2 s), and the figures
are CPU per reading (process time; the driver's sleeps cost none) and wall
time per reading (the driver's sleeps included: in the simulator they block
the shard's loop), each as a ratio to the baseline's.

    .venv/bin/python bench/sim_sensors.py            # a few seconds
    .venv/bin/python bench/sim_sensors.py --reads 2000 --json
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

from edgewire.boards.sim import SimBoard

SOURCES = ["sim:temperature", "bme280:temperature", "ds18b20@4:temperature", "dht22@5:temperature"]


def measure(source: str, reads: int) -> dict[str, float]:
    now = [0.0]   # simulated ms: 5 s per reading, so every read measures anew
    b = SimBoard("bench", seed=1, fault_rate=0, clock=SimpleNamespace(ms=lambda: now[0]))
    b.read(source)   # opens the driver (calibration read) outside the timing
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(reads):
        now[0] += 5000
        b.read(source)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_us": cpu / reads * 1e6, "wall_us": wall / reads * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=300, help="readings per source (default 300)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = {s: measure(s, a.reads) for s in SOURCES}
    base = res[SOURCES[0]]
    for r in res.values():
        r["cpu_ratio"] = r["cpu_us"] / base["cpu_us"]
        r["wall_ratio"] = r["wall_us"] / base["wall_us"]
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"one reading on a SimBoard, {a.reads} fresh measurements each; baseline {SOURCES[0]}")
    print(f"{'source':24} {'CPU us':>9} {'x base':>8} {'wall us':>9} {'x base':>8}")
    for s, r in res.items():
        print(f"{s:24} {r['cpu_us']:9.1f} {r['cpu_ratio']:8.1f} {r['wall_us']:9.1f} {r['wall_ratio']:8.1f}")


if __name__ == "__main__":
    main()
