"""The embedded MQTT broker: amqtt in a process of its own, for when no broker
is configured.

Why: `edgewire demo`, `edgewire sim` without `--broker` and a gateway with no
`[mqtt] url` must work on a machine with nothing installed. A real deployment
uses mosquitto (or a clustered broker); the embedded one is for one site's
handful of devices, demos and tests (docs/gateway.md, "When to switch to
mosquitto", has its measured limit). It speaks MQTT 3.1.1 with QoS 0/1/2,
retained messages and last wills.

Why a process: amqtt is pure Python. On the gateway's event loop it competed
with the gateway for one core and one loop; in its own process it gets a core
of its own, and a slow broker cannot stall the HTTP API.

    broker = await start_embedded_broker(port=1883)      # from async code
    print(broker.url)                                     # mqtt://127.0.0.1:1883
    await broker.aclose()

    with EmbeddedBroker(port=0) as broker:                # from synchronous code; any free port
        print(broker.url)

The child is `python -m edgewire.gateway.embedded_broker`. It reports the port
it bound on its stdout, then runs until its stdin closes: `stop()` closes it,
and so does the parent's death, however it dies, so no broker is left behind.
It ignores SIGINT (Ctrl-C reaches the whole process group; the parent decides
when the broker may go, after its own clients have said goodbye).

Port 1883 is often taken (a system mosquitto listens there on most dev
machines). With `allow_fallback=True` (the default) the broker then uses a free
port, a warning names the taken port and the one used instead, and
`fell_back` is set; with `allow_fallback=False` start raises `PortInUseError`.
`port=0` asks for any free port and is not a fallback.

Three fixes to amqtt 0.12 live here (class `_Broker`, `_Handler`):
- delivery QoS is min(publish QoS, subscription QoS), as MQTT 3.1.1 (3.3.5)
  requires; amqtt delivered every message at the subscription's QoS, so a
  gateway subscribed at QoS 2 paid a four-packet handshake for each QoS 0
  reading;
- what a client published before it disconnected is delivered: amqtt cancelled
  the handling of every packet not yet processed when the connection ended
  (a publisher that wrote 5,000 QoS 0 messages and disconnected got 3 through),
  and took a DISCONNECT not yet processed for an abrupt close (sending the will);
- a client gets the retained messages of its own subscriptions only.

TLS (`tls`, [embedded_broker] cert_file/key_file): a second listener,
amqtt's own (asyncio's server side of the standard ssl module), with the
site's server certificate from `edgewire certs init`; devices and the
gateway's own client (`endpoint()`) reach the broker over it and verify it
against the site's CA (docs/mqtt-security.md, "The embedded broker").

Accounts and ACL (`auth_dir`, [mqtt_auth] dir): the broker then takes only
the accounts of the generated password file and applies the device/gateway
rules mosquitto gets from the generated ACL (gateway/embedded_auth.py,
gateway/provision.py); `reload()` (the gateway's SIGHUP) makes it read the
password file again and disconnect clients whose account is gone.
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import errno
import json
import logging
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "MEASURED_LIMIT",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "IngestWatch",
    "PortInUseError",
    "TlsListener",
    "start_embedded_broker",
]

log = logging.getLogger("edgewire.embedded_broker")

# amqtt logs every connection and packet at INFO; keep only its warnings.
_NOISY_LOGGERS = ("amqtt", "transitions")
_FALLBACK_ATTEMPTS = 5
_DRAIN_LIMIT = 30.0  # seconds a disconnecting client's already-read messages may take to go through

# Messages per second the embedded broker keeps up with (95% or more of an
# offered rate relayed to one subscriber): the lowest of its QoS 0/1/2 figures
# (QoS 2), measured with scripts/embedded_broker_limit.py (docs/gateway.md,
# "When to switch to mosquitto"). [embedded_broker] warn_rate defaults to 70% of it.
MEASURED_LIMIT = 1000


@dataclass(frozen=True)
class TlsListener:
    """The embedded broker's TLS listener: where, and the server's PEM
    certificate and key (`edgewire certs init`: server.pem, server.key)."""

    host: str
    port: int
    certfile: str
    keyfile: str

    @classmethod
    def of(cls, eb: Any) -> TlsListener | None:
        """From [embedded_broker]; None without cert_file."""
        if not eb.cert_file:
            return None
        return cls(eb.tls_host or eb.host, eb.tls_port, eb.cert_file, eb.key_file)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start or stop."""


