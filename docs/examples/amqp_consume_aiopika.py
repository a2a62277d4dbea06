"""Consume Edgewire readings from RabbitMQ with aio-pika (asyncio).

Declares a queue bound to the gateway's exchange, drops repeats by
message_id (the sink delivers at least once; every copy of a reading has the
same id) and acks each message after handling it. Here the ids seen are kept
in memory; a real consumer keeps them where it keeps the readings (see
amqp_consume_pika.py for SQLite).

    python amqp_consume_aiopika.py --url amqp://guest:guest@127.0.0.1:5672/ \\
        --exchange edgewire --queue my-readings --binding 'site-a.#'

Prints each new reading as a JSON line; --count N stops after N new readings.
Needs `pip install aio-pika`.
"""
from __future__ import annotations

import argparse
import asyncio
import json

import aio_pika


async def consume(args: argparse.Namespace) -> None:
    connection = await aio_pika.connect_robust(args.url)   # reconnects by itself
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        exchange = await channel.declare_exchange(args.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(args.queue, durable=True)
        await queue.bind(exchange, routing_key=args.binding)
        seen: set[str] = set()
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():   # acks when the block ends without an error
                    body = json.loads(message.body)
                    # readings_per_message > 1 sends a JSON array; key each element by its own id
                    for r in body if isinstance(body, list) else [body]:
                        key = f"{r['device']}/{r['boot']}/{r['seq']}/{r['stream']}"
                        if key in seen:
                            continue
                        seen.add(key)
                        print(json.dumps(r), flush=True)
                if args.count and len(seen) >= args.count:
                    break


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--exchange", default="edgewire")
    ap.add_argument("--queue", default="edgewire-readings-aio")
    ap.add_argument("--binding", default="#", help="routing key pattern: <site>.<device>.<stream>")
    ap.add_argument("--count", type=int, default=0, help="stop after this many new readings (0: never)")
    asyncio.run(consume(ap.parse_args()))


if __name__ == "__main__":
    main()
