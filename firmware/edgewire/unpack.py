# The msgpack decoder of edgewire.mpack (call it as mpack.unpackb, which
# imports this module on first use). Strict and bounded: every length is
# checked against the bytes that remain, nesting is limited to MAX_DEPTH, and
# anything wrong raises mpack.DecodeError (a ValueError), never IndexError or a
# hang. Extension types are refused. Runs on MicroPython and CPython.

import struct

from edgewire.mpack import MAX_DEPTH, DecodeError

# 0xCA..0xD3: float32, float64, uint8..uint64, int8..int64
_FMT = (">f", ">d", ">B", ">H", ">I", ">Q", ">b", ">h", ">i", ">q")
_SIZE = b"\x04\x08\x01\x02\x04\x08\x01\x02\x04\x08"


def unpackb(data):
    """Decode exactly one msgpack object from data; trailing bytes are an error."""
    r = [data, 0]  # the reader: bytes and position (a list: no class to load)
    obj = _dec(r, 0)
    if r[1] != len(data):
        raise DecodeError("%d trailing bytes after object" % (len(data) - r[1]))
    return obj


def _take(r, n):
    buf, p = r
    if p + n > len(buf):
        raise DecodeError("truncated at byte %d (need %d more)" % (p, p + n - len(buf)))
    r[1] = p + n
    return buf[p:p + n]


def _len(r, size):
    return struct.unpack(">B" if size == 1 else (">H" if size == 2 else ">I"), _take(r, size))[0]


def _dec(r, depth):
    if depth > MAX_DEPTH:
        raise DecodeError("nesting deeper than %d" % MAX_DEPTH)
    buf, p = r
    if p >= len(buf):
        raise DecodeError("truncated at byte %d" % p)
    r[1] = p + 1
    b = buf[p]
    if b < 0x80:
        return b
    if b >= 0xE0:
        return b - 0x100
    if b < 0x90:
        return _dec_map(r, b & 0x0F, depth)
    if b < 0xA0:
        return _dec_array(r, b & 0x0F, depth)
    if b < 0xC0:
        return _dec_str(r, b & 0x1F)
    if b == 0xC0:
        return None
    if b == 0xC2 or b == 0xC3:
        return b == 0xC3
    if 0xCA <= b <= 0xD3:
        return struct.unpack(_FMT[b - 0xCA], _take(r, _SIZE[b - 0xCA]))[0]
    if 0xD9 <= b <= 0xDB:
        return _dec_str(r, _len(r, 1 << (b - 0xD9)))
    if 0xC4 <= b <= 0xC6:
        return bytes(_take(r, _len(r, 1 << (b - 0xC4))))
    if b == 0xDC or b == 0xDD:
        return _dec_array(r, _len(r, 2 if b == 0xDC else 4), depth)
    if b == 0xDE or b == 0xDF:
        return _dec_map(r, _len(r, 2 if b == 0xDE else 4), depth)
    raise DecodeError("unsupported msgpack type 0x%02x at byte %d" % (b, p))


def _dec_str(r, n):
    raw = _take(r, n)
    try:
        return str(raw, "utf-8")
    except Exception:
        raise DecodeError("invalid utf-8 in string at byte %d" % (r[1] - n))


def _dec_array(r, n, depth):
    # Each element takes at least one byte: a length beyond what remains is a lie.
    if n > len(r[0]) - r[1]:
        raise DecodeError("array of %d items in %d remaining bytes" % (n, len(r[0]) - r[1]))
    return [_dec(r, depth + 1) for _ in range(n)]


def _dec_map(r, n, depth):
    if 2 * n > len(r[0]) - r[1]:
        raise DecodeError("map of %d pairs in %d remaining bytes" % (n, len(r[0]) - r[1]))
    d = {}
    for _ in range(n):
        k = _dec(r, depth + 1)
        if isinstance(k, (list, dict)):
            raise DecodeError("unhashable map key")
        d[k] = _dec(r, depth + 1)
    return d