class PortInUseError(EmbeddedBrokerError, OSError):
    """The requested port is taken and falling back to another was not allowed."""


def _check_args(host: object, port: object) -> tuple[str, int]:
    if not isinstance(host, str) or not host:
        raise EmbeddedBrokerError(f"host {host!r} is not a host name or address (expected e.g. '127.0.0.1')")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise EmbeddedBrokerError(f"port {port!r} is not an integer 0..65535 (0 picks a free port)")
    return host, port


def _url(host: str, port: int) -> str:
    return f"mqtt://{f'[{host}]' if ':' in host else host}:{port}"


def _in_use_message(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use (another MQTT broker, e.g. a system mosquitto?); "
            f"stop it, choose another port, or point Edgewire at that broker")


# ---------------------------------------------------------------- the parent side

class EmbeddedBroker:
    """The embedded broker as a child process. Nothing runs until `start()`
    (or `with`); `stop()` ends it. `start_embedded_broker()` is the async way in."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 1883, allow_fallback: bool = True,
                 start_timeout: float = 30.0, auth_dir: str = "", gateway_user: str = "",
                 tls: TlsListener | None = None) -> None:
        self.host, self.requested_port = _check_args(host, port)
        if tls is not None:
            _check_args(tls.host, tls.port)
        self.tls = tls
        self.tls_port = 0
        self.auth_dir = auth_dir
        self.gateway_user = gateway_user
        self.allow_fallback = allow_fallback
        self.start_timeout = start_timeout
        self.port = 0
        self.fell_back = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise EmbeddedBrokerError("embedded broker is not running; call start() first")
        return _url(self.host, self.port)

    @property
    def tls_url(self) -> str:
        """mqtts://host:port of the TLS listener ("" without one)."""
        if not self.tls_port or self.tls is None:
            return ""
        return "mqtts" + _url(self.tls.host, self.tls_port)[4:]

    def endpoint(self, ca_file: str = "") -> tuple[str, int, str, ssl.SSLContext | None]:
        """Where the gateway's own client connects: (host, port, url, TLS
        context). With a TLS listener: over TLS, verified against `ca_file`,
        to a loopback address when the listener binds every address."""
        if not self.tls_url or self.tls is None:
            return self.host, self.port, self.url, None
        from edgewire.gateway.certs import tls_client_context

        host = self.tls.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        url = "mqtts" + _url(host, self.tls_port)[4:]
        return host, self.tls_port, url, tls_client_context("embedded_broker", ca_file)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the child; return once it accepts connections."""
        if self._proc is not None:
            raise EmbeddedBrokerError("embedded broker already started")
        cmd = [sys.executable, "-m", "edgewire.gateway.embedded_broker", "--host", self.host,
               "--port", str(self.requested_port)]
        if not self.allow_fallback:
            cmd.append("--no-fallback")
        if self.auth_dir:
            cmd += ["--auth-dir", self.auth_dir, "--gateway-user", self.gateway_user]
        if self.tls is not None:
            cmd += ["--tls-host", self.tls.host, "--tls-port", str(self.tls.port), "--certfile", self.tls.certfile,
                    "--keyfile", self.tls.keyfile]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as e:
            raise EmbeddedBrokerError(f"cannot start the embedded broker ({' '.join(cmd)}): {e}") from e
        self._proc = proc
        try:
            report = self._read_report(proc)
        except BaseException:
            self._kill()
            raise
        if "error" in report:
            self._kill()
            if report.get("in_use"):
                raise PortInUseError(errno.EADDRINUSE, str(report["error"]))
            raise EmbeddedBrokerError(str(report["error"]))
        self.port = int(report["port"])
        self.fell_back = bool(report["fell_back"])
        self.tls_port = int(report.get("tls_port", 0))
        if self.tls is not None and report.get("tls_fell_back"):
            log.warning("port %d on %s is already in use; the embedded MQTT broker's TLS listener is on port %d "
                        "instead (devices configured for %d will not reach it)", self.tls.port, self.tls.host,
                        self.tls_port, self.tls.port)
        if self.tls_url:
            log.info("embedded MQTT broker: TLS listener on %s", self.tls_url)
        if self.fell_back:
            log.warning("port %d on %s is already in use (another MQTT broker, e.g. a system mosquitto?); "
                        "the embedded MQTT broker listens on port %d instead", self.requested_port, self.host,
                        self.port)
        else:
            log.info("embedded MQTT broker listening on %s (process %d)", self.url, proc.pid)
        return self

    def _read_report(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """The child's one JSON line, within start_timeout."""
        assert proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EmbeddedBrokerError(f"embedded broker did not start within {self.start_timeout:g} s")
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    code = proc.wait()
                    raise EmbeddedBrokerError(f"embedded broker exited with status {code} before it started "
                                              "(its error is above, on stderr)")
                buf += chunk
        try:
            report = json.loads(buf.split(b"\n", 1)[0])
        except ValueError as e:
            raise EmbeddedBrokerError(f"embedded broker said {buf[:200]!r} instead of its port") from e
        if not isinstance(report, dict):
            raise EmbeddedBrokerError(f"embedded broker said {buf[:200]!r} instead of its port")
        return report

    def reload(self) -> None:
        """Make the broker read its password file again (SIGHUP to the child);
        clients whose account is gone are disconnected."""
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to end (its stdin closes), wait for it, kill it if it
        will not go. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            assert proc.stdin is not None
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded MQTT broker (process %d) did not stop within %g s; killing it",
                            proc.pid, timeout)
                self._kill()
        else:
            log.warning("embedded MQTT broker (process %d) had already exited with status %s",
                        proc.pid, proc.returncode)
        self._close_pipes(proc)
        self._proc = None
        log.info("embedded MQTT broker on %s stopped", _url(self.host, self.port))

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_pipes(proc)
        self._proc = None

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    async def aclose(self) -> None:
        """`stop()` from async code, without blocking the loop."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EmbeddedBroker:
        return self if self.running else self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        return self if self.running else await asyncio.to_thread(self.start)

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = f"running as process {self.pid}" if self.running else "stopped"
        fb = f", fell back from {self.requested_port}" if self.fell_back else ""
        where = _url(self.host, self.port) if self.port else f"{self.host}:{self.requested_port}"
        return f"<EmbeddedBroker {where} {state}{fb}>"


async def start_embedded_broker(*, host: str = "127.0.0.1", port: int = 1883, allow_fallback: bool = True,
                                start_timeout: float = 30.0, auth_dir: str = "",
                                gateway_user: str = "", tls: TlsListener | None = None) -> EmbeddedBroker:
    """Start the embedded broker's process and return once it accepts
    connections, without blocking the running loop. `await broker.aclose()` ends it."""
    broker = EmbeddedBroker(host=host, port=port, allow_fallback=allow_fallback, start_timeout=start_timeout,
                            auth_dir=auth_dir, gateway_user=gateway_user, tls=tls)
    return await asyncio.to_thread(broker.start)


class IngestWatch:
    """Warns when the gateway's MQTT ingest nears what the embedded broker can
    relay. Every `interval` s, `sample(count)` takes the count of messages
    received so far; a rate at or above `threshold` msg/s logs one warning,
    then at most one per `repeat` s while it lasts. `threshold` 0: never."""

    def __init__(self, *, threshold: float, limit: float = MEASURED_LIMIT, interval: float = 10.0,
                 repeat: float = 600.0) -> None:
        self.threshold = threshold
        self.limit = limit
        self.interval = interval
        self.repeat = repeat
        self.rate = 0.0
        self.warnings = 0
        self._last: tuple[float, int] | None = None
        self._warned_at: float | None = None

    def sample(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        last, self._last = self._last, (now, count)
        if last is None or now <= last[0]:
            return
        self.rate = max(0, count - last[1]) / (now - last[0])
        if not self.threshold or self.rate < self.threshold:
            return
        if self._warned_at is not None and now - self._warned_at < self.repeat:
            return
        self._warned_at = now
        self.warnings += 1
        log.warning("MQTT ingest is %.0f msg/s, near the embedded broker's limit (about %d msg/s measured on a "
                    "2-core x86 machine; less on a Pi). Above it readings wait and QoS 0 ones may be lost: run "
                    "mosquitto and set [mqtt] url (docs/gateway.md, \"When to switch to mosquitto\"). Next "
                    "reminder in %.0f min at the earliest.", self.rate, self.limit, self.repeat / 60)

    async def run(self, count: Callable[[], int]) -> None:
        """Sample `count()` every `interval` s until cancelled."""
        while True:
            self.sample(count())
            await asyncio.sleep(self.interval)


# ---------------------------------------------------------------- the child side

def _port_free(host: str, port: int) -> bool:
    """True if (host, port) can be bound the way asyncio.start_server binds it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise EmbeddedBrokerError(f"host {host!r} does not resolve: {e}") from e
    for family, type_, proto, _, addr in infos:
        with socket.socket(family, type_, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise EmbeddedBrokerError(f"cannot bind {host}:{port}: {e}") from e
    return True


def _free_port(host: str) -> int:
    infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    with socket.socket(family, type_, proto) as s:
        s.bind(addr)
        return int(s.getsockname()[1])


def _addr_in_use(exc: BaseException) -> bool:
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EACCES):
            return True
        e = e.__cause__ or e.__context__
    return False


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _config(host: str, port: int, auth: bool = False, tls: TlsListener | None = None) -> dict[str, Any]:
    if auth:  # the generated accounts and the device/gateway ACL
        from edgewire.gateway.embedded_auth import plugins_config

        plugins = plugins_config()
    else:  # only anonymous auth: no $SYS publisher, no per-packet logger plugins
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": _bind(host, port), "max_connections": 0}}
    if tls is not None:  # amqtt's listener keys (amqtt.contexts.ListenerConfig): ssl, certfile, keyfile
        listeners["tls"] = {"type": "tcp", "bind": _bind(tls.host, tls.port), "max_connections": 0, "ssl": True,
                            "certfile": tls.certfile, "keyfile": tls.keyfile}
    return {"listeners": listeners, "plugins": plugins}


