"""Scenarios: a timeline of faults through the simulator's own fault proxy,
checked by an independent subscriber (paho + the reference msgpack)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgewire.sim.fleet import supervise
from edgewire.sim.scenario import ScenarioError, ScenarioRun, load_scenario, parse_scenario
from tests.sim.conftest import Checker
from tests.support.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
EDGEWIRE = str(Path(sys.executable).parent / "edgewire")

OUTAGE_AND_PARTITION = """
[scenario]
name = "outage-and-partition"
duration_s = 50
seed = 7

[[group]]
name = "q1"
count = 20
rate = 1
qos = 1
fault_rate = 0

[[group]]
name = "q2"
count = 20
rate = 1
qos = 2
fault_rate = 0

[[event]]
kind = "broker_outage"
at_s = 4
for_s = 20

[[event]]
kind = "partition"
fraction = 0.5
at_s = 34
for_s = 8
mode = "reject"
"""

# The fleet's default backoff_max_ms: a device is back within this after a
# fault ends (so the partition starts 10 s after the outage ends: all are back).
BACKOFF_MAX_S = 5.0
SLACK_S = 3.0         # loop and scheduling delays on a loaded machine


@pytest.fixture
def deep_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """After the outage every device sends its backlog at once (~800 messages);
    the counting subscribers get a deep queue so that mosquitto's default
    per-client limit (1,000 queued) cannot drop for them what the devices
    delivered (tests/sim/test_scale.py says more)."""
    from tests.sim.test_scale import SUBSCRIBER_LIMITS

    b = Mosquitto(tmp_path, extra_conf=SUBSCRIBER_LIMITS).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_broker_outage_and_partition_lose_nothing(deep_broker: Mosquitto) -> None:
    broker = deep_broker
    checker = Checker(broker.port)
    try:
        _outage_and_partition(broker, checker)
    finally:
        checker.close()


def _outage_and_partition(broker: Mosquitto, checker: Checker) -> None:
    sc = parse_scenario(tomllib.loads(OUTAGE_AND_PARTITION), "outage-and-partition")
    run = ScenarioRun(sc, broker.url, procs=1)
    try:
        run.start()
        supervise(run.fleet, sc.duration, tick=run.tick, max_lag=10)
        run.fleet.stop()
    finally:
        stats = run.close()
    rep = run.fleet.report()
    t = rep.totals
    checker.settle(expected=t["acked"], timeout=30)

    assert not rep.devices_with_errors
    assert t["unacked"] == 0 and t["dropped"] == 0
    # No QoS 1 or 2 reading lost; after de-duplication each arrived once: the
    # observer's distinct count equals what the broker acknowledged ...
    rep.assert_no_loss(qos=1, duplicates=False)
    rep.assert_no_loss(qos=2, duplicates=False)
    # ... and so does the independent subscriber's, device by device.
    assert checker.refused == []
    assert checker.per_device == {d.device: d.acked for d in rep.per_device}
    assert checker.received == t["acked"] == t["messages"]
    # The readings sampled during the outage waited on the devices and went out after it.
    assert t["sampled"] == t["readings"] and t["sampled"] >= 40 * 44
    assert stats["cut"] >= 40 and stats["refused"] > 0

    outage, partition = rep.events[0], rep.events[1]
    assert outage["kind"] == "broker_outage" and partition["kind"] == "partition"
    cut = {d for d in run.scenario.events[1].targets}
    assert len(cut) == 20
    for d in rep.per_device:
        spans = [s for s in d.outages]
        assert all(b >= 0 for _, b in spans), (d.device, spans)   # all back by the end
        # The outage: lost when it began, back within the backoff after it ended.
        first = spans[0]
        assert outage["started"] <= first[0] <= outage["started"] + SLACK_S, (d.device, first, outage)
        assert outage["ended"] <= first[1] <= outage["ended"] + BACKOFF_MAX_S + SLACK_S, (d.device, first, outage)
        if d.device in cut:
            assert len(spans) == 2 and d.reconnects == 2, (d.device, spans)
            second = spans[1]
            assert partition["started"] <= second[0] <= partition["started"] + SLACK_S, (d.device, second)
            assert partition["ended"] <= second[1] <= partition["ended"] + BACKOFF_MAX_S + SLACK_S, (d.device, second)
        else:
            assert len(spans) == 1 and d.reconnects == 1, (d.device, spans)
    # The report's per-group reconnect times say the same.
    for g in rep.groups:
        assert g["reconnects"] == 20 + sum(1 for i in cut if i.startswith(g["group"] + "-"))
        assert g["reconnect_s"]["max"] <= 20 + BACKOFF_MAX_S + SLACK_S
        assert g["lost"] == 0


@pytest.mark.parametrize("doc, key, message", [
    ({"group": [{"name": "a", "count": 1, "rate": 1}]}, "scenario.duration_s", "missing (required)"),
    ({"scenario": {"duration_s": 10, "colour": "red"}, "group": [{"name": "a", "count": 1, "rate": 1}]},
     "scenario.colour", "unknown key"),
    ({"scenario": {"duration_s": 10}}, "group", "at least one [[group]] is required"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 0, "rate": 1}]},
     "group[0].count", "0 is not an integer at least 1"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": -2}]},
     "group[0].rate", "-2 is not a number more than 0"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1, "sensors": ["sonar"]}]},
     "group[0].sensors[0]", "'sonar' is not a sensor model (temperature, humidity, battery, door) nor a driver"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1,
                                                 "sensors": ["temperature", "bme280@0x20:pressure"]}]},
     "group[0].sensors[1]", "I2C address '0x20' is not 0x76 or 0x77"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1,
                                                 "sensors": ["temperature", "sim:temperature"]}]},
     "group[0].sensors", "names one stream twice"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1, "qos": 3}]},
     "group[0].qos", "3 is not an integer at least 0 and at most 2"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1},
                                                {"name": "a", "count": 1, "rate": 1}]},
     "group[1].name", "'a' is used by an earlier group"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1}],
      "event": [{"kind": "meteor", "at_s": 1}]}, "event[0].kind", "'meteor' is not one of"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1}],
      "event": [{"kind": "partition", "at_s": 1, "for_s": 2, "group": "b"}]},
     "event[0].group", "'b' is not a group of this scenario"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1}],
      "event": [{"kind": "packet_loss", "at_s": 1, "for_s": 2, "percent": 150}]},
     "event[0].percent", "150 is not a number more than 0 and at most 100"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1}],
      "event": [{"kind": "broker_outage", "at_s": 12, "for_s": 2}]}, "event[0].at_s", "12 is not a number"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1}],
      "event": [{"kind": "latency", "at_s": 1, "for_s": 2, "ms": 10, "jiter_ms": 5}]},
     "event[0].jiter_ms", "unknown key"),
    ({"scenario": {"duration_s": 10}, "group": [{"name": "a", "count": 1, "rate": 1}],
      "event": [{"kind": "command_burst", "at_s": 1}]}, "event[0].kind", "set scenario.gateway"),
])
def test_bad_scenarios_name_the_key(doc: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(doc, "bad.toml")
    assert str(e.value).startswith(f"bad.toml: {key}: "), str(e.value)
    assert message in str(e.value)


def test_a_bad_scenario_file_exits_2_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nduration_s = 30\n[[group]]\nname = "a"\ncount = 5\nrate = 1\n'
                   '[[event]]\nkind = "partition"\nat_s = 5\nfor_s = 10\nmode = "sideways"\n')
    # Port 9: nothing listens there; validation must fail before any connection is tried.
    p = subprocess.run([EDGEWIRE, "sim", "run", str(bad), "--broker", "mqtt://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == f"edgewire sim: error: {bad}: event[0].mode: 'sideways' is not 'drop' or 'reject'"
    assert p.stdout == ""
    bad.write_text("[scenario\nduration_s = 30\n")
    p = subprocess.run([EDGEWIRE, "sim", "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not valid TOML" in p.stderr


@pytest.mark.parametrize("name", ["greenhouse-day", "floor-wifi-outage", "firmware-rollout"])
def test_example_scenarios_are_valid(name: str) -> None:
    sc = load_scenario(ROOT / "sim" / "scenarios" / f"{name}.toml")
    assert sc.name == name and sc.groups and sc.events
    if name == "greenhouse-day":   # house 1 reads a BME280 and a DS18B20 through the real drivers
        house1 = next(g for g in sc.groups if g.name == "house1")
        assert {s["source"] for s in house1.streams} == {"bme280:temperature", "bme280:humidity",
                                                          "ds18b20@4:temperature"}
        assert {s["name"] for s in house1.streams} == {"bme280/temperature", "bme280/humidity",
                                                        "ds18b20-4/temperature"}


EVERY_FAULT = """
[scenario]
name = "every-fault"
duration_s = 14
seed = 3

