"""The live hub: the first consumer of the journal. Committed readings are
events whose id is their journal sequence number; the hub fans them out to
live subscribers (SSE, WebSocket) and serves resume from the journal.

Every subscriber reads one ordered stream: a cursor (the last id it was
handed) and filters, each with the id after which it applies. A subscriber
is either *live* (committed events are offered to its bounded queue as they
commit) or *catching up* (it reads the journal from its cursor, oldest
first, in pages: from the hub's in-memory ring of recent events when they are
there, else from SQLite). A live subscriber whose queue would overflow goes
back to catching up instead of dropping: a slow client costs no memory and
loses nothing the journal still holds. What retention has removed before a
subscriber got it is reported as a `Gap` (and counted in `dropped`), never
skipped silently. Resume points (SSE Last-Event-ID, WebSocket `after`) are
journal ids, so they stay valid across gateway restarts.

    async with hub.subscribe(["dev-01/#"], after=last_id) as sub:
        async for item in sub:           # list[Event] | Gap, in id order
            ...
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import json
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgewire.gateway.journal import KIND_TELEMETRY, Entry

from edgewire import wire_rx as rx  # the receiver half of the protocol code

__all__ = ["Event", "EventSource", "Gap", "Hub", "HubFull", "Subscription", "events_of", "new_event", "readings_frame", "valid_filter"]

_json_str = json.JSONEncoder(ensure_ascii=False).encode
_float_repr = float.__repr__


def _json_value(v: Any) -> str:
    t = type(v)
    if t is float:
        return repr(v) if math.isfinite(v) else "null"
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if t is int:
        return str(v)
    return _json_str(v)


class Event:
    """One reading as the hub carries it. `subject` is "<device>/<stream>", what
    filters match (made when a filter asks: a client on '#' never needs it).
    `json` is built once and shared by every client."""

    __slots__ = ("id", "device", "stream", "value", "error", "ts", "boot", "seq", "_json")

    def __init__(self, device: str, stream: str, value: Any, error: str | None, ts: int, boot: int,
                 seq: int) -> None:
        self.id = 0  # assigned by the event log
        self.device = device
        self.stream = stream
        self.value = value
        self.error = error
        self.ts = ts
        self.boot = boot
        self.seq = seq
        self._json: str | None = None

    @property
    def subject(self) -> str:
        return self.device + "/" + self.stream

    @property
    def json(self) -> str:
        j = self._json
        if j is None:
            j = _event_json(self)
        return j

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(self.json)
        return d


_alloc = object.__new__


def new_event(id: int, device: str, stream: str, value: Any, error: str | None, ts: int, boot: int,
              seq: int) -> Event:
    """`Event(...)` with its id, for the per-reading hot path (core, journal
    reads): the class call goes through type_call and slot_tp_init into a
    frame of its own, about 3,700 instructions per event under callgrind;
    allocating and filling the slots here costs a fraction of that."""
    e = _alloc(Event)
    e.id = id
    e.device = device
    e.stream = stream
    e.value = value
    e.error = error
    e.ts = ts
    e.boot = boot
    e.seq = seq
    e._json = None
    return e


def _event_json(e: Event) -> str:
    """Build (once) and keep the event's JSON text."""
    # device and stream are validated by wire: [A-Za-z0-9_./-] only, no escaping needed
    err = "" if e.error is None else ',"error":' + _json_str(e.error)
    v = e.value
    if type(v) is float and v - v == 0.0:  # finite: the common case, without a call
        value = _float_repr(v)
    else:
        value = _json_value(v)
    j = e._json = (f'{{"id":{e.id},"device":"{e.device}","stream":"{e.stream}",'
                   f'"value":{value},"ts":{e.ts},"boot":{e.boot},'
                   f'"seq":{e.seq}{err}}}')
    return j


def readings_frame(events: Iterable[Event]) -> str:
    """The WebSocket frame of readings: {"type":"readings","events":[...]}.
    Each event's JSON is built once (and kept for every other client); the
    loop reads the cached text itself instead of going through the `json`
    property, whose call from C costs a frame per event."""
    parts = []
    add = parts.append
    for e in events:
        j = e._json
        add(_event_json(e) if j is None else j)
    return '{"type":"readings","events":[' + ",".join(parts) + "]}"


@dataclass(frozen=True, slots=True)
class Gap:
    """Events a subscriber asked for that are gone. `after` is where it stood,
    `first_available` the id it resumes from, `missed` how many ids lie
    between. `reason`: "retention" (the journal no longer holds them) or
    "ahead" (the resume id is beyond the journal's last id: the journal was
    replaced; missed is 0 and the stream resumes after its last id)."""

    after: int
    first_available: int
    missed: int
    reason: str = "retention"

    @property
    def json(self) -> str:
        return json.dumps({"after": self.after, "first_available": self.first_available, "missed": self.missed,
                           "reason": self.reason})


