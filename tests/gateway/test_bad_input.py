"""Malformed payloads, wrong topics, oversized messages and device ids that do
not match their topic are counted per kind, logged once per kind (then rate
limited), and the gateway keeps serving."""
from __future__ import annotations

import logging

import aiohttp
import msgpack
import pytest

from edgewire import wire
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, wait_for


def good(device: str, seq: int) -> bytes:
    return wire.encode_telemetry(device, 1, seq, 0, [["t", 1.5, 0]])


BAD = {
    "malformed": [("edgewire/v1/dev-bad/telemetry", b"\xc1\x00garbage"),
                  ("edgewire/v1/dev-bad/status", msgpack.packb([1, 2, 3]))],
    "topic": [("edgewire/v1/dev-bad/nonsense", good("dev-bad", 1)),
              ("edgewire/v1/bad id!/telemetry", good("dev-bad", 1)),
              ("edgewire/v1/dev-bad/telemetry/extra", good("dev-bad", 1))],
    "oversized": [("edgewire/v1/dev-bad/telemetry", b"\x00" * (wire.MAX_PAYLOAD + 1)),
                  # larger than [mqtt] max_packet: refused by the MQTT parser, never buffered
                  ("edgewire/v1/dev-bad/telemetry", b"\x00" * 200_000)],
    "mismatch": [("edgewire/v1/dev-bad/telemetry", good("someone-else", 1))],
    "invalid": [("edgewire/v1/dev-bad/telemetry",
                 msgpack.packb({"v": 1, "d": "dev-bad", "b": 1, "s": 1, "u": 0, "r": []}))],
}


@pytest.mark.parametrize("qos", [0, 1])
async def test_bad_input_counted_logged_once_and_survived(gateway: Gateway, publisher: Publisher,
                                                          http: aiohttp.ClientSession,
                                                          caplog: pytest.LogCaptureFixture, qos: int) -> None:
    caplog.set_level(logging.WARNING, logger="edgewire.gateway.refused")
    for _ in range(3):  # three rounds: each kind repeats, yet is logged once
        for items in BAD.values():
            for topic, payload in items:
                publisher.pub(topic, payload, qos=qos)
    publisher.pub("edgewire/v1/dev-bad/telemetry", good("dev-bad", 7), qos=qos)

    expected = {kind: 3 * len(items) for kind, items in BAD.items()}

    async def counted() -> bool:
        return (await (await http.get(gateway.http_url + "/api/v1/stats")).json())["refused"] == expected

    await wait_for(counted, what=f"refusal counters {expected}")
    # the good message after all that got through
    await wait_for(lambda: gateway.hub.last_id == 1, what="the good reading")
    dev = gateway.registry.get("dev-bad")
    assert dev is not None and dev.messages == 1

    lines = [r for r in caplog.records if r.name == "edgewire.gateway.refused"]
    per_kind = {k: [r.getMessage() for r in lines if r.getMessage().startswith(f"refused ({k})")] for k in BAD}
    assert {k: len(v) for k, v in per_kind.items()} == {k: 1 for k in BAD}, per_kind
    assert "does not match topic device" in per_kind["mismatch"][0]
    assert "exceeds" in per_kind["oversized"][0]

    health = await (await http.get(gateway.http_url + "/healthz")).json()
    assert health["refused"] == expected and health["status"] == "ok"
    assert health["mqtt"]["oversized"] == 3  # the 200 kB ones, cut off at the MQTT layer


async def test_rate_limited_log_reports_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    from edgewire.gateway.refusals import Refusals

    caplog.set_level(logging.WARNING, logger="edgewire.gateway.refused")
    now = [100.0]
    r = Refusals(interval=10)
    r._clock = lambda: now[0]  # a controllable clock: this is the only seam
    for _ in range(5):
        r.count("malformed", "x")
    now[0] += 11
    r.count("malformed", "y")
    msgs = [rec.getMessage() for rec in caplog.records]
    assert len(msgs) == 2
    assert "4 more since the last report" in msgs[1] and "6 malformed so far" in msgs[1]
    assert r.counts == {"malformed": 6}
