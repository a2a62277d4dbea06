"""`edgewire backend`: the reference backend. It stores each reading once in
SQLite, whichever way the gateway forwards it, and confirms only what is
committed, so the gateway's sink cursor never passes a reading that is not
stored:

- `--listen HOST:PORT`: a gRPC server for the gateway's `grpc` sink
  (protos/edgewire/v1/forward.proto): each batch is stored, committed, then
  acknowledged (Ack.last_id). `--cert FILE --key FILE` serve TLS;
  `--client-ca FILE` also requires a client certificate signed by that CA.
- `--amqp URL`: a RabbitMQ consumer for the gateway's `amqp` sink: it
  declares the exchange (topic, durable, as the sink does) and a durable
  queue bound to it (`--queue`, `--binding`), stores what arrives (JSON or
  msgpack, one reading or a batch), commits, and only then acks (several
  deliveries at once, `multiple`). A message that is not a reading is
  rejected (dead-lettered if the queue has a dead-letter exchange) and
  counted. For amqps, aio-pika takes `cafile`, `certfile`, `keyfile` as
  query parameters of the URL.

Both may run in one process on one store. A reading's key is
(device, boot, seq, stream): the AMQP `message_id` `<device>/<boot>/<seq>/<stream>`
spelled as columns. A repeat (the gateway sends again what was not confirmed
before a crash or an outage) is dropped by that key.

    edgewire backend --listen 127.0.0.1:50051 --store readings.db
    edgewire backend --amqp amqp://guest:guest@127.0.0.1:5672/ --exchange edgewire --store readings.db

It prints `listening on HOST:PORT` (with port 0: the port it got) and
`consuming QUEUE` when ready and, at SIGTERM/SIGINT, what it stored. It is the
documented example for backends written in Python (docs/backends.md)."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings(
    site TEXT NOT NULL, device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
    gateway_id INTEGER NOT NULL, value TEXT, ts INTEGER NOT NULL, error TEXT,
    PRIMARY KEY (device, boot, seq, stream)) WITHOUT ROWID;
"""

Row = tuple[str, str, int, int, str, int, str, int, "str | None"]


def value_of(r: Any) -> Any:
    kind = r.WhichOneof("value")
    return None if kind is None else getattr(r, kind)


class Store:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.stored = 0
        self.repeats = 0
        self.batches = 0

    def add_rows(self, rows: Iterable[Row]) -> None:
        """Store rows in one transaction; repeats (same key) are dropped and counted."""
        rows = list(rows)
        self.db.execute("BEGIN")
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?,?)", rows)
        added = self.db.total_changes - before
        self.db.execute("COMMIT")
        self.stored += added
        self.repeats += len(rows) - added
        self.batches += 1

    def add(self, site: str, readings: list[Any]) -> None:
        """gRPC Reading messages."""
        self.add_rows((site, r.device, r.boot, r.seq, r.stream, r.id, json.dumps(value_of(r)), r.ts, r.error or None)
                      for r in readings)

    def summary(self) -> str:
        return f"stored {self.stored} readings in {self.batches} batches, dropped {self.repeats} repeats"


def amqp_rows(body: bytes, content_type: str | None, site: str) -> list[Row]:
    """The readings of one message of the amqp sink (one reading or an array, JSON or msgpack);
    ValueError when it is not that."""
    if content_type == "application/msgpack":
        import msgpack

        try:
            doc = msgpack.unpackb(body)
        except Exception as e:  # msgpack raises several types for bad input
            raise ValueError(f"not msgpack ({type(e).__name__})") from None
    else:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
    rows: list[Row] = []
    for r in doc if isinstance(doc, list) else [doc]:
        try:
            dev, stream, boot, seq, ts = r["device"], r["stream"], r["boot"], r["seq"], r["ts"]
            if not (isinstance(dev, str) and isinstance(stream, str)
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in (boot, seq, ts))):
                raise TypeError
            rows.append((site, dev, boot, seq, stream, int(r.get("id", 0)), json.dumps(r.get("value")), ts,
                         r.get("error") or None))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("not a reading (device, stream, boot, seq, ts)") from None
    return rows


async def serve_grpc(listen: str, store: Store, cert: str = "", key: str = "", client_ca: str = "") -> Any:
    """Start the gRPC Backend service; -> the server (started), or None if it cannot listen."""
    import grpc

    from edgewire.gateway.grpcapi import forward_pb2 as pb
    from edgewire.gateway.grpcapi import forward_pb2_grpc as pbg

    class Backend(pbg.BackendServicer):
        async def Forward(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:  # noqa: N802
            async for batch in request_iterator:
                store.add(batch.site, list(batch.readings))   # committed before the Ack
                yield pb.Ack(last_id=batch.last_id)

    server = grpc.aio.server()
    pbg.add_BackendServicer_to_server(Backend(), server)
    if cert:
        from pathlib import Path

        creds = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                            root_certificates=Path(client_ca).read_bytes() if client_ca else None,
                                            require_client_auth=bool(client_ca))
        port = server.add_secure_port(listen, creds)
    else:
        port = server.add_insecure_port(listen)
    if not port:
        return None
    await server.start()
    print(f"listening on {listen.rpartition(':')[0]}:{port}", flush=True)
    return server


