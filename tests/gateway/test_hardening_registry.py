"""Issue #6 items 8 and 9: the registry under forged input from anyone who can
publish (eviction instead of refusal, suspect sequence jumps, deaths that hold
only while their session is silent), and retained messages that are not taken
as new."""
from __future__ import annotations

from typing import Any

import aiohttp

from edgewire import wire
from edgewire.gateway.config import RegistryConfig
from edgewire.gateway.registry import REVIVE_MARGIN_MS
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, gateway_config, wait_for
from tests.support.broker import Mosquitto


async def _detail(http: aiohttp.ClientSession, gw: Gateway, dev: str) -> dict[str, Any]:
    r = await http.get(f"{gw.http_url}/api/v1/devices/{dev}")
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def test_made_up_ids_never_lock_out_real_new_devices(broker: Mosquitto, publisher: Publisher,
                                                           http: aiohttp.ClientSession) -> None:
    # a small cap keeps the flood short; the rule is the same at the default 10,000
    cfg = gateway_config(broker, registry=RegistryConfig(max_devices=100))
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        publisher.pub(wire.topic("real-old", "status"), wire.encode_birth("real-old", 1, 1, 1, "1", "x", {}))
        publisher.telemetry("real-old", 1, 1, [["t", 1, 0]])
        for i in range(150):  # made-up ids, telemetry only (no birth), at QoS 1 so none is lost
            publisher.telemetry(f"fake-{i:05d}", 1, 1, [["t", 0, 0]])
        await wait_for(lambda: gw.registry.get("fake-00149") is not None, what="the flood")
        publisher.pub(wire.topic("real-new", "status"), wire.encode_birth("real-new", 9, 1, 1, "1", "x", {}))
        publisher.telemetry("real-new", 9, 1, [["t", 42, 0]])
        await wait_for(lambda: (d := gw.registry.get("real-new")) is not None and d.messages == 1,
                       what="the real new device registered")
        assert len(gw.registry) == 100
        # the devices that never sent a birth went first, oldest first; the real ones stay
        assert gw.registry.get("real-old") is not None and gw.registry.get("fake-00000") is None
        stats = await (await http.get(gw.http_url + "/api/v1/stats")).json()
        assert stats["registry"]["evicted"] == 150 + 2 - 100
        assert "capacity" not in stats["refused"]


async def test_forged_huge_sequence_is_suspect_not_billions_missing(gateway: Gateway, publisher: Publisher,
                                                                    http: aiohttp.ClientSession) -> None:
    dev = "dev-seq"
    for seq in range(1, 11):
        publisher.telemetry(dev, 7, seq, [["t", seq, 0]])
    publisher.telemetry(dev, 7, 2**32 - 1, [["t", -1, 0]])  # forged
    for seq in range(11, 21):
        publisher.telemetry(dev, 7, seq, [["t", seq, 0]])
    publisher.telemetry(dev, 7, 15, [["t", 15, 0]])  # a redelivery: must still be caught
    await wait_for(lambda: (d := gateway.registry.get(dev)) is not None and d.messages + d.duplicates == 22,
                   what="22 messages")
    body = await _detail(http, gateway, dev)
    boot = body["boots"]["7"]
    assert body["missing"] == 0 and boot["missing"] == 0, body
    assert boot["suspect"] == 1 and boot["duplicates"] == 1 and boot["last_seq"] == 20
    assert body["duplicates"] == 1
    stats = await (await http.get(gateway.http_url + "/api/v1/stats")).json()
    assert stats["registry"]["suspect"] == 1 and stats["registry"]["missing"] == 0


async def test_a_real_jump_beyond_the_window_is_followed(gateway: Gateway, publisher: Publisher,
                                                         http: aiohttp.ClientSession) -> None:
    dev = "dev-jump"
    window = gateway.config.registry.dedup_window
    for seq in (1, 2, 3):
        publisher.telemetry(dev, 1, seq, [["t", seq, 0]])
    far = 3 + window + 1000  # e.g. a QoS 0 device that was cut off for a long time
    for seq in (far, far + 1, far + 3, far + 4):
        publisher.telemetry(dev, 1, seq, [["t", seq, 0]])
    publisher.telemetry(dev, 1, far + 1, [["t", 0, 0]])  # duplicate after the window moved
    await wait_for(lambda: (d := gateway.registry.get(dev)) is not None and d.duplicates == 1, what="duplicate")
    boot = (await _detail(http, gateway, dev))["boots"]["1"]
    assert boot["last_seq"] == far + 4 and boot["jumped"] == far - 4 and boot["missing"] == 1, boot


