"""The live hub: accepted readings become events with a monotonic id, kept in
an event log for resume and fanned out to live subscribers.

Each subscriber has a bounded queue with a declared policy: when full, the
oldest queued events are dropped and counted (`Subscription.dropped`). The hub
never waits for a subscriber, so a stalled client costs only its own queue.

The event log sits behind the small `EventLog` protocol: today `RingLog`, a
bounded in-memory ring; the SQLite journal (docs/architecture.md, "Where this
is going") implements the same three members and slots in unchanged.

    async with hub.subscribe(["dev-01/#"], after=last_id) as sub:
        async for batch in sub:          # list[Event] | Gap, in id order
            ...
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgewire import wire_rx as rx  # the receiver half of the protocol code

__all__ = ["Event", "EventLog", "Gap", "Hub", "HubFull", "RingLog", "Subscription", "valid_filter"]

_json_str = json.JSONEncoder(ensure_ascii=False).encode


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
    filters match. `json` is built once and shared by every client."""

    __slots__ = ("id", "device", "stream", "value", "error", "ts", "boot", "seq", "subject", "_json")

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
        self.subject = device + "/" + stream
        self._json: str | None = None

    @property
    def json(self) -> str:
        j = self._json
        if j is None:
            # device and stream are validated by wire: [A-Za-z0-9_./-] only, no escaping needed
            err = "" if self.error is None else ',"error":' + _json_str(self.error)
            j = self._json = (f'{{"id":{self.id},"device":"{self.device}","stream":"{self.stream}",'
                              f'"value":{_json_value(self.value)},"ts":{self.ts},"boot":{self.boot},'
                              f'"seq":{self.seq}{err}}}')
        return j

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(self.json)
        return d


@dataclass(frozen=True, slots=True)
class Gap:
    """Events a subscriber asked for that are gone: `after` was older than the
    log's oldest event. `first_available` is the id it resumes from."""

    after: int
    first_available: int
    missed: int

    @property
    def json(self) -> str:
        return json.dumps({"after": self.after, "first_available": self.first_available, "missed": self.missed})


class EventLog(Protocol):
    """Where accepted events are sequenced and kept for resume."""

    @property
    def last_id(self) -> int: ...

    def append(self, events: Sequence[Event]) -> None:
        """Assign consecutive ids (last_id+1, ...) and keep the events."""

    def since(self, after: int, limit: int) -> tuple[list[Event], int]:
        """Events with id > after, at most `limit` (the newest ones when more are
        kept), and how many after `after` were no longer there to return."""


class RingLog:
    """Bounded in-memory EventLog: the newest `size` events."""

    def __init__(self, *, size: int) -> None:
        self.size = size
        self._ring: collections.deque[Event] = collections.deque(maxlen=size)
        self._last = 0

    @property
    def last_id(self) -> int:
        return self._last

    @property
    def first_id(self) -> int:
        return self._ring[0].id if self._ring else self._last + 1

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, events: Sequence[Event]) -> None:
        i = self._last
        for e in events:
            i += 1
            e.id = i
        self._last = i
        self._ring.extend(events)

    def since(self, after: int, limit: int) -> tuple[list[Event], int]:
        if after >= self._last:
            return [], 0
        first = self.first_id
        missed = max(0, first - after - 1)
        start = max(after + 1, first)
        count = self._last - start + 1
        if count > limit:
            missed += count - limit
            start = self._last - limit + 1
        idx = start - first
        return list(itertools.islice(self._ring, idx, None)), missed


def valid_filter(flt: str) -> bool:
    """A filter over "<device>/<stream>" with MQTT wildcards: '+' one level,
    '#' the rest (last only): '#', 'dev-01/#', '+/temperature'."""
    return bool(rx.valid_filter(flt))


class HubFull(Exception):
    """max_clients live subscribers already."""


