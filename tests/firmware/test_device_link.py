"""Issue #9 at device level: a Wi-Fi drop is noticed at once through
board.link_up() (the socket stays open, as lwIP keeps it), and the watchdog is
fed inside every wait that can last."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgewire import config
from edgewire.boards.sim import SimBoard
from edgewire.device import Device
from tests.firmware.helpers import Controlled, Recorder, device_config
from tests.support.broker import Mosquitto

Q0 = [{"name": "temperature", "source": "sim:temperature", "interval_ms": 100, "qos": 0}]


@pytest.mark.micropython
def test_wifi_drop_noticed_at_once_on_micropython(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    # keepalive 30 s (the default): only the link check can end the session in time
    dev = "mp-link"
    rec = Recorder(broker.port, dev, "rec-link").start()
    d = Controlled(tmp_path, dev, device_config(broker.port, Q0, keepalive_s=30, timeout_ms=5000))
    try:
        rec.wait(lambda r: len(r.telemetry()) >= 5, 15, "telemetry")
        d.link_down()
        n = len(rec.telemetry())
        # the device closes its socket at once: the broker publishes its will
        rec.wait(lambda r: any(m[2].get("why") == "lost" for m in r.of("status")), 10,
                 "the will, after the device dropped the session on a link-down")
        after = len(rec.telemetry()) - n
        assert after <= 2, f"{after} QoS 0 messages went out after the link went down"
        last_up = max(t["u"] for t in rec.telemetry())
        d.link_up()
        rec.wait(lambda r: any(b["c"] >= 2 for b in r.births()), 15, "reconnect after the link came back")
        birth2 = [b for b in rec.births() if b["c"] >= 2][0]
        # readings sampled while the link was down were kept, not counted as sent
        rec.wait(lambda r: sum(1 for t in r.telemetry() for x in t["r"] if last_up < x[2] < birth2["u"]) >= 1,
                 10, "the readings sampled during the drop")
        st = d.finish()
    finally:
        d.kill()
        rec.stop()
    assert st["reconnects"] >= 1 and st["lost_q0"] == 0 and st["dropped"] == 0, st
    assert st["sent_q0"] == st["seq"], st  # every sequence number went out
    assert "Traceback" not in d.out, d.out


class FeedBoard(SimBoard):
    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.feeds: list[float] = []

    def feed(self) -> None:
        self.feeds.append(time.monotonic())


def test_watchdog_fed_inside_long_waits(broker: Mosquitto) -> None:
    # A frozen broker: CONNACK and PINGRESP waits last timeout_ms (4 s) each; the
    # device must feed the watchdog all through them (it polls in slices of 500 ms).
    board = FeedBoard("feed-1", seed=1, fault_rate=0)
    cfg = config.build(board, {"broker_host": "127.0.0.1", "broker_port": broker.port, "keepalive_s": 1,
                               "timeout_ms": 4000, "backoff_min_ms": 100, "backoff_max_ms": 200,
                               "streams": Q0})
    dev = Device(board, cfg)
    t = threading.Thread(target=dev.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while dev.stats["connects"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dev.stats["connects"] == 1
        broker.freeze()
        start = time.monotonic()
        deadline = start + 20
        while dev.stats["conn_failures"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the keepalive verdict, then a CONNACK that never comes
        assert dev.stats["conn_failures"] >= 1
        broker.thaw()
    finally:
        broker.thaw()
        dev.stop()
        t.join(15)
    during = [x for x in board.feeds if x >= start]
    assert len(during) > 10, f"{len(during)} feeds while the broker was frozen"
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert max(gaps) < 2.0, f"longest time without a feed: {max(gaps):.2f} s"
