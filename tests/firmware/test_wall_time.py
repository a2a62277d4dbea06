"""Wall time from the gateway (issue #9 item 2): a Pico W on the rp2 port fakes,
whose RTC restarts at 2021 (no wall time), runs firmware/main.py against a real
mosquitto; its telemetry has no `t`. Then the real gateway starts, sees the
device's (retained) birth and sends a `time` command (gateway/timesync.py); the
device sets its clock, and its telemetry carries wall time `t` from then on. Time commands are not user commands: the
Commands counters and the unmatched-result refusals stay at zero."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgewire.gateway.service import Gateway
from tests.firmware import boardrun
from tests.firmware.helpers import Recorder, stop_process
from tests.gateway.conftest import gateway_config, wait_for
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.micropython


async def test_device_takes_the_gateways_time_after_its_birth(broker: Mosquitto, tmp_path: Path,
                                                              firmware_build: Path) -> None:
    dev = "fake-rp2-time"
    store = tmp_path / dev
    store.mkdir()
    (store / "config.json").write_text(json.dumps({
        "device_id": dev, "wifi_ssid": "home", "wifi_password": "pw", "broker_host": "127.0.0.1",
        "broker_port": broker.port, "keepalive_s": 5, "timeout_ms": 2000, "backoff_min_ms": 200,
        "backoff_max_ms": 800,
        "streams": [{"name": "v", "source": "adc:26", "interval_ms": 300, "qos": 1, "unit": "V"}]}))
    rec = Recorder(broker.port, dev, "rec-time").start()
    # The device first, without a gateway: its RTC says 2021, so no wall time.
    p = boardrun.spawn("rp2", "fakehw.ap('home', 'pw')\nfakehw.volts[26] = 1.0\n"
                       "from edgewire.boards.pico_w import PicoWBoard\nimport main\n"
                       f"main.main(PicoWBoard(storage_dir={str(store)!r}))\n")
    try:
        await wait_for(lambda: len(rec.telemetry()) >= 2, timeout=30, what="telemetry before the gateway runs")
        async with Gateway(gateway_config(broker)) as gw:
            # the gateway sees the device's retained birth and sends it the time
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            await wait_for(lambda: gw.timesync.stats()["answered"] == 1, timeout=30,
                           what="the device's answer to the time command")
            await wait_for(lambda: any("t" in m for m in rec.telemetry()), timeout=15,
                           what="telemetry with wall time")
            assert gw.commands.stats()["sent"] == 0
            assert "unmatched_result" not in gw.refusals.snapshot(), gw.refusals.snapshot()
            assert gw.timesync.stats() == {"pending": 0, "sent": 1, "answered": 1, "refused": 0, "failed": 0,
                                           "skipped": 0}
    finally:
        out = stop_process(p)
        rec.stop()
    tel = rec.telemetry()
    stamped = [m for m in tel if "t" in m]
    assert "t" not in tel[0] and "t" not in tel[1], tel[:2]
    now = time.time() * 1000
    assert all(now - 60000 < m["t"] <= now + 1000 for m in stamped), (stamped[-1]["t"], now)
    # the gateway's wall time, running on the device's uptime: t - u is constant
    offs = [m["t"] - m["u"] for m in stamped]
    assert max(offs) - min(offs) <= 5, offs
    results = [m[2] for m in rec.of("result")]
    assert len(results) == 1 and results[0]["ok"] is True and results[0].get("r") is None, results
    assert "Traceback" not in out and "FAKE-EXIT" not in out, out[-3000:]


async def test_timesync_claims_only_its_own_results_and_is_bounded() -> None:
    # gateway/timesync.py by itself: what it publishes, which results are its own,
    # an older firmware's "unknown command", a publish that fails, the bound
    import msgpack

    from edgewire.gateway.decode import Result
    from edgewire.gateway.timesync import TimeSync

    sent: list[tuple[str, dict[str, object]]] = []
    fail = False

    async def publish(topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if fail:
            raise ConnectionError("broker gone")
        sent.append((topic, msgpack.unpackb(payload)))

    ts = TimeSync(publish, max_pending=2, clock=lambda: 1767225600.123)
    ts.birth("dev-a")
    ts.birth("dev-b")
    ts.birth("dev-c")  # over max_pending: skipped until its next birth
    await wait_for(lambda: ts.stats()["sent"] == 2, what="two time commands")
    assert [t for t, _ in sent] == ["edgewire/v1/dev-a/cmd", "edgewire/v1/dev-b/cmd"]
    cmd = sent[0][1]
    assert cmd["n"] == "time" and cmd["a"] == {"ms": 1767225600123} and len(cmd["i"]) == 16
    a_id, b_id = sent[0][1]["i"], sent[1][1]["i"]
    assert not ts.resolve(Result("dev-b", a_id, True, None, None))  # another device's id: not ours
    assert not ts.resolve(Result("dev-a", "user-cmd-1", True, "pong", None))
    assert ts.resolve(Result("dev-a", a_id, True, -1500, None))
    assert ts.resolve(Result("dev-b", b_id, False, None, "unknown command 'time'"))
    assert not ts.resolve(Result("dev-a", a_id, True, 0, None))  # a repeat: already claimed
    fail = True
    ts.birth("dev-c")
    await wait_for(lambda: ts.stats()["failed"] == 1, what="the failed publish counted")
    assert ts.stats() == {"pending": 0, "sent": 2, "answered": 1, "refused": 1, "failed": 1, "skipped": 1}
    await ts.close()
