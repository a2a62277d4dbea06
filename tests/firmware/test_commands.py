"""Commands published to a MicroPython device's cmd topic are executed once and answered."""
from __future__ import annotations

from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import pytest

from tests.firmware.helpers import Recorder, device_config, start_device, stop_process
from tests.support.broker import Mosquitto


@pytest.mark.micropython
def test_commands(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    dev = "mp-cmd-1"
    streams = [{"name": "temperature", "source": "sim:temperature", "interval_ms": 1000, "qos": 1}]
    rec = Recorder(broker.port, dev, "rec-cmd").start()
    p = start_device(tmp_path, dev, device_config(broker.port, streams))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cmd-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def send(cid: str, name: str, args: object = None) -> None:
        pub.publish(f"edgewire/v1/{dev}/cmd", msgpack.packb({"v": 1, "i": cid, "n": name, "a": args}),
                    qos=1).wait_for_publish(5)

    def results(cid: str) -> list[dict[str, object]]:
        return [m[2] for m in rec.of("result") if m[2].get("i") == cid]

    try:
        rec.wait(lambda r: bool(r.births()), 10, "birth")
        send("c-ping", "ping")
        rec.wait(lambda r: bool(results("c-ping")), 5, "ping result")
        assert results("c-ping") == [{"v": 1, "i": "c-ping", "ok": True, "r": "pong"}]

        send("c-bad", "selfdestruct", {"now": True})
        rec.wait(lambda r: bool(results("c-bad")), 5, "unknown command result")
        assert results("c-bad") == [{"v": 1, "i": "c-bad", "ok": False, "e": "unknown command 'selfdestruct'"}]

        send("c-nostream", "set_interval", {"stream": "nope", "ms": 500})
        rec.wait(lambda r: bool(results("c-nostream")), 5, "set_interval error")
        assert results("c-nostream")[0]["ok"] is False and "nope" in results("c-nostream")[0]["e"]

        # set_interval changes the rate: 1 s -> 150 ms
        n0 = len(rec.telemetry())
        send("c-rate", "set_interval", {"stream": "temperature", "ms": 150})
        rec.wait(lambda r: bool(results("c-rate")), 5, "set_interval result")
        assert results("c-rate") == [{"v": 1, "i": "c-rate", "ok": True, "r": {"stream": "temperature", "ms": 150}}]
        base = len(rec.telemetry())

        def temperature_uptimes() -> list[int]:
            return [r[2] for t in rec.telemetry()[base:] for r in t["r"] if r[0] == "temperature"]

        # Wait for readings, not for time; the device's own uptime stamps say
        # how far apart they were sampled: ~150 ms now, 1,000 ms before.
        rec.wait(lambda r: len(temperature_uptimes()) >= 7, 15, "7 readings after set_interval 150 ms")
        stamps = temperature_uptimes()
        gaps = sorted(b - a for a, b in zip(stamps[1:], stamps[2:]))
        assert 100 <= gaps[len(gaps) // 2] <= 225, f"sampling gaps {gaps} ms after set_interval 150 ms (n0 {n0})"

        # the same command id twice: executed once, answered twice with the same bytes
        send("c-rate", "set_interval", {"stream": "temperature", "ms": 150})
        rec.wait(lambda r: len(results("c-rate")) == 2, 5, "the repeated set_interval answered")
        a, b = [m[3] for m in rec.of("result") if m[2]["i"] == "c-rate"]
        assert a == b
        send("c-info", "info")
        send("c-info", "info")
        rec.wait(lambda r: len(results("c-info")) == 2, 5, "two info results")
        a, b = [m[3] for m in rec.of("result") if m[2]["i"] == "c-info"]
        assert a == b
        info = results("c-info")[0]["r"]
        assert isinstance(info, dict)
        assert info["hw"] == "sim" and info["c"] == 1 and isinstance(info["mem"], int)
        assert info["streams"] == {"temperature": 150}
        # a result too large to keep (stats) is not kept: the repeat is not
        # executed again and says so
        send("c-stats", "stats")
        send("c-stats", "stats")
        rec.wait(lambda r: len(results("c-stats")) == 2, 5, "two stats results")
        stats = results("c-stats")[0]["r"]
        assert results("c-stats")[1] == {"v": 1, "i": "c-stats", "ok": False,
                                         "e": "command c-stats already executed; its result was too large "
                                              "to keep for a repeat"}
        # ping, unknown, set_interval x2, info, stats once each: 6 executions, not 9
        assert stats["commands"] == 6
        assert stats["oom"] == 0 and stats["cmd_dropped"] == 0

        send("c-ping2", "ping")
        rec.wait(lambda r: bool(results("c-ping2")), 5, "ping after info")

        # an undecodable command is counted and ignored; the device goes on
        pub.publish(f"edgewire/v1/{dev}/cmd", b"\xc1garbage", qos=1).wait_for_publish(5)
        send("c-after", "ping")
        rec.wait(lambda r: bool(results("c-after")), 5, "ping after garbage")
    finally:
        pub.disconnect()
        pub.loop_stop()
        pub._reset_sockets()
        out = stop_process(p)
        rec.stop()
        print(out)
    assert "Traceback" not in out, out
