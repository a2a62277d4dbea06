"""`edgewire backend --amqp URL`, the reference RabbitMQ consumer, against the
real RabbitMQ: it stores every reading the gateway's amqp sink forwards (JSON
and batched msgpack) once, in the same SQLite store as the gRPC backend; it
drops repeats by the message's key, rejects what is not a reading, and acks
only what it stored (killed before storing, nothing is lost)."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack
import pika

from edgewire.gateway.config import SiteConfig
from edgewire.gateway.service import Gateway
from tests.backends.conftest import AMQP_URL, Backend, delete_amqp
from tests.gateway.conftest import Publisher, gateway_config, wait_for
from tests.gateway.test_journal_crash import Recorder
from tests.support.broker import Mosquitto, free_port


def readings_of(rec: Recorder) -> set[tuple[str, int, int, str, Any]]:
    with rec.lock:
        return {(d, b, s, st, v) for (d, b, s), rs in rec.seen.items() for st, v in rs}


def publish_raw(exchange: str, key: str, body: bytes, **props: Any) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().basic_publish(exchange, key, body, pika.BasicProperties(delivery_mode=2, **props))
    finally:
        conn.close()


def publish_readings(exchange: str, device: str, seqs: range) -> None:
    """Readings as the amqp sink publishes them, by pika with confirms."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for seq in seqs:
            r = {"id": seq, "device": device, "stream": "t", "value": seq, "ts": seq, "boot": 1, "seq": seq}
            ch.basic_publish(exchange, f"s.{device}.t", json.dumps(r).encode(),
                             pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                                  message_id=f"{device}/1/{seq}/t"))
    finally:
        conn.close()


def queue_depth(queue: str) -> tuple[int, int]:
    """(ready, consumers) of a queue, as RabbitMQ counts them."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        q = conn.channel().queue_declare(queue, passive=True).method
        return q.message_count, q.consumer_count
    finally:
        conn.close()


async def test_amqp_backend_stores_every_reading_once(tmp_path: Path, broker: Mosquitto, publisher: Publisher,
                                                      exchange_name: str) -> None:
    queue = exchange_name + "-backend"
    # both reference backends on one store: the AMQP consumer and the gRPC server
    backend = Backend(tmp_path / "store.db", free_port(), amqp=(exchange_name, queue))
    rec = Recorder(broker.port)
    sinks = ({"type": "amqp", "name": "json", "url": AMQP_URL, "exchange": exchange_name},
             {"type": "amqp", "name": "packed", "url": AMQP_URL, "exchange": exchange_name,
              "content_type": "msgpack", "readings_per_message": 7},
             {"type": "grpc", "target": f"127.0.0.1:{backend.port}"})
    cfg = gateway_config(broker, gateway=SiteConfig(site="rb")).replace(sinks=sinks)
    try:
        backend.start()
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            for seq in range(1, 41):
                await asyncio.to_thread(publisher.telemetry, f"ab-{seq % 3}", 2, seq,
                                        [["t", seq + 0.5, 0], ["n", seq, 0], ["s", f"v{seq}", 0],
                                         ["bad", None, 0, "no sensor"]])
            await wait_for(lambda: len(readings_of(rec)) == 160, timeout=30, what="the MQTT subscriber")
            await wait_for(lambda: all(s.cursor == gw.journal.last_id for s in gw.sinks.values()), timeout=60,
                           what="every sink's cursor")
        # what is not a reading is rejected, not stored, not redelivered
        await asyncio.to_thread(publish_raw, exchange_name, "rb.x.y", b"{not json", content_type="application/json")
        await asyncio.to_thread(publish_raw, exchange_name, "rb.x.y", msgpack.packb({"device": "x"}),
                                content_type="application/msgpack")
        # a repeat is dropped by its key
        again = {"id": 1, "device": "ab-1", "stream": "t", "value": 999, "ts": 1, "boot": 2, "seq": 1}
        await asyncio.to_thread(publish_raw, exchange_name, "rb.ab-1.t", json.dumps(again).encode(),
                                content_type="application/json", message_id="ab-1/2/1/t")
        # one consumer takes the queue in order: once the last is stored, everything before it is handled
        await asyncio.to_thread(publish_readings, exchange_name, "last", range(1, 2))
        await wait_for(lambda: ("last", 1, 1, "t", 1) in backend.readings(), timeout=60, what="the last message")
        out = backend.stop()
    finally:
        backend.stop()
        rec.close()
        await asyncio.to_thread(delete_amqp, exchange_name, [queue])
    assert backend.readings() - {("last", 1, 1, "t", 1)} == readings_of(rec)
    assert {row[5] for row in backend.rows()} == {"rb", "s"}
    assert len(backend.rows()) == 161
    # 160 stored once (and the last); the other 320 copies (msgpack batches and gRPC) plus the repeat dropped
    assert "stored 161 readings" in out and "dropped 321 repeats" in out and "rejected 2 messages" in out, out


async def test_amqp_backend_killed_mid_queue_loses_nothing(tmp_path: Path, exchange_name: str) -> None:
    """It acks only what it committed: SIGKILLed while it works through a queue, restarted, every
    reading is stored (what it had stored but not acked comes again and is dropped as a repeat)."""
    queue = exchange_name + "-backend"
    backend = Backend(tmp_path / "store.db", amqp=(exchange_name, queue))
    try:
        backend.start()   # declares and binds the queue
        backend.kill()    # nothing consumes now
        await asyncio.to_thread(publish_readings, exchange_name, "ack-1", range(1, 3001))
        assert (await asyncio.to_thread(queue_depth, queue)) == (3000, 0)
        backend.start()
        await wait_for(lambda: len(backend.rows()) >= 300, timeout=60, what="some stored")
        backend.kill()
        at_kill = len(backend.rows())
        backend.start()
        await wait_for(lambda: len(backend.rows()) == 3000, timeout=120, what="3000 stored")
        await wait_for(lambda: asyncio.to_thread(lambda: queue_depth(queue)[0] == 0), timeout=60, what="the queue")
        out = backend.stop()
    finally:
        backend.stop()
        await asyncio.to_thread(delete_amqp, exchange_name, [queue])
    assert sorted(r[2] for r in backend.rows()) == list(range(1, 3001))
    assert at_kill < 3000, "killed after it had finished: the test proved nothing"
    assert "stored" in out.splitlines()[-1]
