"""Wiring: config -> broker (configured or embedded) -> MQTT client -> ingest
-> core (registry, hub, commands) -> HTTP. And `edgewire gateway`.

    async with Gateway(config) as gw:      # everything started, ports bound
        print(gw.http_url, gw.mqtt_url)
        await gw.wait_closed()             # until gw.close() or a signal
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

from aiohttp import web

from edgewire.gateway.commands import Commands
from edgewire.gateway.config import GatewayConfig, load_config, read_password
from edgewire.gateway.core import Core
from edgewire.gateway.errors import ConfigError, GatewayError
from edgewire.gateway.http.app import build_app
from edgewire.gateway.hub import Hub
from edgewire.gateway.ingest.mqtt import SUBSCRIPTIONS, MqttIngest
from edgewire.gateway.journal import Journal, JournalCorrupt
from edgewire.gateway.journal_state import restore_registry
from edgewire.gateway.mqtt import MqttClient
from edgewire.gateway.refusals import Refusals
from edgewire.gateway.registry import Registry

log = logging.getLogger("edgewire.gateway")

__all__ = ["Gateway", "gateway_main", "tune_gc"]


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
                               max_pending=j.max_pending, retention_interval=j.retention_interval)
        self.hub = Hub(source=self.journal, ring=cfg.hub.ring, client_queue=cfg.hub.client_queue,
                       max_clients=cfg.hub.max_clients)
        self.mqtt: MqttClient | None = None
        self.commands = Commands(publisher=self, timeout=cfg.commands.timeout,
                                 max_timeout=cfg.commands.max_timeout, max_pending=cfg.commands.max_pending,
                                 max_pending_per_device=cfg.commands.max_pending_per_device,
                                 presence=self._presence)
        self._core = Core(registry=self.registry, hub=self.hub, commands=self.commands, refusals=self.refusals,
                          journal=self.journal)
        self._broker: Any = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self._started_at = 0.0
        self.http_port = 0
        self.mqtt_url = ""

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
        return f"http://{host}:{self.http_port}"

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Commands go out through the ingest connection (one session per gateway)."""
        from edgewire.gateway.errors import MqttNotConnected

        if self.mqtt is None:
            raise MqttNotConnected("the gateway is not started")
        await self.mqtt.publish(topic, payload, qos=qos, retain=retain)

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
            self._open_journal()
            if cfg.mqtt.url:
                host, port = cfg.mqtt.host_port
                self.mqtt_url = cfg.mqtt.url
            else:
                from edgewire.gateway.embedded_broker import start_embedded_broker

                eb = cfg.embedded_broker
                self._broker = await start_embedded_broker(host=eb.host, port=eb.port,
                                                           allow_fallback=eb.allow_fallback)
                host, port = eb.host, int(self._broker.port)
                self.mqtt_url = str(self._broker.url)
                log.info("no [mqtt] url: embedded broker at %s", self.mqtt_url)
            m = cfg.mqtt
            self.mqtt = MqttClient(host=host, port=port, client_id=m.client_id, subscriptions=SUBSCRIPTIONS,
                                   keepalive=m.keepalive, clean_session=m.clean_session,
                                   username=m.username or None, password=read_password(m),
                                   connect_timeout=m.connect_timeout, reconnect_min=m.reconnect_min,
                                   reconnect_max=m.reconnect_max, max_packet=m.max_packet,
                                   queue_limit=m.queue_limit, max_inflight=max(16, cfg.commands.max_pending),
                                   name="mqtt-ingest")
            self.mqtt.start()
            ingest = MqttIngest(client=self.mqtt, core=self._core)
            self._tasks.append(asyncio.get_running_loop().create_task(ingest.run(), name="ingest-mqtt"))
            self._runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=1.0,
                                         handle_signals=False, handler_cancellation=True)
            await self._runner.setup()
            site = web.TCPSite(self._runner, cfg.http.host, cfg.http.port, reuse_address=True)
            await site.start()
            self.http_port = int(self._runner.addresses[0][1])
            log.info("gateway: HTTP on %s, MQTT %s", self.http_url, self.mqtt_url)
        except BaseException:
            await self.stop()
            raise

    def _open_journal(self) -> None:
        """Open the journal and rebuild the registry and the hub's position from it."""
        j = self.journal
        j.open()
        self.registry.devices.clear()
        n = restore_registry(self.registry, j.devices, j.meta.get("registry"))
        self.hub.start_at(j.last_id)
        if j.last_id:
            log.info("journal: resumed at id %d with %d devices", j.last_id, n)

    async def stop(self) -> None:
        for sub in list(self.hub.subscribers.values()):
            self.hub.close(sub)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # Stop taking batches, commit what was taken (its acks go out while the
        # connection is still up), then disconnect. What was not taken is not
        # acknowledged: the broker keeps it for the next start.
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        await self.journal.flush()
        if self.mqtt is not None:
            await self.mqtt.stop()
        await self.journal.close()
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None
        self._closed.set()

    def close(self) -> None:
        """Ask wait_closed() to return (signal handlers call this)."""
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # observability
    def health(self) -> tuple[bool, dict[str, Any]]:
        connected = self.mqtt is not None and self.mqtt.connected
        ok = connected and self.journal.health()[0]
        body = {
            "status": "ok" if ok else "degraded",
            "uptime": round(time.monotonic() - self._started_at, 3),
            "mqtt": self._mqtt_state(),
            "refused": self.refusals.snapshot(),
            "devices": self.registry.totals(),
            "events": {"last_id": self.hub.last_id, "clients": len(self.hub.subscribers),
                       "dropped": self.hub.stats()["dropped_total"]},
            "journal": self.journal.health()[1],
        }
        return ok, body

    def _mqtt_state(self) -> dict[str, Any]:
        c = self.mqtt
        if c is None:
            return {"connected": False, "url": self.mqtt_url}
        return {"connected": c.connected, "url": self.mqtt_url, "embedded": self._broker is not None,
                "client_id": c.client_id, "connects": c.stats.connects, "disconnects": c.stats.disconnects,
                "received": c.stats.received, "reads": c.stats.reads, "oversized": c.stats.oversized,
                "qos2_duplicates": c.stats.duplicates_qos2, "paused": c.stats.paused,
                "last_error": c.stats.last_error}

    def stats(self) -> dict[str, Any]:
        return {
            "mqtt": self._mqtt_state(),
            "ingest": self._core.stats(),
            "journal": self.journal.stats(),
            "refused": self.refusals.snapshot(),
            "refused_total": self.refusals.total,
            "registry": self.registry.totals(),
            "hub": self.hub.stats(),
            "commands": self.commands.stats(),
        }


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
        print(f"{path}: ok")
        return 0
    level = (args.log_level or config.log.level).upper()
    if level.lower() not in ("debug", "info", "warning", "error"):
        print(f"ConfigError: --log-level {args.log_level!r}: expected debug, info, warning or error", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        print(f"edgewire gateway: dashboard {gw.http_url}/  MQTT {gw.mqtt_url}", flush=True)
        await gw.wait_closed()
        log.info("shutting down")
