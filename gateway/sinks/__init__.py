"""Sinks: consumers that take the journal somewhere else (a file, RabbitMQ,
a gRPC backend), each with a durable cursor stored in the journal.

A sink is one module under gateway/sinks/, named in the configuration and
imported only when a `[[sinks]]` table names it:

    [[sinks]]
    type = "jsonl"              # gateway/sinks/jsonl.py
    name = "archive"            # optional; default: the type. The cursor's key in the journal
    path = "/var/lib/edgewire/archive.jsonl"

The module defines `validate(options) -> options` (called while the
configuration is read, before any I/O: raise ConfigError naming the key) and a
class `Sink(JournalSink)` that implements `deliver()`. `JournalSink` does the
rest, the same for every sink:

- it reads the journal oldest first from its cursor (`[sinks] batch` entries
  at a time), calls `deliver(entries)`, and advances the cursor only when
  deliver returns: the backend confirmed (publisher confirms, a gRPC
  response, an fsync). The cursor is written to the journal (`cursors`
  table), so after a restart the sink goes on where its backend last
  confirmed: at least once, and exactly once for a backend that drops
  repeats by the entry id.
- when deliver raises, it backs off (full jitter, `retry_min` .. `retry_max`)
  and tries the same entries again; the live hub and the other sinks go on.
- what retention removed before the sink confirmed it is counted
  (`lost_to_retention`) and the sink goes on from the oldest kept entry.
- `health()` and `stats()` have the same shape as every component's.

The live hub (gateway/hub.py) is the journal's first consumer, with a cursor
per client instead of a durable one. AMQP and gRPC sinks (issue #8) plug in as
`gateway/sinks/amqp.py` and `gateway/sinks/grpc.py` without editing the
service."""
from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
from typing import Any, Protocol

from edgewire.gateway.errors import ConfigError
from edgewire.gateway.journal import Encoded, Entry, JournalError
from edgewire.gateway.aio import cancel_and_wait

log = logging.getLogger("edgewire.gateway.sinks")

__all__ = ["JournalReader", "JournalSink", "SINK_TYPES", "build_sink", "sink_module", "validate_sink"]

# type -> module; a new sink adds one line here and one module.
SINK_TYPES = {"jsonl": "edgewire.gateway.sinks.jsonl", "amqp": "edgewire.gateway.sinks.amqp",
              "grpc": "edgewire.gateway.sinks.grpc"}

COMMON = ("type", "name", "batch", "retry_min", "retry_max")

# While a sink catches up, its durable cursor is written at most this often (seconds), and
# always when it reaches the journal's end and when it stops: a cursor per batch was a commit
# (an fsync) per batch. A crash repeats at most this much to the backend, which drops repeats
# by id anyway (at least once).
CURSOR_SAVE_INTERVAL = 0.25


class JournalReader(Protocol):
    """What a sink needs of the journal."""

    @property
    def first_id(self) -> int: ...

    @property
    def last_id(self) -> int: ...

    cursors: dict[str, int]
    listeners: list[Any]

    async def read(self, after: int, limit: int, *, hi: int | None = None) -> tuple[list[Entry], int]: ...

    # D18b: a sink that sends one fixed encoding sets `encoder` and reads with read_encoded()
    encoder: Any

    async def read_encoded(self, after: int, limit: int, encode: Any, *,
                           hi: int | None = None) -> tuple[Encoded | None, int]: ...

    def save_cursor(self, name: str, last_id: int, *, then: Any = None) -> None: ...


def sink_module(kind: object) -> Any:
    if not isinstance(kind, str) or kind not in SINK_TYPES:
        raise ConfigError("sinks", "type", kind, "expected one of " + ", ".join(sorted(SINK_TYPES)))
    return importlib.import_module(SINK_TYPES[kind])


