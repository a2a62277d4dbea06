"""Golden byte vectors pin the wire protocol on both interpreters and against the
reference msgpack package."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edgewire import mpack, wire
from tests.firmware.test_device_wire import canonical
from tests.support import micropython

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "wire_v1.json").read_text())


@pytest.mark.parametrize("vec", VECTORS["values"], ids=lambda v: v["name"])
def test_value_vectors_cpython(vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["hex"])
    assert mpack.packb(vec["obj"]) == raw
    assert mpack.unpackb(raw) == vec["obj"]
    assert msgpack.unpackb(mpack.packb(vec["obj"]), raw=False) == vec["obj"]


@pytest.mark.parametrize("vec", VECTORS["envelopes"], ids=lambda v: v["name"])
def test_envelope_vectors_cpython(vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["hex"])
    fn = getattr(wire, vec["call"]["fn"])
    assert fn(*vec["call"]["args"]) == raw
    assert msgpack.unpackb(raw, raw=False) == vec["obj"]


@pytest.mark.parametrize("vec", VECTORS["values"] + VECTORS["envelopes"], ids=lambda v: v["name"])
def test_reference_encoder_reproduces_the_vector_bytes(vec: dict[str, Any]) -> None:
    """The vectors are the spec's canonical bytes, not just bytes our codec
    happens to make: the reference msgpack package, given the key-sorted
    object, writes exactly them (and decodes them back to it)."""
    raw = bytes.fromhex(vec["hex"])
    assert canonical(vec["obj"]) == raw  # key-sorted, then msgpack.packb
    assert msgpack.unpackb(raw, raw=False) == vec["obj"]


CHECK_ON_MICROPYTHON = r"""
import json
from edgewire import mpack, wire, wire_rx
vec = json.loads(open(%r).read())
bad = []
n = 0
for v in vec["values"]:
    raw = bytes.fromhex(v["hex"])
    n += 1
    if mpack.packb(v["obj"]) != raw:
        bad.append("pack " + v["name"])
    if mpack.unpackb(raw) != v["obj"]:
        bad.append("unpack " + v["name"])
for v in vec["envelopes"]:
    n += 1
    raw = bytes.fromhex(v["hex"])
    if getattr(wire, v["call"]["fn"])(*v["call"]["args"]) != raw:
        bad.append("encode " + v["name"])
    if mpack.unpackb(raw) != v["obj"]:
        bad.append("decode " + v["name"])
t = wire_rx.decode_telemetry(bytes.fromhex(vec["envelopes"][0]["hex"]), "dev-01")
if t["seq"] != 42 or t["readings"][0] != ("temperature", 21.5, 60950, None):
    bad.append("decode_telemetry")
print("checked", n, "bad", bad)
"""


@pytest.mark.micropython
def test_vectors_on_micropython(firmware_build: Path) -> None:
    path = str(Path(__file__).parents[1] / "vectors" / "wire_v1.json")
    # In a device's heap, the 7 KB JSON file and the receiver side included.
    proc = micropython.run_script(CHECK_ON_MICROPYTHON % path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(VECTORS["values"]) + len(VECTORS["envelopes"])
    assert proc.stdout.strip() == f"checked {n} bad []", proc.stdout + proc.stderr


@pytest.mark.micropython
def test_firmware_modules_are_precompiled(firmware_build: Path) -> None:
    assert (firmware_build / "edgewire" / "wire.mpy").exists()
    assert not list(firmware_build.rglob("*.py"))
