"""Sinks read the journal by cursor, oldest first, and keep a durable cursor
in it: a jsonl archive across a restart, a backend that is down (lag grows,
nothing lost, live clients unaffected), a sink plugged in without touching
the service, retention ahead of a sink counted."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from edgewire.gateway import sinks
from edgewire.gateway.config import GatewayConfig
from edgewire.gateway.errors import ConfigError
from edgewire.gateway.journal import KIND_TELEMETRY, Journal, Row, pack
from edgewire.gateway.service import Gateway
from tests.gateway import flaky_sink
from tests.gateway.conftest import Publisher, gateway_config, read_readings, wait_for
from tests.support.broker import Mosquitto


async def test_jsonl_sink_archives_everything_once_across_a_restart(tmp_path: Path, broker: Mosquitto,
                                                                  publisher: Publisher) -> None:
    archive = tmp_path / "archive.jsonl"
    cfg = gateway_config(broker).replace(sinks=({"type": "jsonl", "name": "archive", "path": str(archive)},))
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        for seq in range(1, 6):
            await asyncio.to_thread(publisher.telemetry, "dev-arch", 2, seq, [["t", seq, 0], ["h", -seq, 0]])
        await wait_for(lambda: gw.sinks["archive"].cursor == gw.journal.last_id == 10, what="the archive")
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        assert gw.sinks["archive"].cursor == 10  # durable: it goes on where it was
        for seq in range(6, 9):
            await asyncio.to_thread(publisher.telemetry, "dev-arch", 2, seq, [["t", seq, 0]])
        await wait_for(lambda: gw.sinks["archive"].cursor == gw.journal.last_id == 13, what="the archive")
        stats = (gw.stats())["sinks"][0]
    lines = [json.loads(x) for x in archive.read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 9))
    assert [r["value"] for x in lines for r in x["readings"]] == [v for s in range(1, 6) for v in (s, -s)] + [6, 7, 8]
    assert [x["id"] for x in lines] == [1, 3, 5, 7, 9, 11, 12, 13]
    assert stats["name"] == "archive" and stats["lag"] == 0 and stats["delivered_readings"] == 3


async def test_a_sink_whose_backend_is_down_lags_without_loss_or_slowing_live_clients(
        broker: Mosquitto, publisher: Publisher, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a sink module the service has never heard of, plugged in by name
    monkeypatch.setitem(sinks.SINK_TYPES, "flaky", "tests.gateway.flaky_sink")
    cfg = gateway_config(broker).replace(sinks=({"type": "flaky", "name": "backend", "broken": True,
                                                 "retry_min": 0.05, "retry_max": 0.2},))
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        backend = flaky_sink.BACKENDS["backend"]
        async with http.get(gw.http_url + "/api/v1/stream?device=dev-down") as sse:
            for seq in range(1, 21):
                await asyncio.to_thread(publisher.telemetry, "dev-down", 1, seq, [["t", seq, 0]])
            live = await read_readings(sse, 20)   # live clients get everything meanwhile
        assert [e["seq"] for e in live] == list(range(1, 21))
        await wait_for(lambda: backend.failures >= 2, what="failed deliveries")
        health = (await (await http.get(gw.http_url + "/healthz")).json())
        assert health["sinks"]["backend"]["lag"] == 20 and health["sinks"]["backend"]["state"] == "retrying"
        assert "backend unreachable" in health["sinks"]["backend"]["last_error"]
        assert backend.cursor == 0 and backend.got == []
        backend.broken = False                    # the backend is back
        await wait_for(lambda: backend.cursor == 20, what="the sink to catch up")
        assert [e.seq for e in backend.got] == list(range(1, 21))  # in order, none missing, none twice
        assert gw.journal.cursors["backend"] == 20
        assert backend.health()[0] and backend.stats()["lost_to_retention"] == 0


async def test_retention_ahead_of_a_sink_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setitem(sinks.SINK_TYPES, "flaky", "tests.gateway.flaky_sink")
    j = Journal(tmp_path / "j.db", max_age=60, retention_interval=0.02)
    j.open()
    try:
        old = int((time.time() - 120) * 1000)
        for seq in range(1, 4):
            j.append([Row(j.reserve(1), 1, KIND_TELEMETRY, "d", 1, seq, old, pack([["t", seq, 0, None]]))])
        j.append([Row(j.reserve(1), 1, KIND_TELEMETRY, "d", 1, 4, int(time.time() * 1000), pack([["t", 4, 0, None]]))])
        await j.flush()
        await wait_for(lambda: j.first_id == 4, what="retention")
        table = sinks.validate_sink({"type": "flaky", "name": "late"})
        sink = sinks.build_sink(table, j)
        await sink.start()
        try:
            await wait_for(lambda: sink.cursor == 4, what="the sink")
            assert sink.stats()["lost_to_retention"] == 3
            assert [e.seq for e in flaky_sink.BACKENDS["late"].got] == [4]
        finally:
            await sink.stop()
    finally:
        await j.close()


def test_sink_config_is_validated_before_any_io() -> None:
    for table, key in [({"type": "nope"}, "type"), ({"type": "jsonl"}, "path"),
                       ({"type": "jsonl", "path": "x", "colour": 1}, "colour"),
                       ({"type": "jsonl", "path": "x", "batch": 0}, "batch"),
                       ({"type": "jsonl", "path": "x", "name": "a b"}, "name")]:
        with pytest.raises(ConfigError, match=key):
            GatewayConfig(sinks=(table,))
    with pytest.raises(ConfigError, match="two sinks"):
        GatewayConfig(sinks=({"type": "jsonl", "path": "x"}, {"type": "jsonl", "path": "y"}))
