"""The relay benchmark's own parts: its packets are valid protocol, its
baseline subscribers count every message they get, and its loss accounting
adds up. No timing is asserted."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edgewire import wire_rx

ROOT = Path(__file__).resolve().parents[2]


def load_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_relay", ROOT / "bench" / "relay.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_relay"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("qos", [0, 1])
def test_packets_are_100_byte_envelopes_with_distinct_seqs(qos: int) -> None:
    relay = load_relay()
    t = relay.PacketTemplate("bench-004", qos)
    seen = set()
    for seq, pid in ((relay.SEQ_BASE, 1), (relay.SEQ_BASE + 1, 2), (relay.SEQ_BASE + 12345, 300), (0xFFFFFFFF, 65535)):
        pkt = t.build(seq, pid)
        # fixed header, remaining length (2 bytes here), topic, [packet id], payload
        assert pkt[0] == 0x30 | (qos << 1)
        rl = (pkt[1] & 0x7F) | (pkt[2] << 7)
        assert pkt[1] & 0x80 and not pkt[2] & 0x80 and rl == len(pkt) - 3
        tlen = int.from_bytes(pkt[3:5], "big")
        assert pkt[5:5 + tlen].decode() == "edgewire/v1/bench-004/telemetry"
        at = 5 + tlen
        if qos:
            assert int.from_bytes(pkt[at:at + 2], "big") == pid
            at += 2
        payload = pkt[at:]
        assert len(payload) == 100
        m = wire_rx.decode_telemetry(payload, "bench-004")
        assert (m["device"], m["seq"], len(m["readings"])) == ("bench-004", seq, 1)
        seen.add(payload)
    assert len(seen) == 4


@pytest.mark.parametrize("subscriber,qos", [("mosquitto_sub", 0), ("raw", 0), ("raw", 1), ("gmqtt", 1)])
def test_baseline_subscribers_count_every_message(tmp_path: Path, subscriber: str, qos: int) -> None:
    """500 messages stay below mosquitto's default queue (1000), so none may be lost."""
    relay = load_relay()
    r = relay.phase_baseline(tmp_path, relay.Load(seconds=5, devices=10, max_messages=500, qos=qos), subscriber)
    assert (r.sent, r.received, r.lost) == (500, 500, 0)
    # (500 messages can arrive in one read: first == last, no rate; no timing is asserted)
    assert set(r.cpu_percent) == {"broker", "subscriber", "publisher"}


def test_loss_accounting_splits_head_interior_tail() -> None:
    relay = load_relay()
    # sent seqs 100..199 for each of 3 devices
    seqs = {"a": [100, 100, 199],      # everything
            "b": [90, 105, 199],       # 5 lost at the head, 5 in gaps
            # "c": nothing seen: all 100 at the tail
            }
    acc = relay.account_loss(100, 199, ["a", "b", "c"], seqs, registry_missing=3, hub_dropped=2)
    assert acc == {"head": 5, "interior": 5, "tail": 100, "registry_missing": 3, "hub_dropped": 2,
                   "unexplained_interior": 0}
    acc = relay.account_loss(100, 199, ["a"], {"a": [97, 100, 196]}, registry_missing=0, hub_dropped=0)
    assert (acc["tail"], acc["interior"], acc["unexplained_interior"]) == (3, 0, 0)


@pytest.mark.slow
def test_gateway_phase_accounts_for_every_message(tmp_path: Path) -> None:
    """The gateway phase end to end at QoS 1 below the broker's default queue:
    every message reaches the WebSocket client and the books balance."""
    relay = load_relay()
    r = relay.phase_gateway(tmp_path, relay.Load(seconds=5, devices=10, max_messages=500, qos=1))
    assert r.note == "" and (r.sent, r.received, r.lost) == (500, 500, 0), r
    assert r.loss == {"head": 0, "interior": 0, "tail": 0, "registry_missing": 0, "hub_dropped": 0,
                      "unexplained_interior": 0}
    assert r.peak_rss_mb and set(r.cpu_percent) == {"broker", "gateway", "client", "publisher"}


def test_journal_bench_commits_what_it_appends() -> None:
    """The journal-alone measurement runs on the real journal at both
    settings and its counts add up (no timing asserted)."""
    load_relay()  # puts bench/ on sys.path
    import journal_bench

    res = journal_bench.run(0.3)
    assert set(res) == {"full", "normal"}
    for r in res.values():
        sat = r["saturated"]
        assert sat["committed"] > 0 and sat["committed"] % journal_bench.SATURATED_BATCH == 0
        assert r["bare_sqlite3"]["committed"] > 0 and r["ratio"] is not None
        paced = r["paced"]
        assert paced["batches"] > 0 and paced["p50_ms"] <= paced["p99_ms"] <= paced["max_ms"]
    assert all(line.startswith(("journal alone", "  synchronous=")) for line in journal_bench.render(res))