class _NoCallerFilter(logging.Filter):
    """amqtt logs an ERROR when a TCP connection closes before CONNECT (a port
    probe, a health check). That is not an error of the broker: drop it."""

    PREFIXES = ("No data from", "Failed to initialize client session")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith(self.PREFIXES)


def _quiet_amqtt() -> None:
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)
    logging.getLogger("amqtt.broker").addFilter(_NoCallerFilter())


def _amqtt_classes() -> tuple[type, type]:
    """amqtt's Broker and handler with our fixes; built on first use, in the child."""
    from amqtt.broker import Broker
    from amqtt.mqtt.constants import QOS_0
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.session import IncomingApplicationMessage

    # The QoS of the PUBLISH being handled, for the broadcast it causes. amqtt
    # handles each client in its own task, so a context variable follows it.
    publish_qos: contextvars.ContextVar[int | None] = contextvars.ContextVar("publish_qos", default=None)

    class _Broadcast(dict):  # type: ignore[type-arg]
        """amqtt's broadcast record. amqtt asks it `get("qos", subscription_qos)`
        for each subscriber; the answer is min(publish QoS, subscription QoS)."""

        def __init__(self, pub_qos: int | None, **fields: Any) -> None:
            super().__init__(**fields)
            self.pub_qos = pub_qos

        def get(self, key: str, default: Any = None) -> Any:
            if key == "qos" and self.pub_qos is not None:
                return self.pub_qos if default is None else min(self.pub_qos, default)
            return super().get(key, default)

    async def _done() -> None:
        return None

    class _Handler(BrokerProtocolHandler):  # type: ignore[misc]
        """amqtt's per-connection handler. amqtt handles each packet in a task
        of its own and cancels those not yet run when the connection ends, so
        what a client wrote just before it left was lost. Here a QoS 0 PUBLISH
        and a DISCONNECT take effect when read, in order; the broker sees the
        disconnect only after everything read before it has been handled."""

        def handle_publish(self, packet: Any) -> Awaitable[None]:  # type: ignore[override]
            session = self.session
            if packet.qos != QOS_0 or session is None or packet.topic_name is None or packet.data is None:
                return super().handle_publish(packet)  # type: ignore[no-any-return]
            if packet.dup_flag:
                log.warning("[MQTT-3.3.1-2] %s sent a QoS 0 PUBLISH with DUP set; ignored", session.client_id)
                return _done()
            message = IncomingApplicationMessage(None, packet.topic_name, QOS_0, packet.data, packet.retain_flag)
            message.publish_packet = packet
            session.delivered_message_queue.put_nowait(message)
            return _done()

        def handle_disconnect(self, disconnect: Any) -> Awaitable[None]:  # type: ignore[override]
            waiter = self._disconnect_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(disconnect)
            self._disconnect_waiter = None
            return _done()

        async def wait_disconnect(self) -> Any:
            session = self.session
            result = await super().wait_disconnect()
            if session is not None:
                queue = session.delivered_message_queue
                give_up = time.monotonic() + _DRAIN_LIMIT
                while not queue.empty() and time.monotonic() < give_up:
                    await asyncio.sleep(0.001)
                if not queue.empty():
                    log.warning("%s: %d messages read before its disconnect were not handled within %g s",
                                session.client_id, queue.qsize(), _DRAIN_LIMIT)
            return result

    class _Broker(Broker):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
            self._closing = False

        async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> Any:
            handler, session = await super()._initialize_client_session(*args, **kwargs)
            handler.__class__ = _Handler  # same state, our three methods
            return handler, session

        async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> Any:
            message = wait_deliver.result()
            token = publish_qos.set(message.qos if message is not None else None)
            try:
                return await super()._handle_message_delivery(client_session, handler, wait_deliver)
            finally:
                publish_qos.reset(token)

        async def _broadcast_message(self, session: Any, topic: Any, data: Any, force_qos: int | None = None) -> None:
            qos = force_qos if force_qos is not None else publish_qos.get()
            await self._broadcast_queue.put(_Broadcast(qos, session=session, topic=topic, data=data))

        async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                   listener_name: str) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections[task] = writer
            try:
                await super().stream_connected(reader, writer, listener_name)
            except asyncio.CancelledError:
                # close_connections() cancelled us: end normally, as asyncio
                # would log a cancelled client task as an error.
                if not self._closing:
                    raise
            finally:
                self._connections.pop(task, None)
                # amqtt leaves the socket open when a client goes away before CONNECT.
                writer.close()

        async def close_connections(self) -> None:
            """After shutdown: end connections amqtt does not track (a client
            that connected but never sent CONNECT would otherwise stay open)."""
            self._closing = True
            conns = list(self._connections)
            for task in conns:
                task.cancel()
            await asyncio.gather(*conns, return_exceptions=True)

        async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                              session: Any) -> None:
            # amqtt 0.12 sends a connecting client the retained messages of
            # every filter anyone subscribed to, at QoS 0: with a gateway
            # subscribed to every status topic, each device would get the whole
            # fleet's births. Here: only for the session's own subscriptions.
            topic_filter = subscription[0]
            for sub_session, sub_qos in self._subscriptions.get(topic_filter, ()):
                if sub_session is session or sub_session.client_id == session.client_id:
                    await super()._publish_retained_messages_for_subscription((topic_filter, sub_qos), session)
                    return

    return _Broker, _Handler