class Subscription:
    """A live subscriber: filters, a bounded queue (drop-oldest) and counters."""

    _ids = itertools.count(1)

    def __init__(self, hub: Hub, filters: Iterable[str], *, maxlen: int, kind: str, peer: str) -> None:
        self.id = next(Subscription._ids)
        self.hub = hub
        self.kind = kind
        self.peer = peer
        self.filters: list[str] = []
        self._all = False
        self._match: dict[str, bool] = {}
        self.queue: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self.maxlen = maxlen
        self.dropped = 0
        self.delivered = 0
        self.gap: Gap | None = None
        self.closed = False
        self._wake = asyncio.Event()
        for f in filters:
            self.add_filter(f)

    # filters
    def add_filter(self, flt: str) -> bool:
        if not valid_filter(flt):
            raise ValueError(f"filter {flt!r} is invalid: use <device>/<stream> with + and # wildcards, "
                             "e.g. 'dev-01/#' or '+/temperature'")
        if flt in self.filters:
            return False
        self.filters.append(flt)
        self._refresh()
        return True

    def remove_filter(self, flt: str) -> bool:
        if flt not in self.filters:
            return False
        self.filters.remove(flt)
        self._refresh()
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

    # queue
    def offer(self, events: Sequence[Event]) -> None:
        if not self.filters:
            return
        if self._all:
            picked: Sequence[Event] = events
        else:
            m = self.matches
            picked = [e for e in events if m(e.subject)]
            if not picked:
                return
        q = self.queue  # a deque(maxlen=...): extend drops the oldest
        over = len(q) + len(picked) - self.maxlen
        if over > 0:
            self.dropped += over
        q.extend(picked)
        self._wake.set()

    def wake(self) -> None:
        """Wake the consumer without events (e.g. it has other output to send)."""
        self._wake.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until there are events (or a gap, or a wake); False on timeout."""
        wake = self._wake
        if not wake.is_set():
            if self.queue or self.gap is not None or self.closed:
                return True
            try:
                async with asyncio.timeout(timeout):
                    await wake.wait()
            except TimeoutError:
                return False
        wake.clear()  # a wake that came while nobody waited is not lost
        return True

    def take(self, limit: int) -> list[Event]:
        q = self.queue
        if len(q) <= limit:
            out = list(q)
            q.clear()
        else:
            out = [q.popleft() for _ in range(limit)]
        self.delivered += len(out)
        return out

    def take_gap(self) -> Gap | None:
        g, self.gap = self.gap, None
        return g

    async def __aiter__(self) -> AsyncIterator[list[Event] | Gap]:
        while not self.closed:
            await self.wait()
            gap = self.take_gap()
            if gap is not None:
                yield gap
            if self.queue:
                yield self.take(self.maxlen)

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "peer": self.peer, "filters": list(self.filters),
                "queued": len(self.queue), "delivered": self.delivered, "dropped": self.dropped}


class Hub:
    def __init__(self, *, log: EventLog, client_queue: int = 10000, max_clients: int = 256) -> None:
        self.log = log
        self.client_queue = client_queue
        self.max_clients = max_clients
        self.subscribers: dict[int, Subscription] = {}
        self.published = 0
        self.dropped_closed = 0  # drops of subscribers that have gone

    def publish(self, events: Sequence[Event]) -> None:
        """Sequence the events in the log, then offer them to every subscriber."""
        if not events:
            return
        self.log.append(events)
        self.published += len(events)
        for sub in self.subscribers.values():
            sub.offer(events)

    def open(self, filters: Iterable[str] = (), *, after: int | None = None, kind: str = "live",
             peer: str = "", maxlen: int | None = None) -> Subscription:
        """Register a subscriber; with `after`, first queue the logged events
        after that id (matching its filters). Close it with close()."""
        if len(self.subscribers) >= self.max_clients:
            raise HubFull(f"{self.max_clients} live clients already (raise [hub] max_clients)")
        sub = Subscription(self, filters, maxlen=maxlen or self.client_queue, kind=kind, peer=peer)
        if after is not None:
            self.backfill(sub, after, sub.filters)
        self.subscribers[sub.id] = sub
        return sub

    def backfill(self, sub: Subscription, after: int, filters: Sequence[str]) -> None:
        """Queue logged events after `after` that match `filters` (and no
        filter the subscriber already had, so none arrives twice)."""
        events, missed = self.log.since(after, sub.maxlen)
        if missed:
            first = events[0].id if events else self.log.last_id + 1
            sub.gap = Gap(after=after, first_available=first, missed=missed)
            sub._wake.set()
        old = [f for f in sub.filters if f not in filters]
        picked = [e for e in events
                  if any(rx.topic_matches(f, e.subject) for f in filters)
                  and not any(rx.topic_matches(f, e.subject) for f in old)]
        if picked:
            sub.queue.extend(picked)
            sub._wake.set()

    def close(self, sub: Subscription) -> None:
        if self.subscribers.pop(sub.id, None) is not None:
            self.dropped_closed += sub.dropped
        sub.closed = True
        sub._wake.set()

    def subscribe(self, filters: Iterable[str], *, after: int | None = None, kind: str = "live",
                  peer: str = "") -> _SubscriptionContext:
        return _SubscriptionContext(self, list(filters), after, kind, peer)

    def stats(self) -> dict[str, Any]:
        subs = [s.stats() for s in self.subscribers.values()]
        return {
            "last_id": self.log.last_id,
            "published": self.published,
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
