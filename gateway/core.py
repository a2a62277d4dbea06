"""The gateway core that every ingest adapter feeds. No transport in here.

An adapter hands over one transport batch at a time: it calls accept_*() for
each decoded message, then `commit(ack)`. The core accounts every message in
the registry (sessions, gaps, in-memory duplicates), turns it into journal
rows with their sequence numbers, and queues them, with the registry state
they changed, for the journal's next commit. Only after that COMMIT, in this
order:

    1. events are published to the live hub (so an id a client sees is durable),
    2. command results resolve the commands waiting for them,
    3. the adapter's ack handle runs (MQTT: PUBACK/PUBREC go to the broker).

That is the whole "acknowledge only what is durable" contract, in `commit()`.
A message the journal's unique key refuses (a redelivery the in-memory window
did not catch) is counted as a duplicate and never published."""
from __future__ import annotations

import logging
import struct
import sys
from collections.abc import Callable, Sequence

import msgpack

from edgewire.gateway.commands import Commands
from edgewire.gateway.decode import Result, Status, Telemetry
from edgewire.gateway.hub import Event, Hub
from edgewire.gateway.journal import (ID_COST, KIND_BIRTH, KIND_DEATH, KIND_RESULT, KIND_TELEMETRY, ROW_COST, Journal,
                                      Row, pack)
from edgewire.gateway.journal_state import device_state, registry_state
from edgewire.gateway.refusals import Refusals
from edgewire.gateway.registry import Registry, RegistryFull

log = logging.getLogger("edgewire.gateway.core")

__all__ = ["Ack", "Core", "MESSAGE_COST"]

Ack = Callable[[], None]

# What one telemetry message of one reading costs the backlog beyond its
# payload's size (Journal.cost: the row and the event that wait for the commit).
MESSAGE_COST = ROW_COST + ID_COST

# The reading bodies of journal rows, packed on the event loop only: one
# reused Packer costs a third of msgpack.packb per call (which builds a Packer
# each time). Same bytes as journal.pack (use_bin_type=True); not thread-safe,
# so never call it from the journal's writer thread.
_pack_body = msgpack.Packer(use_bin_type=True).pack
_intern = sys.intern
# The body of a one-reading telemetry row whose value is a float, with no error and a
# timestamp past 2**32 ms (any real date): the packed stream name (kept per name) and
# 11 bytes from one struct call, the very bytes _pack_body makes ([[stream, value, ts,
# nil]]: fixarray 1, fixarray 4, str, float 64, uint 64, nil) at a fraction of its cost.
# The head is a bytearray, so the body is one too: the journal's writer binds it as it
# is instead of copying it into one (journal._insert).
_one_float = struct.Struct(">BdBQB").pack
_heads: dict[str, bytearray] = {}
_TS_LO, _TS_HI = 1 << 32, (1 << 64) - 1


def _head(stream: str) -> bytearray:
    if len(_heads) >= 65536:
        _heads.clear()
    h = _heads[stream] = bytearray(b"\x91\x94" + _pack_body(stream))
    return h


_tuple_new = tuple.__new__
_alloc = object.__new__  # an Event filled slot by slot (hub.new_event's way, inline)  # Row(...) without the namedtuple's Python-level __new__: hot path


