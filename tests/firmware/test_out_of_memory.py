"""Running out of heap never ends a Device: building a message it counts `oom`,
keeps the session and degrades (smaller batches, a pause); inside a command it
answers "out of memory" and goes on. CPython, with a board
that raises MemoryError where a small heap would, against mosquitto."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import paho.mqtt.client as mqtt

from edgewire import config
from edgewire.boards.sim import SimBoard
from edgewire.device import Device
from tests.firmware.helpers import Recorder
from tests.support.broker import Mosquitto


class StarvedBoard(SimBoard):
    """A SimBoard whose heap runs out once, at a chosen call, when armed."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.starve_time = 0      # time_ms() calls to fail (the telemetry encoder calls it)
        self.starve_memory = 0    # free_memory() calls to fail (the info command calls it)

    def time_ms(self) -> int | None:
        if self.starve_time:
            self.starve_time -= 1
            raise MemoryError("memory allocation failed, allocating 344 bytes")
        return super().time_ms()  # type: ignore[no-any-return]

    def free_memory(self) -> int:
        if self.starve_memory:
            self.starve_memory -= 1
            raise MemoryError("memory allocation failed, allocating 128 bytes")
        return super().free_memory()  # type: ignore[no-any-return]


def make(port: int, did: str) -> Device:
    board = StarvedBoard(did, seed=5, fault_rate=0)
    cfg = config.build(board, {"broker_host": "127.0.0.1", "broker_port": port,
                               "backoff_min_ms": 20, "backoff_max_ms": 50,
                               "min_interval_ms": 10,
                               "streams": [{"name": "t", "source": "sim:temperature", "interval_ms": 50, "qos": 1}]})
    return Device(board, cfg)


@contextmanager
def running(dev: Device) -> Iterator[threading.Thread]:
    t = threading.Thread(target=dev.run, name="device", daemon=True)
    t.start()
    try:
        yield t
    finally:
        dev.stop()
        t.join(10)
        assert not t.is_alive(), "the device did not stop"


def test_out_of_memory_building_telemetry_degrades_without_reconnecting(broker: Mosquitto) -> None:
    # #9: running out of heap while a message is built (nothing written yet) must
    # not drop the session (that was the OOM loop: reconnect, backlog, OOM again).
    # The device halves its batch, pauses backoff_min_ms, counts it, and goes on.
    did = "oom-step"
    rec = Recorder(broker.port, did, "rec-oom-step").start()
    dev = make(broker.port, did)
    try:
        with running(dev):
            rec.wait(lambda r: len(r.telemetry()) >= 5, 10, "telemetry before the starvation")
            dev.board.starve_time = 3
            n = len(rec.telemetry())
            rec.wait(lambda r: dev.stats["oom"] == 3 and len(r.telemetry()) >= n + 10, 10,
                     "telemetry after the starvation")
        st = dev.stats
        assert st["oom"] == 3 and st["connects"] == 1 and st["reconnects"] == 0 and st["cmd_dropped"] == 0, st
        assert st["readings"] == st["sent_readings"] + st["dropped"] + st["queued"]
        assert st["dropped"] == 0 and st["lost_oom"] == 0
        rec.wait(lambda r: len(r.telemetry()) == st["sent_q1"], 5, "every QoS 1 message")
        seqs = sorted(t["s"] for t in rec.telemetry())
        assert seqs == list(range(1, dev.seq + 1)), "a QoS 1 sequence number went missing"
        assert [m[2]["c"] for m in rec.of("status") if m[2]["st"] == "on"] == [1]
    finally:
        rec.stop()


def test_out_of_memory_in_a_command_answers_and_goes_on(broker: Mosquitto) -> None:
    did = "oom-cmd"
    rec = Recorder(broker.port, did, "rec-oom-cmd").start()
    dev = make(broker.port, did)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="oom-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def send(cid: str, name: str) -> None:
        pub.publish(f"edgewire/v1/{did}/cmd", msgpack.packb({"v": 1, "i": cid, "n": name, "a": None}),
                    qos=1).wait_for_publish(5)

    def result(cid: str) -> list[dict[str, object]]:
        return [m[2] for m in rec.of("result") if m[2].get("i") == cid]

    try:
        with running(dev):
            rec.wait(lambda r: dev.stats["connects"] == 1, 10, "connected and subscribed")
            dev.board.starve_memory = 1
            send("c-info", "info")
            rec.wait(lambda r: bool(result("c-info")), 5, "an answer to the starved info")
            res = result("c-info")[0]
            assert res["ok"] is False and str(res["e"]).startswith("out of memory (")
            send("c-ping", "ping")
            rec.wait(lambda r: bool(result("c-ping")), 5, "ping after the starvation")
            assert result("c-ping")[0]["r"] == "pong"
        st = dev.stats
        assert st["commands"] == 2 and st["connects"] == 1 and st["oom"] == 0  # no reconnect needed
    finally:
        pub.loop_stop()
        pub.disconnect()
        rec.stop()
