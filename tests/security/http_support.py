"""Shared by the HTTP security tests: a token file with one token per scope,
an in-process gateway that requires them, and a simulated device (the real
device SDK on a simulated board, edgewire.sim.Fleet) that answers commands."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewire.gateway.auth import create_token
from edgewire.gateway.config import HttpConfig
from edgewire.gateway.service import Gateway
from edgewire.sim import Fleet
from tests.gateway.conftest import gateway_config, wait_for
from tests.support.broker import Mosquitto


@dataclass
class Tokens:
    path: Path
    read: str
    command: str
    admin: str

    def header(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, scope)}"}


def make_tokens(folder: Path) -> Tokens:
    path = folder / "tokens.json"
    got = {scope: create_token(path, f"test-{scope}", scope)[1] for scope in ("read", "command", "admin")}
    return Tokens(path, **got)


def secured_config(broker: Mosquitto, tokens: Tokens, **http: Any) -> Any:
    """The tests' gateway config with authentication on ([http] token_file)."""
    return gateway_config(broker, http=HttpConfig(host="127.0.0.1", port=0, heartbeat=0.5,
                                                  token_file=str(tokens.path), **http))


@contextlib.asynccontextmanager
async def running(config: Any) -> AsyncIterator[Gateway]:
    async with Gateway(config) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        yield gw


@contextlib.asynccontextmanager
async def sim_device(broker: Mosquitto, gw: Gateway, prefix: str) -> AsyncIterator[str]:
    """One simulated device (the firmware SDK on a simulated board), online at
    the gateway; yields its id."""
    fleet = Fleet(broker.url, devices=1, rate=2.0, qos=1, prefix=prefix, fault_rate=0.0, observe=False)
    await asyncio.to_thread(fleet.start, wait_connected=30)
    device = fleet.device_ids[0]
    try:
        await wait_for(lambda: (d := gw.registry.get(device)) is not None and d.online, timeout=20,
                       what=f"{device} online at the gateway")
        yield device
    finally:
        await asyncio.to_thread(fleet.stop)
