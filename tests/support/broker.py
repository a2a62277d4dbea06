"""A private mosquitto per test: started on a free loopback port, so a test can
stop, kill, freeze (SIGSTOP) and restart it without touching anyone else's.

It runs with mosquitto's DEFAULT limits (max_inflight_messages 20,
max_queued_messages 1000), what a user's broker has: the gateway acknowledges
only after its journal commits, and these limits decide how that behaves. A
test that needs other limits passes them in `extra_conf` and says why."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def terminate(proc: "subprocess.Popen[Any]", timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Mosquitto:
    """One mosquitto process on 127.0.0.1:<port>, restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (make test does it as root)")
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()
            terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Die without a goodbye: no DISCONNECT, no will processing."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        # The port was ours a moment ago; mosquitto sets SO_REUSEADDR.
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
