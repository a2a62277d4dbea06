"""A sink module for tests, registered at run time like a third-party sink:
it keeps what it was given in memory and fails while `broken` is set (a
backend that is down), so the cursor must not move."""
from __future__ import annotations

from typing import Any

from edgewire.gateway.journal import Entry
from edgewire.gateway.sinks import JournalReader, JournalSink

BACKENDS: dict[str, "Sink"] = {}


def validate(options: dict[str, Any]) -> dict[str, Any]:
    return dict(options)


class Sink(JournalSink):
    def __init__(self, table: dict[str, Any], journal: JournalReader) -> None:
        super().__init__(table, journal)
        self.broken = bool(table.get("broken", False))
        self.got: list[Entry] = []
        BACKENDS[self.name] = self

    async def deliver(self, entries: list[Entry]) -> None:
        if self.broken:
            raise ConnectionError("backend unreachable")
        self.got.extend(entries)
