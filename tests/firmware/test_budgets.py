"""Size budget of the firmware as a board gets it (.mpy from mpy-cross -O3):
the core a board needs for MQTT telemetry stays within 24 KB; what loads only
at boot, on demand or when configured is listed apart (docs/firmware.md,
"Sizes"), and the core does not import it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import boardrun
from tests.support import micropython

pytestmark = pytest.mark.micropython

CORE_BUDGET = 24 * 1024
CORE = ["edgewire/__init__", "edgewire/mqtt", "edgewire/device", "edgewire/wire", "edgewire/mpack",
        "edgewire/boards/__init__", "edgewire/boards/mcu", "main"]
PORT_BOARD = {"esp32": "edgewire/boards/esp32", "rp2": "edgewire/boards/pico_w"}
# loaded at boot and dropped (config), on demand (commands and the msgpack decoder
# when a command arrives, toobig for an oversized one), or only when configured
# (ntp; the sensor drivers, when a stream's source names one)
APART = ["edgewire/config", "edgewire/commands", "edgewire/unpack", "edgewire/toobig", "edgewire/ntp", "edgewire/tls",
         "edgewire/drivers/__init__", "edgewire/drivers/bme280", "edgewire/drivers/dht22", "edgewire/drivers/ds18b20"]


def size(build: Path, mod: str) -> int:
    return (build / (mod + ".mpy")).stat().st_size


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_core_set_within_24k(firmware_build: Path, port: str) -> None:
    sizes = {m: size(firmware_build, m) for m in CORE + [PORT_BOARD[port]]}
    total = sum(sizes.values())
    print(f"{port}: core {total} B of .mpy: {sizes}; apart: "
          f"{ {m: size(firmware_build, m) for m in APART} }")
    assert total <= CORE_BUDGET, f"core set {total} B > {CORE_BUDGET} B: {sizes}"


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_core_does_not_load_what_is_kept_apart(firmware_build: Path, port: str) -> None:
    cls, mod = {"esp32": ("Esp32Board", "esp32"), "rp2": ("PicoWBoard", "pico_w")}[port]
    p = boardrun.run(port, f"""
import sys, json
import main
from edgewire.device import Device
from edgewire.boards.{mod} import {cls}
b = {cls}(storage_dir='/tmp')
print('R ' + json.dumps(sorted(m for m in sys.modules if m.startswith('edgewire') or m == 'main')))
""")
    loaded = boardrun.result(p)
    assert not [m for m in loaded if m.replace(".", "/") in APART], loaded
    assert micropython.MPY_CROSS_FLAGS == ["-O3"]  # the sizes above are what a board gets


def test_manifest_freezes_every_device_module_and_nothing_else() -> None:
    # firmware/manifest.py as MicroPython's tools/manifestfile.py reads it
    fw = Path(__file__).resolve().parents[2] / "firmware"
    frozen: list[str] = []
    calls = {
        "include": lambda path: None,
        "package": lambda name, files, opt=None: frozen.extend(f"{name}/{f}" for f in files),
        "module": lambda path, opt=None: frozen.append(path),
    }
    exec((fw / "manifest.py").read_text(), calls)
    want = {m + ".py" for m in CORE + APART + list(PORT_BOARD.values())}
    assert set(frozen) == want
    assert all((fw / f).exists() for f in frozen)
