# A small msgpack codec that runs unchanged on MicroPython and CPython.
#
# It covers the msgpack types the Edgewire wire protocol uses: nil, bool,
# integers up to 64 bits, float (written as float64), str, bin, array and map.
# Extension types are rejected. Maps with string keys are written with their keys
# sorted (the canonical form docs/protocol.md specifies). Decoding is strict and bounded: every length is
# checked against the bytes that remain, nesting is limited, and anything wrong
# raises DecodeError (a ValueError), never IndexError or a hang.
#
# Decoding lives in edgewire.unpack, imported by unpackb() on first use: a
# device decodes only the rare command, so it loads the decoder then and drops
# it again (~3 KB of heap; docs/firmware.md, "RAM budget").
#
# RAM: no tables, no recursion beyond MAX_DEPTH frames; encode builds one
# bytearray per call.

import struct

import sys

_MP = sys.implementation.name == "micropython"

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_DEPTH = const(8)


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
    """Encode obj as msgpack: bytes on CPython; on MicroPython the bytearray
    it was built in (no second copy of every message on a small heap)."""
    out = bytearray()
    _enc(obj, out, 0)
    return out if _MP else bytes(out)


def unpackb(data):
    """Decode exactly one msgpack object from data; trailing bytes are an error
    (DecodeError). The decoder module is imported on the first call."""
    from edgewire import unpack
    return unpack.unpackb(data)
