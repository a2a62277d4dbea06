"""`edgewire backend`: the reference gRPC backend. It receives a gateway's
`grpc` sink stream (protos/edgewire/v1/forward.proto), stores each reading
once in SQLite (a repeat after a reconnect is dropped by
(device, boot, seq, stream)), commits, and only then acknowledges the batch,
so the gateway's cursor never passes a reading that is not stored.

    edgewire backend --listen 127.0.0.1:50051 --store readings.db

It prints `listening on HOST:PORT` when it is ready (with port 0: the port
it got) and, at SIGTERM/SIGINT, what it stored. It is the documented example
for backends written in Python (docs/backends.md)."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings(
    site TEXT NOT NULL, device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
    gateway_id INTEGER NOT NULL, value TEXT, ts INTEGER NOT NULL, error TEXT,
    PRIMARY KEY (device, boot, seq, stream)) WITHOUT ROWID;
"""


def value_of(r: Any) -> Any:
    kind = r.WhichOneof("value")
    return None if kind is None else getattr(r, kind)


class Store:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.stored = 0
        self.repeats = 0
        self.batches = 0

    def add(self, site: str, readings: list[Any]) -> None:
        import json

        rows = [(site, r.device, r.boot, r.seq, r.stream, r.id, json.dumps(value_of(r)), r.ts, r.error or None)
                for r in readings]
        self.db.execute("BEGIN")
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?,?)", rows)
        added = self.db.total_changes - before
        self.db.execute("COMMIT")
        self.stored += added
        self.repeats += len(rows) - added
        self.batches += 1


async def serve(listen: str, store_path: str) -> int:
    import grpc

    from edgewire.gateway.grpcapi import forward_pb2 as pb
    from edgewire.gateway.grpcapi import forward_pb2_grpc as pbg

    store = Store(store_path)

    class Backend(pbg.BackendServicer):
        async def Forward(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:  # noqa: N802
            async for batch in request_iterator:
                store.add(batch.site, list(batch.readings))   # committed before the Ack
                yield pb.Ack(last_id=batch.last_id)

    server = grpc.aio.server()
    pbg.add_BackendServicer_to_server(Backend(), server)
    port = server.add_insecure_port(listen)
    if not port:
        print(f"error: cannot listen on {listen}", file=sys.stderr)
        return 2
    await server.start()
    host = listen.rpartition(":")[0]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2)
    print(f"stored {store.stored} readings in {store.batches} batches, dropped {store.repeats} repeats", flush=True)
    store.db.close()
    return 0


def backend_main(args: argparse.Namespace) -> int:
    try:
        import grpc  # noqa: F401
    except ImportError:
        print("error: edgewire backend needs grpcio and protobuf: pip install 'edgewire[grpc]'", file=sys.stderr)
        return 2
    return asyncio.run(serve(args.listen, args.store))
