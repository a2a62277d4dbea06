"""MQTT 3.1.1 packets, sans-io: encoders for what a client sends and an
incremental, strict parser for what a broker sends.

`PacketReader.feed(data)` takes whatever bytes arrived and returns every
complete packet in them (hundreds per call under load), keeping a partial tail
for the next call. Anything a broker must not send, or sends malformed, raises
MqttProtocolError. A PUBLISH whose remaining length exceeds `max_packet` is not
buffered: its header is read, the packet is reported as a Publish with `size` set (so it can
be acknowledged and counted), and its payload bytes are skipped as they come.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Union

from edgewire.gateway.errors import MqttProtocolError

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

_MAX_REMAINING = 268_435_455


class Publish(NamedTuple):
    """An inbound PUBLISH. `size` > 0 (with an empty payload) marks one larger
    than max_packet: refused, its payload never buffered."""

    topic: bytes
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    pid: int = 0  # 0 for QoS 0
    size: int = 0


class ConnAck(NamedTuple):
    session_present: bool
    code: int


class Ack(NamedTuple):
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK: a type and a packet id."""

    type: int
    pid: int


class SubAck(NamedTuple):
    pid: int
    codes: tuple[int, ...]


class PingResp(NamedTuple):
    pass


Packet = Union[Publish, ConnAck, Ack, SubAck, PingResp]

_PINGRESP = PingResp()
_tuple_new = tuple.__new__


# ---------------------------------------------------------------- encoding

def _remaining(n: int) -> bytes:
    """The variable-length remaining length: at most 4 bytes, so at most
    268,435,455 (MQTT 3.1.1, 2.2.3). Larger would encode as 5+ bytes that every
    conformant broker rejects as a malformed packet."""
    if not 0 <= n <= _MAX_REMAINING:
        raise ValueError(f"MQTT packet body of {n} bytes exceeds the protocol limit of {_MAX_REMAINING} bytes")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack(">H", len(b)) + b