async def _try_start(host: str, port: int, auth: bool = False, tls: TlsListener | None = None) -> Any | None:
    """Start amqtt on (host, port) (and the TLS listener); None if a port turned out to be taken."""
    broker_cls, _ = _amqtt_classes()
    try:
        broker = broker_cls(_config(host, port, auth, tls))
        await broker.start()
    except Exception as e:
        if _addr_in_use(e):
            return None
        raise EmbeddedBrokerError(f"embedded broker could not start on {host}:{port}: {e}") from e
    return broker


def _pick(host: str, port: int, allow_fallback: bool, taken: int = 0) -> tuple[int, bool]:
    """The port to bind: `port` if free, else (fallback) a free one -> (port, fell back)."""
    if port != 0 and _port_free(host, port):
        return port, False
    if port != 0 and not allow_fallback:
        raise PortInUseError(errno.EADDRINUSE, _in_use_message(host, port))
    for _ in range(_FALLBACK_ATTEMPTS):
        chosen = _free_port(host)
        if chosen != taken:
            return chosen, port != 0
    raise EmbeddedBrokerError(f"no free port found on {host}")


async def _start_amqtt(host: str, port: int, allow_fallback: bool, auth: bool = False,
                       tls: TlsListener | None = None) -> tuple[Any, int, bool, int, bool]:
    """amqtt on this loop: (broker, bound port, fell back, TLS port, TLS fell back)."""
    _quiet_amqtt()
    for _ in range(_FALLBACK_ATTEMPTS):
        bound, fell_back = _pick(host, port, allow_fallback)
        tls_bound, tls_fell_back = _pick(tls.host, tls.port, allow_fallback, bound) if tls else (0, False)
        broker = await _try_start(host, bound, auth, tls and TlsListener(tls.host, tls_bound, tls.certfile,
                                                                         tls.keyfile))
        if broker is not None:
            return broker, bound, fell_back, tls_bound, tls_fell_back
        # someone took a port between our probe and amqtt's bind: probe again
    raise EmbeddedBrokerError(f"no free port found on {host} after {_FALLBACK_ATTEMPTS} attempts")


