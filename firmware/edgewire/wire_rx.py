# Edgewire wire protocol v1: the receiver side.
#
# Validation of what devices send (telemetry, status, results) and topic
# parsing and filters, for the simulator, the gateway and the tests. Together
# with edgewire.wire (limits, encoders, decode_command) it is the one
# implementation of docs/protocol.md; it runs on MicroPython and CPython, does
# no I/O, and raises wire.ProtocolError for anything it refuses. Devices never
# import it: it would cost them ~6 KB of heap for code they never call
# (docs/decisions.md, D7).

from edgewire.wire import (KINDS, MAX_ID, MAX_READINGS, MAX_STREAM, MAX_TEXT, MAX_U32, OFFLINE, ONLINE,
                           ROOT, VERSION, ProtocolError, check_version, envelope, valid_id, valid_stream)

# ---------------------------------------------------------------- topics


def parse_topic(t):
    """'edgewire/v1/<device>/<kind>' -> (device, kind), else ProtocolError('topic')."""
    parts = t.split("/")
    if len(parts) != 4 or parts[0] + "/" + parts[1] != ROOT:
        raise ProtocolError("topic", "topic %r is not %s/<device>/<kind>" % (t[:120], ROOT))
    if not valid_id(parts[2]):
        raise ProtocolError("topic", "topic %r has an invalid device id" % t[:120])
    if parts[3] not in KINDS:
        raise ProtocolError("topic", "topic %r has unknown kind %r" % (t[:120], parts[3][:32]))
    return parts[2], parts[3]


def topic_matches(flt, name):
    """MQTT-style filter match: '+' one level, '#' the rest (also zero levels)."""
    fp = flt.split("/")
    np = name.split("/")
    for i, f in enumerate(fp):
        if f == "#":
            return True
        if i >= len(np):
            return False
        if f != "+" and f != np[i]:
            return False
    return len(fp) == len(np)


def valid_filter(flt):
    if not isinstance(flt, str) or not 0 < len(flt) <= 2 * MAX_STREAM + 2:
        return False
    parts = flt.split("/")
    for i, p in enumerate(parts):
        if p == "#":
            if i != len(parts) - 1:
                return False
        elif p != "+" and (not p or "+" in p or "#" in p):
            return False
    return True


# ---------------------------------------------------------------- decoding

def _u32(env, key, what):
    x = env.get(key)
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_U32:
        raise ProtocolError("invalid", "%s (%r) %r is not an integer 0..%d" % (what, key, x, MAX_U32))
    return x


def _uint(env, key, what):
    x = env.get(key)
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ProtocolError("invalid", "%s (%r) %r is not a non-negative integer" % (what, key, x))
    return x


def _device(env, device_id, id_ok=valid_id):
    d = env.get("d")
    if not id_ok(d):
        raise ProtocolError("invalid", "device id %r is not 1-64 of [A-Za-z0-9_-]" % (d,))
    if device_id is not None and d != device_id:
        raise ProtocolError("mismatch", "payload device id %r does not match topic device %r" % (d, device_id))
    return d


def _value_ok(v):
    if v is None or v is True or v is False:
        return True
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and len(v) <= MAX_TEXT


def decode_telemetry(payload, device_id=None):
    """-> dict(device, boot, seq, uptime, time, readings=[(stream, value, uptime, error)])."""
    return decode_telemetry_env(envelope(payload), device_id)


def decode_telemetry_env(env, device_id=None, stream_ok=valid_stream, id_ok=valid_id):
    """decode_telemetry for an envelope some other msgpack decoder already
    unpacked: the same rules, version included. Whatever it accepts,
    decode_telemetry accepts too; on a refusal, run decode_telemetry on the
    bytes for the canonical error kind."""
    d, boot, seq, up, t, out = telemetry_fields(env, device_id, stream_ok, id_ok)
    return {"device": d, "boot": boot, "seq": seq, "uptime": up, "time": t, "readings": out}