def validate_sink(table: dict[str, Any], *, site: str = "edgewire") -> dict[str, Any]:
    """Check one [[sinks]] table (before any I/O); returns it with defaults
    and `site` (the gateway's [gateway] site, for sinks that name it)."""
    mod = sink_module(table.get("type"))
    out = dict(table)
    out.pop("site", None)  # always the gateway's (a table validated before carries it)
    name = out.setdefault("name", out["type"])
    if not isinstance(name, str) or not name or len(name) > 64 or \
            not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise ConfigError("sinks", "name", name, "expected 1-64 of A-Z a-z 0-9 - _ . (the cursor's key)")
    batch = out.setdefault("batch", 500)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 100_000:
        raise ConfigError("sinks", "batch", batch, "expected an integer 1-100000 (journal entries per delivery)")
    for key, default in (("retry_min", 0.5), ("retry_max", 30.0)):
        v = out.setdefault(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.01 <= v <= 3600:
            raise ConfigError("sinks", key, v, "expected seconds 0.01-3600")
    if out["retry_max"] < out["retry_min"]:
        raise ConfigError("sinks", "retry_max", out["retry_max"], "must be at least retry_min")
    own = {k: v for k, v in out.items() if k not in COMMON}
    checked = mod.validate(own)
    return {**{k: out[k] for k in COMMON}, **checked, "site": site}


def build_sink(table: dict[str, Any], journal: JournalReader, *, gateway: Any = None) -> JournalSink:
    """Construct (not start) the sink a validated table describes. `gateway`
    (the running Gateway) is for sinks that also take requests from their
    backend, such as commands over AMQP."""
    mod = sink_module(table["type"])
    sink: JournalSink = mod.Sink(table, journal)
    sink.gateway = gateway
    return sink


class JournalSink:
    """The cursor loop every sink shares; subclasses implement deliver()."""

    def __init__(self, table: dict[str, Any], journal: JournalReader) -> None:
        self.name: str = table["name"]
        self.type: str = table["type"]
        self.journal = journal
        self.batch: int = table["batch"]
        self.retry_min: float = table["retry_min"]
        self.retry_max: float = table["retry_max"]
        self.cursor = 0
        self.saved_cursor = 0      # the cursor as last written to the journal
        self._next_save = 0.0
        self.delivered_entries = 0
        self.delivered_readings = 0
        self.deliveries = 0          # batches the backend confirmed
        self.deliver_seconds = 0.0   # in deliver(), for those
        self.read_seconds = 0.0      # waiting for the journal read (not hidden by the read-ahead)
        self.failures = 0
        self.lost_to_retention = 0
        self.last_error = ""
        self.last_delivery: float | None = None
        self.pending_since: int | None = None  # received (ms) of the oldest entry read but not confirmed
        self.state = "new"
        self.gateway: Any = None  # set by build_sink
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # The next batch is read from the journal while this one is delivered, so the backend's
        # round trip and the read overlap: (after, task) of that read-ahead.
        self._ahead: tuple[int, asyncio.Task[tuple[Any, int]]] | None = None

    # subclasses
    async def open(self) -> None:
        """Connect to the backend (called once, before the loop)."""

    async def deliver(self, entries: list[Entry]) -> None:
        """Hand entries to the backend; return only when it confirmed them."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the backend."""

    def prepare(self, entries: list[Entry]) -> None:
        """Called with the next batch as soon as it is read ahead, while the previous one is still
        being delivered: a sink may build its messages here (the event loop is otherwise waiting
        for the backend) and find them again in deliver()."""

    async def fetch(self, after: int) -> tuple[Any, int]:
        """The next batch after `after` and the highest id it covers. By default a list of
        journal entries; a sink may read another shape (the grpc sink: its encoded readings,
        decision D18b) and then also says what it holds in summary()."""
        return await self.journal.read(after, self.batch)

    def summary(self, batch: Any) -> tuple[int, int, int]:
        """(entries, readings, received of the first entry) of a fetched batch."""
        return len(batch), sum(e.n for e in batch if e.kind == 0), batch[0].received

    async def _read_ahead(self, after: int) -> tuple[Any, int]:
        entries, upto = await self.fetch(after)
        if entries:
            self.prepare(entries)
        return entries, upto

    # lifecycle
    async def start(self) -> None:
        self.cursor = self.saved_cursor = self.journal.cursors.get(self.name, 0)
        await self.open()
        self.journal.listeners.append(self.notify)
        self.state = "running"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink-{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.cursor != self.saved_cursor:
            try:
                self._save()
            except JournalError as e:   # closed first: the backend sees the last batches again
                log.warning("sink %s: cursor %d not saved: %s", self.name, self.cursor, e)
        await self.close()
        self.state = "stopped"

    def notify(self) -> None:
        """New entries are committed (the core calls this after each commit)."""
        self._wake.set()

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            ahead, self._ahead = self._ahead, None
            if ahead is not None:
                await cancel_and_wait(ahead[1])

    async def _loop(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            j = self.journal
            if self.cursor >= j.last_id:
                self._wake.clear()
                if self.cursor >= j.last_id:
                    await self._wake.wait()
                continue
            first = j.first_id
            if self.cursor < first - 1:
                lost = first - 1 - self.cursor
                self.lost_to_retention += lost
                log.warning("sink %s: %d ids were removed by retention before the backend confirmed them",
                            self.name, lost)
                self.cursor = first - 1
            t_read = loop.time()
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[0] == self.cursor:
                entries, upto = await ahead[1]
            else:
                if ahead is not None:
                    await cancel_and_wait(ahead[1])
                entries, upto = await self.fetch(self.cursor)
            if entries:
                if upto < j.last_id:
                    self._ahead = (upto, loop.create_task(self._read_ahead(upto)))
                n_entries, n_readings, self.pending_since = self.summary(entries)
                t_deliver = loop.time()
                self.read_seconds += t_deliver - t_read
                try:
                    await self.deliver(entries)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the backend failed: same entries again after a backoff
                    self.failures += 1
                    self.state = "retrying"
                    self.last_error = f"{type(e).__name__}: {e}"
                    delay = random.uniform(self.retry_min, min(self.retry_max, self.retry_min * 2 ** min(attempt, 30)))
                    attempt += 1
                    log.warning("sink %s: delivery failed (%s); retrying in %.2f s", self.name, self.last_error, delay)
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                self.state = "running"
                self.deliveries += 1
                self.deliver_seconds += loop.time() - t_deliver
                self.delivered_entries += n_entries
                self.delivered_readings += n_readings
                self.last_delivery = time.time()
            self.cursor = upto
            self.pending_since = None
            if upto >= j.last_id or loop.time() >= self._next_save:
                self._save()
                self._next_save = loop.time() + CURSOR_SAVE_INTERVAL

    def _save(self) -> None:
        self.journal.save_cursor(self.name, self.cursor)
        self.saved_cursor = self.cursor

    def lag_seconds(self) -> float:
        """How long the oldest entry the backend has not confirmed has waited (0 when none waits)."""
        since = self.pending_since
        if since is None or self.cursor >= self.journal.last_id:
            return 0.0
        return round(max(0.0, time.time() - since / 1000), 3)

    # observability: the same shape as every component
    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.state == "running"
        return ok, {"state": self.state, "cursor": self.cursor, "lag": max(0, self.journal.last_id - self.cursor),
                    "lag_seconds": self.lag_seconds(), "last_error": self.last_error}

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "state": self.state, "cursor": self.cursor,
                "saved_cursor": self.saved_cursor,
                "lag": max(0, self.journal.last_id - self.cursor), "lag_seconds": self.lag_seconds(),
                "delivered_entries": self.delivered_entries, "delivered_readings": self.delivered_readings,
                "deliveries": self.deliveries,
                "deliver_ms_avg": round(1000 * self.deliver_seconds / self.deliveries, 3) if self.deliveries else 0.0,
                "read_wait_ms_total": round(1000 * self.read_seconds, 3),
                "failures": self.failures, "lost_to_retention": self.lost_to_retention,
                "last_error": self.last_error, "last_delivery": self.last_delivery}
