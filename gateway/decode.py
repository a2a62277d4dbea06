"""Payload conversion, apart from transport: topic + bytes -> typed values,
validated by the one protocol implementation (edgewire.wire, whose receiver
half is edgewire.wire_rx).

Telemetry takes a fast path: the C msgpack decoder, then
`rx.decode_telemetry_env` (the same rules). Whatever that refuses is decoded
again by the reference `decode_telemetry` on the bytes, so the error kind is exactly the
reference one. Topic parsing and stream-name checks are memoized in bounded
caches; the rules stay in wire."""
from __future__ import annotations

from typing import Any, NamedTuple, TypedDict, cast

import msgpack

from edgewire import wire

from edgewire import wire_rx as rx  # the receiver half of the protocol code
from edgewire.wire import ProtocolError

__all__ = ["Decoder", "ProtocolError", "Telemetry", "Status", "Result"]

_CACHE_MAX = 65536
_unpackb = msgpack.unpackb
_decode_env = rx.decode_telemetry_env


class Telemetry(TypedDict):
    """wire.decode_telemetry's result, as is (no copy on the hot path)."""

    device: str
    boot: int
    seq: int
    uptime: int
    time: int | None
    readings: list[tuple[str, Any, int, str | None]]


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


class Decoder:
    """Stateless apart from its bounded memo caches."""

    __slots__ = ("_topics", "_streams", "_ids")

    def __init__(self) -> None:
        self._topics: dict[bytes, tuple[str, str]] = {}
        self._streams: dict[str, bool] = {}
        self._ids: dict[str, bool] = {}

    def topic(self, topic: bytes) -> tuple[str, str]:
        """-> (device, kind); ProtocolError('topic') otherwise."""
        hit = self._topics.get(topic)
        if hit is not None:
            return hit
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("topic", f"topic {topic[:120]!r} is not UTF-8") from None
        device, kind = rx.parse_topic(text)
        parsed = (str(device), str(kind))
        if len(self._topics) >= _CACHE_MAX:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    def _stream_ok(self, name: object) -> bool:
        if type(name) is not str:
            return bool(wire.valid_stream(name))
        hit = self._streams.get(name)
        if hit is None:
            hit = bool(wire.valid_stream(name))
            if len(self._streams) >= _CACHE_MAX:
                self._streams.clear()
            self._streams[name] = hit
        return hit

    def _id_ok(self, name: object) -> bool:
        if type(name) is not str:
            return bool(wire.valid_id(name))
        hit = self._ids.get(name)
        if hit is None:
            hit = bool(wire.valid_id(name))
            if len(self._ids) >= _CACHE_MAX:
                self._ids.clear()
            self._ids[name] = hit
        return hit

    def telemetry(self, payload: bytes, device: str) -> Telemetry:
        if len(payload) <= wire.MAX_PAYLOAD:
            try:
                env = _unpackb(payload)
                return _decode_env(env, device, self._stream_ok, self._id_ok)  # type: ignore[no-any-return]
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                    RecursionError):
                pass  # fall through to the reference decoder for the exact error
        # The reference decoder: raises the canonical error, or (should the fast
        # path ever refuse what the reference accepts) the reference wins.
        return cast(Telemetry, rx.decode_telemetry(payload, device))

    @staticmethod
    def status(payload: bytes, device: str) -> Status:
        d = rx.decode_status(payload, device)
        return Status(d["device"], d["boot"], d["conn"], d["online"], d["uptime"], d["fw"], d["hw"],
                      d["streams"], d["why"])

    @staticmethod
    def result(payload: bytes, device: str) -> Result:
        d = rx.decode_result(payload)
        return Result(device, d["id"], d["ok"], d["value"], d["error"])
