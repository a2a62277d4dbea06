"""The embedded MQTT broker: amqtt, in-process, for when no broker is configured.

Why: `edgewire demo`, `edgewire sim` without `--broker` and a gateway with no
`[mqtt] url` must work on a machine with nothing installed. A real deployment
uses mosquitto (or a clustered broker); the embedded one is for one site's
handful of devices, demos and tests. It speaks MQTT 3.1.1 with QoS 0/1/2,
retained messages and last wills.

    broker = await start_embedded_broker(port=1883)      # on the running loop
    print(broker.url)                                     # mqtt://127.0.0.1:1883
    await broker.stop()

    async with await start_embedded_broker(port=0) as broker:   # any free port
        ...

    with EmbeddedBrokerThread(port=0) as broker:          # from synchronous code
        print(broker.url)

Port 1883 is often taken (a system mosquitto listens there on most dev
machines). With `allow_fallback=True` (the default) the broker then logs a
warning naming the taken port and the one it uses instead, and sets
`fell_back`; with `allow_fallback=False` it raises `PortInUseError`.
`port=0` asks for any free port and is not a fallback.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from types import TracebackType
from typing import Any

from amqtt.broker import Broker

__all__ = [
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "EmbeddedBrokerThread",
    "PortInUseError",
    "start_embedded_broker",
]

log = logging.getLogger("edgewire.embedded_broker")

# amqtt logs every connection and packet at INFO; keep only its warnings.
_NOISY_LOGGERS = ("amqtt", "transitions")
_FALLBACK_ATTEMPTS = 5


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start or stop."""


class PortInUseError(EmbeddedBrokerError, OSError):
    """The requested port is taken and falling back to another was not allowed."""


class _NoCallerFilter(logging.Filter):
    """amqtt logs an ERROR when a TCP connection closes before CONNECT (a port
    probe, a health check). That is not an error of the broker: drop it."""

    PREFIXES = ("No data from", "Failed to initialize client session")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith(self.PREFIXES)


_no_caller_filter = _NoCallerFilter()


def _quiet_amqtt() -> None:
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)
    broker_log = logging.getLogger("amqtt.broker")
    if _no_caller_filter not in broker_log.filters:
        broker_log.addFilter(_no_caller_filter)


def _check_args(host: object, port: object) -> tuple[str, int]:
    if not isinstance(host, str) or not host:
        raise EmbeddedBrokerError(f"host {host!r} is not a host name or address (expected e.g. '127.0.0.1')")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise EmbeddedBrokerError(f"port {port!r} is not an integer 0..65535 (0 picks a free port)")
    return host, port


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


def _config(host: str, port: int) -> dict[str, Any]:
    bind_host = f"[{host}]" if ":" in host else host
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{bind_host}:{port}", "max_connections": 0}},
        # Only anonymous auth: no $SYS publisher, no per-packet logger plugins.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """A running embedded broker. Made by `start_embedded_broker`; `stop()` ends it."""

    def __init__(self, broker: Any, host: str, port: int, requested_port: int, fell_back: bool) -> None:
        self._broker = broker
        self.host = host
        self.port = port
        self.requested_port = requested_port
        self.fell_back = fell_back
        self._stopped = False
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return not self._stopped

    async def stop(self) -> None:
        """Close every client session and the listener. Safe to call twice."""
        async with self._lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                await self._broker.shutdown()
                await self._broker.close_connections()
            except Exception as e:  # amqtt raises plain exceptions from its state machine
                raise EmbeddedBrokerError(f"embedded broker on {self.url} did not stop cleanly: {e}") from e
            log.info("embedded MQTT broker on %s stopped", self.url)

    async def __aenter__(self) -> "EmbeddedBroker":
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        fb = f", fell back from {self.requested_port}" if self.fell_back else ""
        return f"<EmbeddedBroker {self.url} {state}{fb}>"