[[group]]
name = "a"
count = 12
sensors = ["temperature", "door"]
rate = 2
qos = 1
qos_per_sensor = { door = 2 }
fault_rate = 0
config = { queue_size = 128 }

[[group]]
name = "b"
prefix = "bee"
count = 8
rate = 1
qos = 0

[[event]]
kind = "latency"
group = "a"
at_s = 1
for_s = 4
ms = 300
jitter_ms = 50

[[event]]
kind = "packet_loss"
group = "b"
at_s = 1
for_s = 4
percent = 20

[[event]]
kind = "bandwidth"
group = "a"
fraction = 0.5
at_s = 6
for_s = 3
kbps = 8

[[event]]
kind = "sensor_faults"
group = "a"
at_s = 2
for_s = 3
rate = 1.0

[[event]]
kind = "clock_skew"
group = "b"
fraction = 0.25
at_s = 3
ms = 60000

[[event]]
kind = "reboot_storm"
group = "a"
fraction = 0.5
at_s = 7
for_s = 2

[[event]]
kind = "partition"
group = "b"
at_s = 9
for_s = 2
mode = "drop"
"""


@pytest.mark.slow
def test_cli_runs_a_scenario_with_every_network_and_device_fault(broker: Mosquitto, checker: Checker,
                                                                 tmp_path: Path) -> None:
    sc = tmp_path / "every.toml"
    sc.write_text(EVERY_FAULT)
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    p = subprocess.run([EDGEWIRE, "sim", "run", str(sc), "--broker", broker.url, "--procs", "1",
                        "--report-json", str(out_json), "--html", str(out_html)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    import json
    rep = json.loads(out_json.read_text())
    assert "every-fault" not in p.stderr and "Traceback" not in p.stderr
    assert [e["kind"] for e in rep["events"]] == ["latency", "packet_loss", "bandwidth", "sensor_faults",
                                                  "clock_skew", "reboot_storm", "partition"]
    assert all(e["started"] is not None for e in rep["events"])
    assert {g["group"]: g["devices"] for g in rep["groups"]} == {"a": 12, "b": 8}
    assert [q["qos"] for q in rep["by_qos"]] == [0, 1, 2]
    # Devices of group a rebooted (half of 12), each a new boot id; sensor faults were counted.
    per = {d["device"]: d for d in rep["per_device"]}
    assert sum(d["resets"] for d in per.values()) == 6
    assert all(len(d["boots"]) == 1 + d["resets"] for d in per.values())
    assert rep["fleet"]["faults"] > 0
    # Nothing the broker acknowledged at QoS 1/2 went missing, through all of it.
    # (A power cut can take a message's PUBACK with it: the broker has it, the
    # new boot never learns, so received may exceed acknowledged, never sent.)
    for q in (1, 2):
        row = next(r for r in rep["by_qos"] if r["qos"] == q)
        assert row["lost"] == 0 and row["sent"] >= row["received"] >= row["acked"] > 0
    checker.settle(expected=sum(r["received"] for r in rep["by_qos"]))
    assert checker.refused == []
    for dev, d in per.items():
        if d["sent_q"][0] == 0:   # QoS 1/2-only devices: the independent count is exact
            got = checker.per_device.get(dev, 0)
            assert d["messages"] >= got >= d["acked"], dev
            if not d["resets"]:
                assert got == d["acked"], dev
    page = out_html.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    assert "reboot_storm" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.slow
def test_command_burst_goes_through_the_gateway_to_the_devices(broker: Mosquitto, tmp_path: Path) -> None:
    from edgewire.sim.pytest_plugin import GatewayProcess

    gw = GatewayProcess(tmp_path, broker.url).start()
    try:
        doc = tomllib.loads(f"""
[scenario]
name = "commands"
duration_s = 12
seed = 5
gateway = "{gw.http_url}"
[[group]]
name = "g"
count = 6
rate = 2
qos = 1
fault_rate = 0
[[event]]
kind = "command_burst"
command = "ping"
count = 30
at_s = 3
for_s = 3
timeout_s = 5
""")
        sc = parse_scenario(doc, "commands")
        run = ScenarioRun(sc, broker.url, procs=0)
        try:
            run.start()
            supervise(run.fleet, sc.duration, tick=run.tick)
            run.fleet.stop()
        finally:
            run.close()
    finally:
        gw.stop()
    ev = run.fleet.report().events[0]
    assert ev["kind"] == "command_burst" and ev["ended"] is not None
    assert ev["result"]["sent"] == 30 and ev["result"]["ok"] == 30 and ev["result"]["failed"] == 0, ev["result"]
    assert ev["result"]["latency_ms"]["count"] == 30
