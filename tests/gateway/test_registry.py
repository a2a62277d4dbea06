"""Registry: gaps and duplicates from (boot, seq); the late-will race."""
from __future__ import annotations

import asyncio

import aiohttp

from edgewire import wire
from edgewire.gateway.registry import SeqWindow
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, read_readings, wait_for


async def test_gaps_and_duplicates_counted_duplicates_not_forwarded(gateway: Gateway, publisher: Publisher,
                                                                    http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.http_url + "/api/v1/stream?device=dev-seq") as sse:
        for seq in (1, 2, 2, 4, 5, 5, 3):  # 2 and 5 twice; 3 late (a gap that fills)
            await asyncio.to_thread(publisher.telemetry, "dev-seq", 9, seq, [["t", seq, 0]])
        await asyncio.to_thread(publisher.telemetry, "dev-seq", 9, 8, [["t", 8, 0]])  # 6, 7 never come
        got = await read_readings(sse, 6)
    assert [e["seq"] for e in got] == [1, 2, 4, 5, 3, 8]
    d = await (await http.get(gateway.http_url + "/api/v1/devices/dev-seq")).json()
    assert (d["messages"], d["duplicates"], d["missing"]) == (6, 2, 2)
    assert d["loss"] == 0.25  # 2 of 8
    assert d["boots"]["9"] == {"first_seq": 1, "last_seq": 8, "received": 6, "missing": 2, "duplicates": 2,
                               "unchecked": 0, "suspect": 0, "jumped": 0}
    stats = await (await http.get(gateway.http_url + "/api/v1/stats")).json()
    assert stats["registry"]["duplicates"] == 2 and stats["hub"]["last_id"] == 6


async def test_late_will_of_an_older_session_is_ignored(gateway: Gateway, publisher: Publisher,
                                                        http: aiohttp.ClientSession) -> None:
    status = wire.topic("dev-race", "status")
    url = gateway.http_url + "/api/v1/devices/dev-race"

    async def state() -> tuple[str, int]:
        d = await (await http.get(url)).json()
        return d["state"], d["conn"]

    await asyncio.to_thread(publisher.pub, status, wire.encode_birth("dev-race", 5, 1, 0, "fw", "hw", {}))
    await wait_for(lambda: gateway.registry.get("dev-race") is not None, what="birth 1")
    await asyncio.to_thread(publisher.pub, status, wire.encode_birth("dev-race", 5, 2, 10, "fw", "hw", {}))
    await asyncio.to_thread(publisher.pub, status, wire.encode_death("dev-race", 5, 1, "lost"))  # late will of c=1
    await wait_for(lambda: gateway.registry.stale_deaths == 1, what="the late will")
    assert await state() == ("online", 2)
    await asyncio.to_thread(publisher.pub, status, wire.encode_death("dev-race", 4, 2, "lost"))  # an older boot
    await wait_for(lambda: gateway.registry.stale_deaths == 2, what="the older boot's will")
    assert await state() == ("online", 2)
    await asyncio.to_thread(publisher.pub, status, wire.encode_death("dev-race", 5, 2, "shutdown"))
    await wait_for(lambda: gateway.registry.get("dev-race").online is False, what="the real death")  # type: ignore[union-attr]
    d = await (await http.get(url)).json()
    assert (d["state"], d["why_offline"], d["stale_deaths"]) == ("offline", "shutdown", 2)


def test_seq_window_rules() -> None:
    w = SeqWindow(16)
    assert [w.accept(s) for s in (5, 6, 6, 9, 7)] == [True, True, False, True, True]
    assert (w.first, w.high, w.missing, w.duplicates, w.received) == (5, 9, 1, 1, 4)
    assert w.accept(4) and (w.first, w.missing) == (4, 1)          # earlier than the first seen
    assert w.accept(20) and w.missing == 1 + 10                     # a jump within the window: 10..19 missing
    assert not w.accept(20) and w.duplicates == 2
    assert w.accept(8) and w.missing == 10 and w.unchecked == 0     # late, still inside the window
    assert w.accept(3) and w.unchecked == 1                          # outside the window: passed on, noted
    assert w.missing == 10
    # beyond the window (issue #6 item 8): suspect, neither missing nor the window move
    assert w.accept(100) and (w.suspect, w.missing, w.high) == (1, 10, 20)
    assert not w.accept(100) and w.duplicates == 3
    assert w.accept(21) and w.missing == 10                          # duplicate detection still on
