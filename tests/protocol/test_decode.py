"""Bad input is refused with a ProtocolError of a named kind, never another exception."""
from __future__ import annotations

import random

import msgpack
import pytest

from edgewire import mpack, wire, wire_rx

GOOD = wire.encode_telemetry("dev-01", 7, 1, 100, [["t", 1.5, 90]])


@pytest.mark.parametrize(
    "payload, kind",
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (b"\x92\x01", "malformed"),
        (b"\xdd\xff\xff\xff\xff", "malformed"),
        (b"\xdf\x7f\xff\xff\xff\x01", "malformed"),
        (msgpack.packb([1, 2]), "malformed"),
        (b"\x81\xa1v\x02", "invalid"),
        (msgpack.packb({"v": 1, "d": "dev-01", "b": 1, "s": 1, "u": 1, "r": []}), "invalid"),
        (msgpack.packb({"v": 1, "d": "bad id!", "b": 1, "s": 1, "u": 1, "r": [["t", 1, 1]]}), "invalid"),
        (msgpack.packb({"v": 1, "d": "other", "b": 1, "s": 1, "u": 1, "r": [["t", 1, 1]]}), "mismatch"),
        (msgpack.packb({"v": 1, "d": "dev-01", "b": -1, "s": 1, "u": 1, "r": [["t", 1, 1]]}), "invalid"),
        (msgpack.packb({"v": 1, "d": "dev-01", "b": 1, "s": 1, "u": 1, "r": [["t", [1], 1]]}), "invalid"),
        (msgpack.packb({"v": 1, "d": "dev-01", "b": 1, "s": 1, "u": 1, "r": [["", 1, 1]]}), "invalid"),
        (b"\x91" * 50 + b"\x01", "malformed"),
        (b"\x00" * (wire.MAX_PAYLOAD + 1), "oversized"),
    ],
)
def test_bad_telemetry(payload: bytes, kind: str) -> None:
    with pytest.raises(wire.ProtocolError) as e:
        wire_rx.decode_telemetry(payload, "dev-01")
    assert e.value.kind == kind


def test_every_truncation_is_a_protocol_error() -> None:
    for n in range(len(GOOD)):
        with pytest.raises(wire.ProtocolError):
            wire_rx.decode_telemetry(GOOD[:n], "dev-01")


def test_random_corruption_never_escapes() -> None:
    rnd = random.Random(1)
    for _ in range(3000):
        b = bytearray(GOOD)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        try:
            wire_rx.decode_telemetry(bytes(b), "dev-01")
        except wire.ProtocolError:
            pass


@pytest.mark.parametrize(
    "topic, expect",
    [
        ("edgewire/v1/dev-01/telemetry", ("dev-01", "telemetry")),
        ("edgewire/v1/dev-01/status", ("dev-01", "status")),
        ("edgewire/v1/dev-01/result", ("dev-01", "result")),
    ],
)
def test_parse_topic(topic: str, expect: tuple[str, str]) -> None:
    assert wire_rx.parse_topic(topic) == expect


@pytest.mark.parametrize("topic", ["edgewire/v1/dev-01", "edgewire/v2/d/telemetry", "edgewire/v1/d d/telemetry",
                                   "edgewire/v1/d/other", "x", "edgewire/v1//telemetry"])
def test_bad_topics(topic: str) -> None:
    with pytest.raises(wire.ProtocolError) as e:
        wire_rx.parse_topic(topic)
    assert e.value.kind == "topic"


@pytest.mark.parametrize(
    "flt, name, match",
    [("#", "a/b", True), ("a/#", "a", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
     ("+/temp", "d1/temp", True), ("+/temp", "d1/hum", False), ("a/b", "a/b", True), ("a/b/c", "a/b", False)],
)
def test_topic_matches(flt: str, name: str, match: bool) -> None:
    assert wire_rx.topic_matches(flt, name) is match


def test_encoder_refuses_oversized_and_unknown() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.encode_telemetry("d", 1, 1, 1, [["t", "x" * 200, 1]] * 30)
    with pytest.raises(mpack.EncodeError):
        mpack.packb({1, 2})
