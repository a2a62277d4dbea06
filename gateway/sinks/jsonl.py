"""The `jsonl` sink: the journal appended to a file as JSON lines (one entry
per line, the format of `edgewire journal export`), fsynced before the cursor
moves. An archive that outlives the journal's retention, readable by any tool.

    [[sinks]]
    type = "jsonl"
    path = "/var/lib/edgewire/archive.jsonl"

After a crash the last lines may be written again (the cursor moves after
the fsync); every line carries the entry's `id`, so a reader drops repeats by
id. A line cut short by a power cut is skipped by readers that parse line by
line, and the sink starts a new line before writing again."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from edgewire.gateway.errors import ConfigError
from edgewire.gateway.journal import Entry
from edgewire.gateway.journal_tools import entry_record
from edgewire.gateway.sinks import JournalReader, JournalSink

__all__ = ["Sink", "validate"]


def validate(options: dict[str, Any]) -> dict[str, Any]:
    known = {"path", "fsync"}
    for k in options:
        if k not in known:
            raise ConfigError("sinks", k, options[k], "unknown key for a jsonl sink (known: path, fsync)")
    path = options.get("path")
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise ConfigError("sinks", "path", path, "expected the file to append to, e.g. /var/lib/edgewire/archive.jsonl")
    fsync = options.get("fsync", True)
    if not isinstance(fsync, bool):
        raise ConfigError("sinks", "fsync", fsync, "expected true or false")
    return {"path": path, "fsync": fsync}


class Sink(JournalSink):
    def __init__(self, table: dict[str, Any], journal: JournalReader) -> None:
        super().__init__(table, journal)
        self.path: str = table["path"]
        self.fsync: bool = table["fsync"]
        self._fd: int | None = None

    async def open(self) -> None:
        def _open() -> int:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(fd, b"\n")  # a line cut short: start a new one
            return fd

        self._fd = await asyncio.to_thread(_open)

    async def deliver(self, entries: list[Entry]) -> None:
        data = "".join(json.dumps(entry_record(e), separators=(",", ":"), allow_nan=False) + "\n"
                       for e in entries).encode()
        fd = self._fd
        assert fd is not None

        def _write() -> None:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)

        await asyncio.to_thread(_write)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
