"""Issue #6 items 1-3 on the MicroPython unix port (64K) against a real mosquitto:
a poison command, a refused command subscription, QoS 2 across reconnects in a
clean and in a persistent session. (A broker that lost the session is tested on
the client, tests/firmware/test_mqtt_client.py: the device subscribes to
commands at QoS 1, so no inbound QoS 2 reaches it through mosquitto.)"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import paho.mqtt.client as mqtt
import pytest

from tests.firmware.fake_broker import FakeBroker, Proxy
from tests.firmware.helpers import Controlled, Recorder, device_config
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.micropython

ONE_Q1 = [{"name": "temperature", "source": "sim:temperature", "interval_ms": 200, "qos": 1}]


class Commander:
    """A paho client that sends commands (it may log in as a user the ACL knows)."""

    def __init__(self, port: int, device: str, user: str | None = None) -> None:
        self.topic = f"edgewire/v1/{device}/cmd"
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cmd-" + device)
        if user:
            self.c.username_pw_set(user)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, cid: str, name: str, args: Any = None, qos: int = 1) -> None:
        self.c.publish(self.topic, msgpack.packb({"v": 1, "i": cid, "n": name, "a": args}), qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        self.c._reset_sockets()


def results(rec: Recorder, cid: str) -> list[dict[str, Any]]:
    return [m[2] for m in rec.of("result") if m[2].get("i") == cid]


def test_poison_command_is_read_past_answered_and_telemetry_goes_on(broker: Mosquitto, tmp_path: Path,
                                                                    firmware_build: Path) -> None:
    # #6.1. Defaults a user gets: max_packet 8192, a persistent session (the broker
    # redelivers an unacknowledged command on every reconnect).
    dev = "mp-poison"
    rec = Recorder(broker.port, dev, "rec-poison").start()
    d = Controlled(tmp_path, dev, device_config(broker.port, ONE_Q1))
    cmd = Commander(broker.port, dev)
    try:
        rec.wait(lambda r: len(r.births()) == 1 and len(r.telemetry()) >= 3, 15, "telemetry")
        big = "x" * 20000  # a 20 KB command: far over max_packet
        cmd.send("c-big1", "ping", big, qos=1)
        cmd.send("c-big2", "ping", big, qos=2)
        cmd.send("c-after", "ping")
        rec.wait(lambda r: bool(results(r, "c-after")), 15, "the command after the poison answered")
        n = len(rec.telemetry())
        rec.wait(lambda r: len(r.telemetry()) >= n + 5, 15, "telemetry after the poison")
        for cid in ("c-big1", "c-big2"):
            res = results(rec, cid)
            assert len(res) == 1, res
            assert res[0]["ok"] is False
            assert "exceeds this device's max_packet of 8192 bytes" in res[0]["e"], res[0]
        assert results(rec, "c-after")[0]["r"] == "pong"
        assert len(rec.births()) == 1, "the device reconnected: " + repr(rec.births())
        st = d.finish()
    finally:
        d.kill()
        cmd.close()
        rec.stop()
    assert st["oversized"] == 2 and st["reconnects"] == 0 and st["commands"] == 1, st
    assert "Traceback" not in d.out, d.out


def test_refused_command_subscription_is_retried_while_telemetry_goes_on(tmp_path: Path,
                                                                          firmware_build: Path) -> None:
    # #6.2. A broker that refuses the command subscription (SUBACK 0x80; mosquitto's
    # ACL file filters at delivery and never refuses, so a scripted broker does it).
    fb = FakeBroker([])
    fb.scenarios = [fb.good]
    fb.refuse_subscriptions = 3
    fb.start()
    dev = "mp-subref"
    d = Controlled(tmp_path, dev, device_config(fb.port, ONE_Q1))

    def telemetry() -> int:
        return len([x for x in fb.published if x[0].endswith("/telemetry")])
    try:
        wait_until(lambda: fb.subscribes >= 4, 30, "the subscription retried until granted")
        n = telemetry()
        assert n >= 3, "no telemetry while the subscription was refused"
        wait_until(lambda: telemetry() >= n + 5, 15, "telemetry after the subscription")
        st = d.finish()
    finally:
        d.kill()
        fb.close()
    assert fb.connections == 1 and fb.subscribes == 4, (fb.connections, fb.subscribes)
    assert st["sub_refused"] == 3 and st["connects"] == 1 and st["conn_failures"] == 0, st
    assert "cmd subscription refused (SUBACK 0x80)" in d.out
    assert "Traceback" not in d.out, d.out


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


QOS2 = [{"name": "door", "source": "sim:door", "interval_ms": 50, "qos": 2}]


@pytest.mark.parametrize("clean", [True, False], ids=["clean_session", "persistent_session"])
def test_qos2_across_reconnects_no_duplicates(broker: Mosquitto, tmp_path: Path, firmware_build: Path,
                                              clean: bool) -> None:
    # #6.3. The link is cut at each point of the QoS 2 exchange: after the device's
    # PUBLISH reached the broker (PUBREC lost), after its PUBREL reached it (PUBCOMP
    # lost), and with the PUBREL itself lost. A QoS 2 subscriber counts what arrives.
    dev = "mp-q2-" + ("clean" if clean else "keep")
    rec = Recorder(broker.port, dev, "rec-" + dev).start()
    proxy = Proxy(broker.port)
    cfg = device_config(proxy.port, QOS2, clean_session=clean, min_interval_ms=10, retry_ms=60000,
                        backoff_min_ms=50, backoff_max_ms=100)
    d = Controlled(tmp_path, dev, cfg)
    points = ["publish", "pubrel", "pubrel-lost"] * 3
    try:
        rec.wait(lambda r: len(r.telemetry()) >= 5, 15, "telemetry")
        for i, point in enumerate(points):
            proxy.arm(point)
            rec.wait(lambda r: proxy.cuts > i, 15, f"cut {i + 1} ({point})")
            rec.wait(lambda r: len(r.births()) > i + 1, 15, f"reconnect after cut {i + 1}")
        n = len(rec.telemetry())
        rec.wait(lambda r: len(r.telemetry()) >= n + 5, 15, "telemetry after the last cut")
        st = d.finish()
        rec.wait(lambda r: bool([m for m in r.of("status") if m[2].get("why") == "shutdown"]), 10, "shutdown")
    finally:
        d.kill()
        proxy.close()
        rec.stop()
    boot = rec.births()[0]["b"]
    seqs = [t["s"] for t in rec.telemetry() if t["b"] == boot]
    dups = len(seqs) - len(set(seqs))
    missing = set(range(1, st["seq"] + 1)) - set(seqs)
    print(f"clean={clean}: {len(seqs)} delivered, {dups} duplicates, {len(missing)} missing, stats {st}")
    # a cut can land inside a reconnect (on the resent PUBLISH): fewer sessions than cuts
    assert st["sent_q2"] == st["seq"] and 1 <= st["reconnects"] <= len(points), st
    assert dups == 0, sorted(seqs)
    if clean:
        # a message past PUBREC cannot be completed in a new session: dropped and
        # counted (docs/decisions.md, D9); it is missing only where its PUBREL was lost
        assert st.get("q2_dropped", 0) >= len(missing) and len(missing) >= 1, (st, missing)
    else:
        assert missing == set() and st.get("q2_dropped", 0) == 0, (st, missing)
    assert "Traceback" not in d.out, d.out
