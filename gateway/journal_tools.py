"""`edgewire journal check|repair|export`: the way out when a journal is damaged.

    edgewire journal check PATH          0: readable and consistent; 2: damaged (says what)
    edgewire journal repair PATH         salvage every readable entry into a new file at PATH;
                                         the damaged file (and its -wal/-shm) is moved aside
    edgewire journal export PATH [--out FILE] [--after ID]
                                         every readable entry as JSON lines, oldest first

Also with `--config FILE` instead of PATH (the [journal] path of that
configuration). The gateway must not be running on the file (repair refuses
while it is locked). Nothing here runs inside the gateway."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from edgewire.gateway.journal import (KIND_NAMES, KIND_TELEMETRY, SCHEMA, SCHEMA_VERSION, Entry, Journal, JournalError,
                                      pack, unpack)

__all__ = ["check_file", "entry_record", "export_file", "journal_main", "repair_file", "salvage"]

_ROW = "id, n, kind, device, boot, seq, received, body"


def _open_ro(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def _readable_copy(path: str) -> str:
    """A copy of the journal (and its WAL) to read a damaged file from. A
    truncated file is padded back to the size its header declares, so that
    SQLite can read the pages that are left (the lost ones read as damaged)."""
    copy = f"{path}.salvage"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(copy + suffix):
            os.remove(copy + suffix)
    shutil.copyfile(path, copy)
    if os.path.exists(path + "-wal"):
        shutil.copyfile(path + "-wal", copy + "-wal")
    with open(copy, "r+b") as f:
        head = f.read(100)
        if len(head) == 100 and head.startswith(b"SQLite format 3\0"):
            page = struct.unpack(">H", head[16:18])[0]
            page = 65536 if page == 1 else page
            pages = struct.unpack(">I", head[28:32])[0]
            if page and pages and os.path.getsize(copy) < page * pages:
                f.truncate(page * pages)
    return copy


def _drop_copy(copy: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(copy + suffix):
            os.remove(copy + suffix)


def check_file(path: str) -> tuple[bool, list[str]]:
    """(ok, report lines)."""
    lines: list[str] = []
    try:
        conn = _open_ro(path)
    except (FileNotFoundError, sqlite3.Error) as e:
        return False, [f"{path}: cannot be opened: {e}"]
    try:
        try:
            res = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as e:
            return False, [f"{path}: damaged: {e}"]
        if res != ["ok"]:
            return False, [f"{path}: damaged: {r}" for r in res]
        try:
            lo, hi, count = conn.execute("SELECT min(id), max(id + n - 1), count(*) FROM journal").fetchone()
            kinds = dict(conn.execute("SELECT kind, count(*) FROM journal GROUP BY kind").fetchall())
            devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
            cursors = conn.execute("SELECT name, id FROM cursors").fetchall()
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as e:
            return False, [f"{path}: not a journal: {e}"]
        if version is None or version[0] != SCHEMA_VERSION:
            return False, [f"{path}: schema version {version[0] if version else None!r}, expected {SCHEMA_VERSION}"]
        lines.append(f"{path}: ok")
        lines.append(f"  entries {count} (ids {lo or 0}..{hi or 0}): "
                     + ", ".join(f"{KIND_NAMES.get(k, k)} {n}" for k, n in sorted(kinds.items())))
        lines.append(f"  devices {devices}; sink cursors: "
                     + (", ".join(f"{n}={i}" for n, i in cursors) if cursors else "none"))
        lines.append(f"  size {os.path.getsize(path)} bytes")
        return True, lines
    finally:
        conn.close()


def salvage(conn: sqlite3.Connection, stats: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    """Every readable journal row, in id order, reading around damaged pages:
    ranges that fail are split until single rows, which are skipped and counted."""
    def one(sql: str) -> Any:
        try:
            row = conn.execute(sql).fetchone()
            return None if row is None else row[0]
        except sqlite3.DatabaseError:
            return None

    lo = one("SELECT min(id) FROM journal") or one("SELECT id FROM journal ORDER BY id LIMIT 1") or 1
    hi = one("SELECT max(id) FROM journal")
    if hi is None:
        raw = one("SELECT value FROM meta WHERE key = 'next_id'")
        try:
            hi = int(unpack(raw)) if raw is not None else None
        except (ValueError, TypeError):
            hi = None
    if hi is None:
        hi = 1 << 53  # unknown: walk forward until nothing more can be read
    failed: list[tuple[int, int]] = []

    def span(a: int, b: int) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(f"SELECT {_ROW} FROM journal WHERE id BETWEEN ? AND ? ORDER BY id",
                                (a, b)).fetchall()
        except sqlite3.DatabaseError:
            if b - a < 64:
                failed.append((a, b))
                return []
            mid = (a + b) // 2
            return span(a, mid) + span(mid + 1, b)

    known = hi is not None and hi < (1 << 53)
    step = 4096
    a, quiet, top = lo, 0, 0
    # With no known end (a truncated file), stop after a long stretch with nothing readable.
    while a <= hi and (known or quiet < 256):
        rows = span(a, min(hi, a + step - 1))
        if rows:
            quiet = 0
            top = rows[-1][0]
            yield from rows
        else:
            quiet += 1
        a += step
    lost = [(x, y) for x, y in failed if x <= top]
    stats["unreadable_ranges"] = len(lost)
    stats["unreadable_ids"] = sum(y - x + 1 for x, y in lost)


def _read_table(conn: sqlite3.Connection, sql: str, what: str, notes: list[str]) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.DatabaseError as e:
        notes.append(f"{what}: unreadable ({e}); left out")
        return []


def repair_file(path: str, *, out: TextIO = sys.stdout) -> int:
    """Salvage what is readable into a fresh journal at `path`; the damaged
    file goes to `path.damaged-<time>` (with its -wal and -shm). Returns the
    number of entries kept."""
    lock = Journal(path)
    lock.lock()  # refuse while a gateway holds it
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = f"{path}.damaged-{stamp}"
        notes: list[str] = []
        stats: dict[str, int] = {}
        new_path = f"{path}.repairing"
        for p in (new_path, new_path + "-wal", new_path + "-shm"):
            if os.path.exists(p):
                os.remove(p)
        kept = 0
        next_id = 1
        dst = sqlite3.connect(new_path, isolation_level=None)
        try:
            dst.execute("PRAGMA journal_mode=WAL")
            dst.executescript(SCHEMA)
            dst.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            copy: str | None = None
            try:
                copy = _readable_copy(path)
                src = sqlite3.connect(copy, isolation_level=None)
            except (OSError, sqlite3.Error) as e:
                src = None
                notes.append(f"cannot be opened ({e}): nothing to salvage")
            if src is not None:
                try:
                    dst.execute("BEGIN")
                    batch: list[tuple[Any, ...]] = []
                    for row in salvage(src, stats):
                        batch.append(row)
                        kept += 1
                        next_id = max(next_id, int(row[0]) + int(row[1]))
                        if len(batch) >= 5000:
                            dst.executemany(f"INSERT OR IGNORE INTO journal({_ROW}) VALUES (?,?,?,?,?,?,?,?)", batch)
                            batch = []
                    dst.executemany(f"INSERT OR IGNORE INTO journal({_ROW}) VALUES (?,?,?,?,?,?,?,?)", batch)
                    devices = _read_table(src, "SELECT id, state FROM devices", "device registry", notes)
                    dst.executemany("INSERT OR REPLACE INTO devices(id, state) VALUES (?, ?)", devices)
                    cursors = _read_table(src, "SELECT name, id, updated FROM cursors", "sink cursors", notes)
                    dst.executemany("INSERT OR REPLACE INTO cursors(name, id, updated) VALUES (?, ?, ?)", cursors)
                    meta = _read_table(src, "SELECT key, value FROM meta WHERE key != 'schema'", "meta", notes)
                    for key, value in meta:
                        if key == "next_id":
                            try:
                                next_id = max(next_id, int(unpack(value)))
                            except (ValueError, TypeError):
                                pass
                        else:
                            dst.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
                    # ids never go back: a client's Last-Event-ID keeps meaning what it meant
                    dst.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_id', ?)", (pack(next_id),))
                    dst.execute("COMMIT")
                    if not devices:
                        notes.append("no device registry recovered: device counters restart from what arrives")
                finally:
                    src.close()
            if copy is not None:
                _drop_copy(copy)
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
        os.replace(new_path, path)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(new_path + suffix):
                os.remove(new_path + suffix)
        lost = stats.get("unreadable_ids", 0)
        print(f"{path}: repaired: {kept} entries kept"
              + (f", about {lost} ids in {stats.get('unreadable_ranges', 0)} damaged ranges lost" if lost else "")
              + f"; ids continue at {next_id}", file=out)
        for n in notes:
            print(f"  {n}", file=out)
        print(f"  the damaged file is kept as {aside}", file=out)
        return kept
    finally:
        lock.unlock()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def entry_record(e: Entry) -> dict[str, Any]:
    """A journal entry as a JSON-ready dict (export and the jsonl sink)."""
    rec: dict[str, Any] = {"id": e.id, "kind": KIND_NAMES.get(e.kind, e.kind), "device": e.device,
                           "received": e.received}
    if e.kind == KIND_TELEMETRY:
        rec["boot"], rec["seq"] = e.boot, e.seq
        rec["readings"] = [{"id": e.id + k, "stream": r[0], "value": r[1], "ts": r[2], "error": r[3]}
                           for k, r in enumerate(e.data)] if isinstance(e.data, list) else e.data
    else:
        rec["data"] = e.data
    return _clean(rec)  # type: ignore[no-any-return]


def export_file(path: str, out: TextIO, *, after: int = 0) -> int:
    """Readable entries with ids > after as JSON lines; returns how many."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    healthy, _ = check_file(path)
    # a healthy journal is read in place (also while a gateway writes it: WAL); a damaged one from a copy
    copy = None if healthy else _readable_copy(path)
    conn = _open_ro(path) if copy is None else sqlite3.connect(copy, isolation_level=None)
    stats: dict[str, int] = {}
    n = 0
    try:
        for i, cnt, kind, device, boot, seq, received, body in salvage(conn, stats):
            if i + cnt - 1 <= after:
                continue
            try:
                data = unpack(body)
            except Exception as e:  # a damaged body: say so, keep going
                data = {"unreadable": str(e)}
            rec = entry_record(Entry(i, cnt, kind, device, boot, seq, received, data))
            out.write(json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n")
            n += 1
    finally:
        conn.close()
        if copy is not None:
            _drop_copy(copy)
    if stats.get("unreadable_ranges"):
        print(f"{path}: {stats['unreadable_ranges']} damaged ranges skipped", file=sys.stderr)
    return n


def journal_main(args: argparse.Namespace) -> int:
    from edgewire.gateway.config import load_config
    from edgewire.gateway.errors import ConfigError

    path = args.path
    if args.config:
        try:
            path = load_config(args.config).journal.path
        except ConfigError as e:
            print(f"ConfigError: {e}", file=sys.stderr)
            return 2
    if not path:
        print("error: give the journal's path, or --config FILE", file=sys.stderr)
        return 2
    if args.action == "check":
        ok, lines = check_file(path)
        print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
        if not ok:
            print(f"recover with: edgewire journal repair {path}", file=sys.stderr)
        return 0 if ok else 2
    if args.action == "repair":
        try:
            repair_file(path)
        except JournalError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        if args.out:
            with open(Path(args.out), "w", encoding="utf-8") as f:
                n = export_file(path, f, after=args.after)
        else:
            n = export_file(path, sys.stdout, after=args.after)
    except (FileNotFoundError, sqlite3.Error) as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 1
    print(f"{n} entries exported", file=sys.stderr)
    return 0