def telemetry_fields(env, device_id=None, stream_ok=valid_stream, id_ok=valid_id):
    """decode_telemetry_env's checks, its result as the tuple (device, boot,
    seq, uptime, time, readings): what the gateway's C fast path takes, with
    no dict to build and read back. With `device_id` (which the payload's
    must equal) the device is that very string. `stream_ok` and `id_ok` may
    be memoized valid_stream and valid_id (the gateway caches them).

    This is the gateway's per-message hot path: each field is first checked
    by exact type (what a msgpack decoder produces), and only what that quick
    test does not pass goes to the general check (_u32, _uint, check_version,
    _value_ok), which accepts or raises the canonical error. So the rules and
    the order of the checks are those of the general checks alone."""
    if type(env) is not dict or env.get("v") != VERSION:
        check_version(env)
    get = env.get
    d = get("d")
    if not id_ok(d):
        raise ProtocolError("invalid", "device id %r is not 1-64 of [A-Za-z0-9_-]" % (d,))
    if device_id is not None and d != device_id:
        raise ProtocolError("mismatch", "payload device id %r does not match topic device %r" % (d, device_id))
    boot = get("b")
    if type(boot) is not int or not 0 <= boot <= MAX_U32:
        boot = _u32(env, "b", "boot id")
    seq = get("s")
    if type(seq) is not int or not 0 <= seq <= MAX_U32:
        seq = _u32(env, "s", "sequence")
    up = get("u")
    if type(up) is not int or up < 0:
        up = _uint(env, "u", "uptime")
    t = get("t")
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
        raise ProtocolError("invalid", "device time 't' %r is not epoch milliseconds" % (t,))
    rs = get("r")
    if not isinstance(rs, list) or not 0 < len(rs) <= MAX_READINGS:
        raise ProtocolError("invalid", "readings 'r' must be a list of 1-%d readings" % MAX_READINGS)
    out = []
    i = 0
    for r in rs:
        if type(r) is not list:
            if not isinstance(r, list):
                raise ProtocolError("invalid", "reading %d is not [stream, value, uptime(, error)]" % i)
        n = len(r)
        if n != 3 and n != 4:
            raise ProtocolError("invalid", "reading %d is not [stream, value, uptime(, error)]" % i)
        name, value, rup = r[0], r[1], r[2]
        if not stream_ok(name):
            raise ProtocolError("invalid", "reading %d stream name %r is invalid" % (i, name))
        tv = type(value)
        if not (tv is float or tv is int or value is None or tv is bool or (tv is str and len(value) <= MAX_TEXT)):
            if not _value_ok(value):
                raise ProtocolError("invalid", "reading %d (%s) value %r is not a number, bool or short string" % (i, name, value))
        if type(rup) is not int or rup < 0:
            if not isinstance(rup, int) or isinstance(rup, bool) or rup < 0:
                raise ProtocolError("invalid", "reading %d (%s) uptime %r is invalid" % (i, name, rup))
        err = None
        if n == 4:
            err = r[3]
            if value is not None or not isinstance(err, str):
                raise ProtocolError("invalid", "reading %d (%s): an error reading is [stream, nil, uptime, text]" % (i, name))
            err = err[:MAX_TEXT]
        out.append((name, value, rup, err))
        i += 1
    return (d if device_id is None else device_id, boot, seq, up, t, out)


def decode_status(payload, device_id=None):
    """-> dict(device, boot, conn, online, uptime, fw, hw, streams, why)."""
    env = envelope(payload)
    d = _device(env, device_id)
    boot = _u32(env, "b", "boot id")
    conn = _u32(env, "c", "connection number")
    st = env.get("st")
    if st not in (ONLINE, OFFLINE):
        raise ProtocolError("invalid", "status 'st' %r is neither %r nor %r" % (st, ONLINE, OFFLINE))
    out = {"device": d, "boot": boot, "conn": conn, "online": st == ONLINE,
           "uptime": None, "fw": None, "hw": None, "streams": {}, "why": None}
    if st == ONLINE:
        out["uptime"] = _uint(env, "u", "uptime")
        for k in ("fw", "hw"):
            v = env.get(k)
            if v is not None and not (isinstance(v, str) and len(v) <= MAX_ID):
                raise ProtocolError("invalid", "%r %r is not a short string" % (k, v))
            out[k] = v
        m = env.get("m", {})
        if not isinstance(m, dict):
            raise ProtocolError("invalid", "stream metadata 'm' is not a map")
        for name, meta in m.items():
            if not valid_stream(name) or not isinstance(meta, dict):
                raise ProtocolError("invalid", "stream metadata for %r is invalid" % (name,))
        out["streams"] = m
    else:
        why = env.get("why")
        out["why"] = why[:MAX_TEXT] if isinstance(why, str) else None
    return out


def decode_result(payload):
    """-> dict(id, ok, value, error)."""
    env = envelope(payload)
    cid = env.get("i")
    if not valid_id(cid):
        raise ProtocolError("invalid", "result command id %r is invalid" % (cid,))
    ok = env.get("ok")
    if ok is not True and ok is not False:
        raise ProtocolError("invalid", "result 'ok' %r is not a bool" % (ok,))
    err = env.get("e")
    if not ok and not isinstance(err, str):
        raise ProtocolError("invalid", "a failed result needs an error text 'e'")
    return {"id": cid, "ok": ok, "value": env.get("r") if ok else None, "error": None if ok else err}
