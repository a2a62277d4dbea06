"""pytest fixtures for testing against a simulated fleet.

Installed with edgewire and registered through the `pytest11` entry point, so a
project that installed edgewire has these fixtures in its tests with no
configuration:

    def test_my_pipeline(fleet_factory, mosquitto_broker):
        fleet = fleet_factory(devices=20, rate=2, qos=1)   # started, all connected
        ...                                                # your service reads the broker
        report = fleet.finish()                            # stop, then the report
        report.assert_no_loss(qos=1)

Fixtures (each is torn down after the test):
  mosquitto_broker  a private mosquitto on a free loopback port (needs the
                    `mosquitto` binary; the test fails saying so when it is
                    missing, it never skips): .url, .port, .stop(), .start(),
                    .kill() (no goodbye), .restart()
  embedded_broker   the gateway's embedded amqtt broker (no install needed),
                    run by `edgewire gateway` in its own process: .url
  edgewire_gateway  `edgewire gateway` as its own process, reading
                    mosquitto_broker: .http_url, .mqtt_url, .stop()
  fleet_factory     fleet_factory(devices=10, rate=1.0, qos=1, broker=None,
                    wait_connected=30, **Fleet options) -> a started
                    edgewire.sim.Fleet on mosquitto_broker (or `broker`, a
                    URL); fleet.finish() stops it and returns its report

This module is the one part of the simulator that imports pytest; pytest loads
it, nothing else does (tests/test_layout.py knows).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO_HINT = ("mosquitto is not installed: apt-get install mosquitto (Debian, Ubuntu), "
                  "brew install mosquitto (macOS)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what or 'nothing'} listens on 127.0.0.1:{port} after {timeout:g} s")


def _end(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PrivateMosquitto:
    """mosquitto on 127.0.0.1:<free port>, with mosquitto's default limits."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            pytest.fail(MOSQUITTO_HINT)
        self.exe = exe
        self.port = _free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             + extra_conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "PrivateMosquitto":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait_port(self.port, 10.0, self.proc, "mosquitto")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _end(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Die without a goodbye (no DISCONNECTs, no wills)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


class GatewayProcess:
    """`edgewire gateway --config FILE` as its own process; mqtt_url None: the
    gateway starts its embedded broker on a free port."""

    def __init__(self, workdir: Path, mqtt_url: str | None) -> None:
        self.http_port = _free_port()
        self.broker_port = None if mqtt_url else _free_port()
        self.mqtt_url = mqtt_url or f"mqtt://127.0.0.1:{self.broker_port}"
        self.config = workdir / f"gateway-{self.http_port}.toml"
        lines = [f'[http]\nhost = "127.0.0.1"\nport = {self.http_port}\n']
        if mqtt_url:
            lines.append(f'[mqtt]\nurl = "{mqtt_url}"\n')
        else:
            lines.append(f'[embedded_broker]\nport = {self.broker_port}\nallow_fallback = false\n')
        self.config.write_text("\n".join(lines))
        self.log = workdir / f"gateway-{self.http_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return self.mqtt_url

    def start(self) -> "GatewayProcess":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgewire.app.cli", "gateway", "--config",
                                          str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_port(self.http_port, 60.0, self.proc, "edgewire gateway")
            if self.broker_port:
                _wait_port(self.broker_port, 60.0, self.proc, "the embedded broker")
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            pytest.fail(f"{e}; its log:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _end(self.proc)
        self.proc = None


@pytest.fixture
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMosquitto]:
    """A private mosquitto on a free loopback port (.url, .stop(), .kill(), .restart())."""
    b = PrivateMosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway's embedded amqtt broker, run by `edgewire gateway` (.url)."""
    g = GatewayProcess(tmp_path_factory.mktemp("embedded"), None).start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def edgewire_gateway(mosquitto_broker: PrivateMosquitto,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`edgewire gateway` in its own process on mosquitto_broker (.http_url, .mqtt_url)."""
    g = GatewayProcess(tmp_path_factory.mktemp("gateway"), mosquitto_broker.url).start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def fleet_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """fleet_factory(devices=10, rate=1.0, qos=1, broker=None, **Fleet options): a started
    Fleet on mosquitto_broker (or the `broker` URL); fleet.finish() -> its report."""
    from edgewire.sim.fleet import Fleet

    fleets: list[Any] = []

    def make(devices: int = 10, rate: float = 1.0, qos: int = 1, broker: str | None = None,
             wait_connected: float | None = 30.0, **options: Any) -> Any:
        url = broker or request.getfixturevalue("mosquitto_broker").url
        fleet = Fleet(url, devices=devices, rate=rate, qos=qos, **options)
        fleets.append(fleet)
        fleet.start(wait_connected=wait_connected, wait_observer=True)
        return fleet

    yield make
    for f in fleets:
        f.stop()
