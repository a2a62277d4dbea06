"""The report's end-to-end latency agrees with latency the test measures
itself, from the sample timestamps in what an independent subscriber received."""
from __future__ import annotations

import time

from edgewire.sim import Fleet
from tests.sim.conftest import Checker
from tests.support.broker import Mosquitto

# Stated tolerance (docs/simulator.md): two subscribers on one host receive
# each message at nearly the same instant; what separates them is thread
# scheduling in two clients (a GIL shared with the test). So the percentiles
# agree within 25 ms plus 25 % of the larger figure.
ABS_MS, REL = 25.0, 0.25


def _rank(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, -(-int(p * len(v) * 1000) // 1000) - 1))]


def test_latency_percentiles_agree_with_an_independent_measurement(broker: Mosquitto, checker: Checker) -> None:
    fleet = Fleet(broker.url, devices=100, rate=2, qos=1, seed=5, fault_rate=0, procs=1)
    with fleet:
        time.sleep(8)
    rep = fleet.report()
    checker.settle(expected=rep.totals["acked"])
    assert rep.latency is not None and checker.latencies
    assert int(rep.latency["count"]) == len(checker.latencies) == rep.totals["readings"]
    for name, p in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        mine, theirs = _rank(checker.latencies, p), rep.latency[name]
        assert abs(mine - theirs) <= ABS_MS + REL * max(mine, theirs), (name, mine, theirs)
    assert min(checker.latencies) >= -5   # one clock: no reading arrives before it was sampled
