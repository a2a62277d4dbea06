"""A damaged journal at start: exit 2 with a message that names the file and
the command that recovers; `edgewire journal check|repair|export` work, and
the gateway starts again on the repaired file with what could be read."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from edgewire.gateway.journal import KIND_TELEMETRY, Journal, Row, pack
from tests.support.broker import Mosquitto, free_port

EDGEWIRE = Path(sys.executable).parent / "edgewire"


def edgewire(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGEWIRE), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


async def make_journal(path: Path, messages: int = 3000) -> None:
    """A journal of `messages` telemetry entries (3 readings each) and one device."""
    import time

    j = Journal(path)
    j.open()
    now = int(time.time() * 1000)
    for seq in range(1, messages + 1):
        first = j.reserve(3)
        j.append([Row(first, 3, KIND_TELEMETRY, "dev-x", 1, seq, now,
                      pack([[f"s{k}", seq * 10 + k, now, None] for k in range(3)]))],
                 devices=[("dev-x", pack({"id": "dev-x", "messages": seq, "first_seen": now}))])
    await j.flush()
    await j.close()
    # a clean copy: everything in the main file (what a long-running gateway's checkpoints do)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def corrupt(path: Path) -> None:
    """Overwrite pages in the middle of the file with garbage (a bad sector)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 - (size // 2) % 4096)
        f.write(b"\xa5" * 4096 * 3)


def truncate(path: Path) -> None:
    """Cut the file in half (a copy that stopped, a full disk)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def gateway_config(tmp_path: Path, broker: Mosquitto, journal: Path) -> Path:
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[mqtt]\nurl = "{broker.url}"\n[http]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                    f'[journal]\npath = "{journal}"\n')
    return conf


@pytest.mark.parametrize("damage", [corrupt, truncate], ids=["corrupt", "truncated"])
async def test_damaged_journal_stops_the_gateway_and_repair_recovers(tmp_path: Path, broker: Mosquitto,
                                                                     damage: object) -> None:
    journal = tmp_path / "journal.db"
    await make_journal(journal)
    conf = gateway_config(tmp_path, broker, journal)
    assert edgewire("journal", "check", str(journal)).returncode == 0
    damage(journal)  # type: ignore[operator]

    r = await asyncio.to_thread(edgewire, "gateway", "--config", str(conf))
    assert r.returncode == 2, r.stderr
    assert str(journal) in r.stderr and f"edgewire journal repair {journal}" in r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout

    r = edgewire("journal", "check", "--config", str(conf))
    assert r.returncode == 2 and "damaged" in r.stderr and f"edgewire journal repair {journal}" in r.stderr

    r = edgewire("journal", "repair", str(journal))
    assert r.returncode == 0, r.stderr
    assert "repaired" in r.stdout and "damaged file is kept as" in r.stdout
    kept = int(r.stdout.split("repaired: ")[1].split(" entries")[0])
    assert 0 < kept < 3000  # what was readable, no more
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("journal.db.damaged-")]
    assert aside, list(tmp_path.iterdir())

    r = edgewire("journal", "check", str(journal))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "export.jsonl"
    r = edgewire("journal", "export", str(journal), "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == kept
    seqs = [x["seq"] for x in lines]
    assert seqs == sorted(set(seqs)) and all(1 <= s <= 3000 for s in seqs)
    assert all(x["readings"][k]["value"] == x["seq"] * 10 + k for x in lines for k in range(3))
    ids = [x["id"] for x in lines]
    assert ids == sorted(ids)

    # the gateway starts on the repaired journal; its ids go on after the old highest
    p = subprocess.Popen([str(EDGEWIRE), "gateway", "--config", str(conf)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = await asyncio.to_thread(p.stdout.readline)
        assert "edgewire gateway" in line
    finally:
        p.terminate()
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    conn = sqlite3.connect(journal)
    next_id = msgpack.unpackb(conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0])
    conn.close()
    assert next_id == 3 * 3000 + 1


def test_not_a_journal_at_all(tmp_path: Path, broker: Mosquitto) -> None:
    journal = tmp_path / "journal.db"
    journal.write_bytes(os.urandom(8192))
    conf = gateway_config(tmp_path, broker, journal)
    r = edgewire("gateway", "--config", str(conf))
    assert r.returncode == 2 and str(journal) in r.stderr and "edgewire journal repair" in r.stderr
    r = edgewire("journal", "repair", str(journal))
    assert r.returncode == 0 and "0 entries kept" in r.stdout, r.stdout + r.stderr
    assert edgewire("journal", "check", str(journal)).returncode == 0


async def test_repair_refuses_while_a_gateway_holds_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    j = Journal(journal)
    j.open()
    try:
        r = await asyncio.to_thread(edgewire, "journal", "repair", str(journal))
        assert r.returncode == 1 and "in use by another process" in r.stderr
    finally:
        await j.close()
