"""The simulator's report against what an independent subscriber saw."""
from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edgewire import wire, wire_rx
from edgewire.sim import Fleet, SimError
from edgewire.sim.fleet import configured_rate, plan_streams
from tests.sim.conftest import Checker
from tests.support.broker import Mosquitto


@pytest.mark.slow
@pytest.mark.parametrize("qos", [1, 2])
def test_200_devices_report_matches_independent_subscriber(broker: Mosquitto, checker: Checker, qos: int) -> None:
    fleet = Fleet(broker.url, devices=200, rate=2, qos=qos, seed=1000 + qos, fault_rate=0.01)
    with fleet:
        time.sleep(10)
    rep = fleet.report()
    t = rep.totals
    checker.settle(expected=t["acked"])

    assert rep.devices == 200 and len(rep.per_device) == 200
    assert not rep.devices_with_errors
    # Every device came up, sent, and had everything acknowledged before it said goodbye.
    assert all(d.connects == 1 and d.reconnects == 0 for d in rep.per_device)
    assert t["messages"] >= 200 * 2 * 9  # ~2 msg/s each for ~10 s; far below means the fleet stalled
    assert t["unacked"] == 0 and t["dropped"] == 0 and t["queued"] == 0
    assert t["acked"] == t["messages"] == t["readings"]
    # The subscriber saw exactly what the broker acknowledged: same count, every
    # device, the same count per device, no duplicates after dedup.
    assert checker.refused == []
    assert checker.received == t["acked"]
    assert checker.readings == t["readings"]
    assert {d.device: d.acked for d in rep.per_device} == checker.per_device
    assert {dev for dev, _, _ in checker.seen} == set(fleet.device_ids)
    assert {(dev, boot) for dev, boot, _ in checker.seen} == {(d.device, d.boot) for d in rep.per_device}
    # Births for all 200 (with the boot ids the report names); clean deaths on stop.
    assert {dev: boots for dev, boots in checker.births.items()} == {d.device: [d.boot] for d in rep.per_device}
    assert checker.deaths == {d: ["shutdown"] for d in fleet.device_ids}
    # Faults are error readings, counted by the devices (1% of reads).
    assert t["faults"] > 0


def test_qos0_counts_written_messages(broker: Mosquitto, checker: Checker) -> None:
    fleet = Fleet(broker.url, devices=10, rate=5, qos=0, seed=7, fault_rate=0)
    with fleet:
        time.sleep(2)
    rep = fleet.report()
    checker.settle(expected=rep.totals["messages"])
    assert rep.totals["faults"] == 0
    assert rep.totals["acked"] == rep.totals["messages"] > 0  # QoS 0: written counts as acknowledged
    assert rep.totals["unacked"] == 0
    assert checker.received == rep.totals["messages"] and checker.duplicates == 0


def test_network_cut_is_counted_and_nothing_acknowledged_is_lost(broker: Mosquitto, checker: Checker) -> None:
    fleet = Fleet(broker.url, devices=4, rate=10, qos=1, seed=3, fault_rate=0)
    with fleet:
        time.sleep(1)
        fleet.set_network(False, ["sim-0000", "sim-0001"])
        time.sleep(1.5)  # readings queue up on the two devices meanwhile
        fleet.set_network(True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and fleet.report().device("sim-0000").reconnects < 1:
            time.sleep(0.1)
        time.sleep(1)
    rep = fleet.report()
    checker.settle(expected=rep.totals["acked"])
    cut = [rep.device("sim-0000"), rep.device("sim-0001")]
    assert all(d.reconnects == 1 and d.connects == 2 for d in cut)
    assert all(d.reconnects == 0 for d in rep.per_device if d not in cut)
    assert rep.totals["unacked"] == 0
    # A cut costs no acknowledged message: the readings waited on the device.
    assert checker.received == rep.totals["acked"] == rep.totals["messages"]
    # Each reconnect was announced by a new birth of the same boot.
    assert [len(checker.births[d.device]) for d in cut] == [2, 2]


def test_reboot_command_starts_a_new_boot(broker: Mosquitto, checker: Checker) -> None:
    fleet = Fleet(broker.url, devices=1, rate=4, qos=1, seed=9, fault_rate=0)
    with fleet:
        first_boot = fleet.report().per_device[0].boot
        results: list[bytes] = []
        got = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="commander")
        c.on_message = lambda cl, u, m: (results.append(m.payload), got.set())
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        sub = threading.Event()
        c.on_subscribe = lambda *a: sub.set()
        c.subscribe(wire.topic("sim-0000", wire.KIND_RESULT), 1)
        assert sub.wait(5)
        c.publish(wire.topic("sim-0000", wire.KIND_CMD), wire.encode_command("r1", "reboot"), qos=1)
        assert got.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(checker.births.get("sim-0000", [])) < 2:
            time.sleep(0.1)
        time.sleep(1)
        c.disconnect()
        c.loop_stop()
    rep = fleet.report()
    checker.settle(expected=rep.totals["acked"])
    d = rep.per_device[0]
    assert wire_rx.decode_result(results[0]) == {"id": "r1", "ok": True, "value": "rebooting", "error": None}
    assert d.resets == 1 and d.boots == [first_boot, d.boot] and d.boot != first_boot and not d.error
    assert checker.births["sim-0000"] == [first_boot, d.boot]
    assert {b for _, b, _ in checker.seen} == {first_boot, d.boot}
    assert checker.received == d.acked == d.messages  # counters span both boots


