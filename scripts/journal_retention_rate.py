"""Does ingest slow down when the journal sits at its size limit?

Appends one-reading telemetry rows (200-byte values) as fast as the journal
takes them, for 4 s each, into a journal without a size limit and into one
of 4 MiB where retention removes the oldest entries all the time; prints
readings committed per second for each (and per half of the run).

    .venv/bin/python scripts/journal_retention_rate.py

A saturation figure for docs/gateway.md ("Retention"), not a test: the
benchmarks proper are in bench/."""
import asyncio, time, tempfile, sys
from pathlib import Path
from edgewire.gateway.journal import Journal, Row, KIND_TELEMETRY, pack

async def run(max_bytes, seconds=4.0):
    d = Path(tempfile.mkdtemp(prefix="d-ret-"))
    j = Journal(d / "j.db", max_bytes=max_bytes, retention_interval=0.2)
    j.open()
    body = pack([["s", "x" * 200, 0, None]])
    seq = 0; done = [0]
    t0 = time.perf_counter(); marks = []
    while time.perf_counter() - t0 < seconds:
        now = int(time.time() * 1000)
        rows = []
        for _ in range(500):
            seq += 1
            rows.append(Row(j.reserve(1), 1, KIND_TELEMETRY, "dev", 1, seq, now, body))
        j.append(rows, then=lambda r, n=len(rows): done.__setitem__(0, done[0] + n))
        await j.wait_space()
        await asyncio.sleep(0)
        marks.append((time.perf_counter() - t0, done[0]))
    await j.flush()
    el = time.perf_counter() - t0
    st = j.stats()
    await j.close()
    half = [c for t, c in marks if t <= seconds / 2][-1]
    first_half = half / (seconds / 2); second_half = (done[0] - half) / (el - seconds / 2)
    print(f"max_bytes {max_bytes or 'none':>9}: {done[0]/el:9,.0f} readings/s  (1st half {first_half:,.0f}, 2nd half {second_half:,.0f}); "
          f"removed {st['removed_entries']:,}, size {st['size_bytes']/1e6:.1f} MB, space_waits {st['space_waits']}")

async def main():
    for mb in (0, 4 << 20, 0, 4 << 20):
        await run(mb)
asyncio.run(main())
