"""The durable journal: order, de-duplication across restarts, acknowledgement
only after commit, the registry and resume rebuilt from it."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import websockets

from edgewire import wire
from edgewire.gateway.config import GatewayConfig, RegistryConfig
from edgewire.gateway.journal import KIND_TELEMETRY, Journal, Row, pack
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, gateway_config, read_readings, wait_for
from tests.support.broker import Mosquitto


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    """A gateway, subscribed (what is published before that is not for it)."""
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        yield gw


async def test_journal_orders_ids_and_refuses_a_repeated_message(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path)
    j.open()
    done: list[tuple[int, set[int]]] = []
    now = int(time.time() * 1000)  # (an entry older than [journal] max_age would be removed)
    for seq in (1, 2, 1):  # the third repeats (device, boot, seq) of the first
        first = j.reserve(2)
        j.append([Row(first, 2, KIND_TELEMETRY, "d", 7, seq, now, pack([["a", seq, 0, None], ["b", seq, 0, None]]))],
                 then=lambda refused, f=first: done.append((f, refused)))
    await j.flush()
    assert done == [(1, set()), (3, set()), (5, {5})]
    assert (j.last_id, j.duplicates, j.appended) == (6, 1, 2)
    entries, upto = await j.read(0, 100)
    assert [(e.id, e.n, e.seq, e.data) for e in entries] == [(1, 2, 1, [["a", 1, 0, None], ["b", 1, 0, None]]),
                                                            (3, 2, 2, [["a", 2, 0, None], ["b", 2, 0, None]])]
    assert upto == 6
    entries, _ = await j.read(3, 100)   # id 4 lies inside the entry that starts at 3
    assert [e.id for e in entries] == [3]
    await j.close()
    # reopened: ids go on after the highest ever handed out (6), the repeat is still refused
    j = Journal(path)
    j.open()
    assert (j.last_id, j.next_id) == (6, 7)
    refused: list[set[int]] = []
    j.append([Row(j.reserve(1), 1, KIND_TELEMETRY, "d", 7, 2, now, pack([]))], then=refused.append)
    await j.flush()
    assert refused == [{7}]
    await j.close()


async def test_reading_one_entry_at_a_time_crosses_a_refused_ids_gap(tmp_path: Path) -> None:
    # A sink with batch = 1 reads with limit 1: a refused repeat leaves its ids
    # unused, and the read after them must go on to the next entry (it used to
    # return the entry before the gap, filtered out, and the same position again).
    j = Journal(tmp_path / "j.db")
    j.open()
    now = int(time.time() * 1000)
    for seq in (1, 1, 2):  # the second repeats the first: ids 2 refused
        j.append([Row(j.reserve(1), 1, KIND_TELEMETRY, "d", 7, seq, now, pack([["a", seq, 0, None]]))])
    await j.flush()
    got, after = [], 0
    for _ in range(5):
        entries, after = await j.read(after, 1)
        got += [e.id for e in entries]
        if after >= j.last_id:
            break
    assert got == [1, 3] and after == 3, (got, after)
    await j.close()


async def test_second_gateway_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    from edgewire.gateway.journal import JournalLocked

    a = Journal(tmp_path / "j.db")
    a.open()
    b = Journal(tmp_path / "j.db")
    try:
        b.open()
        raise AssertionError("a second open succeeded")
    except JournalLocked as e:
        assert "in use by another process" in str(e)
    await a.close()


async def test_acknowledged_only_after_commit(tmp_path: Path, broker: Mosquitto, publisher: Publisher) -> None:
    """While the journal cannot commit (another process holds SQLite's write
    lock, as a stalled disk would), QoS 1 messages are received but not
    acknowledged; after the gateway is stopped the broker still has them and
    delivers them to the next start, where they are journaled."""
    cfg = gateway_config(broker)
    async with running(cfg) as gw:
        assert gw.mqtt is not None
        await asyncio.to_thread(publisher.telemetry, "dev-ack", 1, 1, [["t", 1, 0]])
        await wait_for(lambda: gw.hub.last_id == 1, what="the first reading committed")
        acks_before = gw.mqtt.stats.acks_sent
        blocker = sqlite3.connect(cfg.journal.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer's next transaction waits for this lock
        try:
            for seq in (2, 3, 4):
                await asyncio.to_thread(publisher.client.publish, wire.topic("dev-ack", "telemetry"),
                                        wire.encode_telemetry("dev-ack", 1, seq, seq, [["t", seq, seq]]), 1)
            await wait_for(lambda: gw.mqtt.stats.received >= 4, what="the gateway to receive 2-4")  # type: ignore[union-attr]
            await wait_for(lambda: gw.journal.backlog >= 3 or gw.journal.write_errors > 0, what="backlog")
            assert gw.mqtt.stats.acks_sent == acks_before  # nothing acknowledged: nothing is durable
            assert gw.hub.last_id == 1                     # nor shown to live clients
            # the gateway goes away before it could commit (its connection is cut first, so the
            # acks of a later commit would be moot)
            gw.mqtt._conn.transport.abort()  # type: ignore[union-attr]
            await wait_for(lambda: not gw.mqtt.connected, what="disconnect")  # type: ignore[union-attr]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(lambda: gw.hub.last_id >= 4, timeout=15, what="the commit after the lock went")
    # The broker redelivers 2-4 in the kept session; the journal refuses them as duplicates
    # (they were committed after the disconnect), so each reading is there exactly once.
    async with running(cfg) as gw2:
        assert gw2.mqtt is not None
        await wait_for(lambda: gw2.core.duplicates_journal + gw2.registry.duplicates >= 3, timeout=15,
                       what="the redeliveries of 2-4")
        entries, _ = await gw2.journal.read(0, 100)
        assert sorted(e.seq for e in entries if e.kind == KIND_TELEMETRY) == [1, 2, 3, 4]


async def test_redelivery_after_restart_is_a_counted_duplicate(broker: Mosquitto, publisher: Publisher,
                                                               http: aiohttp.ClientSession) -> None:
    # a small de-duplication window, so that the journal's unique key (not only the
    # in-memory window) is what catches the old message
    cfg = gateway_config(broker, registry=RegistryConfig(dedup_window=8))
    async with running(cfg) as gw:
        for seq in (1, 2, 3):
            await asyncio.to_thread(publisher.telemetry, "dev-dup", 4, seq, [["t", seq, 0]])
        await wait_for(lambda: gw.hub.last_id == 3, what="3 readings")
    async with running(cfg) as gw:
        base = gw.http_url
        async with http.get(base + "/api/v1/stream?device=dev-dup", headers={"Last-Event-ID": "3"}) as sse:
            await asyncio.to_thread(publisher.telemetry, "dev-dup", 4, 2, [["t", 2, 0]])   # the window catches it
            for seq in range(4, 14):  # the window (8) moves on past 1
                await asyncio.to_thread(publisher.telemetry, "dev-dup", 4, seq, [["t", seq, 0]])
            await asyncio.to_thread(publisher.telemetry, "dev-dup", 4, 1, [["t", 1, 0]])   # beyond the window
            await asyncio.to_thread(publisher.telemetry, "dev-dup", 4, 14, [["t", 14, 0]])
            got = await read_readings(sse, 11)
        # ids 4-13 for seq 4-13; id 14 was the refused repeat of seq 1
        assert [(e["id"], e["seq"]) for e in got] == [(i, i) for i in range(4, 14)] + [(15, 14)]
        assert gw.core.duplicates_journal == 1 and gw.journal.duplicates == 1
        d = await (await http.get(base + "/api/v1/devices/dev-dup")).json()
        assert (d["messages"], d["duplicates"]) == (14, 2)


async def test_registry_and_resume_survive_a_restart(broker: Mosquitto, publisher: Publisher,
                                                     http: aiohttp.ClientSession) -> None:
    cfg = gateway_config(broker)
    status = wire.topic("dev-r1", "status")

    async def devices(gw: Gateway) -> list[dict[str, object]]:
        body = await (await http.get(gw.http_url + "/api/v1/devices")).json()
        return body["devices"]  # type: ignore[no-any-return]

    async def details(gw: Gateway) -> list[dict[str, object]]:
        return [await (await http.get(gw.http_url + f"/api/v1/devices/{d}")).json() for d in ("dev-r1", "dev-r2")]

    async with running(cfg) as gw:
        await asyncio.to_thread(publisher.pub, status, wire.encode_birth("dev-r1", 3, 1, 5, "1.0", "esp32",
                                                                       {"t": {"u": "C", "q": 1, "i": 1000}}))
        for seq in (1, 2, 2, 5):  # a duplicate and a gap of two
            await asyncio.to_thread(publisher.telemetry, "dev-r1", 3, seq, [["t", seq * 1.5, 0]])
        await asyncio.to_thread(publisher.telemetry, "dev-r2", 8, 1, [["h", "x", 0], ["t", None, 1, "i2c"]])
        r2 = wire.topic("dev-r2", "status")
        await asyncio.to_thread(publisher.pub, r2, wire.encode_birth("dev-r2", 8, 1, 5, "2.0", "pico_w", {}))
        await asyncio.to_thread(publisher.pub, r2, wire.encode_death("dev-r2", 8, 1, "lost"))
        await wait_for(lambda: gw.registry.get("dev-r2") is not None and gw.registry.get("dev-r2").online is False,
                       what="dev-r2 offline")  # type: ignore[union-attr]
        await gw.journal.flush()  # the registry changes on receipt; what the journal holds, after the commit
        before = await devices(gw)
        before_detail = await details(gw)
        before_totals = gw.registry.totals()
        last = gw.hub.last_id
    assert [(d["id"], d["state"], d["messages"], d["duplicates"], d["missing"]) for d in before] == [
        ("dev-r1", "online", 3, 1, 2), ("dev-r2", "offline", 1, 0, 0)]
    async with running(cfg) as gw:
        assert await devices(gw) == before
        assert await details(gw) == before_detail
        assert gw.registry.totals() == before_totals
        assert gw.hub.last_id == last
        assert gw.core.last_adapter == {"dev-r1": "mqtt", "dev-r2": "mqtt"}  # commands go back the same way
        # the stream resumes by id across the restart; new ids continue after the old ones
        await asyncio.to_thread(publisher.telemetry, "dev-r1", 3, 6, [["t", 9.0, 0]])
        async with http.get(gw.http_url + "/api/v1/stream?device=dev-r1", headers={"Last-Event-ID": "0"}) as sse:
            got = await read_readings(sse, 4)
    assert [e["seq"] for e in got] == [1, 2, 5, 6]
    assert [e["id"] for e in got] == sorted(e["id"] for e in got) and got[-1]["id"] > last


async def test_websocket_resume_with_several_filters_is_in_id_order(gateway: Gateway, publisher: Publisher) -> None:
    for seq in range(1, 7):  # ids 1-12: a/t, b/t alternating
        await asyncio.to_thread(publisher.telemetry, "ws-a", 1, seq, [["t", seq, 0]])
        await asyncio.to_thread(publisher.telemetry, "ws-b", 1, seq, [["t", seq, 0]])
    await wait_for(lambda: gateway.hub.last_id == 12, what="12 events")
    events: list[dict[str, object]] = []

    async def readings(ws: websockets.WebSocketClientProtocol, n: int) -> None:
        async with asyncio.timeout(10):
            while len(events) < n:
                frame = json.loads(await ws.recv())
                if frame["type"] == "readings":
                    events.extend(frame["events"])

    async with websockets.connect(gateway.http_url.replace("http", "ws") + "/api/v1/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"op": "subscribe", "filter": "ws-a/#", "after": 6}))
        await readings(ws, 3)     # a at ids 7, 9, 11
        await ws.send(json.dumps({"op": "subscribe", "filter": "ws-b/#", "after": 2}))
        await asyncio.to_thread(publisher.telemetry, "ws-a", 1, 7, [["t", 7, 0]])  # id 13, live
        await readings(ws, 3 + 5 + 1)
    got = [(e["device"], e["id"]) for e in events]
    assert got[:3] == [("ws-a", 7), ("ws-a", 9), ("ws-a", 11)]
    # the rewind for ws-b: its events after 2 in id order, none of ws-a again, then the live one
    assert got[3:] == [("ws-b", 4), ("ws-b", 6), ("ws-b", 8), ("ws-b", 10), ("ws-b", 12), ("ws-a", 13)]


def test_journal_config_is_validated() -> None:
    import pytest

    from edgewire.gateway.config import JournalConfig
    from edgewire.gateway.errors import ConfigError

    for kw, key in [({"synchronous": "extra"}, "synchronous"), ({"max_bytes": 1000}, "max_bytes"),
                    ({"path": ""}, "path"), ({"max_age": -1}, "max_age")]:
        with pytest.raises(ConfigError, match=key):
            JournalConfig(**kw)  # type: ignore[arg-type]
    assert dataclasses.replace(GatewayConfig().journal, synchronous="normal").synchronous == "normal"


async def test_retention_at_the_size_limit_keeps_ingest_going(tmp_path: Path) -> None:
    """A long run into a 1 MiB journal: the oldest entries go (counted), the file
    stays near the limit, and appends never wait for retention."""
    j = Journal(tmp_path / "j.db", max_bytes=1 << 20, retention_interval=0.02)
    j.open()
    committed: list[int] = []
    try:
        seq = 0
        body = pack([["s", "x" * 200, 0, None]])
        for _ in range(60):  # ~6 MB of entries in all
            now = int(time.time() * 1000)
            rows = []
            for _ in range(400):
                seq += 1
                rows.append(Row(j.reserve(1), 1, KIND_TELEMETRY, "dev-big", 1, seq, now, body))
            j.append(rows, then=lambda refused, n=len(rows): committed.append(n - len(refused)))
            await j.wait_space()
            await j.flush()
        await wait_for(lambda: j.removed_entries > 0 and j.size_bytes <= 1 << 20, timeout=10,
                       what="retention to bring the journal under its limit")
        stats = j.stats()
        assert sum(committed) == seq == 24_000          # every append committed
        assert stats["space_waits"] == 0                # ingest never waited
        assert stats["removed_by_size"] == stats["removed_entries"] > 10_000
        assert stats["first_id"] == stats["removed_ids"] + 1
        entries, _ = await j.read(0, 10)
        # the oldest went, in order: a read from the start begins at the oldest kept entry
        # (retention goes on meanwhile, so that is somewhere between the two snapshots)
        assert stats["first_id"] <= entries[0].id <= j.stats()["first_id"]
        assert [e.id for e in entries] == list(range(entries[0].id, entries[0].id + len(entries)))
        assert (tmp_path / "j.db").stat().st_size < 4 << 20  # freed pages are reused: the file stays bounded
    finally:
        await j.close()


async def test_retention_by_age(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", max_age=60, retention_interval=0.02)
    j.open()
    try:
        old = int((time.time() - 120) * 1000)
        new = int(time.time() * 1000)
        for seq, received in [(1, old), (2, old), (3, new)]:
            j.append([Row(j.reserve(1), 1, KIND_TELEMETRY, "d", 1, seq, received, pack([]))])
        await j.flush()
        await wait_for(lambda: j.removed_by_age == 2, what="the two old entries to go")
        assert j.first_id == 3 and j.stats()["removed_ids"] == 2
    finally:
        await j.close()


async def test_websocket_resume_across_a_restart(broker: Mosquitto, publisher: Publisher) -> None:
    cfg = gateway_config(broker)
    async with running(cfg) as gw:
        for seq in (1, 2, 3):
            await asyncio.to_thread(publisher.telemetry, "ws-r", 1, seq, [["t", seq, 0]])
        await wait_for(lambda: gw.hub.last_id == 3, what="3 events")
    async with running(cfg) as gw:
        async with websockets.connect(gw.http_url.replace("http", "ws") + "/api/v1/ws") as ws:
            assert json.loads(await ws.recv()) == {"type": "hello", "last_id": 3}
            await ws.send(json.dumps({"op": "subscribe", "filter": "ws-r/#", "after": 1}))
            await asyncio.to_thread(publisher.telemetry, "ws-r", 1, 4, [["t", 4, 0]])
            events: list[dict[str, object]] = []
            async with asyncio.timeout(10):
                while len(events) < 3:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "readings":
                        events.extend(frame["events"])
    assert [(e["id"], e["seq"]) for e in events] == [(2, 2), (3, 3), (4, 4)]


async def test_hub_filters_start_where_asked(tmp_path: Path) -> None:
    """On one subscription: a filter with `after` replays from there; one without
    applies from now, also while the stream is still catching up."""
    from edgewire.gateway.hub import Hub

    j = Journal(tmp_path / "j.db")
    j.open()
    try:
        now = int(time.time() * 1000)
        for seq in range(1, 7):  # ids 1-6: a, b alternating
            dev = "a" if seq % 2 else "b"
            j.append([Row(j.reserve(1), 1, KIND_TELEMETRY, dev, 1, seq, now, pack([["t", seq, now, None]]))])
        await j.flush()
        hub = Hub(source=j, ring=2)
        hub.start_at(j.last_id)
        sub = hub.open(["a/#"], after=0)            # catching up from the start
        assert not sub.live and sub.filters == {"a/#": 0}
        sub.add_filter("b/#")                        # no `after`: only what comes from now on
        assert sub.filters["b/#"] == 6
        got = []
        while not sub.live or sub.queue:
            got += [(e.device, e.id) for e in await sub.next(100)]
        assert got == [("a", 1), ("a", 3), ("a", 5)]
        assert sub.add_filter("b/#") is False        # already held: unchanged
        assert sub.add_filter("c/#", after=1)         # replays c's events after 1 (none) and rewinds
        assert not sub.live and sub.cursor == 1
        rest = []
        while not sub.live or sub.queue:
            rest += [(e.device, e.id) for e in await sub.next(100)]
        assert rest == []                            # a and b already had theirs: nothing twice
        hub.close(sub)
    finally:
        await j.close()