async def test_forged_death_holds_only_while_the_session_is_silent(gateway: Gateway, publisher: Publisher,
                                                                   http: aiohttp.ClientSession) -> None:
    dev = "dev-alive"
    publisher.pub(wire.topic(dev, "status"), wire.encode_birth(dev, 3, 1, 1, "1", "x", {}))
    publisher.telemetry(dev, 3, 1, [["t", 1, 0]])
    publisher.pub(wire.topic(dev, "status"), wire.encode_death(dev, 3, 1, "lost"))  # forged
    await wait_for(lambda: (d := gateway.registry.get(dev)) is not None and d.online is False,
                   what="forged death applied")
    # the device goes on streaming: what it sends after the death (on its own clock) shows it alive
    publisher.telemetry(dev, 3, 2, [["t", 2, 0]], uptime=1 + REVIVE_MARGIN_MS + 60_000)
    await wait_for(lambda: gateway.registry.get(dev).online is True, what="back online")  # type: ignore[union-attr]
    body = await _detail(http, gateway, dev)
    assert body["state"] == "online" and body["why_offline"] is None and body["revived"] == 1

    # a device known only from its telemetry: a death naming another boot is ignored
    publisher.telemetry("dev-nobirth", 5, 1, [["t", 1, 0]])
    publisher.pub(wire.topic("dev-nobirth", "status"), wire.encode_death("dev-nobirth", 99, 1, "lost"))
    await wait_for(lambda: gateway.registry.stale_deaths == 1, what="stale death counted")
    assert gateway.registry.get("dev-nobirth").online is None  # type: ignore[union-attr]


async def test_late_telemetry_sent_before_a_death_does_not_revive(broker: Mosquitto, publisher: Publisher,
                                                                 http: aiohttp.ClientSession) -> None:
    # A device shuts down: its last QoS 2 readings were sent before its QoS 1
    # death, but the broker forwards QoS 2 only at PUBREL, so the death can
    # arrive first. Those readings (and their redelivery to a restarted
    # gateway) are late, not a sign of life.
    dev = "dev-bye"
    cfg = gateway_config(broker)
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        publisher.pub(wire.topic(dev, "status"), wire.encode_birth(dev, 8, 1, 1000, "1", "x", {}))
        for seq in (1, 2, 3):
            publisher.telemetry(dev, 8, seq, [["t", seq, 0]], uptime=1000 + seq * 100)
        publisher.pub(wire.topic(dev, "status"), wire.encode_death(dev, 8, 1, "shutdown"))
        publisher.telemetry(dev, 8, 4, [["t", 4, 0]], qos=2, uptime=1400)  # sent before the death
        await wait_for(lambda: (d := gw.registry.get(dev)) is not None and d.messages == 4, what="late reading")
        body = await _detail(http, gw, dev)
        assert body["state"] == "offline" and body["why_offline"] == "shutdown" and body["revived"] == 0, body
    async with Gateway(cfg) as gw:  # restarted on the same journal: the death keeps its date
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        publisher.telemetry(dev, 8, 5, [["t", 5, 0]], qos=2, uptime=1500)  # still from before the death
        await wait_for(lambda: (d := gw.registry.get(dev)) is not None and d.messages == 5, what="redelivery")
        body = await _detail(http, gw, dev)
        assert body["state"] == "offline" and body["revived"] == 0, body


async def test_retained_messages_are_not_new(broker: Mosquitto, publisher: Publisher,
                                             http: aiohttp.ClientSession) -> None:
    # left on the broker by a device that is gone, before the gateway starts
    publisher.pub(wire.topic("dev-ret", "status"), wire.encode_birth("dev-ret", 4, 2, 1, "1", "x", {}), retain=True)
    publisher.pub(wire.topic("dev-ret", "telemetry"),
                  wire.encode_telemetry("dev-ret", 4, 17, 500, [["t", 21.5, 500]]), retain=True)
    for restart in range(2):  # the same at every gateway start
        async with Gateway(gateway_config(broker)) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            await wait_for(lambda: gw.refusals.counts.get("retained") == 1, what="retained telemetry counted")
            await wait_for(lambda: gw.registry.get("dev-ret") is not None, what="retained birth")
            assert gw.hub.published == 0  # no reading replayed as new (the birth takes a journal id, not a reading)
            body = await _detail(http, gw, "dev-ret")
            assert body["state"] == "online" and (body["boot"], body["conn"]) == (4, 2)
            assert body["last_seen"] is None and body["status_at"] is None and body["messages"] == 0
            # live telemetry (not retained) goes through as always
            publisher.telemetry("dev-ret", 4, 18 + restart, [["t", 22.0, 0]])
            await wait_for(lambda: gw.hub.published == 1, what="live reading")
            assert (await _detail(http, gw, "dev-ret"))["last_seen"] is not None
