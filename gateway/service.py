"""Wiring only: config -> journal (registry and hub rebuilt from it) -> core
-> ingest adapters (MQTT: broker, configured or embedded, and our client) and
sinks, each built by name from the config -> HTTP. And `edgewire gateway`.

    async with Gateway(config) as gw:      # everything started, ports bound
        print(gw.http_url, gw.mqtt_url)
        await gw.wait_closed()             # until gw.close() or a signal

Adding an ingest adapter (gateway/ingest/) or a sink (gateway/sinks/) needs
no edit here: they are listed by name in their packages and configured in the
TOML file.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time
from typing import Any

from edgewire.gateway.commands import Commands
from edgewire.gateway.config import GatewayConfig, load_config
from edgewire.gateway.core import Core
from edgewire.gateway.errors import ConfigError, GatewayError, MqttNotConnected
from edgewire.gateway.http.app import HttpServer
from edgewire.gateway.hub import Hub
from edgewire.gateway.ingest import IngestAdapter, build_adapter, enabled
from edgewire.gateway.journal import Journal, JournalCorrupt
from edgewire.gateway.journal_state import restore_registry
from edgewire.gateway.mqtt import MqttClient
from edgewire.gateway.refusals import Refusals
from edgewire.gateway.registry import Registry
from edgewire.gateway.sinks import JournalSink, build_sink
from edgewire.gateway.timesync import TimeSync

log = logging.getLogger("edgewire.gateway")

__all__ = ["Gateway", "gateway_main", "raise_file_limit", "tune_gc"]


class Gateway:
    """The gateway service, in-process. Nothing is opened until `start()`
    (or `async with`)."""

    def __init__(self, config: GatewayConfig | None = None) -> None:
        self._config = config or GatewayConfig()
        cfg = self._config
        self.refusals = Refusals(interval=cfg.log.drop_log_interval)
        self.registry = Registry(max_devices=cfg.registry.max_devices, max_streams=cfg.registry.max_streams,
                                 window=cfg.registry.dedup_window, boots_kept=cfg.registry.boots_kept)
        j = cfg.journal
        self.journal = Journal(j.path, synchronous=j.synchronous, max_bytes=j.max_bytes, max_age=j.max_age,
                               max_pending=j.max_pending, max_pending_bytes=j.max_pending_bytes,
                               retention_interval=j.retention_interval)
        self.hub = Hub(source=self.journal, ring=cfg.hub.ring, client_queue=cfg.hub.client_queue,
                       max_clients=cfg.hub.max_clients)
        self.commands = Commands(publisher=self, timeout=cfg.commands.timeout,
                                 max_timeout=cfg.commands.max_timeout, max_pending=cfg.commands.max_pending,
                                 max_pending_per_device=cfg.commands.max_pending_per_device,
                                 presence=self._presence)
        self._core = Core(registry=self.registry, hub=self.hub, commands=self.commands, refusals=self.refusals,
                          journal=self.journal)
        # devices get the gateway's wall time after every birth (docs/firmware.md, "Wall time")
        self.timesync = TimeSync(self.publish)
        self.timesync.attach(self._core, self.commands)
        self.adapters: dict[str, IngestAdapter] = {}
        self.sinks: dict[str, JournalSink] = {}
        self.grpc: Any = None  # GrpcService when [grpc] listen is set
        self._http: HttpServer | None = None
        self._closed = asyncio.Event()
        self._started_at = 0.0
        self.http_port = 0

    # GatewayView
    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def core(self) -> Core:
        return self._core

    @property
    def http_url(self) -> str:
        host = self._config.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        scheme = "https" if self._config.http.cert_file else "http"
        return f"{scheme}://{host}:{self.http_port}"

    @property
    def mqtt(self) -> MqttClient | None:
        """The MQTT adapter's client (None before start)."""
        a = self.adapters.get("mqtt")
        return getattr(a, "client", None)

    @property
    def mqtt_url(self) -> str:
        a = self.adapters.get("mqtt")
        return str(getattr(a, "url", ""))

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Commands go down through the adapter the device last came through
        (MQTT when it is not known yet)."""
        device, kind = topic.split("/")[-2:]
        adapter = self.adapters.get(self._core.last_adapter.get(device, "mqtt")) or self.adapters.get("mqtt")
        if adapter is None:
            raise MqttNotConnected("the gateway is not started")
        await adapter.downlink(device, kind, payload)

    def _presence(self, device: str) -> tuple[bool | None, str | None]:
        dev = self.registry.get(device)
        return (None, None) if dev is None else (dev.online, dev.why)

    # lifecycle
    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        cfg = self._config
        self._started_at = time.monotonic()
        try:
            # reads the token file: a missing or broken one refuses the start before anything is opened
            self._http = HttpServer(self, log_interval=cfg.log.drop_log_interval)
            if cfg.mqtt_auth.dir:  # the broker's password file and ACL, from the device list
                from edgewire.gateway.provision import write_broker_files

                write_broker_files(cfg)
            self._open_journal()
            for table in cfg.sinks:
                sink = self.sinks[table["name"]] = build_sink(dict(table), self.journal, gateway=self)
                await sink.start()
            for name in enabled(cfg):
                adapter = self.adapters[name] = build_adapter(name, cfg, self._core)
                await adapter.start()
            await self._http.start()
            self.http_port = self._http.port
            if cfg.grpc.listen:   # the gRPC service (needs the grpc extra); imported only when asked for
                from edgewire.gateway.grpc_service import GrpcService

                self.grpc = GrpcService(self, cfg.grpc.listen, cfg.grpc.cert_file, cfg.grpc.key_file)
                await self.grpc.start()
            log.info("gateway: HTTP on %s, MQTT %s", self.http_url, self.mqtt_url)
        except BaseException:
            await self.stop()
            raise

    def _open_journal(self) -> None:
        """Open the journal and rebuild the registry and the hub's position from it."""
        j = self.journal
        j.open()
        self.registry.devices.clear()
        n = restore_registry(self.registry, j.devices, j.meta.get("registry"), self._core.last_adapter)
        self.hub.start_at(j.last_id)
        if j.last_id:
            log.info("journal: resumed at id %d with %d devices", j.last_id, n)

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
            self.grpc = None
        for sub in list(self.hub.subscribers.values()):
            self.hub.close(sub)
        if self._http is not None:
            await self._http.stop()
            self._http = None
        # Stop taking input, commit what was taken (its acks go out while the
        # connections are still up), then disconnect. What was not taken is not
        # acknowledged: the broker keeps it for the next start.
        await self.timesync.close()
        for adapter in self.adapters.values():
            await adapter.drain()
        await self.journal.flush()
        for adapter in self.adapters.values():
            await adapter.stop()
        for sink in self.sinks.values():
            await sink.stop()
        await self.journal.close()
        self._closed.set()

    def reload(self) -> None:
        """SIGHUP: read the HTTP token file again (a bad file keeps the old tokens,
        logged) and regenerate the broker's password file and ACL."""
        if self._http is not None:
            self._http.reload()
        self.reload_mqtt_auth()

    def reload_mqtt_auth(self) -> None:
        """SIGHUP: the broker's password file and ACL again from the device list
        (after `edgewire device revoke`); the embedded broker reads them again and
        disconnects revoked devices. mosquitto needs its own reload."""
        if not self._config.mqtt_auth.dir:
            return
        from edgewire.gateway.provision import ProvisionError, write_broker_files

        try:
            passwd, acl = write_broker_files(self._config)
        except (ConfigError, ProvisionError, OSError) as e:
            log.error("SIGHUP: the MQTT broker files were not regenerated: %s", e)
            return
        log.info("SIGHUP: regenerated %s and %s", passwd, acl)
        broker = getattr(self.adapters.get("mqtt"), "broker", None)
        if broker is not None:
            broker.reload()

    def close(self) -> None:
        """Ask wait_closed() to return (signal handlers call this)."""
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # observability: every component answers health() and stats() the same way
    def components(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.adapters)
        out["journal"] = self.journal
        out["hub"] = self.hub
        for name, sink in self.sinks.items():
            out[f"sink:{name}"] = sink
        if self.grpc is not None:
            out["grpc"] = self.grpc
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        checks = {name: c.health() for name, c in self.components().items()}
        # sinks report their state but a backend being down does not make the gateway unhealthy
        ok = all(good for name, (good, _) in checks.items() if not name.startswith("sink:"))
        body = {
            "status": "ok" if ok else "degraded",
            "uptime": round(time.monotonic() - self._started_at, 3),
            "mqtt": checks["mqtt"][1] if "mqtt" in checks else {"connected": False, "url": ""},
            "refused": self.refusals.snapshot(),
            "devices": self.registry.totals(),
            "events": {"last_id": self.hub.last_id, "clients": len(self.hub.subscribers),
                       "dropped": self.hub.stats()["dropped_total"]},
            "journal": checks["journal"][1],
            "sinks": {name: c.health()[1] for name, c in self.sinks.items()},
            "http": self._http.stats() if self._http is not None else {},
        }
        return ok, body

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: c.stats() for name, c in self.adapters.items()}
        out.update({
            "ingest": self._core.stats(),
            "journal": self.journal.stats(),
            "refused": self.refusals.snapshot(),
            "refused_total": self.refusals.total,
            "registry": self.registry.totals(),
            "hub": self.hub.stats(),
            "commands": self.commands.stats(),
            "sinks": [s.stats() for s in self.sinks.values()],
            "http": self._http.stats() if self._http is not None else {},
        })
        if self.grpc is not None:
            out["grpc"] = self.grpc.stats()
        if "mqtt" not in out:
            out["mqtt"] = {"connected": False, "url": ""}
        return out


