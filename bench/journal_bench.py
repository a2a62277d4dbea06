"""The journal alone: readings committed per second and the append-to-commit
latency, at synchronous=FULL and NORMAL, against bare sqlite3 doing the same
inserts (same schema and pragmas, one transaction per batch, no thread hand-off)
in the same run (its fastest way: big transactions).

Two loads per setting, each for `--seconds`:
  saturated  batches of 500 one-reading telemetry rows appended as fast as the
             journal's back-pressure (wait_space) allows: readings committed/s
  paced      10,000 readings/s in batches of 100 every 10 ms (a busy site):
             p50/p99/max of append -> commit callback, in ms

    .venv/bin/python bench/journal_bench.py [--seconds 3] [--json] [--dir DIR]

On a Raspberry Pi, measure on the card or disk that will hold the journal
(not /tmp, which may be in RAM): `--dir /var/lib/edgewire` (any folder on
that file system; the files are removed afterwards).

Run by bench/relay.py (make bench) when the gateway has a journal.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BOOT = 7
STREAM = "site-1/line-2/temperature"
SATURATED_BATCH = 500
BARE_BATCH = 10_000  # the bare baseline commits big transactions: fewer fsyncs, its fastest way
PACED_BATCH = 100
PACED_INTERVAL = 0.010


def _rows(journal_mod: Any, first_id: int, count: int, seq0: int, now_ms: int) -> list[Any]:
    Row, pack, kind = journal_mod.Row, journal_mod.pack, journal_mod.KIND_TELEMETRY
    out = []
    for k in range(count):
        i = first_id + k
        seq = seq0 + k
        out.append(Row(i, 1, kind, f"bench-{seq % 10:03d}", BOOT, seq // 10, now_ms,
                       pack([(STREAM, 21.5, now_ms, None)])))
    return out


async def _saturated(jm: Any, path: Path, synchronous: str, seconds: float) -> dict[str, Any]:
    j = jm.Journal(path, synchronous=synchronous)
    j.open()
    committed = [0]
    seq = 0
    try:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            first = j.reserve(SATURATED_BATCH)
            rows = _rows(jm, first, SATURATED_BATCH, seq, int(time.time() * 1000))
            seq += SATURATED_BATCH
            j.append(rows, then=lambda refused, n=len(rows): committed.__setitem__(0, committed[0] + n))
            await j.wait_space()
            await asyncio.sleep(0)
        await j.flush()
        elapsed = time.perf_counter() - t0
        st = j.stats()
    finally:
        await j.close()
    return {"readings_per_s": committed[0] / elapsed, "committed": committed[0], "commits": st["commits"],
            "commit_ms_avg": st["commit_ms_avg"]}


async def _paced(jm: Any, path: Path, synchronous: str, seconds: float) -> dict[str, Any]:
    j = jm.Journal(path, synchronous=synchronous)
    j.open()
    lat: list[float] = []
    seq = 0
    try:
        t0 = time.perf_counter()
        nxt = t0
        while nxt < t0 + seconds:
            first = j.reserve(PACED_BATCH)
            rows = _rows(jm, first, PACED_BATCH, seq, int(time.time() * 1000))
            seq += PACED_BATCH
            at = time.perf_counter()
            j.append(rows, then=lambda refused, at=at: lat.append(time.perf_counter() - at))
            nxt += PACED_INTERVAL
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
        await j.flush()
    finally:
        await j.close()
    lat.sort()
    ms = [x * 1000 for x in lat]
    return {"offered_per_s": PACED_BATCH / PACED_INTERVAL, "batches": len(ms),
            "p50_ms": statistics.median(ms) if ms else 0.0,
            "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0.0, "max_ms": ms[-1] if ms else 0.0}


def _bare(jm: Any, path: Path, synchronous: str, seconds: float) -> dict[str, Any]:
    """bare sqlite3: the journal's schema and connection settings, one
    transaction per BARE_BATCH rows (as large as the journal's group commits
    get when saturated), in this thread: the fastest plain way to the same rows
    (many rows per INSERT statement where the journal does so, else executemany)."""
    conn = jm._connect(str(path), synchronous, check=False)  # noqa: SLF001  (same pragmas as the journal)
    conn.executescript(jm._SCHEMA)  # noqa: SLF001
    n = 0
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rows = _rows(jm, n + 1, BARE_BATCH, n, int(time.time() * 1000))
            conn.execute("BEGIN")
            insert = getattr(jm, "_insert", None)
            if insert is not None and hasattr(jm, "_INSERTS"):  # since D18b: the statements and the row width
                insert(conn, rows, jm._INSERTS, jm._WIDTH)  # noqa: SLF001
            elif insert is not None:
                insert(conn, rows)
            else:
                conn.executemany(jm._INSERT, rows)  # noqa: SLF001
            conn.execute("COMMIT")
            n += BARE_BATCH
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    return {"readings_per_s": n / elapsed, "committed": n}


def run(seconds: float = 3.0, where: str | None = None) -> dict[str, Any]:
    from edgewire.gateway import journal as jm

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgewire-journal-bench-", dir=where) as tmp:
        d = Path(tmp)
        for sync in ("full", "normal"):
            bare = _bare(jm, d / f"bare-{sync}.db", sync, seconds)
            sat = asyncio.run(_saturated(jm, d / f"sat-{sync}.db", sync, seconds))
            paced = asyncio.run(_paced(jm, d / f"paced-{sync}.db", sync, seconds))
            out[sync] = {"bare_sqlite3": bare, "saturated": sat, "paced": paced,
                         "ratio": sat["readings_per_s"] / bare["readings_per_s"] if bare["readings_per_s"] else None}
    return out


def render(res: dict[str, Any]) -> list[str]:
    lines = ["journal alone (SQLite WAL, one-reading telemetry rows appended in batches of "
             f"{SATURATED_BATCH}; baseline: bare sqlite3, same schema, {BARE_BATCH:,} rows per transaction)"]
    for sync, r in res.items():
        sat, bare, paced = r["saturated"], r["bare_sqlite3"], r["paced"]
        lines.append(f"  synchronous={sync.upper():6s} saturated {sat['readings_per_s']:>9,.0f} readings/s "
                     f"(bare sqlite3 {bare['readings_per_s']:,.0f}: {r['ratio']:.2f}x; {sat['commits']:,} commits, "
                     f"{sat['commit_ms_avg']:.2f} ms each); at {paced['offered_per_s']:,.0f}/s append->commit "
                     f"p50 {paced['p50_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms, max {paced['max_ms']:.2f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None, help="measure in this folder (its file system), e.g. on a Pi's SD card")
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 30:
        ap.error("--seconds must be in (0, 30]")
    try:
        res = run(args.seconds, args.dir)
    except sqlite3.Error as e:
        print(f"bench/journal_bench.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2) if args.json else "\n".join(render(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
