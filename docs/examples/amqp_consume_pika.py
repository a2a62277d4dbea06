"""Consume Edgewire readings from RabbitMQ with pika (blocking), exactly once.

The gateway's amqp sink publishes each reading at least once (what was sent
but not confirmed before an outage or a crash is sent again), with a
message_id that is the same for every copy of one reading. This consumer
stores readings in SQLite keyed by that id, so a repeat is dropped, and acks
only after the row is committed: nothing is lost if the consumer dies either.

    python amqp_consume_pika.py --url amqp://guest:guest@127.0.0.1:5672/ \\
        --exchange edgewire --queue my-readings --binding '#.sensor-17.*' --store readings.db

Prints each new reading as a JSON line; --count N stops after N new readings.
Needs `pip install pika`.
"""
from __future__ import annotations

import argparse
import json
import sqlite3

import pika


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--exchange", default="edgewire")
    ap.add_argument("--queue", default="edgewire-readings")
    ap.add_argument("--binding", default="#", help="routing key pattern: <site>.<device>.<stream>")
    ap.add_argument("--store", default="readings.db")
    ap.add_argument("--count", type=int, default=0, help="stop after this many new readings (0: never)")
    args = ap.parse_args()

    db = sqlite3.connect(args.store)
    db.execute("CREATE TABLE IF NOT EXISTS readings(message_id TEXT PRIMARY KEY, device TEXT, stream TEXT, "
               "value TEXT, ts INTEGER, boot INTEGER, seq INTEGER, error TEXT)")
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    # the same declaration as the gateway's (durable topic exchange); a durable queue
    # keeps readings while this consumer is away
    ch.exchange_declare(args.exchange, exchange_type="topic", durable=True)
    ch.queue_declare(args.queue, durable=True)
    ch.queue_bind(args.queue, args.exchange, routing_key=args.binding)
    ch.basic_qos(prefetch_count=500)
    new = 0

    def on_message(ch: pika.adapters.blocking_connection.BlockingChannel, method: pika.spec.Basic.Deliver,
                   props: pika.BasicProperties, body: bytes) -> None:
        nonlocal new
        r = json.loads(body)   # content_type application/json (the default)
        with db:
            cur = db.execute("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?)",
                             (props.message_id, r["device"], r["stream"], json.dumps(r["value"]), r["ts"],
                              r["boot"], r["seq"], r.get("error")))
        ch.basic_ack(method.delivery_tag)   # after the commit: a crash here means a repeat, not a loss
        if cur.rowcount:
            new += 1
            print(json.dumps(r), flush=True)
            if args.count and new >= args.count:
                ch.stop_consuming()

    ch.basic_consume(args.queue, on_message)
    try:
        ch.start_consuming()
    finally:
        conn.close()
        db.close()


if __name__ == "__main__":
    main()
