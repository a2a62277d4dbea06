"""Counting and rate-limited logging of refused input.

Bad input never stops the gateway: each refusal is counted under its kind
(docs/protocol.md: topic, oversized, malformed, invalid, mismatch, plus the
gateway's own such as retained or unmatched_result). The first refusal of a kind
is logged at once; after that at most one line per kind per `interval`
seconds, saying how many were suppressed in between."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("edgewire.gateway.refused")


class Refusals:
    __slots__ = ("counts", "interval", "_last_log", "_suppressed", "_clock")

    def __init__(self, *, interval: float = 60.0) -> None:
        self.counts: dict[str, int] = {}
        self.interval = interval
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._clock = time.monotonic

    def count(self, kind: str, detail: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        now = self._clock()
        last = self._last_log.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + n
            return
        self._last_log[kind] = now
        hidden = self._suppressed.pop(kind, 0)
        more = f"; {hidden} more since the last report" if hidden else ""
        log.warning("refused (%s): %s [%d %s so far%s; next report of this kind in %gs at the earliest]",
                    kind, detail, self.counts[kind], kind, more, self.interval)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
