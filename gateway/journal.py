"""The journal: every accepted message, in order, in one SQLite file (WAL).

It is the gateway's truth (docs/gateway.md, "The journal"):

- **Order and ids.** Each entry takes a range of gateway sequence numbers:
  a telemetry message one per reading (these are the SSE/WebSocket event
  ids), a birth, death or command result one. Ids are handed out on the event
  loop in append order and become visible (`last_id`) only once committed, so
  an id a client has seen always means the same event, also after a crash.
- **De-duplication.** A unique key on (device, boot, seq) of telemetry: a
  redelivery that the in-memory window did not catch (after a restart, say)
  is refused by SQLite, counted in `duplicates` and reported back to the
  caller so that it is never published.
- **Registry.** The device registry's state is written in the same
  transaction as the messages that changed it (`devices` table), so after a
  crash it matches the journal exactly and is rebuilt from it at start.
- **Group commit on a writer thread.** `append()` only queues; one thread
  writes everything queued in one transaction, commits, and hands the result
  back to the loop (`call_soon_threadsafe`), where the entry's `then`
  callback runs: that is where the pipeline publishes to the live hub and
  sends the MQTT acknowledgements. While a commit runs, the next batch
  gathers, so the commit rate adapts to the load.
- **Retention** by size and by age, oldest first, counted (`removed_*`).
- **Cursors** of sinks (name -> last confirmed id), stored in the file.

Reads for resume and sinks (`read()`) run on a separate reader thread with
its own connection (WAL lets it read while the writer writes).

    journal = Journal(path, synchronous="full")
    journal.open()                           # JournalCorrupt -> exit 2 with a recovery hint
    first = journal.reserve(n)               # ids first .. first+n-1
    journal.append(rows, then=on_commit)     # on_commit(refused_ids) on the loop after COMMIT
    entries, upto = await journal.read(after, limit)
    await journal.close()
"""
from __future__ import annotations

import asyncio
import collections
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from edgewire.gateway.errors import GatewayError

log = logging.getLogger("edgewire.gateway.journal")

__all__ = ["Entry", "Journal", "JournalCorrupt", "JournalError", "JournalLocked", "KIND_BIRTH", "KIND_DEATH",
           "KIND_NAMES", "KIND_RESULT", "KIND_TELEMETRY", "Row", "SCHEMA", "Encoded", "pack", "unpack"]

SCHEMA_VERSION = 1

