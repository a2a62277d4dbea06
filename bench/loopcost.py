"""Per-message cost of the gateway's pipeline, without sockets: the same code
the gateway runs from the bytes a broker sends to the JSON a WebSocket client
gets, counted in a way that does not depend on how loaded the machine is.

    bytes of N PUBLISH packets (100-byte telemetry, 10 devices, as bench/relay.py sends)
      -> mqtt/ client: parse, batch, ack handle     (_Conn.data_received, batches())
      -> ingest/mqtt.py: topic, decode              (MqttIngest.handle)
      -> core.py: registry, ids, journal rows       (Core.accept_*, commit)
      -> journal.py: the writer thread's INSERTs, COMMIT (a real SQLite file)
      -> hub.py: publish; one "#" subscriber takes the events and builds the
         WebSocket frame text exactly as http/ws.py does

Only the socket is replaced: a transport object that takes the acks
(`_Sink`). Two ways to count:

    .venv/bin/python bench/loopcost.py                      # CPU µs/msg (process time, median of rounds)
    .venv/bin/python bench/loopcost.py --callgrind          # instructions/msg under valgrind (repeatable)
    .venv/bin/python bench/loopcost.py --profile            # where the time goes (cProfile, by function)

Instructions per message are the difference between two runs with different
message counts divided by the difference of the counts, so start-up and
imports cancel out. The count covers every thread (the journal writer too).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import SEQ_BASE, PacketTemplate, device_ids  # noqa: E402

HERE = Path(__file__).resolve()
LIVE_WINDOW = 1000  # messages fed but not yet at the WebSocket client, at most (below the journal's shedding point)
READ = 65536  # bytes per simulated socket read (what asyncio's selector transport reads at most)


class _Sink:
    """The socket's place: takes writes (acks), never pauses for real."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


def stream(messages: int, qos: int, devices: int = 10) -> list[bytes]:
    """The broker's bytes for `messages` PUBLISH packets, cut into reads."""
    tpl = [PacketTemplate(d, qos) for d in device_ids(devices)]
    buf = bytearray()
    for i in range(messages):
        pid = i % 65535 + 1
        buf += tpl[i % devices].build(SEQ_BASE + i // devices, pid)
    return [bytes(buf[i:i + READ]) for i in range(0, len(buf), READ)]


async def run(messages: int, qos: int, workdir: str, synchronous: str = "full") -> dict[str, Any]:
    from edgewire.gateway.commands import Commands
    from edgewire.gateway.core import Core
    from edgewire.gateway.hub import Hub, readings_frame
    from edgewire.gateway.ingest.mqtt import MqttIngest
    from edgewire.gateway.journal import Journal
    from edgewire.gateway.mqtt.client import MqttClient, _Conn
    from edgewire.gateway.refusals import Refusals
    from edgewire.gateway.registry import Registry

    reads = stream(messages, qos)
    journal = Journal(os.path.join(workdir, f"loopcost-{messages}-{time.monotonic_ns()}.db"), synchronous=synchronous)
    journal.open()
    hub = Hub(source=journal, last_id=journal.last_id)
    core = Core(registry=Registry(), hub=hub, commands=Commands(publisher=None), refusals=Refusals(),  # type: ignore[arg-type]
                journal=journal)
    client = MqttClient(host="127.0.0.1", port=1, client_id="loopcost", subscriptions=[("edgewire/v1/#", 2)])
    conn = _Conn(client)
    sink = _Sink()
    conn.connection_made(sink)  # type: ignore[arg-type]
    client._conn = conn
    client.up.set()
    ingest = MqttIngest(core=core, client=client)
    frames = 0
    events = 0
    progress = asyncio.Event()
    sub = hub.open(["#"], kind="ws", peer="loopcost")

    async def consume() -> None:
        assert ingest.client is not None
        async for batch in ingest.client.batches():
            ingest.take(batch)
            await core.ready()

    async def websocket() -> None:
        nonlocal frames, events
        while events + getattr(core, "dropped_backlog", 0) < messages:
            await sub.wait(0.1)
            evs = await sub.next(sub.maxlen)
            if evs:  # the frame http/ws.py sends
                text = readings_frame(evs)
                frames += len(text) > 0
                events += len(evs)
                progress.set()

    loop = asyncio.get_running_loop()
    consumer = loop.create_task(consume())
    ws = loop.create_task(websocket())
    t0 = time.process_time()
    w0 = time.perf_counter()
    fed = 0
    per_read = messages / len(reads)
    for data in reads:
        conn.data_received(data)
        fed += per_read
        # let the pipeline take the read before the next one arrives, as the socket would;
        # keep the WebSocket client live (a steady state, not a backlog read back from SQLite)
        await asyncio.sleep(0)
        while conn.paused or fed - events - getattr(core, "dropped_backlog", 0) > LIVE_WINDOW:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), 0.1)
            except TimeoutError:
                pass
    await asyncio.wait_for(ws, 1800)  # valgrind runs ~50x slower
    cpu = time.process_time() - t0
    wall = time.perf_counter() - w0
    client._closing = True
    client._wake.set()
    await consumer
    hub.close(sub)
    await journal.close()
    return {"messages": messages, "events": events, "cpu_s": cpu, "wall_s": wall,
            "us_per_msg": 1e6 * cpu / messages, "acked_bytes": sink.written,
            "journal": journal.stats()["entries_appended"], "shed": getattr(core, "dropped_backlog", 0)}


