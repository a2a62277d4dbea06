# Device commands (docs/protocol.md, "Command and result"): ping, info, stats,
# set_interval, time, reboot. Imported by Device only when a command arrives, after
# the Device decoded it (and, on MicroPython, dropped the msgpack decoder).
#
# A repeated command id (QoS 1 redelivery) never executes twice: it gets the
# kept result again, or, for a result too large to keep (over _KEEP_MAX bytes),
# ok false saying so. The cache remembers the last `cmd_cache` ids.

import gc

from edgewire import __version__, wire


_KEEP_MAX = 128  # bytes: results up to this size are kept for repeated ids


class CommandError(Exception):
    pass


def handle(dev, cmd):
    """cmd: a decoded command (wire.decode_command) -> the result payload to publish.
    (One too large to receive goes to toobig.oversized instead.)"""
    cid = cmd["id"]
    for k, v in dev._cache:
        if k == cid:
            if v is None:
                return wire.encode_result(cid, False, error="command %s already executed; its result was "
                                          "too large to keep for a repeat" % cid)
            return v
    dev.stats["commands"] += 1
    try:
        res = wire.encode_result(cid, True, execute(dev, cmd["name"], cmd["args"]))
    except CommandError as e:
        res = wire.encode_result(cid, False, error=str(e))
    except ValueError as e:  # the result does not fit the protocol
        res = wire.encode_result(cid, False, error="result not sendable: %s" % (e,))
    except MemoryError:
        # The device keeps running: the caller gets a clear answer, not silence.
        res = None
        gc.collect()
        free = dev.board.free_memory()  # None where the board cannot tell
        res = wire.encode_result(cid, False, error="out of memory (%s bytes free)" % free)
    # Small results are kept to answer a repeat (QoS 1 redelivery) byte for
    # byte; a large one (stats) is not, so the cache stays within about
    # cmd_cache * 180 bytes of heap instead of cmd_cache * 500.
    dev._cache.append((cid, res if len(res) <= _KEEP_MAX else None))
    if len(dev._cache) > dev.cfg["cmd_cache"]:
        dev._cache.pop(0)
    return res


def execute(dev, name, args):
    b = dev.board
    if name == "ping":
        return "pong"
    if name == "info":
        return {"fw": __version__, "hw": b.name, "b": dev.boot, "c": dev.conn, "u": b.ticks_ms(),
                "mem": b.free_memory(), "streams": {s[0]: s[2] for s in dev.streams}}
    if name == "stats":
        return dev.stats  # itself, not a copy: encoding only reads it (RAM is tight)
    if name == "set_interval":
        if not isinstance(args, dict):
            raise CommandError("set_interval needs {\"stream\": name, \"ms\": interval}")
        ms = args.get("ms")
        lo = dev.cfg["min_interval_ms"]
        if isinstance(ms, bool) or not isinstance(ms, int) or not lo <= ms <= 86400000:
            raise CommandError("set_interval: ms %r is not an integer in %d..86400000" % (ms, lo))
        for s in dev.streams:
            if s[0] == args.get("stream"):
                s[2] = ms
                s[5] = b.ticks_ms() + ms
                return {"stream": s[0], "ms": ms}
        raise CommandError("set_interval: no stream %r (streams: %s)"
                           % (args.get("stream"), ", ".join(s[0] for s in dev.streams)))
    if name == "time":  # the gateway's wall time, sent after every birth
        ms = args.get("ms") if isinstance(args, dict) else None
        if isinstance(ms, bool) or not isinstance(ms, int) or ms < 1600000000000:
            raise CommandError("time needs {\"ms\": epoch milliseconds}")
        old = b.time_ms()
        if hasattr(b, "set_time_ms"):  # SimBoard keeps its host's (or its simulator's) time
            b.set_time_ms(ms)
        return None if old is None else ms - old  # how far off the clock was
    if name == "reboot":
        if not dev.cfg["allow_reboot"]:
            raise CommandError("reboot is disabled on this device (allow_reboot is false)")
        # Device resets once the result is acknowledged, or after timeout_ms at the latest.
        dev._reboot = b.ticks_ms() + dev.cfg["timeout_ms"]
        return "rebooting"
    raise CommandError("unknown command '%s'" % name)

