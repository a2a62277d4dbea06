"""Simulated devices that read their sensors through the SDK's real drivers
(BME280 on I2C, DS18B20 on 1-Wire) over SimBoard's simulated chips, which
measure the board's sensor models: what arrives at an independent subscriber
is the simulated environment at the chips' resolution, and a simulated sensor
failure is a counted error reading while the device keeps running."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from edgewire.drivers.simbus import SimBuses
from edgewire.sim import Fleet
from tests.sim.conftest import Checker
from tests.support.broker import Mosquitto

SENSORS = ["bme280:temperature", "bme280:humidity", "bme280:pressure", "ds18b20@4:temperature"]
# stream -> (index in a measurement (C, %RH, hPa), how far a reading may be from
# what the chip measured: the driver's resolution and rounding to 0.01)
STREAMS = {"bme280/temperature": (0, 0.02), "bme280/humidity": (1, 0.02), "bme280/pressure": (2, 0.02),
           "ds18b20-4/temperature": (0, 1 / 16 + 0.01)}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def good(checker: Checker, dev: str, stream: str) -> list[tuple[float, int]]:
    with checker.lock:
        return [(v, u) for v, u, err in checker.values.get((dev, stream), []) if err is None]


def test_driver_readings_follow_the_simulated_model(broker: Mosquitto, checker: Checker,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimBuses, "KEEP", 100_000)   # every measurement the chips make, to compare with
    fleet = Fleet(broker.url, devices=3, rate=8, qos=1, seed=11, fault_rate=0, sensors=SENSORS)
    assert [s["source"] for s in fleet.streams] == SENSORS
    with fleet:
        wait_for(lambda: all(len(good(checker, d, s)) >= 12 for d in fleet.device_ids for s in STREAMS),
                 60, "12 readings of every stream of every device")
        measured = {d: list(fleet.board(d)._drv["sim"].measured) for d in fleet.device_ids}
    rep = fleet.report()
    checker.settle(expected=rep.totals["acked"])
    assert not rep.devices_with_errors and rep.totals["faults"] == 0
    assert checker.refused == [] and checker.received == rep.totals["acked"]
    for dev in fleet.device_ids:
        ms = measured[dev]
        assert ms, dev
        for stream, (k, tol) in STREAMS.items():
            got = good(checker, dev, stream)
            matched = 0
            for v, u in got:
                # the chip measured during the device's sampling round at uptime u
                # (or up to drivers.FRESH_MS before, a measurement the BME280 streams share)
                near = [m[1][k] for m in ms if u - 300 <= m[0] <= u + 200]
                if not near:
                    continue   # sampled after the snapshot of `measured`
                assert any(abs(v - x) <= tol for x in near), (dev, stream, v, u, near)
                matched += 1
            assert matched >= 12, (dev, stream, matched)
        # the model moves (drift and noise) and stays where it was put
        temps = [m[1][0] for m in ms]
        assert len(set(temps)) > 1 and all(16 < t < 26 for t in temps), temps
        assert all(abs(m[1][1] - (45 - 2 * (m[1][0] - 21))) < 2 for m in ms)   # humidity goes the other way
        assert all(abs(m[1][2] - 1013.25) < 2 for m in ms)
        # the devices' own view agrees: the DS18B20 and the BME280 read one environment
        bme = [v for v, _ in good(checker, dev, "bme280/temperature")]
        ds = [v for v, _ in good(checker, dev, "ds18b20-4/temperature")]
        assert abs(sum(bme) / len(bme) - sum(ds) / len(ds)) < 0.5


def test_a_failing_sensor_gives_counted_error_readings_and_the_device_keeps_running(
        broker: Mosquitto, checker: Checker) -> None:
    fleet = Fleet(broker.url, devices=2, rate=6, qos=1, seed=12, fault_rate=0,
                  sensors=["bme280:temperature", "ds18b20@4:temperature", "temperature"])
    sick = "sim-0000"

    def errors(dev: str) -> list[str]:
        with checker.lock:
            return [err for vals in (checker.values.get((dev, s), []) for s in
                                     ("bme280/temperature", "ds18b20-4/temperature", "temperature"))
                    for _, _, err in vals if err is not None]

    with fleet:
        wait_for(lambda: len(good(checker, sick, "ds18b20-4/temperature")) >= 3, 30, "good readings")
        fleet.set_fault_rate(1.0, [sick])
        wait_for(lambda: len(errors(sick)) >= 12, 30, "error readings from the failing sensors")
        fleet.set_fault_rate(0.0, [sick])
        before = {s: len(good(checker, sick, s)) for s in ("bme280/temperature", "ds18b20-4/temperature")}
        wait_for(lambda: all(len(good(checker, sick, s)) >= n + 3 for s, n in before.items()), 30,
                 "good readings again after the fault")
    rep = fleet.report()
    checker.settle(expected=rep.totals["acked"])
    d, other = rep.device(sick), rep.device("sim-0001")
    errs = errors(sick)
    # Every error reading was counted by the device, sent, and it never stopped or reconnected.
    assert d.faults == len(errs) >= 12 and not d.error
    assert d.connects == 1 and d.reconnects == 0 and d.unacked == 0
    assert other.faults == 0 and errors("sim-0001") == []
    assert any("the bme280 does not answer" in e for e in errs), errs
    assert any("no 1-Wire device answers" in e for e in errs), errs
    assert any("no answer from sensor (simulated fault)" in e for e in errs), errs
    assert checker.received == rep.totals["acked"] == rep.totals["messages"]
