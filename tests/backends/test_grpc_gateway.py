"""The gateway's gRPC service over real HTTP/2 with a grpcio client:
Subscribe filters like SSE and resumes from an id across a gateway restart;
ListDevices / GetDevice; SendCommand to firmware on the MicroPython unix port,
with the REST route's errors as gRPC status codes (DEADLINE_EXCEEDED for a
device that does not answer)."""
from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgewire.gateway.config import CommandsConfig, GrpcConfig
from edgewire.gateway.errors import ConfigError
from edgewire.gateway.grpcapi import gateway_pb2 as pb
from edgewire.gateway.grpcapi import gateway_pb2_grpc as pbg
from edgewire.gateway.service import Gateway
from tests.backends.conftest import DrainedDevice
from tests.gateway.conftest import Publisher, gateway_config, wait_for
from tests.gateway.test_micropython_device import DEVICE
from tests.support.broker import Mosquitto


async def take(call: Any, n: int, timeout: float = 30.0) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        ev = await asyncio.wait_for(call.read(), timeout)
        assert ev is not grpc.aio.EOF
        out.append(ev)
    return out


async def test_subscribe_filters_and_resumes_across_a_restart(broker: Mosquitto, publisher: Publisher) -> None:
    cfg = gateway_config(broker, grpc=GrpcConfig(listen="127.0.0.1:0"))
    seen: list[Any] = []
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None and gw.grpc is not None
        await gw.mqtt.wait_connected(5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc.port}") as ch:
            stub = pbg.GatewayStub(ch)
            call = stub.Subscribe(pb.SubscribeRequest(filters=["dev-a/t"]))
            await wait_for(lambda: any(s.kind == "grpc" for s in gw.hub.subscribers.values()), what="the subscriber")
            for seq in range(1, 11):
                await asyncio.to_thread(publisher.telemetry, "dev-a", 1, seq, [["t", seq, 0], ["h", -seq, 0]])
                await asyncio.to_thread(publisher.telemetry, "dev-b", 1, seq, [["t", seq, 0]])
            seen = [e.reading for e in await take(call, 10)]
            call.cancel()
            devices = await stub.ListDevices(pb.ListDevicesRequest())
            d = await stub.GetDevice(pb.GetDeviceRequest(id="dev-a"))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetDevice(pb.GetDeviceRequest(id="ghost"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await take(stub.Subscribe(pb.SubscribeRequest(filters=["a/#/b"])), 1)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(r.device, r.stream, r.seq, r.integer) for r in seen] == [("dev-a", "t", s, s) for s in range(1, 11)]
    assert [x.id for x in devices.devices] == ["dev-a", "dev-b"]
    assert d.id == "dev-a" and d.messages == 10 and json.loads(d.details_json)["id"] == "dev-a"
    # a restart on the same journal; the client resumes after the last id it had
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None and gw.grpc is not None
        await gw.mqtt.wait_connected(5)
        for seq in range(11, 16):
            await asyncio.to_thread(publisher.telemetry, "dev-a", 1, seq, [["t", seq, 0]])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc.port}") as ch:
            call = pbg.GatewayStub(ch).Subscribe(pb.SubscribeRequest(filters=["dev-a/t"], after=seen[4].id))
            more = [e.reading for e in await take(call, 10)]
            call.cancel()
    assert [r.seq for r in more] == list(range(6, 16))
    assert [r.id for r in more[:5]] == [r.id for r in seen[5:]]   # the same ids after the restart
    assert all(a.id < b.id for a, b in zip(more, more[1:]))


@pytest.mark.micropython
async def test_send_command_to_a_micropython_device(tmp_path: Path, broker: Mosquitto, firmware_build: Path) -> None:
    cfg = gateway_config(broker, grpc=GrpcConfig(listen="127.0.0.1:0"), commands=CommandsConfig(timeout=3.0))
    dev: DrainedDevice | None = None
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None and gw.grpc is not None
            await gw.mqtt.wait_connected(5)
            dev = DrainedDevice(tmp_path, broker.port)
            await wait_for(lambda: (d := gw.registry.get(DEVICE)) is not None and d.online, timeout=30,
                           what="the MicroPython device online")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc.port}") as ch:
                stub = pbg.GatewayStub(ch)
                r = await stub.SendCommand(pb.CommandRequest(device=DEVICE, command="ping"), timeout=30)
                assert r.ok and json.loads(r.value_json) == "pong" and r.device == DEVICE and len(r.id) == 16
                r = await stub.SendCommand(pb.CommandRequest(device=DEVICE, command="nosuch"), timeout=30)
                assert not r.ok and "nosuch" in r.error
                for req, code in [(pb.CommandRequest(device="ghost", command="ping"), grpc.StatusCode.NOT_FOUND),
                                  (pb.CommandRequest(device=DEVICE, command="bad name!"),
                                   grpc.StatusCode.INVALID_ARGUMENT),
                                  (pb.CommandRequest(device=DEVICE, command="ping", args_json="{x"),
                                   grpc.StatusCode.INVALID_ARGUMENT)]:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await stub.SendCommand(req, timeout=30)
                    assert e.value.code() == code, req
                dev.send_signal(signal.SIGSTOP)   # frozen: connected, never answers
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.SendCommand(pb.CommandRequest(device=DEVICE, command="ping", timeout=1.0), timeout=30)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "online" in (e.value.details() or "")
                dev.send_signal(signal.SIGCONT)
            assert gw.stats()["grpc"]["calls"]["SendCommand"] == 6
    finally:
        if dev is not None:
            print("device output:\n" + dev.stop())   # shown when the test fails


def test_grpc_config_is_validated() -> None:
    for kw, key in [({"listen": "nohost"}, "listen"), ({"listen": "h:99999"}, "listen"),
                    ({"listen": "h:1", "cert_file": "c.pem"}, "key_file")]:
        with pytest.raises(ConfigError, match=key):
            GrpcConfig(**kw)
