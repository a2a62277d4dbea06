"""Commands from backends over AMQP (the RabbitMQ RPC pattern): a pika client
publishes a command to the sink's command queue with reply_to and
correlation_id; the result of the real firmware on the MicroPython unix port
comes back to reply_to, and the errors are the REST route's (404 unknown
device, 504 timeout for a device that does not answer, 400 bad request)."""
from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest

from edgewire.gateway.config import CommandsConfig
from edgewire.gateway.service import Gateway
from tests.backends.conftest import AMQP_URL, DrainedDevice, via
from tests.gateway.conftest import Publisher, gateway_config, wait_for
from tests.gateway.test_micropython_device import DEVICE
from tests.support.broker import Mosquitto
from edgewire.sim.proxy import ProxyProcess


class RpcClient:
    """A backend: publishes commands, collects replies on an exclusive queue (pika, blocking, one call at a time)."""

    def __init__(self, command_queue: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.ch = self.conn.channel()
        self.command_queue = command_queue
        self.reply_queue = self.ch.queue_declare("", exclusive=True).method.queue

    def call(self, body: bytes, timeout: float = 60.0, reply: bool = True) -> tuple[str, dict[str, Any]] | None:
        cid = uuid.uuid4().hex
        self.ch.basic_publish("", self.command_queue, body, pika.BasicProperties(
            reply_to=self.reply_queue if reply else None, correlation_id=cid, content_type="application/json",
            delivery_mode=2))
        if not reply:
            return None
        for method, props, got in self.ch.consume(self.reply_queue, auto_ack=True, inactivity_timeout=timeout):
            if method is None:
                raise AssertionError(f"no reply within {timeout}s")
            if props.correlation_id == cid:
                self.ch.cancel()
                return props.correlation_id, json.loads(got)
        raise AssertionError("consume ended")

    def close(self) -> None:
        self.ch.queue_delete(self.command_queue)
        self.conn.close()


def wait_queue(name: str) -> bool:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        return conn.channel().queue_declare(name, passive=True).method.consumer_count >= 1
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.micropython
async def test_commands_over_amqp_rpc_reach_a_micropython_device(
        tmp_path: Path, broker: Mosquitto, publisher: Publisher, exchange_name: str, firmware_build: Path) -> None:
    cq = exchange_name + ".commands"
    cfg = gateway_config(broker, commands=CommandsConfig(timeout=30.0)).replace(sinks=(
        {"type": "amqp", "url": AMQP_URL, "exchange": exchange_name, "command_queue": cq},))
    dev: DrainedDevice | None = None
    rpc: RpcClient | None = None
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            await wait_for(lambda: asyncio.to_thread(wait_queue, cq), timeout=30, what="the command queue consumed")
            rpc = RpcClient(cq)
            dev = DrainedDevice(tmp_path, broker.port)
            await wait_for(lambda: (d := gw.registry.get(DEVICE)) is not None and d.online, timeout=30,
                           what="the MicroPython device online")
            cid, r = await asyncio.to_thread(rpc.call, json.dumps({"device": DEVICE, "command": "ping"}).encode())
            assert r["status"] == 200 and r["ok"] is True and r["value"] == "pong" and r["device"] == DEVICE
            _, r = await asyncio.to_thread(rpc.call, json.dumps(
                {"device": DEVICE, "command": "nosuch", "timeout": 30}).encode())
            assert r["status"] == 200 and r["ok"] is False and "nosuch" in r["error"], r
            # errors in the REST route's words
            _, r = await asyncio.to_thread(rpc.call, json.dumps({"device": "ghost", "command": "ping"}).encode())
            assert (r["status"], r["error"]) == (404, "unknown_device")
            for bad in (b"{not json", b"[1]", json.dumps({"device": DEVICE, "command": "bad name!"}).encode(),
                        json.dumps({"device": DEVICE, "command": "ping", "timeout": -1}).encode(),
                        json.dumps({"device": DEVICE, "command": "ping", "colour": 1}).encode()):
                _, r = await asyncio.to_thread(rpc.call, bad)
                assert (r["status"], r["error"]) == (400, "bad_request"), (bad, r)
            # a device that stops answering (frozen, still "online" to the broker): 504 with its state
            dev.send_signal(signal.SIGSTOP)
            _, r = await asyncio.to_thread(rpc.call, json.dumps(
                {"device": DEVICE, "command": "ping", "timeout": 1}).encode())
            assert (r["status"], r["error"]) == (504, "timeout") and r["device_state"] == "online"
            dev.send_signal(signal.SIGCONT)
            # a command without reply_to is carried out and acknowledged, and counted (to an unknown
            # device: the frozen device's will may have made it offline meanwhile)
            await asyncio.to_thread(rpc.call, json.dumps({"device": "ghost", "command": "ping"}).encode(),
                                    reply=False)
            sink = gw.sinks["amqp"]
            await wait_for(lambda: sink.commands["no_reply_to"] == 1, timeout=30, what="the command without reply_to")
            stats = sink.stats()["commands"]
            assert stats["received"] == 10 and stats["answered"] == 9 and stats["refused"] == 8
    finally:
        if rpc is not None:
            await asyncio.to_thread(rpc.close)
        if dev is not None:
            print("device output:\n" + dev.stop())   # shown when the test fails


async def test_the_command_consumer_comes_back_after_rabbitmq_was_cut_off(
        broker: Mosquitto, exchange_name: str, amqp_proxy: ProxyProcess) -> None:
    cq = exchange_name + ".commands"
    # short backoff so that the test does not wait out the default 0.5-30 s retries
    cfg = gateway_config(broker).replace(sinks=(
        {"type": "amqp", "url": via(amqp_proxy.port), "exchange": exchange_name, "command_queue": cq,
         "retry_min": 0.05, "retry_max": 0.5, "connect_timeout": 2.0, "heartbeat": 2},))
    rpc: RpcClient | None = None
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            sink = gw.sinks["amqp"]
            await wait_for(lambda: sink.commands["consumer_connects"] == 1, timeout=30, what="the command consumer")
            amqp_proxy.outage(True)
            await wait_for(lambda: sink.commands_error != "", timeout=30, what="the consumer to notice the cut")
            amqp_proxy.outage(False)
            await wait_for(lambda: sink.commands["consumer_connects"] == 2, timeout=60, what="the consumer back")
            rpc = RpcClient(cq)
            _, r = await asyncio.to_thread(rpc.call, json.dumps({"device": "ghost", "command": "ping"}).encode())
            assert (r["status"], r["error"]) == (404, "unknown_device")
            assert sink.stats()["commands"]["last_error"] == ""
    finally:
        if rpc is not None:
            await asyncio.to_thread(rpc.close)