class EventSource(Protocol):
    """What the hub reads: the journal (gateway/journal.py)."""

    @property
    def first_id(self) -> int: ...

    async def read(self, after: int, limit: int, *, hi: int | None = None) -> tuple[list[Entry], int]: ...


def events_of(entry: Entry) -> list[Event]:
    """The reading events of a journal entry (none for births, deaths, results)."""
    if entry.kind != KIND_TELEMETRY:
        return []
    out = []
    i = entry.id
    device, boot, seq = entry.device, entry.boot or 0, entry.seq or 0
    for stream, value, ts, error in entry.data:
        out.append(new_event(i, device, stream, value, error, ts, boot, seq))
        i += 1
    return out


def valid_filter(flt: str) -> bool:
    """A filter over "<device>/<stream>" with MQTT wildcards: '+' one level,
    '#' the rest (last only): '#', 'dev-01/#', '+/temperature'."""
    return bool(rx.valid_filter(flt))


class HubFull(Exception):
    """max_clients live subscribers already."""


class Subscription:
    """One subscriber's ordered stream: cursor, filters, live queue, counters."""

    _ids = itertools.count(1)

    def __init__(self, hub: Hub, *, cursor: int, maxlen: int, kind: str, peer: str) -> None:
        self.id = next(Subscription._ids)
        self.hub = hub
        self.kind = kind
        self.peer = peer
        self.filters: dict[str, int] = {}   # filter -> the id after which it applies
        self._all = False
        self._match: dict[str, bool] = {}
        self.cursor = cursor                # last id handed out (taken), or the resume point
        self.live = cursor >= hub.last_id
        self.queue: collections.deque[Event] = collections.deque()
        self.maxlen = maxlen
        self.dropped = 0                    # events missed: gone from the journal before this client got them
        self.overflows = 0                  # times its queue filled and it went back to the journal
        self.delivered = 0
        self.gap: Gap | None = None
        self.closed = False
        self._epoch = 0                     # changes when a filter rewinds the cursor
        self._wake = asyncio.Event()

    # filters
    def add_filter(self, flt: str, after: int | None = None) -> bool:
        """Add a filter; with `after`, it applies to events after that id and
        the stream rewinds to deliver them (in id order, none twice). False if
        it is already held."""
        if not valid_filter(flt):
            raise ValueError(f"filter {flt!r} is invalid: use <device>/<stream> with + and # wildcards, "
                             "e.g. 'dev-01/#' or '+/temperature'")
        if flt in self.filters:
            return False
        hub = self.hub
        pos = hub.last_id if self.live else self.cursor   # where the stream stands
        start = hub.last_id if after is None else max(0, min(after, hub.last_id))
        if start < pos:
            self._rewind(start)
        self.filters[flt] = start
        self._refresh()
        if after is not None and after > hub.last_id and self.gap is None:
            self.gap = Gap(after=after, first_available=hub.last_id + 1, missed=0, reason="ahead")
            self._wake.set()
        return True

    def _rewind(self, start: int) -> None:
        """Go back to `start`: what is queued is dropped from memory (it will be
        read again from the journal); held filters keep their position."""
        self.queue.clear()
        for f, a in self.filters.items():
            self.filters[f] = max(a, self.cursor)
        self.cursor = min(self.cursor, start)
        self.live = False
        self._epoch += 1
        self._wake.set()

    def remove_filter(self, flt: str) -> bool:
        if flt not in self.filters:
            return False
        del self.filters[flt]
        self._refresh()
        if self.queue:
            m = self.matches
            kept = [e for e in self.queue if m(e.subject)]
            self.queue.clear()
            self.queue.extend(kept)
        return True

    def _refresh(self) -> None:
        self._all = "#" in self.filters
        self._match.clear()

    def matches(self, subject: str) -> bool:
        if self._all:
            return True
        hit = self._match.get(subject)
        if hit is None:
            hit = any(rx.topic_matches(f, subject) for f in self.filters)
            if len(self._match) >= 8192:
                self._match.clear()
            self._match[subject] = hit
        return hit

    def pick(self, events: Sequence[Event]) -> list[Event]:
        """The events this subscriber gets, honouring each filter's start."""
        if not events or not self.filters:
            return []
        first = events[0].id
        if all(a < first for a in self.filters.values()):
            if self._all:
                return list(events)
            m = self.matches
            return [e for e in events if m(e.subject)]
        out = []
        flts = list(self.filters.items())
        tm = rx.topic_matches
        for e in events:
            for f, a in flts:
                if e.id > a and tm(f, e.subject):
                    out.append(e)
                    break
        return out

    # live queue
    def offer(self, events: Sequence[Event]) -> None:
        """Committed events, as they commit (live subscribers only)."""
        if not self.live or not self.filters:
            return
        if self._all:
            picked: Sequence[Event] = events
        else:
            m = self.matches
            picked = [e for e in events if m(e.subject)]
            if not picked:
                return
        q = self.queue
        if len(q) + len(picked) > self.maxlen:
            # Too slow for live: forget the queue, read from the journal instead.
            q.clear()
            self.live = False
            self.overflows += 1
        else:
            q.extend(picked)
        self._wake.set()

    def wake(self) -> None:
        """Wake the consumer without events (e.g. it has other output to send)."""
        self._wake.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until there is something to read (events, a gap, catching up
        to do) or a wake; False on timeout."""
        wake = self._wake
        if not wake.is_set():
            if self.queue or self.gap is not None or self.closed or not self.live:
                return True
            try:
                async with asyncio.timeout(timeout):
                    await wake.wait()
            except TimeoutError:
                return False
        wake.clear()  # a wake that came while nobody waited is not lost
        return True

    def take(self, limit: int) -> list[Event]:
        """Events from the live queue (none while catching up)."""
        q = self.queue
        if not q:
            return []
        if len(q) <= limit:
            out = list(q)
            q.clear()
        else:
            out = [q.popleft() for _ in range(limit)]
        self.delivered += len(out)
        self.cursor = out[-1].id
        return out

    async def next(self, limit: int) -> list[Event]:
        """The next events in id order: from the live queue, or (catching up)
        from the journal. May return [] (e.g. only a gap, or nothing matched
        in the page read); check take_gap() first, then send these."""
        if self.live:
            return self.take(limit)
        return await self.hub.catch_up(self, limit)

    def take_gap(self) -> Gap | None:
        g, self.gap = self.gap, None
        return g

    async def __aiter__(self) -> AsyncIterator[list[Event] | Gap]:
        while not self.closed:
            await self.wait()
            events = await self.next(self.maxlen)
            gap = self.take_gap()
            if gap is not None:
                yield gap
            if events:
                yield events

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "peer": self.peer, "filters": list(self.filters),
                "live": self.live, "cursor": self.cursor, "behind": max(0, self.hub.last_id - self.cursor),
                "queued": len(self.queue), "delivered": self.delivered, "dropped": self.dropped,
                "overflows": self.overflows}


class Hub:
    """Fan-out of committed events and resume from the journal. `ring` recent
    events stay in memory so that most resumes and slow clients never touch
    SQLite."""

    def __init__(self, *, source: EventSource, last_id: int = 0, ring: int = 5000, client_queue: int = 2000,
                 max_clients: int = 256, page: int = 2000) -> None:
        self.source = source
        self.last_id = last_id          # every event up to here is committed and was offered
        self.ring_size = ring
        self.client_queue = client_queue
        self.max_clients = max_clients
        self.page = page
        self.subscribers: dict[int, Subscription] = {}
        self.published = 0
        self.dropped_closed = 0         # drops of subscribers that have gone
        self.journal_reads = 0
        self.ring_reads = 0
        self._ring: list[Event] = []
        self._ring_ids: list[int] = []
        self._ring_floor = last_id + 1  # every event with id >= this is in the ring

    def start_at(self, last_id: int) -> None:
        """Where the journal stands at start (no subscribers yet)."""
        self.last_id = last_id
        self._ring.clear()
        self._ring_ids.clear()
        self._ring_floor = last_id + 1

    def publish(self, events: Sequence[Event], upto: int) -> None:
        """Committed events (ids <= upto, in order): remember, offer to live subscribers."""
        if upto > self.last_id:
            self.last_id = upto
        if not events:
            return
        self.published += len(events)
        ring, ids = self._ring, self._ring_ids
        ring.extend(events)
        ids.extend([e.id for e in events])
        if len(ring) > self.ring_size + (self.ring_size >> 2):  # trimmed at 1.25x: less memory, rare enough
            # Never below this commit's events, nor (up to twice the ring) below what a
            # client catching up has still to read: in a flood, commits are large and a
            # client whose queue overflowed reads them from here. Read back from SQLite
            # instead, a page costs the reader thread one GIL hand-off per row, and under
            # a busy loop such a client fell further behind than it caught up.
            keep = max(self.ring_size, len(events))
            behind = [s.cursor for s in self.subscribers.values() if not s.live]
            if behind:
                keep = max(keep, min(self.last_id - min(behind), 2 * self.ring_size))
            cut = len(ring) - keep
            if cut > 0:
                self._ring_floor = ids[cut - 1] + 1
                del ring[:cut]
                del ids[:cut]
        for sub in self.subscribers.values():
            if sub.live:
                sub.offer(events)

    async def read(self, after: int, limit: int, hi: int) -> tuple[list[Event], int]:
        """Committed events with after < id <= hi, oldest first (about `limit`),
        and the id up to which that covers."""
        if after + 1 >= self._ring_floor:
            self.ring_reads += 1
            ids = self._ring_ids
            i = bisect.bisect_right(ids, after)
            j = bisect.bisect_right(ids, hi, lo=i)
            if j - i > limit:
                j = i + limit
                return self._ring[i:j], ids[j - 1]
            return self._ring[i:j], hi
        self.journal_reads += 1
        entries, upto = await self.source.read(after, max(1, limit // 4), hi=hi)
        events = [e for entry in entries for e in events_of(entry) if after < e.id <= hi]
        return events, upto

    async def catch_up(self, sub: Subscription, limit: int) -> list[Event]:
        """Read the subscriber's next page from the journal; turn it live when
        it has reached the head."""
        while not sub.closed:
            hi = self.last_id
            if sub.cursor >= hi:
                sub.live = True
                return sub.take(limit)
            first = self.source.first_id
            if sub.cursor < first - 1:
                missed = first - 1 - sub.cursor
                old = sub.gap  # one not yet sent: report both as one
                after = old.after if old is not None and old.reason == "retention" else sub.cursor
                sub.gap = Gap(after=after, first_available=first, missed=first - 1 - after)
                sub.dropped += missed
                sub.cursor = first - 1
                continue
            epoch = sub._epoch
            events, upto = await self.read(sub.cursor, limit, hi)
            if epoch != sub._epoch or sub.closed:
                continue  # a filter rewound the stream meanwhile: read again from there
            picked = sub.pick(events)
            sub.cursor = max(sub.cursor, upto)
            if sub.cursor >= self.last_id:
                sub.live = True
            if picked:
                sub.delivered += len(picked)
                return picked
            if sub.live:
                return sub.take(limit)
        return []

    def open(self, filters: Iterable[str] = (), *, after: int | None = None, kind: str = "live",
             peer: str = "", maxlen: int | None = None) -> Subscription:
        """Register a subscriber; with `after` it first gets the journal's
        events after that id (matching its filters). Close it with close()."""
        if len(self.subscribers) >= self.max_clients:
            raise HubFull(f"{self.max_clients} live clients already (raise [hub] max_clients)")
        start = self.last_id if after is None else min(after, self.last_id)
        sub = Subscription(self, cursor=start, maxlen=maxlen or self.client_queue, kind=kind, peer=peer)
        for f in filters:
            sub.add_filter(f, start)
        if after is not None and after > self.last_id:
            sub.gap = Gap(after=after, first_available=self.last_id + 1, missed=0, reason="ahead")
            sub.wake()
        self.subscribers[sub.id] = sub
        return sub

    def close(self, sub: Subscription) -> None:
        if self.subscribers.pop(sub.id, None) is not None:
            self.dropped_closed += sub.dropped
        sub.closed = True
        sub._wake.set()

    def subscribe(self, filters: Iterable[str], *, after: int | None = None, kind: str = "live",
                  peer: str = "") -> _SubscriptionContext:
        return _SubscriptionContext(self, list(filters), after, kind, peer)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"last_id": self.last_id, "clients": len(self.subscribers)}

    def stats(self) -> dict[str, Any]:
        subs = [s.stats() for s in self.subscribers.values()]
        return {
            "last_id": self.last_id,
            "published": self.published,
            "ring": len(self._ring),
            "ring_reads": self.ring_reads,
            "journal_reads": self.journal_reads,
            "clients": subs,
            "dropped_total": self.dropped_closed + sum(s["dropped"] for s in subs),
        }


class _SubscriptionContext:
    def __init__(self, hub: Hub, filters: list[str], after: int | None, kind: str, peer: str) -> None:
        self._args = (hub, filters, after, kind, peer)
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        hub, filters, after, kind, peer = self._args
        self._sub = hub.open(filters, after=after, kind=kind, peer=peer)
        return self._sub

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            self._args[0].close(self._sub)
