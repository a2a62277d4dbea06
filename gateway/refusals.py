"""Counting and rate-limited logging of refused input, and the same rate limit
for any error that can repeat without bound.

Bad input never stops the gateway: each refusal is counted under its kind
(docs/protocol.md: topic, oversized, malformed, invalid, mismatch, plus the
gateway's own such as retained or unmatched_result). The first refusal of a kind
is logged at once; after that at most one line per kind per `interval`
seconds, saying how many were suppressed in between.

`Throttle` is that rule on its own. `ThrottleFilter` applies it to a logger
(aiohttp's server log: one traceback per malformed request otherwise), and
the event-loop exception handler below to the loop's error reports (asyncio logs
every failed accept(), e.g. "Too many open files"). Only the first line of a
kind carries its traceback; later ones name the exception in one line."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("edgewire.gateway.refused")

__all__ = ["Refusals", "Throttle", "ThrottleFilter", "throttled_exception_handler"]


class Throttle:
    """Per key: allow the first occurrence, then at most one per `interval`
    seconds. `allow(key)` returns None to suppress, else how many were
    suppressed since the last allowed one. At most `max_keys` keys are kept."""

    __slots__ = ("interval", "max_keys", "_last", "_suppressed", "seen", "_clock")

    def __init__(self, *, interval: float, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        self.seen: set[Hashable] = set()
        self._clock: Callable[[], float] = time.monotonic

    def allow(self, key: Hashable, n: int = 1) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + n
            return None
        if last is None and len(self._last) >= self.max_keys:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class Refusals:
    __slots__ = ("counts", "_throttle")

    def __init__(self, *, interval: float = 60.0) -> None:
        self.counts: dict[str, int] = {}
        self._throttle = Throttle(interval=interval)

    @property
    def interval(self) -> float:
        return self._throttle.interval

    @property
    def _clock(self) -> Callable[[], float]:
        return self._throttle._clock

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        self._throttle._clock = clock

    def count(self, kind: str, detail: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        hidden = self._throttle.allow(kind, n)
        if hidden is None:
            return
        more = f"; {hidden} more since the last report" if hidden else ""
        log.warning("refused (%s): %s [%d %s so far%s; next report of this kind in %gs at the earliest]",
                    kind, detail, self.counts[kind], kind, more, self.interval)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _exc_key(exc: BaseException | None) -> str:
    return "" if exc is None else type(exc).__qualname__


class ThrottleFilter(logging.Filter):
    """Rate-limit a logger's records by (message template, exception type)."""

    def __init__(self, *, interval: float) -> None:
        super().__init__()
        self.throttle = Throttle(interval=interval)
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, str(record.msg), _exc_key(exc))
        hidden = self.throttle.allow(key)
        if hidden is None:
            self.suppressed += 1
            return False
        tail = f" [{hidden} like it suppressed in the last {self.throttle.interval:g}s]" if hidden else ""
        if key in self.throttle.seen and exc is not None:
            # the traceback was shown once; later reports name the exception only
            record.msg = f"{record.msg}: {type(exc).__name__}: {str(exc)[:200]}{tail}"
            record.exc_info = None
            record.exc_text = None
        else:
            self.throttle.seen.add(key)
            record.msg = f"{record.msg}{tail}"
        return True


def throttled_exception_handler(interval: float) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event-loop exception handler that reports each kind of error (message
    and exception type) at most once per `interval`, the first with its
    traceback, later ones in one line with the number suppressed."""
    throttle = Throttle(interval=interval)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", "unhandled error in the event loop"))
        key = (message, _exc_key(exc))
        hidden = throttle.allow(key)
        if hidden is None:
            return
        ctx = dict(context)
        tail = f" [{hidden} like it suppressed in the last {interval:g}s]" if hidden else ""
        if key in throttle.seen and exc is not None:
            ctx.pop("exception", None)
            ctx["message"] = f"{message}: {type(exc).__name__}: {str(exc)[:200]}{tail}"
        else:
            throttle.seen.add(key)
            ctx["message"] = message + tail
        loop.default_exception_handler(ctx)

    return handle