class Core:
    def __init__(self, *, registry: Registry, hub: Hub, commands: Commands, refusals: Refusals,
                 journal: Journal) -> None:
        self.registry = registry
        self.hub = hub
        self.commands = commands
        self.refusals = refusals
        self.journal = journal
        self.messages = 0
        self.readings = 0
        self.duplicates_journal = 0   # refused by the journal's unique key
        self.dropped_backlog = 0      # QoS 0 telemetry shed while the journal's backlog was full
        self.last_adapter: dict[str, str] = {}   # device -> the ingest adapter it last came through
        self._rows: list[Row] = []
        self._events: list[Event] = []
        self._results: list[Result] = []
        self._dirty: set[str] = set()
        self._cost = 0                # memory the rows of this batch hold until committed (Journal.cost)

    def refuse(self, kind: str, detail: str) -> None:
        self.refusals.count(kind, detail)

    def room(self) -> int:
        """Bytes the journal's backlog may still take before its limit, this
        batch's rows included. At 0 or less, adapters drop what may be dropped
        (QoS 0 telemetry; never anything they must acknowledge) and count it
        with `shed()`; reading stops only at 1.25x the limit (`ready()`).
        Adapters estimate a message as `len(payload) + MESSAGE_COST`."""
        j = self.journal
        if j.pending_rows >= j.max_pending:
            return 0
        return j.max_pending_bytes - j.pending_bytes - self._cost

    def shed(self, n: int, detail: str) -> None:
        """Count n messages dropped because the journal's backlog is full."""
        self.dropped_backlog += n
        self.refusals.count("backlog", detail, n)

    # ------------------------------------------------------------------ accept
    def accept_telemetry(self, batch: Sequence[Telemetry], received_ms: int, *, adapter: str = "mqtt") -> None:
        """Account and deduplicate telemetry messages; their readings become events.

        The per-message hot path: ids are taken from the journal once for the
        whole batch, rows are built without the namedtuple constructor, and
        each device keeps the last value of at most `max_streams` streams (more are
        counted in values_dropped), updated inline."""
        registry = self.registry
        reg_telemetry = registry.telemetry
        max_streams = registry.max_streams
        journal = self.journal
        first = i = journal.next_id
        rows = self._rows
        add_row = rows.append
        events = self._events
        add = events.append
        heads = _heads
        alloc = _alloc
        mark = self._dirty.add
        last_adapter = self.last_adapter
        new = _tuple_new
        intern = _intern
        cost = 0
        accepted = 0
        readings = 0
        try:
            for t in batch:
                device, boot, seq, up, tm, rs = t
                try:
                    dev = reg_telemetry(t, received_ms)
                except RegistryFull as e:
                    self.refuse("capacity", str(e))
                    continue
                mark(device)
                if dev is None:
                    continue  # duplicate: counted by the registry, never forwarded
                if last_adapter.get(device) != adapter:
                    last_adapter[device] = adapter
                accepted += 1
                base = (received_ms if tm is None else tm) - up
                values = dev.values
                k = len(rs)
                row_id = i
                for stream, value, r_up, error in rs:
                    stream = intern(stream)  # one string per stream name, not one per reading held
                    ts = base + r_up
                    ev = alloc(Event)  # new_event(...) inline: the hot path's one call per reading saved
                    ev.id = i
                    ev.device = device
                    ev.stream = stream
                    ev.value = value
                    ev.error = error
                    ev.ts = ts
                    ev.boot = boot
                    ev.seq = seq
                    ev._json = None
                    add(ev)
                    i += 1
                    if stream in values or len(values) < max_streams:
                        values[stream] = (value, ts, error)
                    else:
                        dev.values_dropped += 1
                if k == 1 and type(value) is float and error is None and _TS_LO <= ts <= _TS_HI:
                    packed = (heads.get(stream) or _head(stream)) + _one_float(0xCB, value, 0xCF, ts, 0xC0)
                else:  # the body from this row's events: [[stream, value, ts, error], ...]
                    packed = _pack_body([(e.stream, e.value, e.ts, e.error) for e in events[len(events) - k:]])
                n = k or 1
                i = row_id + n
                cost += len(packed)
                add_row(new(Row, (row_id, n, KIND_TELEMETRY, device, boot, seq, received_ms, packed)))
                readings += k
        finally:
            if i > first:
                journal.reserve(i - first)   # the ids used above, in one step
            self._cost += cost + (ROW_COST + ID_COST) * accepted + ID_COST * (readings - accepted)
            self.messages += accepted
            self.readings += readings

    def accept_status(self, status: Status, received_ms: int, *, adapter: str = "mqtt",
                      retained: bool = False) -> None:
        try:
            outcome = self.registry.status(status, received_ms, retained=retained)
        except RegistryFull as e:
            self.refuse("capacity", str(e))
            return
        self._dirty.add(status.device)
        if outcome == "stale":
            log.info("device %s: ignored a death for session (boot %d, conn %d): not the current session",
                     status.device, status.boot, status.conn)
        else:
            log.info("device %s is %s (boot %d, conn %d%s)", status.device, outcome, status.boot, status.conn,
                     f", {status.why}" if status.why else "")
            if status.online:
                self.last_adapter[status.device] = adapter
        kind = KIND_BIRTH if status.online else KIND_DEATH
        self._add_row(Row(self.journal.reserve(1), 1, kind, status.device, None, None, received_ms,
                          pack({**status._asdict(), "outcome": outcome})))

    def accept_result(self, result: Result, received_ms: int = 0) -> None:
        self._add_row(Row(self.journal.reserve(1), 1, KIND_RESULT, result.device, None, None, received_ms,
                          pack(result._asdict())))
        self._results.append(result)

    def _add_row(self, row: Row) -> None:
        self._rows.append(row)
        self._cost += Journal.cost((row,))

    # ------------------------------------------------------------------ commit
    def commit(self, ack: Ack | None = None) -> None:
        """Queue what was accepted since the last commit for the journal; after
        its COMMIT, publish, resolve results, then call `ack` (see module doc)."""
        rows, events, results, cost = self._rows, self._events, self._results, self._cost
        self._rows, self._events, self._results, self._cost = [], [], [], 0
        devices = self.registry.devices
        evicted = self.registry.evicted_ids
        if evicted:
            self._dirty.update(evicted)   # gone from the registry: deleted from the journal's copy
            evicted.clear()
        last = self.last_adapter
        states = [(d, device_state(devices[d], last.get(d)) if d in devices else None) for d in self._dirty]
        self._dirty = set()
        upto = rows[-1].id + rows[-1].n - 1 if rows else 0
        hub = self.hub

        def durable(refused: set[int]) -> None:
            evs = events
            if refused:
                evs = self._refused(refused, events, rows)
            hub.publish(evs, upto)
            for r in results:
                if not self.commands.resolve(r):
                    self.refuse("unmatched_result",
                                f"result {r.id!r} from {r.device!r} matches no pending command (late or repeated)")
            if ack is not None:
                ack()

        # the registry's counters change only with a device's: written when something was
        meta = [("registry", registry_state(self.registry))] if rows or states else []
        self.journal.append(rows, devices=states, meta=meta, then=durable, cost=cost)

    def _refused(self, refused: set[int], events: list[Event], rows: list[Row]) -> list[Event]:
        """Messages the journal already held: take them back out of the counts."""
        gone: set[int] = set()
        reg = self.registry
        for row in rows:
            if row.id in refused and row.kind == KIND_TELEMETRY:  # only telemetry has a unique key
                gone.update(range(row.id, row.id + row.n))
                dev = reg.devices.get(row.device)
                if dev is not None:
                    dev.messages -= 1
                    dev.readings -= row.n  # a telemetry row takes one id per reading
                    dev.duplicates += 1
                    self._dirty.add(row.device)
                reg.duplicates += 1
                self.messages -= 1
                self.readings -= row.n
                self.duplicates_journal += 1
        log.info("journal refused %d redelivered message(s) as duplicates", len(refused))
        return [e for e in events if e.id not in gone]

    async def ready(self) -> None:
        """Back-pressure: returns at once unless the journal's backlog is full."""
        await self.journal.wait_space()

    def stats(self) -> dict[str, int]:
        return {"messages": self.messages, "readings": self.readings,
                "duplicates_journal": self.duplicates_journal, "dropped_backlog": self.dropped_backlog}
