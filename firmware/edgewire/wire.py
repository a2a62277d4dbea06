# Edgewire wire protocol v1: topics and msgpack envelopes, the device side.
#
# The one implementation of docs/protocol.md, in two modules that run unchanged
# on MicroPython and CPython and do no I/O:
#   wire     (this one) what a device needs: limits, ProtocolError, id and
#            stream rules, topics, every encoder, decode_command;
#   wire_rx  the receiver side (simulator, gateway, tests): decode_telemetry,
#            decode_status, decode_result, parse_topic, topic filters.
# Devices never import wire_rx, so its code costs them no RAM (decisions D7).
# Anything refused raises ProtocolError with a machine-readable `kind`.

from edgewire import mpack

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = const(1)
ROOT = "edgewire/v1"

# Limits (docs/protocol.md, "Limits").
MAX_PAYLOAD = const(4096)
MAX_ID = const(64)
MAX_STREAM = const(64)
MAX_READINGS = const(64)
MAX_TEXT = const(256)
MAX_U32 = const(0xFFFFFFFF)

KIND_TELEMETRY = "telemetry"
KIND_STATUS = "status"
KIND_CMD = "cmd"
KIND_RESULT = "result"
KINDS = (KIND_TELEMETRY, KIND_STATUS, KIND_CMD, KIND_RESULT)

ONLINE = "on"
OFFLINE = "off"


class ProtocolError(ValueError):
    """A message that breaks docs/protocol.md. `kind` names the rule broken:
    topic, oversized, malformed, invalid, mismatch."""

    def __init__(self, kind, message):
        super().__init__(message)  # ValueError.__init__ does not exist on MicroPython
        self.kind = kind
        self.message = message

    def __str__(self):
        return self.message


def _id_char(c):
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_" or c == "-"


def valid_id(s):
    """Device ids and command ids: 1-64 of A-Z a-z 0-9 _ -."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID:
        return False
    for c in s:
        if not _id_char(c):
            return False
    return True


def valid_stream(s):
    """Stream names: 1-64 chars, segments of A-Z a-z 0-9 _ - . joined by '/'."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_STREAM:
        return False
    for seg in s.split("/"):
        if not seg:
            return False
        for c in seg:
            if not (_id_char(c) or c == "."):
                return False
    return True


def topic(device_id, kind):
    return ROOT + "/" + device_id + "/" + kind


# ---------------------------------------------------------------- encoding

def _oversized(n):
    if n > MAX_PAYLOAD:
        raise ProtocolError("oversized", "message of %d bytes exceeds %d" % (n, MAX_PAYLOAD))


def _pack(env):
    b = mpack.packb(env)
    _oversized(len(b))
    return b


def encode_telemetry(device_id, boot, seq, uptime_ms, readings, time_ms=None):
    """readings: sequence of [stream, value, uptime_ms] or [stream, None, uptime_ms, error]
    (tuples are written as arrays too)."""
    env = {"v": VERSION, "d": device_id, "b": boot, "s": seq, "u": uptime_ms, "r": readings}
    if time_ms is not None:
        env["t"] = time_ms
    return _pack(env)


def encode_birth(device_id, boot, conn, uptime_ms, fw, hw, streams):
    """streams: {name: {"u": unit, "q": qos, "i": interval_ms}}."""
    return _pack({"v": VERSION, "d": device_id, "b": boot, "c": conn,
                  "st": ONLINE, "u": uptime_ms, "fw": fw, "hw": hw, "m": streams})


def encode_death(device_id, boot, conn, why):
    return _pack({"v": VERSION, "d": device_id, "b": boot, "c": conn, "st": OFFLINE, "why": why})


def encode_command(cmd_id, name, args=None):
    return _pack({"v": VERSION, "i": cmd_id, "n": name, "a": args})


def encode_result(cmd_id, ok, value=None, error=None):
    env = {"v": VERSION, "i": cmd_id, "ok": bool(ok)}
    if ok:
        env["r"] = value
    else:
        env["e"] = str(error)[:MAX_TEXT]
    return _pack(env)


# ---------------------------------------------------------------- decoding

def envelope(payload):
    """The checks every decoder starts with: size, msgpack, a map, version 1.
    -> the envelope dict; ProtocolError otherwise."""
    _oversized(len(payload))
    try:
        env = mpack.unpackb(payload)
    except mpack.DecodeError as e:
        raise ProtocolError("malformed", "not msgpack: %s" % e)
    check_version(env)
    return env


def check_version(env):
    if not isinstance(env, dict):
        raise ProtocolError("malformed", "envelope is %s, not a map" % type(env).__name__)
    if env.get("v") != VERSION:
        raise ProtocolError("invalid", "protocol version %r, expected %d" % (env.get("v"), VERSION))


def decode_command(payload):
    """-> dict(id, name, args)."""
    env = envelope(payload)
    cid = env.get("i")
    if not valid_id(cid):
        raise ProtocolError("invalid", "command id %r is not 1-64 of [A-Za-z0-9_-]" % (cid,))
    name = env.get("n")
    if not valid_stream(name):
        raise ProtocolError("invalid", "command name %r is invalid" % (name,))
    return {"id": cid, "name": name, "args": env.get("a")}
