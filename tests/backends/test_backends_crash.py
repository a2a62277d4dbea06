"""Both backends at once across a gateway crash: a simulated fleet (the real
device SDK on simulated boards) sends 10,000 readings at QoS 1, and again at
QoS 2, while the gateway forwards to RabbitMQ (the amqp sink, consumed by
`edgewire backend --amqp`) and to the reference gRPC backend (the grpc sink,
`edgewire backend --listen`). The gateway is SIGKILLed mid-run, with both
sinks delivering, and restarted. Every reading an independent MQTT subscriber
saw is then in both backends' stores, none missing after de-duplication by
(device, boot, seq, stream), the AMQP message id."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgewire.sim import Fleet
from tests.backends.conftest import AMQP_URL, Backend, delete_amqp
from tests.gateway.conftest import wait_for
from tests.gateway.test_journal_crash import BROKER_CONF, DEVICES, RATE, READINGS, GatewayProcess, Recorder
from tests.support.broker import Mosquitto, free_port


def readings_of(rec: Recorder) -> set[tuple[str, int, int, str, Any]]:
    with rec.lock:
        return {(d, b, s, st, v) for (d, b, s), rs in rec.seen.items() for st, v in rs}


async def sink_stats(gw: GatewayProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/api/v1/sinks") as r:
            return {s["name"]: s for s in (await r.json())["sinks"]}


async def mqtt_up(gw: GatewayProcess) -> bool:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.url + "/healthz") as r:
                return bool((await r.json())["mqtt"]["connected"])
    except aiohttp.ClientError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("qos", [1, 2])
async def test_gateway_sigkilled_mid_run_every_reading_reaches_both_backends(tmp_path: Path, qos: int,
                                                                             exchange_name: str) -> None:
    # mosquitto queues the gateway's session while it is down: BROKER_CONF sizes that queue for
    # the restart, as a site must (tests/gateway/test_journal_crash.py says why)
    broker = Mosquitto(tmp_path, extra_conf=BROKER_CONF).start()
    queue = exchange_name + "-backend"
    rabbit = Backend(tmp_path / "amqp.db", amqp=(exchange_name, queue))
    grpc_backend = Backend(tmp_path / "grpc.db", free_port())
    gw = GatewayProcess(tmp_path, broker)
    # short backoff: the restarted sinks go on at once instead of after the default 0.5-30 s
    with open(gw.conf, "a") as f:
        f.write(f'[[sinks]]\ntype = "amqp"\nname = "rabbit"\nurl = "{AMQP_URL}"\nexchange = "{exchange_name}"\n'
                f'retry_min = 0.05\nretry_max = 0.5\n'
                f'[[sinks]]\ntype = "grpc"\nname = "grpc"\ntarget = "127.0.0.1:{grpc_backend.port}"\n'
                f'retry_min = 0.05\nretry_max = 0.5\n')
    rec = Recorder(broker.port)
    fleet = Fleet(broker.url, devices=DEVICES, rate=RATE, qos=qos, prefix=f"bk{qos}", fault_rate=0.0)
    try:
        rabbit.start()          # the queue is bound before anything is forwarded
        grpc_backend.start()
        gw.start()
        await wait_for(lambda: mqtt_up(gw), timeout=30, what="the gateway's MQTT session")
        await asyncio.to_thread(fleet.start, wait_connected=30)
        # mid-run, with both sinks delivering
        await wait_for(lambda: rec.readings >= READINGS // 3 and len(rabbit.rows()) >= READINGS // 6
                       and len(grpc_backend.rows()) >= READINGS // 6, timeout=90,
                       what="a third at the subscriber and readings in both stores")
        gw.kill()               # no goodbye: both cursors stay where their backends last confirmed
        at_kill = (len(rabbit.rows()), len(grpc_backend.rows()))
        gw.start()
        await wait_for(lambda: rec.readings >= READINGS, timeout=120, what=f"{READINGS} readings at the subscriber")
        await asyncio.to_thread(fleet.stop)
        report = fleet.report()
        assert sum(d.unacked + d.dropped for d in report.per_device) == 0   # the devices lost nothing either
        seen = readings_of(rec)
        await wait_for(lambda: len(rabbit.rows()) >= len(seen) and len(grpc_backend.rows()) >= len(seen),
                       timeout=120, what="every reading in both stores")
        sinks = await sink_stats(gw)
        rabbit_out, grpc_out = rabbit.stop(), grpc_backend.stop()
    finally:
        await asyncio.to_thread(fleet.stop)
        rec.close()
        gw.stop()
        rabbit.stop()
        grpc_backend.stop()
        broker.stop()
        await asyncio.to_thread(delete_amqp, exchange_name, [queue])
    assert len(seen) >= READINGS
    assert rabbit.readings() == seen, "the AMQP backend's store differs from what devices published"
    assert grpc_backend.readings() == seen, "the gRPC backend's store differs from what devices published"
    assert max(at_kill) < len(seen), "killed after everything was forwarded: the test proved nothing"
    assert gw.starts == 2 and sinks["rabbit"]["last_error"] == "" and sinks["grpc"]["last_error"] == ""
    assert f"stored {len(seen)} readings" in rabbit_out and f"stored {len(seen)} readings" in grpc_out