class _Broker(Broker):  # type: ignore[misc]
    """amqtt's Broker with one fix.

    amqtt 0.12, when a client connects, sends it the retained messages matching
    *every* filter any client has subscribed to, at QoS 0, whether or not this
    client subscribed to it. With a gateway subscribed to every device's status
    topic, each connecting device would receive the whole fleet's retained
    births: unsolicited traffic that grows with the square of the fleet. Here a
    session only gets retained messages for its own subscriptions, at the QoS
    it subscribed with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._closing = False

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await super().stream_connected(reader, writer, listener_name)
        except asyncio.CancelledError:
            # close_connections() cancelled us. Ending normally matters: on
            # Python 3.11 asyncio logs a cancelled client task as an error.
            if not self._closing:
                raise
        finally:
            self._connections.pop(task, None)
            # amqtt leaves the socket open when a client goes away before CONNECT.
            writer.close()

    async def close_connections(self) -> None:
        """After shutdown: end connections amqtt does not track (a client that
        connected but never sent CONNECT would otherwise stay open forever)."""
        self._closing = True
        conns = list(self._connections.items())
        for task, _ in conns:
            task.cancel()
        await asyncio.gather(*(t for t, _ in conns), return_exceptions=True)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Any) -> None:
        topic_filter = subscription[0]
        for sub_session, sub_qos in self._subscriptions.get(topic_filter, ()):
            if sub_session is session or sub_session.client_id == session.client_id:
                await super()._publish_retained_messages_for_subscription((topic_filter, sub_qos), session)
                return


async def _try_start(host: str, port: int) -> Any | None:
    """Start amqtt on (host, port); None if the port turned out to be taken."""
    broker = _Broker(_config(host, port))
    try:
        await broker.start()
    except Exception as e:
        if _addr_in_use(e):
            return None
        raise EmbeddedBrokerError(f"embedded broker could not start on {host}:{port}: {e}") from e
    return broker


async def start_embedded_broker(*, host: str = "127.0.0.1", port: int = 1883,
                                allow_fallback: bool = True) -> EmbeddedBroker:
    """Start amqtt on the running loop and return once it accepts connections.

    port=0 picks a free port. If `port` is taken: with allow_fallback, log a
    warning and use a free port (the result's `fell_back` is True); without,
    raise PortInUseError."""
    host, port = _check_args(host, port)
    _quiet_amqtt()
    if port != 0:
        broker = await _try_start(host, port) if _port_free(host, port) else None
        if broker is not None:
            log.info("embedded MQTT broker listening on %s:%d", host, port)
            return EmbeddedBroker(broker, host, port, port, fell_back=False)
        if not allow_fallback:
            raise PortInUseError(errno.EADDRINUSE,
                                 f"port {port} on {host} is already in use (another MQTT broker, e.g. a system "
                                 f"mosquitto?); stop it, choose another port, or point Edgewire at that broker")
    for _ in range(_FALLBACK_ATTEMPTS):
        chosen = _free_port(host)
        broker = await _try_start(host, chosen)
        if broker is None:
            continue  # someone took it between our probe and amqtt's bind
        if port != 0:
            log.warning("port %d on %s is already in use (another MQTT broker, e.g. a system mosquitto?); "
                        "the embedded MQTT broker listens on port %d instead", port, host, chosen)
        else:
            log.info("embedded MQTT broker listening on %s:%d", host, chosen)
        return EmbeddedBroker(broker, host, chosen, port, fell_back=port != 0)
    raise EmbeddedBrokerError(f"no free port found on {host} after {_FALLBACK_ATTEMPTS} attempts")


class EmbeddedBrokerThread:
    """The embedded broker on its own event loop in a daemon thread, for
    synchronous callers (the simulator's CLI, scripts, tests).

        with EmbeddedBrokerThread(port=0) as b:
            connect_to(b.url)

    `start()` returns once the broker listens (or raises what
    start_embedded_broker raised); `stop()` shuts it down and joins the thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 1883, allow_fallback: bool = True,
                 start_timeout: float = 15.0) -> None:
        self._args = _check_args(host, port)
        self._allow_fallback = allow_fallback
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: EmbeddedBroker | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._stop_requested: asyncio.Event | None = None

    @property
    def broker(self) -> EmbeddedBroker:
        if self._broker is None:
            raise EmbeddedBrokerError("embedded broker thread is not running; call start() first")
        return self._broker

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def fell_back(self) -> bool:
        return self.broker.fell_back

    def start(self) -> "EmbeddedBrokerThread":
        if self._thread is not None:
            raise EmbeddedBrokerError("embedded broker thread already started")
        self._thread = threading.Thread(target=self._run, name="edgewire-embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise EmbeddedBrokerError(f"embedded broker did not start within {self._start_timeout}s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop_requested = asyncio.Event()
        host, port = self._args
        try:
            self._broker = await start_embedded_broker(host=host, port=port, allow_fallback=self._allow_fallback)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            await self._broker.stop()

    def stop(self, timeout: float = 15.0) -> None:
        thread, loop, ev = self._thread, self._loop, self._stop_requested
        if thread is None or loop is None or ev is None:
            return
        if thread.is_alive():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass  # loop already closed: the thread is finishing
            thread.join(timeout)
            if thread.is_alive():
                raise EmbeddedBrokerError(f"embedded broker thread did not stop within {timeout}s")
        self._thread = None

    def __enter__(self) -> "EmbeddedBrokerThread":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