class _StdinWatch(asyncio.Protocol):
    def __init__(self, gone: asyncio.Event) -> None:
        self._gone = gone

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()


def _report(fields: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _reload_auth(broker: Any) -> None:
    """SIGHUP: the password file again; disconnect clients whose account is gone."""
    from edgewire.gateway import embedded_auth

    embedded_auth.load()
    for session, handler in list(broker._sessions.values()):
        if (session.transitions.state == "connected" and embedded_auth.refused(session.username)
                and handler is not None and handler.writer is not None):
            log.warning("%s: account %r revoked; disconnected", session.client_id, session.username)
            await handler.writer.close()


async def _serve(host: str, port: int, allow_fallback: bool, auth_dir: str = "", gateway_user: str = "",
                 tls: TlsListener | None = None) -> int:
    loop = asyncio.get_running_loop()
    try:
        if auth_dir:
            from edgewire.gateway import embedded_auth

            embedded_auth.configure(auth_dir, gateway_user)
        broker, bound, fell_back, tls_bound, tls_fell_back = await _start_amqtt(host, port, allow_fallback,
                                                                                bool(auth_dir), tls)
    except PortInUseError as e:
        _report({"error": e.strerror or str(e), "in_use": True})
        return 1
    except EmbeddedBrokerError as e:
        _report({"error": str(e)})
        return 1
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    if auth_dir:
        def reload() -> None:
            t = loop.create_task(_reload_auth(broker))
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # nothing to reload; never die of it
    await loop.connect_read_pipe(lambda: _StdinWatch(stop), sys.stdin)
    _report({"port": bound, "fell_back": fell_back, "tls_port": tls_bound, "tls_fell_back": tls_fell_back})
    await stop.wait()
    try:
        await broker.shutdown()
        await broker.close_connections()
    except Exception as e:  # amqtt raises plain exceptions from its state machine
        log.error("did not stop cleanly: %s", e)
        return 1
    return 0


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m edgewire.gateway.embedded_broker",
                                description="the embedded MQTT broker; runs until stdin closes or SIGTERM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--no-fallback", action="store_true", help="fail instead of using a free port when PORT is taken")
    p.add_argument("--auth-dir", default="", help="[mqtt_auth] dir: accounts from its passwd, the device ACL")
    p.add_argument("--gateway-user", default="", help="the gateway's user name (reads all, writes commands)")
    p.add_argument("--tls-host", default="", help="address of the TLS listener (default: --host)")
    p.add_argument("--tls-port", type=int, default=8883)
    p.add_argument("--certfile", default="", help="the server's PEM certificate: turns the TLS listener on")
    p.add_argument("--keyfile", default="", help="its PEM key")
    args = p.parse_args(argv)
    # Ctrl-C reaches the whole process group; the parent says when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s edgewire embedded broker: %(name)s: %(message)s")
    try:
        host, port = _check_args(args.host, args.port)
        tls = None
        if args.certfile:
            tls = TlsListener(*_check_args(args.tls_host or host, args.tls_port), args.certfile, args.keyfile)
    except EmbeddedBrokerError as e:
        _report({"error": str(e)})
        return 2
    return asyncio.run(_serve(host, port, not args.no_fallback, args.auth_dir, args.gateway_user, tls))


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
