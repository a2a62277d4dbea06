"""Payload conversion, apart from transport: topic + bytes -> typed values,
validated by the one protocol implementation (edgewire.wire, whose receiver
half is edgewire.wire_rx).

Telemetry takes a fast path: the C msgpack decoder, then
`rx.telemetry_fields` (decode_telemetry_env's rules, as a tuple). Whatever that refuses is decoded
again by the reference `decode_telemetry` on the bytes, so the error kind is exactly the
reference one. Topic parsing and stream-name checks are memoized in bounded
caches; the rules stay in wire."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from edgewire import wire

from edgewire import wire_rx as rx  # the receiver half of the protocol code
from edgewire.wire import ProtocolError

__all__ = ["Decoder", "ProtocolError", "Telemetry", "Status", "Result"]

_CACHE_MAX = 65536
_MAX_PAYLOAD = wire.MAX_PAYLOAD
_unpackb = msgpack.unpackb
_fields = rx.telemetry_fields


Telemetry = tuple[str, int, int, int, int | None, list[tuple[str, Any, int, str | None]]]
"""One telemetry message as decoded: (device, boot, seq, uptime, time,
readings), readings [(stream, value, uptime, error)]. A plain tuple, read by
unpacking: the per-message hot path builds and reads it with no dict (D23,
second pass); `wire_rx.decode_telemetry` gives the same fields as a dict."""


class Status(NamedTuple):
    device: str
    boot: int
    conn: int
    online: bool
    uptime: int | None
    fw: str | None
    hw: str | None
    streams: dict[str, Any]
    why: str | None


class Result(NamedTuple):
    device: str
    id: str
    ok: bool
    value: Any
    error: str | None


class _Memo(dict[Any, Any]):
    """A bounded memo of a pure function of one hashable argument. Calling
    `memo[key]` is the whole lookup: a hit is one C-level dict access, with no
    Python frame (the hot path passes `memo.__getitem__` as the function).
    A miss computes, stores and returns; what the function raises is not
    stored. An unhashable key raises TypeError (the telemetry fast path then
    hands the message to the reference decoder, which names the error)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: Any) -> Any:
        value = self.fn(key)
        if len(self) >= _CACHE_MAX:
            self.clear()
        self[key] = value
        return value


def _parse_topic(topic: bytes) -> tuple[str, str]:
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("topic", f"topic {topic[:120]!r} is not UTF-8") from None
    device, kind = rx.parse_topic(text)
    return str(device), str(kind)


class Decoder:
    """Stateless apart from its bounded memo caches. `topic(topic_bytes)` ->
    (device, kind), ProtocolError('topic') otherwise; a topic seen before
    costs one dict lookup and gives the same device string object each time
    (so what waits for the journal or sits in the live ring shares it)."""

    __slots__ = ("topic", "_stream_ok", "_id_ok")

    def __init__(self) -> None:
        self.topic: Callable[[bytes], tuple[str, str]] = _Memo(_parse_topic).__getitem__
        self._stream_ok: Callable[[object], bool] = _Memo(lambda name: bool(wire.valid_stream(name))).__getitem__
        self._id_ok: Callable[[object], bool] = _Memo(lambda name: bool(wire.valid_id(name))).__getitem__

    def telemetry(self, payload: bytes, device: str) -> Telemetry:
        """The message's fields; its device is the topic's string (equal to the payload's,
        checked), shared by every message of the device, not the one msgpack made."""
        if len(payload) <= _MAX_PAYLOAD:
            try:
                t: Telemetry = _fields(_unpackb(payload), device, self._stream_ok, self._id_ok)
                return t
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                    RecursionError):
                pass  # fall through to the reference decoder for the exact error
        # The reference decoder: raises the canonical error, or (should the fast
        # path ever refuse what the reference accepts) the reference wins.
        d = rx.decode_telemetry(payload, device)
        return (device if device is not None else d["device"], d["boot"], d["seq"], d["uptime"], d["time"],
                d["readings"])

    @staticmethod
    def status(payload: bytes, device: str) -> Status:
        d = rx.decode_status(payload, device)
        return Status(d["device"], d["boot"], d["conn"], d["online"], d["uptime"], d["fw"], d["hw"],
                      d["streams"], d["why"])

    @staticmethod
    def result(payload: bytes, device: str) -> Result:
        d = rx.decode_result(payload)
        return Result(device, d["id"], d["ok"], d["value"], d["error"])
