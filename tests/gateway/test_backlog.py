"""The journal's backlog is bounded in bytes: when the disk falls behind,
QoS 0 telemetry is dropped and counted while QoS 1 keeps coming in and is
journaled (acknowledged only after its commit), and nothing is lost silently."""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from edgewire import wire
from edgewire.gateway.config import JournalConfig
from edgewire.gateway.journal import KIND_TELEMETRY
from edgewire.gateway.service import Gateway
from tests.gateway.conftest import Publisher, gateway_config, wait_for
from tests.support.broker import Mosquitto

LIMIT = 1 << 18   # the smallest [journal] max_pending_bytes: about 400 one-reading messages
QOS0 = 3000


async def test_full_backlog_sheds_qos0_counted_and_keeps_qos1(burst_broker: Mosquitto, tmp_path: Path) -> None:
    # burst_broker: mosquitto must not drop the burst itself (see its docstring)
    base = gateway_config(burst_broker)
    cfg = base.replace(journal=JournalConfig(path=base.journal.path, max_pending_bytes=LIMIT))
    pub = Publisher(burst_broker.port)
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            blocker = sqlite3.connect(cfg.journal.path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # the disk stalls: the writer's next commit waits
            try:
                def burst() -> None:
                    for seq in range(1, QOS0 + 1):
                        pub.client.publish(wire.topic("flood-0", "telemetry"),
                                           wire.encode_telemetry("flood-0", 1, seq, seq, [["t", seq, seq]]), 0)
                    for seq in range(1, 6):
                        pub.telemetry("keep-1", 1, seq, [["t", seq, 0]], qos=1)

                await asyncio.to_thread(burst)
                await wait_for(lambda: gw.core.dropped_backlog > 0, timeout=15, what="QoS 0 shed at the limit")
                await wait_for(lambda: gw.mqtt.stats.received >= QOS0 + 5, timeout=15,  # type: ignore[union-attr]
                               what="the gateway to read on past the limit")
                assert gw.hub.last_id == 0                   # nothing committed, nothing shown
                assert gw.mqtt.stats.acks_sent == 0          # nor acknowledged
                # bounded: the limit, plus what needs an acknowledgement (5 messages)
                assert gw.journal.pending_bytes_max <= LIMIT + 5 * 2000
                assert gw.refusals.counts["backlog"] == gw.core.dropped_backlog
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            await wait_for(lambda: gw.journal.backlog == 0 and gw.mqtt.stats.acks_sent >= 5,  # type: ignore[union-attr]
                           timeout=15, what="the commit once the disk is back")
            entries, _ = await gw.journal.read(0, 10 * QOS0)
            got = {(e.device, e.seq) for e in entries if e.kind == KIND_TELEMETRY}
            assert {("keep-1", s) for s in range(1, 6)} <= got   # every QoS 1 message journaled
            kept0 = sum(1 for d, _ in got if d == "flood-0")
            assert 0 < kept0 < QOS0
            assert kept0 + gw.core.dropped_backlog == QOS0       # every QoS 0 message journaled or counted
            stats = gw.core.stats()
            assert stats["dropped_backlog"] == QOS0 - kept0
    finally:
        pub.close()
