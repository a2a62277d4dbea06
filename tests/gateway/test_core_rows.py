"""What the core writes for telemetry: journal bodies byte for byte as
journal.pack makes them (the one-float-reading short path included, D23's
second pass), events and their JSON as the hub hands them out."""
from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from edgewire.gateway.commands import Commands
from edgewire.gateway.core import Core
from edgewire.gateway.decode import Telemetry
from edgewire.gateway.hub import Hub, readings_frame
from edgewire.gateway.journal import Journal, pack, unpack
from edgewire.gateway.refusals import Refusals
from edgewire.gateway.registry import Registry

NOW = int(time.time() * 1000)

# (readings as decoded, device time or None): every kind of value, errors, several readings
CASES: list[tuple[list[tuple[str, Any, int, str | None]], int | None]] = [
    ([("temperature", 21.5, 1000, None)], None),                   # the short path
    ([("site-1/line-2/temperature", -0.1, 0, None)], NOW),          # the short path, device time
    ([("t", float("inf"), 5, None)], None),                          # still a float
    ([("t", float("nan"), 5, None)], None),
    ([("t", 21, 5, None)], None),                                    # int: msgpack's own packing
    ([("t", True, 5, None)], None),
    ([("t", "on", 5, None)], None),
    ([("t", None, 5, "sensor timeout")], None),                      # an error reading
    ([("a", 1.0, 5, None), ("b", 2.0, 6, None)], None),              # two readings
    ([("x" * 200, 3.25, 7, None)], None),                            # a long stream name (str 8)
    ([("t", 1.5, 5, None)], 1000),                                   # a timestamp below 2**32 ms
]


async def test_bodies_are_journal_pack_bytes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    journal.open()
    hub = Hub(source=journal, last_id=journal.last_id)
    core = Core(registry=Registry(), hub=hub, commands=Commands(publisher=None), refusals=Refusals(),  # type: ignore[arg-type]
                journal=journal)
    sub = hub.open(["#"], kind="ws", peer="test")
    try:
        batch: list[Telemetry] = []
        for seq, (readings, tm) in enumerate(CASES, 1):
            batch.append(("dev-1", 1, seq, 100, tm, list(readings)))
        core.accept_telemetry(batch, NOW)
        core.commit()
        await journal.flush()
        db = sqlite3.connect(journal.path)
        try:
            bodies = [b for (b,) in db.execute("SELECT body FROM journal ORDER BY id")]
        finally:
            db.close()
        expected = []
        for readings, tm in CASES:
            base = (NOW if tm is None else tm) - 100
            expected.append([(s, v, base + up, e) for s, v, up, e in readings])
        assert bodies == [pack(b) for b in expected]
        events = sub.take(1000)
        assert len(events) == sum(len(r) for r, _ in CASES)
        frame = json.loads(readings_frame(events))
        got = [(e["stream"], e["value"], e["ts"], e.get("error")) for e in frame["events"]]
        want = [(s, None if type(v) is float and not math.isfinite(v) else v, ts, e)
                for b in expected for s, v, ts, e in b]
        assert got == want
        assert [e["id"] for e in frame["events"]] == list(range(1, len(want) + 1))
        assert [json.loads(e.json) for e in events] == frame["events"]
        assert [unpack(b) for b in bodies][0] == [["temperature", 21.5, NOW - 100 + 1000, None]]
    finally:
        hub.close(sub)
        await journal.close()
