"""10,000 simulated devices, each with its own MQTT connection running the
real device SDK, against a private mosquitto, checked by an independent
subscriber (paho + the reference msgpack), per device."""
from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewire.sim import Fleet
from tests.sim.conftest import Checker
from tests.support.broker import MOSQUITTO, Mosquitto, wait_port

DEVICES = 10_000


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BigMosquitto(Mosquitto):
    """mosquitto for 10,000 clients. Its own max_connections default is
    unlimited (-1), so what binds is the process's file limit: 1,024 by default
    on these machines, one descriptor per client. So this broker alone starts
    with its soft limit raised to the hard one (20,000 here); every other test
    keeps the defaults a user gets."""

    def start(self) -> "BigMosquitto":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < DEVICES + 100:
            pytest.fail(f"the hard file limit is {hard}; 10,000 MQTT connections need {DEVICES + 100} "
                        f"(raise it: ulimit -Hn, /etc/security/limits.conf)")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_raise_nofile)
        wait_port(self.port)
        return self


# The two subscribers that count (the simulator's observer and the test's
# independent checker) each receive the whole fleet's 1,000 msg/s, and at the
# stop every device's last readings and its death at once. mosquitto's default
# per-client limits (20 in flight, 1,000 queued) then make it drop messages for
# a subscriber that falls behind (by design, counted in its log), which would
# be counted here as loss the devices did not cause. So the subscribers get a
# deep queue; the devices' side keeps the defaults.
SUBSCRIBER_LIMITS = "max_inflight_messages 0\nmax_queued_messages 1000000\n"


@pytest.fixture
def big_broker(tmp_path: Path) -> Iterator[BigMosquitto]:
    b = BigMosquitto(tmp_path, extra_conf=SUBSCRIBER_LIMITS).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_10000_devices_for_60_s_at_0_1_msg_per_s(big_broker: BigMosquitto) -> None:
    checker = Checker(big_broker.port)
    try:
        # Two shard processes (one per core), connections ramped at 1,000/s.
        fleet = Fleet(big_broker.url, devices=DEVICES, rate=0.1, qos=1, seed=10_000, fault_rate=0.01,
                      procs=2, ramp=1000)
        fleet.start(wait_connected=120)   # all 10,000 connect (a condition, not a time goal: see bench/)
        time.sleep(60)
        fleet.stop()
        rep = fleet.report()
        t = rep.totals
        checker.settle(expected=t["acked"], timeout=60)
    finally:
        checker.close()

    assert rep.devices == DEVICES and len(rep.per_device) == DEVICES
    assert not rep.devices_with_errors
    assert all(d.connects >= 1 for d in rep.per_device)
    # 0.1 msg/s for 60 s: ~6 each. Far fewer means the fleet stalled.
    assert t["messages"] >= DEVICES * 4
    assert t["unacked"] == 0
    # The independent subscriber received exactly what the broker acknowledged, per device.
    assert checker.refused == []
    assert checker.duplicates == 0
    assert {d.device: d.acked for d in rep.per_device if d.acked} == checker.per_device
    assert checker.received == t["acked"]
    # ... and the simulator's own observer agrees with it.
    rep.assert_no_loss(qos=1)
    assert sum(d.received for d in rep.per_device) == checker.received