def connect(*, client_id: str, keepalive: int, clean_session: bool, username: str | None = None,
            password: str | None = None, will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = _str("MQTT") + bytes((4, flags)) + struct.pack(">H", keepalive) + payload
    return bytes((CONNECT << 4,)) + _remaining(len(body)) + body


def publish(topic: str, payload: bytes, *, qos: int, pid: int = 0, retain: bool = False, dup: bool = False) -> bytes:
    if qos not in (0, 1, 2):
        raise ValueError(f"qos {qos!r} is not 0, 1 or 2")
    if "+" in topic or "#" in topic or not topic:
        raise ValueError(f"topic {topic!r} is not a valid topic name")
    body = _str(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return bytes((first,)) + _remaining(len(body)) + body


def subscribe(pid: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack(">H", pid) + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return bytes((SUBSCRIBE << 4 | 0x02,)) + _remaining(len(body)) + body


_ACK = struct.Struct(">BBH").pack


def ack(ptype: int, pid: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP for one packet id."""
    return _ACK((ptype << 4) | (0x02 if ptype == PUBREL else 0), 2, pid)


def acks(ptype: int, pids: list[int]) -> bytes:
    """Many acks of one type in one buffer (one transport write)."""
    first = (ptype << 4) | (0x02 if ptype == PUBREL else 0)
    return b"".join([_ACK(first, 2, p) for p in pids])


def ack_list(items: list[tuple[int, int]]) -> bytes:
    """Acks of a read, (type, packet id) each, in order, in one buffer."""
    return b"".join([_ACK((t << 4) | (0x02 if t == PUBREL else 0), 2, pid) for t, pid in items])


PINGREQ_BYTES = bytes((PINGREQ << 4, 0))
DISCONNECT_BYTES = bytes((DISCONNECT << 4, 0))


# ---------------------------------------------------------------- parsing

class PacketReader:
    """Incremental parser for the broker-to-client direction."""

    __slots__ = ("_buf", "_max", "_skip")

    def __init__(self, *, max_packet: int) -> None:
        self._buf = b""
        self._max = max_packet
        self._skip = 0  # payload bytes of an oversized packet still to discard

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip:]
            self._skip = 0
        buf = self._buf + data if self._buf else data
        out: list[Packet] = []
        append = out.append
        n = len(buf)
        pos = 0
        maxp = self._max
        new = _tuple_new  # Publish(...) without the namedtuple's Python-level __new__: hot path
        while pos < n:
            first = buf[pos]
            # remaining length: 1-4 bytes, 7 bits each
            i = pos + 1
            if i >= n:
                break
            b = buf[i]
            length = b & 0x7F
            if b < 0x80:
                start = i + 1
            elif i + 1 < n and buf[i + 1] < 0x80:
                # two bytes: 128 B - 16 KiB, the size of most telemetry (a short path, no loop)
                length |= buf[i + 1] << 7
                start = i + 2
            else:
                mult = 128
                complete = False
                for _ in range(3):
                    i += 1
                    if i >= n:
                        break
                    b = buf[i]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        complete = True
                        break
                else:
                    raise MqttProtocolError("remaining length longer than 4 bytes")
                if not complete:
                    break
                start = i + 1
            end = start + length
            ptype = first >> 4
            if ptype == PUBLISH:
                if length > maxp:
                    ov = self._oversized(buf, pos, start, first, length)
                    if ov is None:
                        break
                    append(ov)
                    have = n - start
                    if have >= length:
                        pos = end
                        continue
                    self._skip = length - have
                    pos = n
                    break
                if end > n:
                    break
                qos = (first >> 1) & 3
                if length < 2:
                    raise MqttProtocolError("PUBLISH shorter than its topic length")
                tl = (buf[start] << 8) | buf[start + 1]
                p = start + 2 + tl
                if qos == 0:
                    if p > end:
                        raise MqttProtocolError("PUBLISH topic runs past the packet")
                    append(new(Publish, (buf[start + 2:p], buf[p:end], 0, first & 1 == 1, False, 0, 0)))
                else:
                    if qos == 3:
                        raise MqttProtocolError("PUBLISH with QoS 3")
                    if p + 2 > end:
                        raise MqttProtocolError("PUBLISH topic or packet id runs past the packet")
                    pid = (buf[p] << 8) | buf[p + 1]
                    if pid == 0:
                        raise MqttProtocolError("PUBLISH QoS>0 with packet id 0")
                    append(new(Publish, (buf[start + 2:p], buf[p + 2:end], qos, first & 1 == 1,
                                         first & 8 == 8, pid, 0)))
                pos = end
                continue
            if length > 65535 + 4:
                raise MqttProtocolError(f"packet type {ptype} of {length} bytes is implausible")
            if end > n:
                break
            append(self._control(ptype, first & 0x0F, buf[start:end]))
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        return out

    def _oversized(self, buf: bytes, pos: int, start: int, first: int, length: int) -> Publish | None:
        n = len(buf)
        qos = (first >> 1) & 3
        if qos == 3:
            raise MqttProtocolError("PUBLISH with QoS 3")
        if start + 2 > n:
            return None
        tl = (buf[start] << 8) | buf[start + 1]
        need = 2 + tl + (2 if qos else 0)
        if need > length:
            raise MqttProtocolError("PUBLISH topic runs past the packet")
        if start + need > n:
            return None
        p = start + 2 + tl
        pid = ((buf[p] << 8) | buf[p + 1]) if qos else 0
        return Publish(bytes(buf[start + 2:p]), b"", qos, False, bool(first & 8), pid, length)

    @staticmethod
    def _control(ptype: int, flags: int, body: bytes) -> Packet:
        if ptype in (PUBACK, PUBREC, PUBCOMP, UNSUBACK, PUBREL):
            want = 0x02 if ptype == PUBREL else 0
            if flags != want or len(body) != 2:
                raise MqttProtocolError(f"malformed ack packet type {ptype} (flags {flags:#x}, {len(body)} bytes)")
            return Ack(ptype, (body[0] << 8) | body[1])
        if ptype == CONNACK:
            if flags or len(body) != 2 or body[0] & 0xFE:
                raise MqttProtocolError("malformed CONNACK")
            return ConnAck(bool(body[0] & 1), body[1])
        if ptype == SUBACK:
            if flags or len(body) < 3:
                raise MqttProtocolError("malformed SUBACK")
            codes = tuple(body[2:])
            if any(c not in (0, 1, 2, 0x80) for c in codes):
                raise MqttProtocolError(f"SUBACK with invalid return codes {codes!r}")
            return SubAck((body[0] << 8) | body[1], codes)
        if ptype == PINGRESP:
            if flags or body:
                raise MqttProtocolError("malformed PINGRESP")
            return _PINGRESP
        raise MqttProtocolError(f"a broker must not send packet type {ptype}")