class AmqpConsumer:
    """The queue consumer: deliveries are stored in batches (all that are waiting, up to
    `prefetch`), committed, then acked with `multiple`. A lost connection is made again
    with backoff; what was not acked is delivered again by RabbitMQ and dropped as a repeat."""

    def __init__(self, url: str, exchange: str, queue: str, binding: str, store: Store, prefetch: int = 1000) -> None:
        self.url, self.exchange, self.queue, self.binding = url, exchange, queue, binding
        self.store = store
        self.prefetch = prefetch
        self.rejected = 0
        self.connects = 0

    async def run(self, ready: asyncio.Event) -> None:
        import aio_pika

        delay = 0.2
        while True:
            conn = None
            try:
                conn = await aio_pika.connect(self.url, timeout=10)
                lost = asyncio.Event()
                conn.close_callbacks.add(lambda *_: lost.set())
                ch = await conn.channel()
                await ch.set_qos(prefetch_count=self.prefetch)
                ex = await ch.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                q = await ch.declare_queue(self.queue, durable=True)
                await q.bind(ex, self.binding)
                inbox: asyncio.Queue[Any] = asyncio.Queue()
                await q.consume(inbox.put)
                self.connects += 1
                delay = 0.2
                if not ready.is_set():
                    print(f"consuming {self.queue}", flush=True)
                    ready.set()
                store_task = asyncio.ensure_future(self._store_loop(inbox))
                lost_task = asyncio.ensure_future(lost.wait())
                try:
                    await asyncio.wait([store_task, lost_task], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (store_task, lost_task):
                        t.cancel()
                    await asyncio.gather(store_task, lost_task, return_exceptions=True)
                if store_task.done() and not store_task.cancelled() and store_task.exception():
                    raise store_task.exception()  # type: ignore[misc]
                print("amqp: connection lost; connecting again", file=sys.stderr, flush=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                what = f"{type(e).__name__}: {e}"
                password = urlsplit(self.url).password
                if password:   # never print the password (some errors quote the URL)
                    what = what.replace(password, "***")
                print(f"amqp: {what}; retrying in {delay:.1f} s", file=sys.stderr, flush=True)
            finally:
                if conn is not None:
                    try:
                        await asyncio.wait_for(conn.close(), 2)
                    except (Exception, asyncio.TimeoutError):
                        pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _store_loop(self, inbox: asyncio.Queue[Any]) -> None:
        while True:
            msgs = [await inbox.get()]
            while len(msgs) < self.prefetch and not inbox.empty():
                msgs.append(inbox.get_nowait())
            rows: list[Row] = []
            last_good = None
            for m in msgs:
                site = (m.headers or {}).get("site") or (m.routing_key or "").partition(".")[0]
                try:
                    rows += amqp_rows(m.body, m.content_type, str(site))
                    last_good = m
                except ValueError as e:
                    self.rejected += 1
                    print(f"amqp: rejected message {m.message_id!r}: {e}", file=sys.stderr, flush=True)
                    await m.reject(requeue=False)
            if rows:
                self.store.add_rows(rows)   # committed before the ack
            if last_good is not None:
                await last_good.ack(multiple=True)


async def serve(args: argparse.Namespace) -> int:
    store = Store(args.store)
    server = None
    consumer: AmqpConsumer | None = None
    consumer_task: asyncio.Task[None] | None = None
    listen = args.listen or ("" if args.amqp else "127.0.0.1:50051")
    try:
        if listen:
            try:
                server = await serve_grpc(listen, store, args.cert or "", args.key or "", args.client_ca or "")
            except OSError as e:
                print(f"error: --cert/--key: {e}", file=sys.stderr)
                return 2
            if server is None:
                print(f"error: cannot listen on {listen}", file=sys.stderr)
                return 2
        if args.amqp:
            consumer = AmqpConsumer(args.amqp, args.exchange, args.queue, args.binding, store)
            ready = asyncio.Event()
            consumer_task = asyncio.ensure_future(consumer.run(ready))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if consumer_task is not None:
            consumer_task.cancel()
            await asyncio.gather(consumer_task, return_exceptions=True)
        if server is not None:
            await server.stop(2)
    rejected = f", rejected {consumer.rejected} messages" if consumer is not None else ""
    print(store.summary() + rejected, flush=True)
    store.db.close()
    return 0


def backend_main(args: argparse.Namespace) -> int:
    needs = [("grpc", "grpcio and protobuf: pip install 'edgewire[grpc]'")] if args.listen or not args.amqp else []
    if args.amqp:
        needs.append(("aio_pika", "aio-pika: pip install 'edgewire[amqp]'"))
    if bool(args.cert) != bool(args.key) or (args.client_ca and not args.cert):
        print("error: --cert and --key go together (and --client-ca needs them)", file=sys.stderr)
        return 2
    for mod, what in needs:
        try:
            __import__(mod)
        except ImportError:
            print(f"error: edgewire backend needs {what}", file=sys.stderr)
            return 2
    return asyncio.run(serve(args))
