# A small msgpack codec that runs unchanged on MicroPython and CPython.
#
# It covers the msgpack types the Edgewire wire protocol uses: nil, bool,
# integers up to 64 bits, float (written as float64), str, bin, array and map.
# Extension types are rejected. Maps with string keys are written with their keys
# sorted (the canonical form docs/protocol.md specifies). Decoding is strict and bounded: every length is
# checked against the bytes that remain, nesting is limited, and anything wrong
# raises DecodeError (a ValueError), never IndexError or a hang.
#
# RAM: no tables, no recursion beyond MAX_DEPTH frames; encode builds one
# bytearray per call.

import struct

MAX_DEPTH = 8


class DecodeError(ValueError):
    pass


class EncodeError(ValueError):
    pass


def _enc(obj, out, depth):
    if depth > MAX_DEPTH:
        raise EncodeError("nesting deeper than %d" % MAX_DEPTH)
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _enc_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out.extend(struct.pack(">d", obj))
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        n = len(b)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out.append(0xD9)
            out.append(n)
        elif n < 0x10000:
            out.append(0xDA)
            out.extend(struct.pack(">H", n))
        else:
            out.append(0xDB)
            out.extend(struct.pack(">I", n))
        out.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        n = len(obj)
        if n < 0x100:
            out.append(0xC4)
            out.append(n)
        elif n < 0x10000:
            out.append(0xC5)
            out.extend(struct.pack(">H", n))
        else:
            out.append(0xC6)
            out.extend(struct.pack(">I", n))
        out.extend(obj)
    elif isinstance(obj, (list, tuple)):
        _enc_len(len(obj), 0x90, 0xDC, out)
        for item in obj:
            _enc(item, out, depth + 1)
    elif isinstance(obj, dict):
        # Canonical form: string keys in sorted order, so both interpreters
        # (MicroPython dicts keep no insertion order) write the same bytes.
        _enc_len(len(obj), 0x80, 0xDE, out)
        keys = list(obj)
        if all(isinstance(k, str) for k in keys):
            keys.sort()
        for k in keys:
            _enc(k, out, depth + 1)
            _enc(obj[k], out, depth + 1)
    else:
        raise EncodeError("cannot encode %s" % type(obj).__name__)


def _enc_len(n, fix, big, out):
    if n < 16:
        out.append(fix | n)
    elif n < 0x10000:
        out.append(big)
        out.extend(struct.pack(">H", n))
    else:
        out.append(big + 1)
        out.extend(struct.pack(">I", n))


def _enc_int(n, out):
    if 0 <= n < 0x80:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        if n < 0x100:
            out.append(0xCC)
            out.append(n)
        elif n < 0x10000:
            out.append(0xCD)
            out.extend(struct.pack(">H", n))
        elif n < 0x100000000:
            out.append(0xCE)
            out.extend(struct.pack(">I", n))
        elif n < 0x10000000000000000:
            out.append(0xCF)
            out.extend(struct.pack(">Q", n))
        else:
            raise EncodeError("integer %d does not fit 64 bits" % n)
    else:
        if n >= -0x80:
            out.append(0xD0)
            out.extend(struct.pack(">b", n))
        elif n >= -0x8000:
            out.append(0xD1)
            out.extend(struct.pack(">h", n))
        elif n >= -0x80000000:
            out.append(0xD2)
            out.extend(struct.pack(">i", n))
        elif n >= -0x8000000000000000:
            out.append(0xD3)
            out.extend(struct.pack(">q", n))
        else:
            raise EncodeError("integer %d does not fit 64 bits" % n)


def packb(obj):
    """Encode obj as msgpack bytes."""
    out = bytearray()
    _enc(obj, out, 0)
    return bytes(out)


# Fixed-size headers: first byte -> (struct format, size) for scalars.
_SCALARS = {
    0xCA: (">f", 4),
    0xCB: (">d", 8),
    0xCC: (">B", 1),
    0xCD: (">H", 2),
    0xCE: (">I", 4),
    0xCF: (">Q", 8),
    0xD0: (">b", 1),
    0xD1: (">h", 2),
    0xD2: (">i", 4),
    0xD3: (">q", 8),
}


class _Reader:
    def __init__(self, data):
        self.buf = data
        self.pos = 0

    def take(self, n):
        p = self.pos
        end = p + n
        if end > len(self.buf):
            raise DecodeError("truncated at byte %d (need %d more)" % (p, end - len(self.buf)))
        self.pos = end
        return self.buf[p:end]

    def byte(self):
        p = self.pos
        if p >= len(self.buf):
            raise DecodeError("truncated at byte %d" % p)
        self.pos = p + 1
        return self.buf[p]

    def length(self, size):
        fmt = ">B" if size == 1 else (">H" if size == 2 else ">I")
        return struct.unpack(fmt, self.take(size))[0]


def _dec(r, depth):
    if depth > MAX_DEPTH:
        raise DecodeError("nesting deeper than %d" % MAX_DEPTH)
    b = r.byte()
    if b < 0x80:
        return b
    if b >= 0xE0:
        return b - 0x100
    if 0x80 <= b <= 0x8F:
        return _dec_map(r, b & 0x0F, depth)
    if 0x90 <= b <= 0x9F:
        return _dec_array(r, b & 0x0F, depth)
    if 0xA0 <= b <= 0xBF:
        return _dec_str(r, b & 0x1F)
    if b == 0xC0:
        return None
    if b == 0xC2:
        return False
    if b == 0xC3:
        return True
    sc = _SCALARS.get(b)
    if sc is not None:
        return struct.unpack(sc[0], r.take(sc[1]))[0]
    if b == 0xD9:
        return _dec_str(r, r.length(1))
    if b == 0xDA:
        return _dec_str(r, r.length(2))
    if b == 0xDB:
        return _dec_str(r, r.length(4))
    if b in (0xC4, 0xC5, 0xC6):
        return bytes(r.take(r.length(1 << (b - 0xC4))))
    if b == 0xDC:
        return _dec_array(r, r.length(2), depth)
    if b == 0xDD:
        return _dec_array(r, r.length(4), depth)
    if b == 0xDE:
        return _dec_map(r, r.length(2), depth)
    if b == 0xDF:
        return _dec_map(r, r.length(4), depth)
    raise DecodeError("unsupported msgpack type 0x%02x at byte %d" % (b, r.pos - 1))


def _dec_str(r, n):
    raw = r.take(n)
    try:
        return str(raw, "utf-8")
    except Exception:
        raise DecodeError("invalid utf-8 in string at byte %d" % (r.pos - n))


def _dec_array(r, n, depth):
    # Each element takes at least one byte: a length beyond what remains is a lie.
    if n > len(r.buf) - r.pos:
        raise DecodeError("array of %d items in %d remaining bytes" % (n, len(r.buf) - r.pos))
    return [_dec(r, depth + 1) for _ in range(n)]


def _dec_map(r, n, depth):
    if 2 * n > len(r.buf) - r.pos:
        raise DecodeError("map of %d pairs in %d remaining bytes" % (n, len(r.buf) - r.pos))
    d = {}
    for _ in range(n):
        k = _dec(r, depth + 1)
        if isinstance(k, (list, dict)):
            raise DecodeError("unhashable map key")
        d[k] = _dec(r, depth + 1)
    return d


def unpackb(data):
    """Decode exactly one msgpack object from data; trailing bytes are an error."""
    r = _Reader(data)
    obj = _dec(r, 0)
    if r.pos != len(data):
        raise DecodeError("%d trailing bytes after object" % (len(data) - r.pos))
    return obj
