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
  sink      a journal (SQLite, WAL) pre-filled with the same readings; the
            grpc sink started on it; time from start to its cursor at the
            journal's end (reads, builds the batches, streams, waits for the
            Acks, saves its cursor)

Both phases are timed from nothing (open the channel) to the last Ack. Goal
(issue #8): sink >= 0.8x the baseline. Phases alternate per repeat.

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
from edgewire.gateway.grpcapi.convert import batch_of  # noqa: E402
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


async def run(readings: int, repeat: int, batch_entries: int, store: bool) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = start_server(Path(tmp) / "store.db" if store else None)
        journal = Journal(Path(tmp) / "bench.db")
        journal.open()
        try:
            fill(journal, readings)
            await journal.flush()
            n = journal.last_id
            batches = []   # the same Batch messages the sink sends (as bytes), as protobuf objects
            after = 0
            while after < n:
                entries, after = await journal.read(after, batch_entries)
                batches.append(batch_of(entries, "bench"))
            for r in range(repeat):
                b = await baseline(target, batches)
                s = await sink_phase(journal, target, f"bench-{r}", batch_entries)
                results.append({"baseline_per_s": n / b, "sink_per_s": n / s, "ratio": b / s})
        finally:
            await journal.close()
            proc.terminate()
            proc.wait(30)
    ratios = [x["ratio"] for x in results]
    return {"readings": readings, "batch_readings": batch_entries * READINGS_PER_MESSAGE, "store": store,
            "repeats": results, "median_ratio": statistics.median(ratios), "goal": 0.8,
            "met": statistics.median(ratios) >= 0.8}


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
              f"readings/s   ratio {r['ratio']:.2f}")
    print(f"median ratio {out['median_ratio']:.2f} (goal >= {out['goal']}): {'met' if out['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
