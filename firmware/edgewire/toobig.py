# The answer to a command larger than the device's max_packet (issue #6.1): the
# MQTT client read it past without keeping it and acknowledged it; the command
# is not executed. Loaded by the Device only when such a command arrives (not
# with the command code: it costs no RAM while ordinary commands run).

from edgewire import wire


def oversized(dev, size, head):
    """The error result for a command larger than max_packet, which the device read
    past without keeping it (counted in stats["oversized"]). Its id is taken from
    the payload's first bytes (where wire.encode_command puts it); when it is not
    there, the id is "unknown"."""
    dev.stats["oversized"] = dev.stats.get("oversized", 0) + 1
    dev._say("command of %d bytes exceeds max_packet: not executed" % size)
    cid = "unknown"
    i = head.find(b"\xa1i")  # msgpack key "i"
    if i >= 0 and i + 3 < len(head):
        n, j = head[i + 2] - 0xA0, i + 3
        if head[i + 2] == 0xD9:  # str8
            n, j = head[i + 3], i + 4
        try:
            s = head[j:j + n].decode()
            if 0 <= n < 32 or head[i + 2] == 0xD9:
                if len(s) == n and wire.valid_id(s):
                    cid = s
        except (UnicodeError, ValueError):
            pass
    return wire.encode_result(cid, False, error="command of %d bytes exceeds this device's max_packet of %d "
                              "bytes; not executed" % (size, dev.cfg["max_packet"]))
