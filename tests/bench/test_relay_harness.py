"""The relay benchmark's own parts: its packets are valid protocol, and its
baseline phase counts every message it sends. No timing is asserted."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from edgewire import wire_rx

ROOT = Path(__file__).resolve().parents[2]


def load_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_relay", ROOT / "bench" / "relay.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_relay"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_packets_are_100_byte_envelopes_with_distinct_seqs() -> None:
    relay = load_relay()
    t = relay.PacketTemplate("bench-004")
    seen = set()
    for seq in (relay.SEQ_BASE, relay.SEQ_BASE + 1, relay.SEQ_BASE + 12345, 0xFFFFFFFF):
        pkt = t.build(seq)
        # fixed header, remaining length (2 bytes here), topic, payload
        assert pkt[0] == 0x30
        rl = (pkt[1] & 0x7F) | (pkt[2] << 7)
        assert pkt[1] & 0x80 and not pkt[2] & 0x80 and rl == len(pkt) - 3
        tlen = int.from_bytes(pkt[3:5], "big")
        assert pkt[5:5 + tlen].decode() == "edgewire/v1/bench-004/telemetry"
        payload = pkt[5 + tlen:]
        assert len(payload) == 100
        m = wire_rx.decode_telemetry(payload, "bench-004")
        assert (m["device"], m["seq"], len(m["readings"])) == ("bench-004", seq, 1)
        seen.add(payload)
    assert len(seen) == 4


def test_broker_phase_counts_every_message(tmp_path: Path) -> None:
    relay = load_relay()
    r = relay.phase_broker(tmp_path, seconds=5, devices=10, max_messages=2000)
    assert (r.sent, r.received, r.lost) == (2000, 2000, 0)
    assert r.rate > 0 and set(r.cpu_percent) == {"broker", "subscriber", "publisher"}