def test_batch_sends_several_readings_per_message(broker: Mosquitto, checker: Checker) -> None:
    # 5 readings sampled together, one message of 5: 4 messages/s, 20 readings/s per device.
    fleet = Fleet(broker.url, devices=3, rate=4, qos=1, seed=11, fault_rate=0, batch=5)
    assert [len(s.cfg["streams"]) for s in fleet.specs] == [5, 5, 5]
    assert all(len({st["phase_ms"] for st in s.cfg["streams"]}) == 1 for s in fleet.specs)
    assert fleet.configured_rate == 4.0 and fleet.total_rate == 60.0
    with fleet:
        time.sleep(2.5)
    rep = fleet.report()
    t = rep.totals
    checker.settle(expected=t["acked"])
    assert t["messages"] >= 3 * 4 * 2 and t["unacked"] == 0
    assert t["readings"] == 5 * t["messages"]
    assert checker.received == t["messages"] and checker.readings == t["readings"]


def test_stream_plan_batches() -> None:
    for rate, batch in ((1, 2), (10, 10), (50, 4), (100, 10), (3, 7)):
        streams = plan_streams(rate, 1, batch=batch)
        assert len(streams) % batch == 0 and len(streams) >= batch
        assert abs(configured_rate(streams) - rate * batch) / (rate * batch) < 0.01, (rate, batch)
        assert len({s["interval_ms"] for s in streams}) == 1
    with pytest.raises(SimError, match="batch 0 must be 1..32"):
        plan_streams(1, 1, batch=0)
    with pytest.raises(SimError, match=r"rate 200 x batch 20 = 4000 readings/s is above the 3200"):
        plan_streams(200, 1, batch=20)


def test_stream_plan_adds_up_to_the_rate() -> None:
    for rate in (0.5, 1, 3, 10, 100, 400, 1000, 3200):
        streams = plan_streams(rate, 1)
        assert abs(configured_rate(streams) - rate) / rate < 0.01, rate
        assert all(s["interval_ms"] >= 10 and s["qos"] == 1 for s in streams)
        assert len({s["name"] for s in streams}) == len(streams)
    assert [s["name"] for s in plan_streams(1, 2)] == ["temperature", "humidity", "battery", "door"]


@pytest.mark.parametrize("kwargs, message", [
    ({"devices": 0}, "devices 0 must be an integer 1..1000000"),
    ({"devices": 1, "rate": -1}, "rate -1 must be a positive number"),
    ({"devices": 1, "rate": 0}, "rate 0 must be a positive number"),
    ({"devices": 1, "rate": 5000}, "rate 5000 is above the 3200 messages per second"),
    ({"devices": 1, "qos": 3}, "qos 3 is not 0, 1 or 2"),
    ({"devices": 1, "prefix": "bad prefix"}, "prefix 'bad prefix' does not make valid device ids"),
    ({"devices": 1, "overrides": {"streams": []}}, "overrides ['streams'] are set by the simulator"),
    ({"devices": 1, "overrides": {"max_inflight": 0}}, "config 'max_inflight': 0 is not an integer in 1..64"),
])
def test_bad_fleet_settings_are_refused_before_io(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SimError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Fleet("mqtt://127.0.0.1:9", **kwargs)  # type: ignore[arg-type]


def test_unreachable_broker_is_reported() -> None:
    fleet = Fleet("mqtt://127.0.0.1:9", devices=2, rate=1, qos=1)
    with pytest.raises(SimError, match=r"cannot reach the broker at mqtt://127.0.0.1:9"):
        fleet.check_broker()
    with pytest.raises(SimError, match=r"only 0 of 2 devices connected to mqtt://127.0.0.1:9 within 1 s"):
        fleet.start(wait_connected=1)
    fleet.stop()
    assert fleet.report().totals["conn_failures"] >= 2


def test_shards_split_one_fleet_across_machines_with_the_same_devices() -> None:
    whole = Fleet("mqtt://127.0.0.1:9", devices=10, rate=1, qos=1, seed=4)
    parts = [Fleet("mqtt://127.0.0.1:9", devices=10, rate=1, qos=1, seed=4, shard=(i, 3)) for i in range(3)]
    assert parts[1].device_ids == ["sim-0001", "sim-0004", "sim-0007"]
    assert sorted(d for p in parts for d in p.device_ids) == whole.device_ids
    # A device is the same wherever it runs: seed, stream phases, config.
    by_id = {s.device_id: s for s in whole.specs}
    for p in parts:
        for s in p.specs:
            assert (s.seed, s.cfg) == (by_id[s.device_id].seed, by_id[s.device_id].cfg)
    # Phases are spread: a steady load, not every device sampling at once.
    phases = [st["phase_ms"] for s in whole.specs for st in s.cfg["streams"]]
    assert len(set(phases)) > 30 and max(phases) < whole.streams[0]["interval_ms"]
    with pytest.raises(SimError, match="shard 3/3 holds no devices|expected 0 <= i < N"):
        from edgewire.sim.fleet import parse_shard
        parse_shard("3/3")