KIND_TELEMETRY = 0
KIND_BIRTH = 1
KIND_DEATH = 2
KIND_RESULT = 3
KIND_NAMES = {KIND_TELEMETRY: "telemetry", KIND_BIRTH: "birth", KIND_DEATH: "death", KIND_RESULT: "result"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal(
    id INTEGER PRIMARY KEY,     -- first gateway sequence number of the entry
    n INTEGER NOT NULL,         -- how many it takes: readings of a telemetry message, else 1
    kind INTEGER NOT NULL,      -- 0 telemetry, 1 birth, 2 death, 3 command result
    device TEXT NOT NULL,
    boot INTEGER,               -- telemetry: the device's (boot, seq); NULL otherwise
    seq INTEGER,
    received INTEGER NOT NULL,  -- ms since the epoch, when the gateway accepted it
    body BLOB NOT NULL,         -- msgpack: telemetry [[stream, value, ts, error], ...]; else the message's fields
    wire BLOB                   -- telemetry, when a sink asked for it: its readings as that sink sends them (D18b)
);
CREATE UNIQUE INDEX IF NOT EXISTS journal_message ON journal(device, boot, seq) WHERE kind = 0;
CREATE TABLE IF NOT EXISTS devices(id TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors(name TEXT PRIMARY KEY, id INTEGER NOT NULL, updated INTEGER NOT NULL)
    WITHOUT ROWID;
"""

_SCHEMA = SCHEMA  # the old name (bench/journal_bench.py uses it)

# Journals written before D17 had an index on `received` for retention by age;
# every row paid a third b-tree insert for it. Age retention now walks the id
# order (ids are handed out in arrival order), so the index is dropped at open.
_MIGRATE = "DROP INDEX IF EXISTS journal_received"
# Journals written before D18b have no `wire` column: added at open (NULL: encoded when read).
_ADD_WIRE = "ALTER TABLE journal ADD COLUMN wire BLOB"

# Memory an entry holds while it waits for its commit, beyond its body: the
# Row, and per id (reading) the hub Event that waits with it (object, subject
# string, value). Measured with tracemalloc on the bench's 100-byte telemetry
# (bench/loopcost.py --memory); the backlog limit [journal] max_pending_bytes
# counts body + ROW_COST + IDS_COST per id.
ROW_COST = 200
ID_COST = 250

# read_encoded() on the event loop: LOOP_READ_SLOW_IN_A_ROW reads in a row slower than
# LOOP_READ_MAX send the reads of the next LOOP_READ_BACKOFF seconds to the reader thread (D18b)
LOOP_READ_MAX = 0.002
LOOP_READ_SLOW_IN_A_ROW = 3
LOOP_READ_BACKOFF = 10.0

_INSERT = "INSERT OR IGNORE INTO journal(id, n, kind, device, boot, seq, received, body) VALUES (?,?,?,?,?,?,?,?)"

# Rows per INSERT statement (D17): one statement with many VALUES rows is one
# sqlite3_step, so the writer thread releases and retakes the GIL once per
# statement instead of once per row (executemany), and a busy event loop no
# longer starves it. The largest chunk is capped by SQLite's variable limit.
# 1024 (was 256, D23): under a QoS 0 flood each hand-off waits for the busy loop
# (up to the 5 ms switch interval), so a 4 MiB backlog's commit took 30 of them;
# 4096 measured no better and its parameter list cost 6 MB of peak RSS.
_CHUNKS = (1024, 256, 64, 16, 4, 1)


def _insert_sql(k: int, wire: bool = False) -> str:
    head = _INSERT.split(" VALUES ")[0]
    if wire:
        head = head.replace("body)", "body, wire)")
    row = "(" + ",".join("?" * (9 if wire else 8)) + ")"
    return head + " VALUES " + ",".join([row] * k)


_INSERTS = {k: _insert_sql(k) for k in _CHUNKS}
# ... and with each telemetry row's `wire` (when the journal has an encoder, D18b)
_INSERTS_WIRE = {k: _insert_sql(k, wire=True) for k in _CHUNKS}


class Encoded(NamedTuple):
    """Entries as read_encoded() hands them to a sink: their readings already in the sink's
    encoding, joined (decision D18b)."""

    first_id: int        # the first entry's id (telemetry or not)
    last_id: int         # the last id the entries cover
    entries: int
    readings: int        # ids of telemetry entries
    received: int        # the first entry's `received` (ms)
    data: bytes          # the telemetry entries' encodings, in id order; b"" when none holds a reading
    error: str           # an entry the encoder refused: why (data then stops before it)

    def __bool__(self) -> bool:   # something to deliver, or an entry to report as failing
        return self.entries > 0 or bool(self.error)


class JournalError(GatewayError):
    """The journal cannot be opened or written."""


class JournalCorrupt(JournalError):
    """The file is not a readable journal (corrupt, truncated, not SQLite)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"journal {path} is damaged: {detail}. Nothing was changed. Recover with "
                         f"`edgewire journal repair {path}` (keeps every readable entry, moves the damaged "
                         f"file aside), or look first with `edgewire journal check {path}`")


class JournalLocked(JournalError):
    """Another process holds the journal."""


class Row(NamedTuple):
    """One journal entry as written: ids id .. id+n-1."""

    id: int
    n: int
    kind: int
    device: str
    boot: int | None
    seq: int | None
    received: int
    body: bytes


class Entry(NamedTuple):
    """One journal entry as read back; `data` is the decoded body."""

    id: int
    n: int
    kind: int
    device: str
    boot: int | None
    seq: int | None
    received: int
    data: Any


@dataclass(slots=True)
class _Append:
    rows: list[Row]
    devices: list[tuple[str, bytes | None]]   # (id, state) upserts; None deletes
    meta: list[tuple[str, bytes]]
    cursors: list[tuple[str, int]]
    then: Callable[[set[int]], None] | None
    queued_at: float
    cost: int   # bytes it holds in memory until committed (see ROW_COST)


_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


def pack(obj: Any) -> bytes:
    b: bytes = msgpack.packb(obj, use_bin_type=True)
    return b


def unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


class Journal:
    """See the module docstring. Nothing is opened until open()."""

    def __init__(self, path: str | Path, *, synchronous: str = "full", max_bytes: int = 512 * 1024 * 1024,
                 max_age: float = 30 * 86400.0, max_pending: int = 50_000, max_pending_bytes: int = 4 << 20,
                 retention_interval: float = 1.0) -> None:
        if synchronous not in _SYNC:
            raise ValueError(f"synchronous {synchronous!r}: expected full, normal or off")
        self.path = str(path)
        self.synchronous = synchronous
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.retention_interval = retention_interval
        # ids: reserved on the loop, committed by the writer
        self.next_id = 1
        self.last_id = 0        # highest committed id
        self.first_id = 1       # lowest id still kept
        self.opened_last_id = 0  # last_id found at open (what a restart recovered)
        # what open() found, for rebuilding the registry and the sinks
        self.devices: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.cursors: dict[str, int] = {}
        # counters
        self.appended = 0            # entries committed
        self.appended_ids = 0
        self.duplicates = 0          # entries refused by the unique key
        self.commits = 0
        self.commit_seconds = 0.0
        self.commit_max = 0.0
        self.latencies: collections.deque[float] = collections.deque(maxlen=4096)  # append -> committed
        self.removed_entries = 0     # by retention
        self.removed_ids = 0
        self.removed_by_age = 0
        self.removed_by_size = 0
        self.write_errors = 0
        self.failing = False         # the last write failed (cleared by the next commit)
        self.last_error = ""
        self.pending_rows = 0        # rows appended, not committed yet
        self.pending_bytes = 0       # the memory they hold (estimated: bodies + ROW_COST + ID_COST per id)
        self.pending_bytes_max = 0   # the most it held
        self.space_waits = 0         # times ingest waited for the writer (a backlog limit reached)
        self._pending: list[_Append] = []
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._lock_fd: int | None = None
        self.listeners: list[Callable[[], None]] = []  # told after every commit (sinks)
        self._space: asyncio.Event | None = None
        self.size_bytes = 0
        # D18b: a sink that sends every reading in one fixed encoding (the grpc sink) sets this;
        # the writer thread then stores each telemetry row's encoding with it (`wire`), and the
        # sink reads those bytes instead of decoding and encoding each reading on the event loop.
        # encoder(id, device, boot, seq, readings) -> bytes.
        self.encoder: Callable[[int, str, int | None, int | None, Any], bytes] | None = None
        self.encode_errors = 0
        self.slow_loop_reads = 0       # read_encoded() on the loop took > LOOP_READ_MAX
        self._thread_reads_until = 0.0
        self._slow_in_a_row = 0
        self._loop_reader: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ open/close
    def open(self) -> None:
        """Open (or create) the file, check it, load ids, devices and cursors,
        and start the writer. Raises JournalCorrupt, JournalLocked, JournalError."""
        self._loop = asyncio.get_running_loop()
        self._space = asyncio.Event()
        self._space.set()
        p = Path(self.path)
        if p.parent and not p.parent.exists():
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise JournalError(f"journal {self.path}: cannot create its folder: {e.strerror}") from None
        self.lock()
        try:
            conn = _connect(self.path, self.synchronous, check=True)
            try:
                self._load(conn)
            finally:
                conn.close()
        except BaseException:
            self.unlock()
            raise
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-reader")
        log.info("journal %s: ids %d..%d, %d devices, synchronous=%s", self.path, self.first_id, self.last_id,
                 len(self.devices), self.synchronous.upper())

    def lock(self) -> None:
        """Take the journal file's lock (one process at a time); JournalLocked if held."""
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise JournalError(f"journal {self.path}: cannot create {self.path}.lock: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalLocked(f"journal {self.path} is in use by another process (another gateway on the same "
                                "[journal] path?)") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self, conn: sqlite3.Connection) -> None:
        try:
            conn.executescript(SCHEMA)
            conn.execute(_MIGRATE)
            if "wire" not in {c[1] for c in conn.execute("PRAGMA table_info(journal)")}:
                conn.execute(_ADD_WIRE)
            version = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None:
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif version[0] != SCHEMA_VERSION:
                raise JournalError(f"journal {self.path}: schema version {version[0]!r}, this gateway reads "
                                   f"{SCHEMA_VERSION}; export it with an older gateway or move it aside")
            lo, hi = conn.execute("SELECT min(id), max(id + n - 1) FROM journal").fetchone()
            for key, value in conn.execute("SELECT key, value FROM meta"):
                if key != "schema":
                    self.meta[key] = unpack(value)
            floor = int(self.meta.get("next_id", 1))
            self.last_id = max(int(hi or 0), floor - 1)
            self.next_id = self.last_id + 1
            self.first_id = int(lo) if lo is not None else self.next_id
            self.opened_last_id = self.last_id
            self.devices = {d: unpack(s) for d, s in conn.execute("SELECT id, state FROM devices")}
            self.cursors = {name: int(i) for name, i in conn.execute("SELECT name, id FROM cursors")}
            self.size_bytes = _size(conn)
        except sqlite3.DatabaseError as e:
            raise JournalCorrupt(self.path, str(e)) from None
        except (ValueError, msgpack.UnpackException) as e:
            raise JournalCorrupt(self.path, f"unreadable state: {e}") from None

    async def close(self) -> None:
        """Commit what is queued (its callbacks run), stop the threads, unlock."""
        if self._thread is not None:
            with self._cv:
                self._closing = True
                self._cv.notify()
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            # run the last commit's callbacks, queued by the writer before it ended
            await asyncio.sleep(0)
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        if self._loop_reader is not None:
            self._loop_reader.close()
            self._loop_reader = None
        self.unlock()

    # ------------------------------------------------------------------ writing
    def reserve(self, n: int) -> int:
        """Take n consecutive ids (n >= 1); returns the first."""
        first = self.next_id
        self.next_id = first + n
        return first

    @property
    def backlog(self) -> int:
        """Rows appended and not committed yet."""
        return self.pending_rows

    @staticmethod
    def cost(rows: Iterable[Row]) -> int:
        """The memory rows hold until committed, as the backlog counts it."""
        return sum(len(r.body) + ROW_COST + ID_COST * r.n for r in rows)

    def append(self, rows: list[Row], *, devices: Iterable[tuple[str, bytes | None]] = (),
               meta: Iterable[tuple[str, bytes]] = (), cursors: Iterable[tuple[str, int]] = (),
               then: Callable[[set[int]], None] | None = None, cost: int | None = None) -> None:
        """Queue rows (ids from reserve(), in order) and registry state for the
        next commit. `then(refused)` runs on the loop after COMMIT, with the ids
        of the rows the unique key refused (duplicates); entries commit in
        append order. `cost`: the caller's Journal.cost(rows), when it has it.
        Never blocks: see wait_space() for back-pressure."""
        if self._thread is None:
            raise JournalError("journal is not open")
        if cost is None:
            cost = self.cost(rows)
        item = _Append(rows, list(devices), list(meta), list(cursors), then, time.perf_counter(), cost)
        with self._cv:
            self._pending.append(item)
            self.pending_rows += len(rows)
            self.pending_bytes += cost
            self._cv.notify()
        if self.pending_bytes > self.pending_bytes_max:
            self.pending_bytes_max = self.pending_bytes
        if (self.pending_rows * 4 >= self.max_pending * 5 or self.pending_bytes * 4 >= self.max_pending_bytes * 5) \
                and self._space is not None:
            self._space.clear()

    async def wait_space(self) -> None:
        """Wait while the backlog is past 1.25x max_pending rows or
        max_pending_bytes, until it is down to half (ingest calls this between
        batches: the transport then applies back-pressure)."""
        if self._space is not None and not self._space.is_set():
            self.space_waits += 1
            await self._space.wait()

    async def flush(self) -> None:
        """Wait until everything appended so far is committed."""
        if self._thread is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(_: set[int]) -> None:
            if not fut.done():
                fut.set_result(None)

        self.append([], then=done)
        await fut

    def _writer(self) -> None:
        try:
            self._write_loop()
        except BaseException as e:  # a bug, not a disk error: stop loudly, health says so
            self.failing = True
            self.last_error = f"writer stopped: {type(e).__name__}: {e}"
            log.critical("journal %s: the writer stopped (%s); nothing more is committed or acknowledged",
                         self.path, self.last_error, exc_info=True)

    def _write_loop(self) -> None:
        conn = _connect(self.path, self.synchronous, check=False)
        loop = self._loop
        assert loop is not None
        next_retention = 0.0
        delay = 0.05
        try:
            while True:
                with self._cv:
                    while not self._pending and not self._closing:
                        self._cv.wait(self.retention_interval)
                        if time.monotonic() >= next_retention:
                            break
                    items = self._pending
                    self._pending = []
                    closing = self._closing
                if items:
                    try:
                        refused, seconds = self._commit(conn, items)
                    except sqlite3.Error as e:
                        # Nothing was committed: keep the items (their acks wait), retry with backoff.
                        self.write_errors += 1
                        self.failing = True
                        self.last_error = f"{type(e).__name__}: {e}"
                        log.error("journal %s: write failed (%s); retrying in %.2f s, nothing acknowledged "
                                  "meanwhile", self.path, self.last_error, delay)
                        with self._cv:
                            self._pending[:0] = items
                        if closing:
                            return
                        time.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    delay = 0.05
                    self.failing = False
                    _post(loop, self._committed, items, refused, seconds)
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self.retention_interval
                    try:
                        self._retain(conn)
                    except sqlite3.Error as e:
                        self.last_error = f"retention: {type(e).__name__}: {e}"
                        log.error("journal %s: retention failed: %s", self.path, e)
                if closing and not items:
                    with self._cv:
                        if not self._pending:
                            return
        finally:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _commit(self, conn: sqlite3.Connection, items: list[_Append]) -> tuple[set[int], float]:
        t0 = time.perf_counter()
        rows = [r for it in items for r in it.rows]
        refused: set[int] = set()
        conn.execute("BEGIN")
        try:
            if rows:
                before = conn.total_changes
                if self.encoder is not None:
                    _insert(conn, self._with_wire(rows), _INSERTS_WIRE, _WIDTH + 1)
                else:
                    _insert(conn, rows, _INSERTS, _WIDTH)
                if conn.total_changes - before != len(rows):
                    # Some were refused by the unique key: find which (rare).
                    ids = [r.id for r in rows]
                    kept: set[int] = set()
                    for i in range(0, len(ids), 500):
                        part = ids[i:i + 500]
                        q = "SELECT id FROM journal WHERE id IN (" + ",".join("?" * len(part)) + ")"
                        kept.update(x for (x,) in conn.execute(q, part))
                    refused = set(ids) - kept
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_id', ?)",
                             (pack(rows[-1].id + rows[-1].n),))
            states: dict[str, bytes | None] = {}
            metas: dict[str, bytes] = {}
            cursors: dict[str, int] = {}
            for it in items:
                states.update(it.devices)
                metas.update(it.meta)
                cursors.update(it.cursors)
            if cursors:
                now = int(time.time() * 1000)
                conn.executemany("INSERT OR REPLACE INTO cursors(name, id, updated) VALUES (?, ?, ?)",
                                 [(k, v, now) for k, v in cursors.items()])
            upserts = [(d, s) for d, s in states.items() if s is not None]
            if upserts:
                conn.executemany("INSERT OR REPLACE INTO devices(id, state) VALUES (?, ?)", upserts)
            deletes = [(d,) for d, s in states.items() if s is None]
            if deletes:
                conn.executemany("DELETE FROM devices WHERE id = ?", deletes)
            if metas:
                conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(metas.items()))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return refused, time.perf_counter() - t0

    def _with_wire(self, rows: list[Row]) -> list[tuple[Any, ...]]:
        """Rows with their encoding (on the writer thread); None for what is not telemetry
        or what the encoder refuses (the sink meets that again when it reads, and counts it)."""
        enc = self.encoder
        assert enc is not None
        out = []
        for r in rows:
            w = None
            if r.kind == KIND_TELEMETRY:
                try:
                    w = enc(r.id, r.device, r.boot, r.seq, unpack(r.body))
                except Exception:
                    self.encode_errors += 1
            out.append((*r, w))
        return out

    def _committed(self, items: list[_Append], refused: set[int], seconds: float) -> None:
        """On the loop: the items are durable. Advance last_id, run callbacks."""
        now = time.perf_counter()
        self.commits += 1
        self.commit_seconds += seconds
        self.commit_max = max(self.commit_max, seconds)
        n = cost = 0
        for it in items:
            rows = it.rows
            n += len(rows)
            cost += it.cost
            if rows:
                if refused:
                    for r in rows:
                        if r.id not in refused:
                            self.appended += 1
                            self.appended_ids += r.n
                else:
                    self.appended += len(rows)
                    self.appended_ids += sum([r.n for r in rows])
                last = rows[-1]  # rows are in id order
                end = last.id + last.n - 1
                if end > self.last_id:
                    self.last_id = end
            self.latencies.append(now - it.queued_at)
        self.duplicates += len(refused)
        with self._cv:
            self.pending_rows -= n
            self.pending_bytes -= cost
        if self._space is not None and self.pending_rows < self.max_pending // 2 \
                and self.pending_bytes < self.max_pending_bytes // 2:
            self._space.set()
        for it in items:
            if it.then is not None:
                mine = {r.id for r in it.rows if r.id in refused} if refused else refused
                try:
                    it.then(mine)
                except Exception:  # a callback's bug must not stop the next ones
                    log.exception("journal commit callback failed")
        for listener in self.listeners:
            listener()

    # ------------------------------------------------------------------ retention
    def _retain(self, conn: sqlite3.Connection) -> None:
        removed: dict[str, list[int]] = {"age": [0, 0], "size": [0, 0]}   # why -> [entries, ids]
        if self.max_age > 0:
            # the oldest entries, in id (= arrival) order, as far as they are older than max_age
            cutoff = int((time.time() - self.max_age) * 1000)
            old = []
            for i, n, received in conn.execute("SELECT id, n, received FROM journal ORDER BY id LIMIT 5000"):
                if received >= cutoff:
                    break
                old.append((i, n))
            self._delete_rows(conn, old, removed["age"])
        size = _size(conn)
        rounds = 0
        while self.max_bytes and size > self.max_bytes and rounds < 20:
            # Remove the oldest entries: a share of the rows proportional to the excess, at least 100.
            total = conn.execute("SELECT count(*) FROM journal").fetchone()[0]
            if not total:
                break
            excess = (size - self.max_bytes * 0.9) / size
            k = max(100, int(total * excess))
            if not self._delete(conn, "SELECT id, n FROM journal ORDER BY id LIMIT ?", (k,), removed["size"]):
                break
            size = _size(conn)
            rounds += 1
        first = None
        if removed["age"][0] or removed["size"][0]:
            lo = conn.execute("SELECT min(id) FROM journal").fetchone()[0]
            first = int(lo) if lo is not None else None
        if self._loop is not None:
            _post(self._loop, self._retained, first, removed, size)

    def _delete(self, conn: sqlite3.Connection, select: str, args: tuple[Any, ...], into: list[int]) -> int:
        return self._delete_rows(conn, conn.execute(select, args).fetchall(), into)

    def _delete_rows(self, conn: sqlite3.Connection, rows: list[tuple[int, int]], into: list[int]) -> int:
        """Delete the journal up to the last of `rows` (the oldest entries, in id order)."""
        if not rows:
            return 0
        top = rows[-1][0]
        conn.execute("BEGIN")
        try:
            conn.execute("DELETE FROM journal WHERE id <= ?", (top,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        into[0] += len(rows)
        into[1] += sum(n for _, n in rows)
        return len(rows)

    def _retained(self, first: int | None, removed: dict[str, list[int]], size: int) -> None:
        """On the loop: what retention removed (all counters change together)."""
        self.size_bytes = size
        for why, (entries, ids) in removed.items():
            self.removed_entries += entries
            self.removed_ids += ids
            if why == "age":
                self.removed_by_age += entries
            else:
                self.removed_by_size += entries
        if removed["age"][0] or removed["size"][0]:
            self.first_id = max(self.first_id, first if first is not None else self.last_id + 1)

    # ------------------------------------------------------------------ reading
    async def read(self, after: int, limit: int, *, hi: int | None = None) -> tuple[list[Entry], int]:
        """Committed entries holding ids in (after, hi], oldest first, at most
        `limit`, and the highest id they cover (`hi` when they reach it)."""
        if self._reader is None:
            raise JournalError("journal is not open")
        top = self.last_id if hi is None else min(hi, self.last_id)
        if after >= top:
            return [], max(after, top)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read, after, top, limit)

    def _read(self, after: int, hi: int, limit: int) -> tuple[list[Entry], int]:
        conn = self._reader_conn()
        start = self._start(conn, after)
        rows = conn.execute("SELECT id, n, kind, device, boot, seq, received, body FROM journal "
                            "WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?", (start, hi, limit)).fetchall()
        out = [Entry(i, n, k, d, b, s, r, unpack(body)) for i, n, k, d, b, s, r, body in rows
               if i + n - 1 > after]
        upto = min(hi, rows[-1][0] + rows[-1][1] - 1) if len(rows) == limit else hi
        return out, max(upto, after)

    async def read_encoded(self, after: int, limit: int, encode: Callable[[int, str, int | None, int | None, Any], bytes],
                           *, hi: int | None = None) -> tuple[Encoded | None, int]:
        """Like read(), for a sink with an encoder (D18b): the entries' stored encodings joined
        in one bytes object; a telemetry entry stored without one (written before the sink was
        configured) is encoded with `encode`, on the reader thread. None when no entry."""
        if self._reader is None:
            raise JournalError("journal is not open")
        top = self.last_id if hi is None else min(hi, self.last_id)
        if after >= top:
            return None, max(after, top)
        # On the loop while such reads are quick: one SQLite statement that joins the stored bytes
        # in C (about 0.4 ms for 500 entries here, with the pages in the page cache), where the
        # reader thread's hand-offs cost the sink more than the read (bench/grpc_sink.py). Reads
        # slower than LOOP_READ_MAX three times in a row (cold pages, a slow SD card) send the
        # next reads to the reader thread for a while; one needing entries encoded (no stored
        # bytes) is finished there.
        now = time.monotonic()
        if now >= self._thread_reads_until:
            conn = self._loop_conn()
            t0 = time.perf_counter()
            out = self._read_encoded(after, top, limit, None, conn)
            if time.perf_counter() - t0 > LOOP_READ_MAX:
                self.slow_loop_reads += 1
                self._slow_in_a_row += 1
                if self._slow_in_a_row >= LOOP_READ_SLOW_IN_A_ROW:   # not one preemption: the disk
                    self._thread_reads_until = now + LOOP_READ_BACKOFF
                    self._slow_in_a_row = 0
            else:
                self._slow_in_a_row = 0
            if out is not None:
                return out
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_encoded, after, top, limit, encode)

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._reader_local.conn = _connect(self.path, self.synchronous, check=False, readonly=True)
        return conn

    def _loop_conn(self) -> sqlite3.Connection:
        if self._loop_reader is None:
            self._loop_reader = _connect(self.path, self.synchronous, check=False, readonly=True)
        return self._loop_reader

    def _read_encoded(self, after: int, hi: int, limit: int,
                      encode: Callable[[int, str, int | None, int | None, Any], bytes] | None,
                      conn: sqlite3.Connection | None = None) -> Any:
        """read_encoded's work; with encode None, None when entries need encoding."""
        conn = conn or self._reader_conn()
        start = self._start(conn, after)
        # The usual case, every telemetry entry stored with its encoding: SQLite joins them (in the
        # subquery's id order: a subquery with LIMIT is not flattened into the aggregate), so the
        # batch costs no Python per entry. group_concat leaves out the NULLs of other kinds; on a
        # UTF-8 database it copies a blob's bytes as they are. Checked against read() and
        # batch_bytes in tests/backends/test_grpc_wire.py.
        lo, top, count, readings, missing, data = conn.execute(
            "SELECT min(id), max(id + n - 1), count(*), total(CASE WHEN kind = 0 THEN n END), "
            "total(kind = 0 AND wire IS NULL), CAST(group_concat(wire, x'') AS BLOB) FROM "
            "(SELECT id, n, kind, wire FROM journal WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?)",
            (start, hi, limit)).fetchone()
        if not count:
            return None, max(hi, after)
        if not missing:
            upto = min(hi, top) if count == limit else hi
            received = conn.execute("SELECT received FROM journal WHERE id = ?", (lo,)).fetchone()[0]
            return Encoded(lo, top, count, int(readings), received, data or b"", ""), max(upto, after)
        if encode is None:
            return None
        # some stored without: the body only where there is no encoding to read
        rows = conn.execute("SELECT id, n, kind, wire, CASE WHEN wire IS NULL AND kind = 0 THEN body END, "
                            "device, boot, seq, received FROM journal WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?",
                            (start, hi, limit)).fetchall()
        upto = min(hi, rows[-1][0] + rows[-1][1] - 1) if len(rows) == limit else hi
        if rows and rows[0][0] + rows[0][1] - 1 <= after:
            rows = rows[1:]
        if not rows:
            return None, max(upto, after)
        parts: list[bytes] = []
        readings = bad_received = 0
        error = ""
        for k, (i, n, kind, wire, body, d, b, s, _) in enumerate(rows):
            if kind != KIND_TELEMETRY:
                continue
            if wire is None:
                try:
                    wire = encode(i, d, b, s, unpack(body))
                except Exception as e:   # delivered up to here; the sink reports the rest as failing
                    error = f"entry {i} cannot be encoded: {type(e).__name__}: {e}"
                    bad_received = rows[k][8]
                    rows = rows[:k]
                    upto = i - 1
                    break
            parts.append(wire)
            readings += n
        if not rows:
            return Encoded(0, 0, 0, 0, bad_received, b"", error), after
        last = rows[-1]
        return Encoded(rows[0][0], last[0] + last[1] - 1, len(rows), readings, rows[0][8], b"".join(parts),
                       error), max(upto, after)

    @staticmethod
    def _start(conn: sqlite3.Connection, after: int) -> int:
        # the entry that holds after+1 may start before it; when no entry holds it (a
        # refused duplicate's ids are a gap), the read starts after the gap, not at an
        # entry already read (with limit 1 that entry alone came back, and the reader
        # asked again for ever)
        start: int = conn.execute("SELECT max(id) FROM journal WHERE id <= ? AND id + n - 1 > ?",
                                  (after + 1, after)).fetchone()[0] or after + 1
        return start

    # ------------------------------------------------------------------ cursors
    def save_cursor(self, name: str, last_id: int, *, then: Callable[[set[int]], None] | None = None) -> None:
        """Store a sink's confirmed position (durable with the next commit)."""
        self.cursors[name] = last_id
        self.append([], cursors=[(name, last_id)], then=then)

    # ------------------------------------------------------------------ observability
    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self._thread is not None and self._thread.is_alive() and not self.failing
        return ok, {"path": self.path, "last_id": self.last_id, "backlog": self.pending_rows,
                    "writing": ok, "last_error": self.last_error}

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        return {
            "path": self.path, "synchronous": self.synchronous.upper(),
            "first_id": self.first_id, "last_id": self.last_id, "recovered_last_id": self.opened_last_id,
            "entries_appended": self.appended, "ids_appended": self.appended_ids,
            "duplicates": self.duplicates, "commits": self.commits,
            "commit_ms_avg": round(1000 * self.commit_seconds / self.commits, 3) if self.commits else 0.0,
            "commit_ms_max": round(1000 * self.commit_max, 3),
            "append_to_commit_ms_p99": round(1000 * p99, 3),
            "backlog": self.pending_rows, "backlog_bytes": self.pending_bytes,
            "backlog_bytes_max": self.pending_bytes_max, "max_pending_bytes": self.max_pending_bytes,
            "space_waits": self.space_waits, "size_bytes": self.size_bytes,
            "max_bytes": self.max_bytes, "max_age": self.max_age,
            "removed_entries": self.removed_entries, "removed_ids": self.removed_ids,
            "removed_by_age": self.removed_by_age, "removed_by_size": self.removed_by_size,
            "write_errors": self.write_errors, "last_error": self.last_error,
            "encode_errors": self.encode_errors, "slow_loop_reads": self.slow_loop_reads,
        }


