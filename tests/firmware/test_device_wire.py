"""A device on MicroPython publishes exactly what docs/protocol.md promises,
checked by an independent paho-mqtt client with the reference msgpack."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.firmware.helpers import Recorder, device_config, start_device, stop_process
from tests.support.broker import Mosquitto

STREAMS = [
    {"name": "temperature", "source": "sim:temperature", "interval_ms": 300, "qos": 0, "unit": "C"},
    {"name": "humidity", "source": "sim:humidity", "interval_ms": 300, "qos": 1, "unit": "%"},
    {"name": "battery", "source": "sim:battery", "interval_ms": 300, "qos": 1, "unit": "V"},
    {"name": "door", "source": "sim:door", "interval_ms": 300, "qos": 2},
]
QOS = {s["name"]: s["qos"] for s in STREAMS}


def canonical(obj: Any) -> bytes:
    """Protocol canonical form: maps with keys sorted, floats as float64."""
    def sort(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: sort(o[k]) for k in sorted(o)}
        if isinstance(o, list):
            return [sort(x) for x in o]
        return o
    return msgpack.packb(sort(obj), use_bin_type=True, use_single_float=False)


@pytest.mark.micropython
def test_qos_0_1_2_birth_retained_and_will(broker: Mosquitto, tmp_path: Path, firmware_build: Path) -> None:
    dev = "mp-wire-1"
    rec = Recorder(broker.port, dev, "rec-wire").start()
    p = start_device(tmp_path, dev, device_config(broker.port, STREAMS, batch_max=8))
    try:
        rec.wait(lambda r: len(r.telemetry()) >= 12, 15, "12 telemetry messages")

        # A subscriber that arrives after the device connected still gets the retained birth.
        late = Recorder(broker.port, dev, "rec-late").start()
        late.wait(lambda r: bool(r.of("status")), 5, "retained birth")
        topic, retained, birth, raw = late.of("status")[0]
        late.stop()
        assert retained is True
        assert topic == f"edgewire/v1/{dev}/status"
        assert raw == canonical(birth)
        assert set(birth) == {"v", "d", "b", "c", "st", "u", "fw", "hw", "m"}
        assert birth["v"] == 1 and birth["d"] == dev and birth["st"] == "on" and birth["c"] == 1
        assert 0 < birth["b"] <= 0xFFFFFFFF and isinstance(birth["u"], int)
        assert birth["hw"] == "sim" and birth["fw"] == "0.1.0"
        assert birth["m"] == {s["name"]: {"u": s.get("unit", ""), "q": s["qos"], "i": s["interval_ms"]}
                              for s in STREAMS}

        tel = rec.of("telemetry")
        seqs = []
        per_stream: dict[str, int] = {}
        for topic, retained, env, raw in tel:
            assert topic == f"edgewire/v1/{dev}/telemetry" and retained is False
            assert raw == canonical(env), "not the canonical msgpack form"
            assert set(env) == {"v", "d", "b", "s", "u", "t", "r"}
            assert env["v"] == 1 and env["d"] == dev and env["b"] == birth["b"]
            assert isinstance(env["t"], int) and abs(env["t"] / 1000 - time.time()) < 60
            assert 1 <= len(env["r"]) <= 8
            qs = {QOS[r[0]] for r in env["r"]}
            assert len(qs) == 1, f"one message mixes QoS levels: {env['r']}"
            for r in env["r"]:
                assert len(r) == 3, r  # fault_rate 0: no error readings
                name, value, up = r
                assert up <= env["u"]
                if name == "door":
                    assert isinstance(value, bool)
                else:
                    assert isinstance(value, float)
                per_stream[name] = per_stream.get(name, 0) + 1
            seqs.append(env["s"])
        # QoS 1 and 2 are delivered completely, so the QoS 0 messages fill the gaps:
        # with nothing lost on loopback, sequence numbers are 1..n without holes.
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), seqs
        assert set(per_stream) == set(QOS), per_stream
        assert max(per_stream.values()) - min(per_stream.values()) <= 2, per_stream
        # readings of the same QoS sampled together share a message
        assert any(len(env["r"]) >= 2 for _, _, env, _ in tel if QOS[env["r"][0][0]] == 1)

        # SIGKILL: no DISCONNECT, so the broker publishes the will with the same (b, c).
        p.kill()
        p.wait(5)
        rec.wait(lambda r: any(m[2]["st"] == "off" for m in r.of("status")), 10, "last will")
        death = [m for m in rec.of("status") if m[2]["st"] == "off"][0]
        assert death[2] == {"v": 1, "d": dev, "b": birth["b"], "c": 1, "st": "off", "why": "lost"}
        assert death[3] == canonical(death[2])
    finally:
        out = stop_process(p)
        rec.stop()
    assert "Traceback" not in out, out
