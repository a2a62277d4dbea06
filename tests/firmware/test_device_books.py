"""A Device's counters balance (readings == sent_readings + dropped + queued)
through failures and shutdown, stop() is never lost, and seeded boards still
get fresh boot ids. CPython, driving Device.step() by hand against mosquitto."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgewire import config
from edgewire.boards import SensorError
from edgewire.boards.sim import SimBoard
from edgewire.device import Device
from tests.firmware.helpers import Clock, Recorder
from tests.support import micropython
from tests.support.broker import Mosquitto


def books(dev: Device) -> tuple[int, int]:
    st = dev.stats
    return st["readings"], st["sent_readings"] + st["dropped"] + st["queued"]


def make(port: int, did: str, streams: list[dict[str, object]], **over: object) -> Device:
    board = SimBoard(did, seed=3, fault_rate=0)
    cfg = config.build(board, dict({"broker_host": "127.0.0.1", "broker_port": port, "streams": streams,
                                    "backoff_min_ms": 10, "backoff_max_ms": 20}, **over))
    return Device(board, cfg)


def test_failed_qos0_publish_is_counted(broker: Mosquitto) -> None:
    dev = make(broker.port, "books-q0", [{"name": "t", "source": "sim:temperature", "interval_ms": 100,
                                          "qos": 0}])
    try:
        while dev.stats["sent_q0"] < 3:
            dev.step()
        assert books(dev)[0] == books(dev)[1]
        # The connection dies under the device (the board still says the link is up);
        # the next step samples (due now) and writes into the dead socket.
        dev.board._cut()
        for s in dev.streams:
            s[5] = 0
        sent, dropped = dev.stats["sent_q0"], dev.stats["dropped"]
        dev.step()
        st = dev.stats
        assert st["lost_q0"] == 1 and not dev.connected
        assert st["sent_q0"] == sent and st["dropped"] > dropped  # its readings: gone, counted
        # its sequence number was used: receivers see a gap, the device knows why
        assert dev.seq == st["sent_q0"] + st["lost_q0"]
        assert books(dev)[0] == books(dev)[1], st
    finally:
        dev.stop()
        dev.run()


def test_stop_before_run_flushes_and_keeps_queued_true(broker: Mosquitto) -> None:
    dev_id = "books-stop"
    rec = Recorder(broker.port, dev_id, "rec-books-stop").start()
    dev = make(broker.port, dev_id, [{"name": "t", "source": "sim:temperature", "interval_ms": 60000,
                                      "qos": 1}])
    try:
        dev.step()  # samples (offline), then connects: one reading waits in the queue
        assert dev.connected and dev.stats["queued"] == 1 and dev.stats["sent_readings"] == 0
        dev.stop()  # before run(): must not be lost
        dev.run()   # returns: flushes the queue, says goodbye, disconnects
        st = dev.stats
        assert not dev.connected
        assert st["queued"] == 0 and st["sent_readings"] == 1 and st["readings"] == 1
        assert books(dev)[0] == books(dev)[1]
        rec.wait(lambda r: any(m[2].get("why") == "shutdown" for m in r.of("status")), 5, "shutdown death")
        assert [len(t["r"]) for t in rec.telemetry()] == [1]
    finally:
        rec.stop()


def test_stop_before_run_on_a_fresh_device_never_starts(broker: Mosquitto) -> None:
    dev = make(broker.port, "books-fresh", [{"name": "t", "source": "sim:temperature", "interval_ms": 100}])
    dev.stop()
    dev.run()  # would loop forever if the stop were lost
    assert dev.stats["readings"] == 0 and dev.stats["connects"] == 0 and not dev.boot


def test_seeded_boards_replay_sensors_but_boot_fresh() -> None:
    boots = []
    series = []
    for _ in range(2):
        clock = Clock()
        board = SimBoard("seeded", seed=42, fault_rate=0.3, clock=clock)
        cfg = config.build(board, {"broker_host": "127.0.0.1", "broker_port": 1})
        dev = Device(board, cfg)
        board.set_network(False)
        dev.step()  # boot id chosen; connecting fails (network down)
        boots.append(dev.boot)
        out: list[object] = []
        for _ in range(50):
            clock.sleep_ms(1000)
            try:
                out.append(board.read("sim:temperature"))
            except SensorError as e:
                out.append(str(e))
        series.append(out)
    assert series[0] == series[1]  # the same sensor story
    assert boots[0] != boots[1] and all(0 < b <= 0xFFFFFFFF for b in boots)


SEEDED_ON_MICROPYTHON = r"""
from edgewire.boards.sim import SimBoard
a = SimBoard("s", seed=9, fault_rate=0)
b = SimBoard("s", seed=9, fault_rate=0)
same = [a.read("sim:humidity") for _ in range(20)] == [b.read("sim:humidity") for _ in range(20)]
print(same, a.random_u32() != b.random_u32())
"""


@pytest.mark.micropython
def test_seeded_boards_boot_fresh_on_micropython(firmware_build: Path) -> None:
    proc = micropython.run_script(SEEDED_ON_MICROPYTHON)
    assert proc.stdout.strip() == "True True", proc.stdout + proc.stderr


def test_link_down_is_noticed_before_a_publish_and_qos0_is_not_counted_sent(broker: Mosquitto) -> None:
    # #9: a Wi-Fi drop leaves the socket open in lwIP, and QoS 0 written into it
    # would count as sent. The device asks board.link_up() before each publish.
    did = "books-link"
    rec = Recorder(broker.port, did, "rec-books-link").start()
    dev = make(broker.port, did, [{"name": "t", "source": "sim:temperature", "interval_ms": 100, "qos": 0}])
    up = [True]
    dev.board.link_up = lambda: up[0]  # type: ignore[method-assign]  # the Wi-Fi flag; sockets stay open
    try:
        while dev.stats["sent_q0"] < 3:
            dev.step()
        sent = dev.stats["sent_q0"]
        up[0] = False
        for s in dev.streams:
            s[5] = 0
        dev.step()
        st = dev.stats
        assert not dev.connected and st["conn_failures"] == 0, st  # the session ended, nothing failed
        assert st["sent_q0"] == sent and st["lost_q0"] == 0 and st["dropped"] == 0 and st["queued"] >= 1, st
        assert books(dev)[0] == books(dev)[1], st
        up[0] = True
        while dev.stats["queued"] or not dev.connected:
            dev.step()
        rec.wait(lambda r: len(r.telemetry()) == dev.stats["sent_q0"], 5, "every QoS 0 message")
        assert dev.stats["lost_q0"] == 0 and dev.stats["sent_readings"] == dev.stats["readings"]
    finally:
        dev.stop()
        dev.run()
        rec.stop()
