"""A journal written before decisions D17 (with an index on `received`) opens,
loses that index, keeps every entry, and retention by age still works."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edgewire.gateway.journal import KIND_TELEMETRY, SCHEMA, Journal, pack
from tests.gateway.conftest import wait_for


async def test_old_journal_loses_the_received_index_and_keeps_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA + "CREATE INDEX IF NOT EXISTS journal_received ON journal(received);")
    conn.execute("INSERT INTO meta(key, value) VALUES ('schema', 1)")
    old = int((time.time() - 120) * 1000)
    now = int(time.time() * 1000)
    for i, (seq, received) in enumerate([(1, old), (2, old), (3, now)], start=1):
        conn.execute("INSERT INTO journal(id, n, kind, device, boot, seq, received, body) VALUES (?,?,?,?,?,?,?,?)",
                     (i, 1, KIND_TELEMETRY, "d", 1, seq, received, pack([["t", seq, received, None]])))
    conn.close()

    j = Journal(path, max_age=60, retention_interval=0.02)
    j.open()
    try:
        assert (j.first_id, j.last_id) == (1, 3)
        check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        names = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        check.close()
        assert "journal_received" not in names and "journal_message" in names
        await wait_for(lambda: j.removed_by_age == 2, what="the two old entries to go")
        entries, _ = await j.read(0, 10)
        assert [(e.id, e.seq) for e in entries] == [(3, 3)]
    finally:
        await j.close()