def _child(messages: int, qos: int, workdir: str, synchronous: str, profile: bool) -> dict[str, Any]:
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)  # as the gateway runs (service.tune_gc)
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        out = asyncio.run(run(messages, qos, workdir, synchronous))
        prof.disable()
        st = pstats.Stats(prof, stream=sys.stderr)
        st.sort_stats("tottime").print_stats(25)
        return out
    return asyncio.run(run(messages, qos, workdir, synchronous))


def callgrind(messages: int, qos: int, workdir: str, synchronous: str) -> int:
    """Instructions of a whole child run under valgrind (all threads)."""
    vg = shutil.which("valgrind")
    if vg is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    out = os.path.join(workdir, f"callgrind-{messages}.out")
    cmd = [vg, "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=yes",
           sys.executable, str(HERE), "child", "--messages", str(messages), "--qos", str(qos),
           "--workdir", workdir, "--synchronous", synchronous]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if p.returncode != 0:
        raise SystemExit(f"callgrind run failed:\n{p.stderr[-2000:]}")
    for line in p.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip().replace(",", ""))
    raise SystemExit(f"no instruction count in valgrind's output:\n{p.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("mode", nargs="?", default="cpu", choices=("cpu", "child"))
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--qos", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    ap.add_argument("--rounds", type=int, default=5, help="CPU-time rounds (median reported)")
    ap.add_argument("--synchronous", choices=("full", "normal", "off"), default="full")
    ap.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    ap.add_argument("--profile", action="store_true", help="cProfile one run, top functions to stderr")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.mode == "child":
        print(json.dumps(_child(args.messages, args.qos[0], args.workdir, args.synchronous, args.profile)))
        return 0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgewire-loopcost-") as tmp:
        for qos in args.qos:
            if args.callgrind:
                small = max(1000, args.messages // 4)
                lo = callgrind(small, qos, tmp, args.synchronous)
                hi = callgrind(args.messages, qos, tmp, args.synchronous)
                per = (hi - lo) / (args.messages - small)
                results[f"qos{qos}"] = {"instructions_per_msg": round(per), "runs": [[small, lo], [args.messages, hi]]}
                print(f"QoS {qos}: {per:,.0f} instructions per message "
                      f"({small:,} msgs: {lo:,}; {args.messages:,} msgs: {hi:,})", flush=True)
                continue
            runs = []
            for _ in range(1 if args.profile else args.rounds):
                p = subprocess.run([sys.executable, str(HERE), "child", "--messages", str(args.messages),
                                    "--qos", str(qos), "--workdir", tmp, "--synchronous", args.synchronous]
                                   + (["--profile"] if args.profile else []),
                                   text=True, stdout=subprocess.PIPE,
                                   stderr=None if args.profile else subprocess.PIPE)
                if p.returncode != 0:
                    raise SystemExit(f"child failed:\n{p.stderr}")
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            us = [r["us_per_msg"] for r in runs]
            results[f"qos{qos}"] = {"us_per_msg_median": round(statistics.median(us), 3),
                                    "us_per_msg_min": round(min(us), 3), "runs": runs}
            print(f"QoS {qos}: {statistics.median(us):.2f} µs CPU per message (median of {len(us)}, "
                  f"min {min(us):.2f}; {args.messages:,} messages, all threads)", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