# ---------------------------------------------------------------- CLI

def gateway_main(args: argparse.Namespace) -> int:
    """`edgewire gateway --config FILE` runs; `--check FILE` validates (0/2)."""
    path = args.check or args.config
    try:
        config = load_config(path) if path else GatewayConfig()
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    if args.check:
        return _check(path, config)
    level = (args.log_level or config.log.level).upper()
    if level.lower() not in ("debug", "info", "warning", "error"):
        print(f"ConfigError: --log-level {args.log_level!r}: expected debug, info, warning or error", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_file_limit()
    tune_gc()
    try:
        asyncio.run(_run(config))
    except JournalCorrupt as e:
        print(f"JournalCorrupt: {e}", file=sys.stderr)
        return 2
    except GatewayError as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


def _check(path: str, config: GatewayConfig) -> int:
    """--check: the configuration, then the files, permissions and ports it names (gateway/preflight.py)."""
    from edgewire.gateway.preflight import preflight

    problems = preflight(config)
    for p in problems:
        print(p, file=sys.stderr)
    errors = sum(p.level == "error" for p in problems)
    if errors:
        print(f"{path}: {errors} error(s); the gateway would not start, or not safely", file=sys.stderr)
        return 2
    print(f"{path}: ok" + (f" ({len(problems)} warning(s))" if problems else ""))
    return 0


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit where allowed (a
    user session often starts at 1,024 while the hard limit is far higher):
    every HTTP, SSE and WebSocket client holds a descriptor. Process-wide, so
    only the service entry point calls it. Returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("open-file limit stays at %d (could not raise it to %d: %s)", soft, target, e)
            return soft
        log.info("open-file limit raised from %d to %d", soft, target)
        return target
    return soft


def tune_gc() -> None:
    """Make the cyclic GC rare: the hot path allocates many short-lived,
    acyclic objects (decoded messages, events) while thousands stay alive in
    the event ring and client queues, and with CPython's default thresholds
    the collector's traversals cost about a third of the relay throughput.
    Cycles are still collected, just in larger, rarer passes. Process-wide,
    so only the service entry point calls it; in-process users decide."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)


async def _run(config: GatewayConfig) -> None:
    loop = asyncio.get_running_loop()
    async with Gateway(config) as gw:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gw.close)
        loop.add_signal_handler(signal.SIGHUP, gw.reload)
        print(f"edgewire gateway: dashboard {gw.http_url}/  MQTT {gw.mqtt_url}", flush=True)
        await gw.wait_closed()
        log.info("shutting down")
