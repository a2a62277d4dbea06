"""Runs firmware on the MicroPython unix port with one port's fakes first on
the module search path (tests/firmware/ports/<port> and ports/common), so the
real board code (McuBoard, Esp32Board, PicoWBoard, main.py) imports the fake
`machine`, `network`, `time`, `socket`... and fails on a call its port lacks."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support import micropython

PORTS = Path(__file__).resolve().parent / "ports"
# The fakes are compiled like the firmware; their bytecode still takes heap on
# the unix port, so tests on the fakes run with more than a device's budget
# (the budgets themselves are measured in test_heap.py and test_budgets.py).
HEAP = "128K"
_built: list[Path] = []


def build_fakes() -> Path:
    """Compile tests/firmware/ports/** to .mpy under the firmware build dir (once per session)."""
    out = micropython.BUILD / "ports"
    if _built and out.exists():
        return out
    for src in sorted(PORTS.rglob("*.py")):
        dst = (out / src.relative_to(PORTS)).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([micropython._tool("mpy-cross"), "-o", str(dst), "-s", src.name, str(src)],
                       check=True, capture_output=True, text=True)
    _built.append(out)
    return out


def prelude(port: str) -> str:
    out = build_fakes()
    return ("import sys\n"
            f"sys.path[:0] = [{str(out / port)!r}, {str(out / 'common')!r}]\n"
            "import fakehw\n")


def run(port: str, code: str, *, heap: str = HEAP, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` after the port's prelude; the compiled firmware is importable."""
    return micropython.run_script(prelude(port) + code, heap=heap, timeout=timeout)


def spawn(port: str, code: str, *, heap: str = HEAP) -> subprocess.Popen[str]:
    return micropython.spawn(prelude(port) + code, heap=heap)


def results(out: str) -> list[Any]:
    """Lines 'R <json>' the snippet printed, decoded, in order."""
    return [json.loads(line[2:]) for line in out.splitlines() if line.startswith("R ")]


def result(p: subprocess.CompletedProcess[str]) -> Any:
    r = results(p.stdout)
    assert r, f"no result; rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return r[-1]