# sqlite3 binds int, float, str and bytearray as they are, but sends every
# `bytes` parameter through its adaptation protocol (a registry lookup and two
# failed attribute lookups, each formatting an AttributeError): about 2,000
# instructions per row under callgrind. A bytearray copy of the body (and of the
# stored encoding, D18b) is a tenth of that, and SQLite stores the same BLOB. The
# core makes most telemetry bodies as bytearrays already: those are bound as they are.
_WIDTH = len(Row._fields)
_BODY = Row._fields.index("body")


def _insert(conn: sqlite3.Connection, rows: list[Any], inserts: dict[int, str] = _INSERTS, width: int = _WIDTH) -> None:
    """INSERT OR IGNORE the rows (Rows, or Rows plus their `wire` when width is
    _WIDTH + 1), in order, many per statement (_CHUNKS)."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    i, n = 0, len(rows)
    flat = itertools.chain.from_iterable
    for k in _CHUNKS:
        if k > limit:
            continue
        sql = inserts[k]
        while n - i >= k:
            params = list(flat(rows[i:i + k]))
            params[_BODY::width] = [b if type(b) is bytearray else bytearray(b) for b in params[_BODY::width]]
            if width > _WIDTH:
                params[_WIDTH::width] = [None if w is None else bytearray(w) for w in params[_WIDTH::width]]
            conn.execute(sql, params)
            i += k


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop has gone (closed without close()): nothing left to tell
        pass


def _connect(path: str, synchronous: str, *, check: bool, readonly: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if check:
            # quick_check reads every page: a corrupt or truncated file fails here, before any write
            res = conn.execute("PRAGMA quick_check").fetchall()
            if res != [("ok",)]:
                conn.close()
                raise JournalCorrupt(path, "; ".join(str(r[0]) for r in res[:3]))
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] if not readonly else "wal"
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot switch to WAL mode (got {mode!r}); is it on a network "
                               "file system?")
        conn.execute(f"PRAGMA synchronous={_SYNC[synchronous]}")
        conn.execute("PRAGMA wal_autocheckpoint=1000")
        return conn
    except sqlite3.DatabaseError as e:
        raise JournalCorrupt(path, str(e)) from None


def _size(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)
