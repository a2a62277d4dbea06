"""gRPC sink benchmark: readings/s the gateway's grpc sink forwards from its
journal to a backend, against a bare grpcio client streaming the same
batches to the same server, in the same run.

  server    a Backend service (protos/edgewire/v1/forward.proto) in its own
            process that acknowledges each batch at once (--store: the
            reference backend, `edgewire backend`, storing in SQLite, so the
            backend's work is in both phases too)
  baseline  grpcio.aio: the sink's Batch messages built beforehand, one
            Forward stream, each batch written and its Ack read before the
            next (the sink's flow control: one batch in flight)
  sink      a journal (SQLite, WAL) pre-filled with the same readings, by a
            writer storing each entry's encoded readings as a gateway with a
            grpc sink does (decision D18b); the grpc sink started on it; time
            from start to its cursor at the journal's end (reads, builds the
            batches, streams, waits for the Acks, saves its cursor)
  sink_plain the same from a journal written without the encodings (entries
            from before the sink was configured): the sink encodes on read

All phases are timed from nothing (open the channel) to the last Ack. Goal
(issue #8): sink >= 0.8x the baseline. Phases rotate per repeat. The cost
D18b moves to ingest is printed too: the journal writer's commit rate filling
the journal with and without the encodings.

    .venv/bin/python bench/grpc_sink.py                        # 200,000 readings, 3 repeats
    .venv/bin/python bench/grpc_sink.py --store --json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amqp_sink import READINGS_PER_MESSAGE, fill, time_sink  # noqa: E402  (the same journal content)

from edgewire.gateway.grpcapi import forward_pb2_grpc as pbg  # noqa: E402
from edgewire.gateway.grpcapi.convert import batch_of, entry_bytes  # noqa: E402
from edgewire.gateway.journal import Journal  # noqa: E402
from edgewire.gateway.sinks import build_sink, validate_sink  # noqa: E402

ACK_SERVER = """
import asyncio, sys
import grpc
from edgewire.gateway.grpcapi import forward_pb2 as pb, forward_pb2_grpc as pbg

class Backend(pbg.BackendServicer):
    async def Forward(self, it, context):
        async for batch in it:
            yield pb.Ack(last_id=batch.last_id)

async def main():
    server = grpc.aio.server()
    pbg.add_BackendServicer_to_server(Backend(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def start_server(store: Path | None) -> tuple[subprocess.Popen[str], str]:
    if store is None:
        cmd = [sys.executable, "-c", ACK_SERVER]
    else:
        cmd = [str(Path(sys.executable).parent / "edgewire"), "backend", "--listen", "127.0.0.1:0",
               "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the backend did not start: {line!r}")
    return proc, line.split()[-1]


async def baseline(target: str, batches: list[Any]) -> float:
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as ch:
        await ch.channel_ready()
        call = pbg.BackendStub(ch).Forward()
        for b in batches:
            await call.write(b)
            ack = await call.read()
            assert ack.last_id == b.last_id
        await call.done_writing()
        return time.perf_counter() - t0


async def sink_phase(journal: Journal, target: str, name: str, batch_entries: int) -> float:
    sink = build_sink(validate_sink({"type": "grpc", "name": name, "target": target, "batch": batch_entries},
                                    site="bench"), journal)
    return await time_sink(sink, journal)


async def filled(path: Path, readings: int, encoder: Any) -> tuple[Journal, float]:
    """A journal holding the bench's readings, and the seconds its writer took to commit them."""
    journal = Journal(path)
    journal.open()
    journal.encoder = encoder
    t0 = time.perf_counter()
    fill(journal, readings)
    await journal.flush()
    return journal, time.perf_counter() - t0


async def run(readings: int, repeat: int, batch_entries: int, store: bool) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = start_server(Path(tmp) / "store.db" if store else None)
        # D18b: with a grpc sink configured the journal's writer stores each entry's readings encoded
        # (the gateway's case); "plain" was written without (entries from before the sink was
        # configured, or an older gateway's): the sink encodes those when it reads them.
        journal, fill_wire = await filled(Path(tmp) / "bench.db", readings, entry_bytes)
        plain, fill_plain = await filled(Path(tmp) / "plain.db", readings, None)
        try:
            n = journal.last_id
            batches = []   # the same Batch messages the sink sends (as bytes), as protobuf objects
            after = 0
            while after < n:
                entries, after = await journal.read(after, batch_entries)
                batches.append(batch_of(entries, "bench"))
            for r in range(repeat):
                phases = {"baseline": lambda: baseline(target, batches),
                          "sink": lambda r=r: sink_phase(journal, target, f"bench-{r}", batch_entries),
                          "sink_plain": lambda r=r: sink_phase(plain, target, f"bench-{r}", batch_entries)}
                order = list(phases)[r % 3:] + list(phases)[:r % 3]   # each phase first in turn
                took = {}
                for name in order:
                    took[name] = await phases[name]()
                b, s, p = took["baseline"], took["sink"], took["sink_plain"]
                results.append({"baseline_per_s": n / b, "sink_per_s": n / s, "ratio": b / s,
                                "plain_per_s": n / p, "ratio_plain": b / p})
        finally:
            await journal.close()
            await plain.close()
            proc.terminate()
            proc.wait(30)
    ratios = [x["ratio"] for x in results]
    return {"readings": readings, "batch_readings": batch_entries * READINGS_PER_MESSAGE, "store": store,
            "repeats": results, "median_ratio": statistics.median(ratios),
            "median_ratio_plain": statistics.median(x["ratio_plain"] for x in results),
            "journal_fill_per_s": {"with_encoding": readings / fill_wire, "without": readings / fill_plain,
                                   "ratio": fill_plain / fill_wire},
            "goal": 0.8, "met": statistics.median(ratios) >= 0.8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="journal entries per batch (the sink's default)")
    ap.add_argument("--store", action="store_true", help="the reference backend (SQLite) as the server")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(run(args.readings, args.repeat, args.batch, args.store))
    if args.json:
        print(json.dumps(out))
        return
    server = "the reference backend (SQLite)" if out["store"] else "an ack-only server"
    print(f"gRPC sink vs bare grpcio streaming the same batches, {out['readings']} readings, "
          f"{out['batch_readings']} readings per batch, {server} in its own process")
    for i, r in enumerate(out["repeats"], 1):
        print(f"  repeat {i}: baseline {r['baseline_per_s']:9.0f} readings/s   sink {r['sink_per_s']:9.0f} "
              f"readings/s   ratio {r['ratio']:.2f}   (journal without encodings: {r['plain_per_s']:9.0f} "
              f"readings/s, ratio {r['ratio_plain']:.2f})")
    f = out["journal_fill_per_s"]
    print(f"journal writer, filling it: {f['with_encoding']:.0f} readings/s storing the encodings, "
          f"{f['without']:.0f} without ({f['ratio']:.2f}x: the ingest side's share of D18b)")
    print(f"median ratio {out['median_ratio']:.2f} (goal >= {out['goal']}): {'met' if out['met'] else 'NOT met'}; "
          f"from a journal without encodings {out['median_ratio_plain']:.2f}")


if __name__ == "__main__":
    main()
