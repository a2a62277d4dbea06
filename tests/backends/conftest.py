"""Fixtures for backend tests: the real RabbitMQ at AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/), a pika consumer (a different client
library than the sink's aio-pika) on a queue bound to a per-test exchange,
and a fault-injecting TCP proxy between the gateway and RabbitMQ."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from edgewire.sim.proxy import ProxyProcess

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def amqp_address() -> tuple[str, int]:
    p = urlsplit(AMQP_URL)
    return p.hostname or "127.0.0.1", p.port or 5672


def via(port: int) -> str:
    """AMQP_URL pointed at a local port (the proxy), same credentials and vhost."""
    p = urlsplit(AMQP_URL)
    cred = p.netloc.rpartition("@")[0]
    return urlunsplit((p.scheme, (cred + "@" if cred else "") + f"127.0.0.1:{port}", p.path or "/", "", ""))


def require_rabbitmq() -> None:
    host, port = amqp_address()
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        pytest.fail(f"RabbitMQ is not reachable at {host}:{port} ({e}): these tests need a real RabbitMQ "
                    f"(apt-get install rabbitmq-server, or set AMQP_URL)")


class PikaQueue:
    """A queue bound to an exchange (declared here too, as the sink declares
    it), consumed by pika on its own thread: every message with its routing
    key, properties and body. Deleted (queue and exchange) at close."""

    def __init__(self, exchange: str, binding: str = "#") -> None:
        self.exchange = exchange
        self.queue = "q-" + exchange
        self.messages: list[tuple[str, Any, bytes]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._binding = binding
        self._thread = threading.Thread(target=self._run, name="pika-consumer", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"pika consumer did not start: {self._error}")
        if self._error is not None:
            raise RuntimeError(f"pika consumer failed: {self._error}")

    def _run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            ch = conn.channel()
            ch.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            ch.queue_declare(self.queue, durable=True)
            ch.queue_bind(self.queue, self.exchange, routing_key=self._binding)

            def got(ch: Any, method: Any, props: Any, body: bytes) -> None:
                with self.lock:
                    self.messages.append((method.routing_key, props, body))
                ch.basic_ack(method.delivery_tag)

            ch.basic_qos(prefetch_count=1000)
            ch.basic_consume(self.queue, got)
        except BaseException as e:  # reported by the constructor
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.2)
            ch.queue_delete(self.queue)
            ch.exchange_delete(self.exchange)
            conn.close()
        except BaseException as e:
            self._error = e

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def unique(self) -> dict[str, tuple[str, Any, bytes]]:
        """message_id -> the first message with that id."""
        out: dict[str, tuple[str, Any, bytes]] = {}
        with self.lock:
            for m in self.messages:
                out.setdefault(m[1].message_id, m)
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def exchange_name() -> str:
    require_rabbitmq()
    return "ew-test-" + uuid.uuid4().hex[:10]


@pytest.fixture
def pika_queue(exchange_name: str) -> Iterator[PikaQueue]:
    q = PikaQueue(exchange_name)
    try:
        yield q
    finally:
        q.close()


@pytest.fixture
def amqp_proxy() -> Iterator[ProxyProcess]:
    """The project's fault-injecting TCP proxy (edgewire.sim.proxy) in front of RabbitMQ."""
    require_rabbitmq()
    p = ProxyProcess(amqp_address())
    try:
        yield p
    finally:
        p.close()


# the gateway tests' paho publisher (hand-made protocol bytes), shared
from tests.gateway.conftest import publisher  # noqa: E402,F401


class DrainedDevice:
    """The firmware on the MicroPython unix port (tests/gateway/test_micropython_device.py's
    device), its output read on a thread as it comes: a pipe nobody reads fills up and
    then blocks the device in the middle of a print."""

    def __init__(self, tmp: Any, port: int) -> None:
        from tests.gateway.test_micropython_device import spawn_device

        self.proc = spawn_device(tmp, port)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="device-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "".join(self.lines)


class Backend:
    """`edgewire backend` as a user runs it: gRPC on 127.0.0.1:`port` (`port` given), and/or a
    RabbitMQ consumer (`amqp` given: exchange, queue); its output goes to a file beside the store."""

    def __init__(self, store: Path, port: int | None = None, *, amqp: tuple[str, str] | None = None,
                 tls: tuple[Path, ...] | None = None) -> None:
        self.store = store
        self.port = port
        self.amqp = amqp
        self.tls = tls
        self.out = store.with_suffix(f".{uuid.uuid4().hex[:6]}.out")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(Path(sys.executable).parent / "edgewire"), "backend", "--store", str(self.store)]
        ready = []
        if self.port is not None:
            cmd += ["--listen", f"127.0.0.1:{self.port}"]
            ready.append("listening on")
        if self.tls is not None:
            cmd += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]   # (cert, key[, client CA])
            if len(self.tls) > 2:
                cmd += ["--client-ca", str(self.tls[2])]
        if self.amqp is not None:
            cmd += ["--amqp", AMQP_URL, "--exchange", self.amqp[0], "--queue", self.amqp[1]]
            ready.append("consuming")
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not all(r in self.output() for r in ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"edgewire backend did not start: {self.output()[-2000:]}")
            time.sleep(0.02)

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        """SIGTERM; -> its output (the last line says what it stored)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()

    def rows(self) -> list[tuple[Any, ...]]:
        if not self.store.exists():
            return []
        db = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute("SELECT device, boot, seq, stream, value, site FROM readings").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def readings(self) -> set[tuple[str, int, int, str, Any]]:
        return {(d, bt, s, st, json.loads(v)) for d, bt, s, st, v, _ in self.rows()}


def delete_amqp(exchange: str, queues: list[str]) -> None:
    """Delete a test's queues and exchange (they are durable: they outlive the test otherwise)."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
        ch.exchange_delete(exchange)
    finally:
        conn.close()
