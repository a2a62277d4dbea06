"""The grpc sink encodes each Batch by hand (convert.batch_bytes, decision D18a): the bytes must be
exactly what protobuf's own SerializeToString makes of the same Batch (batch_of), for every kind of
reading the journal can hold, so a backend cannot tell the difference."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewire.gateway.grpcapi import forward_pb2 as fpb
from edgewire.gateway.grpcapi.convert import batch_bytes, batch_of
from edgewire.gateway.journal import KIND_RESULT, KIND_TELEMETRY, Entry

U64 = 2 ** 64 - 1
I64 = 2 ** 63

names = st.text(min_size=0, max_size=40)   # any unicode, empty included (proto3 leaves it out)
values = st.one_of(
    st.none(), st.booleans(),
    st.integers(-I64, U64),                       # msgpack's range: beyond int64 becomes a number
    st.sampled_from([0, -1, 1, 63, 64, -64, -65, 127, 128, I64 - 1, -I64, I64, U64]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0]),
    st.text(max_size=300))                        # long texts: lengths of 2-byte varints
readings = st.tuples(names, values,
                     st.one_of(st.integers(-I64, I64 - 1), st.sampled_from([0, -1, 1, 1796153863590])),
                     st.one_of(st.none(), st.just(""), st.text(max_size=60)))


@st.composite
def entries(draw: Any) -> list[Entry]:
    out: list[Entry] = []
    i = draw(st.integers(0, 2 ** 40))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([KIND_TELEMETRY, KIND_TELEMETRY, KIND_TELEMETRY, KIND_RESULT]))
        data = [list(r) for r in draw(st.lists(readings, max_size=6))] if kind == KIND_TELEMETRY else {"x": 1}
        n = max(1, len(data)) if kind == KIND_TELEMETRY else 1
        boot = draw(st.one_of(st.none(), st.integers(0, U64)))
        seq = draw(st.one_of(st.none(), st.integers(0, U64)))
        out.append(Entry(i, n, kind, draw(names), boot, seq, 1, data))
        i += n + draw(st.integers(0, 3))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries(), names)
def test_hand_encoded_batches_are_protobufs_own_bytes(batch: list[Entry], site: str) -> None:
    want = batch_of(batch, site)
    streams: dict[str, bytes] = {}
    got = batch_bytes(batch, site, streams)
    if want is None:
        assert got is None
        return
    assert got == want.SerializeToString()
    assert fpb.Batch.FromString(got) == want
    assert batch_bytes(batch, site, streams) == got   # the stream cache gives the same bytes again


def test_large_readings_and_batches() -> None:
    """A reading over 16 KiB (a 3-byte length) and a batch of many readings."""
    big = [Entry(1, 1, KIND_TELEMETRY, "d", 1, 1, 1, [["s", "x" * 20_000, 5, "e" * 300]])]
    many = [Entry(1 + 4 * k, 4, KIND_TELEMETRY, f"dev-{k % 50}", 1, k,
                  1, [[f"s{j}", k * 0.5 + j, 1796153863590, None] for j in range(4)]) for k in range(3000)]
    for batch in (big, many):
        assert batch_bytes(batch, "site") == batch_of(batch, "site").SerializeToString()


def test_what_protobuf_refuses_is_refused() -> None:
    """Out-of-range ids and timestamps raise, as protobuf does, rather than send wrong bytes."""
    for entry in (Entry(1, 1, KIND_TELEMETRY, "d", -1, 1, 1, [["s", 1, 5, None]]),
                  Entry(1, 1, KIND_TELEMETRY, "d", 1, 2 ** 64, 1, [["s", 1, 5, None]]),
                  Entry(1, 1, KIND_TELEMETRY, "d", 1, 1, 1, [["s", 1, 1.5, None]]),
                  Entry(1, 1, KIND_TELEMETRY, "d", 1, 1, 1, [["s", 1, 2 ** 63, None]]),
                  Entry(-1, 1, KIND_TELEMETRY, "d", 1, 1, 1, [["s", 1, 5, None]])):
        with pytest.raises((ValueError, TypeError)):
            batch_of([entry], "s")
        with pytest.raises((ValueError, TypeError)):
            batch_bytes([entry], "s")


async def test_an_entry_it_cannot_encode_is_a_counted_failure_not_a_dead_sink(tmp_path: Path) -> None:
    """A journal entry the encoder refuses (here a float timestamp), met while it is read ahead, makes
    the sink count a failure and retry (visible in its stats), instead of ending the sink's task; the
    batch before it reaches a real gRPC server and is acknowledged."""
    import grpc

    from edgewire.gateway.grpcapi import forward_pb2_grpc as pbg
    from edgewire.gateway.journal import Journal, Row, pack
    from edgewire.gateway.sinks import build_sink, validate_sink
    from tests.gateway.conftest import wait_for

    got: list[Any] = []

    class AckOnly(pbg.BackendServicer):
        async def Forward(self, it: Any, context: Any) -> Any:  # noqa: N802
            async for batch in it:
                got.append(batch)
                yield fpb.Ack(last_id=batch.last_id)

    server = grpc.aio.server()
    pbg.add_BackendServicer_to_server(AckOnly(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    journal = Journal(tmp_path / "j.db")
    journal.open()
    try:
        now = int(time.time() * 1000)   # received now: older entries would go to age retention
        for seq, ts in enumerate((5, 6, 1.5)):
            journal.append([Row(journal.reserve(1), 1, KIND_TELEMETRY, "d", 1, seq, now, pack([["s", 1, ts, None]]))])
        await journal.flush()
        sink = build_sink(validate_sink({"type": "grpc", "target": f"127.0.0.1:{port}", "batch": 1,
                                         "retry_min": 0.05, "retry_max": 0.1}), journal)
        await sink.start()
        try:
            await wait_for(lambda: sink.failures >= 2, timeout=30, what="failures to be counted")
            assert sink.cursor == 2 and "TypeError" in sink.last_error and sink._task is not None \
                and not sink._task.done()
            assert [b.last_id for b in got] == [1, 2]
        finally:
            await sink.stop()
    finally:
        await journal.close()
        await server.stop(None)


@pytest.mark.parametrize("where", ["loop", "reader thread"])
async def test_the_journal_keeps_the_same_bytes_for_the_sink(tmp_path: Path, where: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Decision D18b: with the grpc sink's encoder set, the journal's writer stores each telemetry
    entry's readings encoded, and read_encoded() joins them. Entries written before the encoder was
    set (stored without), births and results between them, and a duplicate refused by the unique key
    (a gap in the ids) give, batch by batch, exactly the bytes batch_bytes makes of read(): read on
    the event loop, and on the reader thread where slow reads on the loop send them (here every
    read counts as slow)."""
    from edgewire.gateway import journal as jm
    from edgewire.gateway.grpcapi.convert import batch_head, entry_bytes
    from edgewire.gateway.journal import KIND_BIRTH, Journal, Row, pack

    if where == "reader thread":
        monkeypatch.setattr(jm, "LOOP_READ_MAX", -1.0)

    journal = Journal(tmp_path / "j.db")
    journal.open()
    try:
        now = int(time.time() * 1000)
        values: list[Any] = [1.5, -3, 2 ** 64 - 1, True, "on", None, 0, 128, -(2 ** 63)]

        def add(seq: int, readings: int) -> None:
            data = [[f"s/{k}", values[(seq + k) % len(values)], 1796153863590 + k, "bad" if k == 2 else None]
                    for k in range(readings)]
            journal.append([Row(journal.reserve(readings), readings, KIND_TELEMETRY, f"dev-{seq % 3}", 7, seq,
                                now, pack(data))])

        for seq in range(40):
            add(seq, 1 + seq % 4)
            if seq == 20:
                journal.encoder = entry_bytes       # a grpc sink configured from here on
            if seq % 7 == 0:
                journal.append([Row(journal.reserve(1), 1, KIND_BIRTH, "dev-1", None, None, now, pack({"fw": "1"}))])
        add(5, 2)   # a redelivery of (dev-2, 7, 5): refused, its ids are a gap
        add(40, 3)
        await journal.flush()
        assert journal.duplicates == 1 and journal.encode_errors == 0
        for limit in (1, 3, 7, 500):
            after, seen = 0, 0
            while after < journal.last_id:
                got, upto = await journal.read_encoded(after, limit, entry_bytes)
                entries, upto2 = await journal.read(after, limit)
                assert upto == upto2
                want = batch_bytes(entries, "site")
                if want is None:
                    assert got is None or not got.data
                else:
                    assert got is not None and not got.error
                    assert batch_head("site", got.first_id, got.last_id) + got.data == want
                    assert got.readings == sum(e.n for e in entries if e.kind == KIND_TELEMETRY)
                    seen += got.readings
                after = upto
            assert seen == journal.appended_ids - 6   # all but the 6 births, each reading once
        if where == "reader thread":
            assert journal.slow_loop_reads == jm.LOOP_READ_SLOW_IN_A_ROW and journal._thread_reads_until > 0
    finally:
        await journal.close()


async def test_a_journal_from_before_d18b_gets_the_column(tmp_path: Path) -> None:
    """A journal written by a gateway before D18b (no `wire` column) opens, gets the column, and its
    entries reach the sink encoded on read."""
    import sqlite3

    from edgewire.gateway.grpcapi.convert import batch_head, entry_bytes
    from edgewire.gateway.journal import SCHEMA, Journal, pack

    old = SCHEMA.replace("body BLOB NOT NULL,", "body BLOB NOT NULL").replace(
        "    wire BLOB                   -- telemetry, when a sink asked for it: its readings as that sink sends "
        "them (D18b)\n", "")
    assert "wire" not in old
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute("INSERT INTO meta(key, value) VALUES ('schema', 1)")
    conn.execute("INSERT INTO journal(id, n, kind, device, boot, seq, received, body) VALUES (1, 2, 0, 'd', 1, 1, ?, ?)",
                 (int(time.time() * 1000), pack([["a", 1, 5, None], ["b", 2.5, 5, None]])))
    conn.commit()
    conn.close()
    journal = Journal(path)
    journal.open()
    try:
        journal.encoder = entry_bytes
        got, upto = await journal.read_encoded(0, 10, entry_bytes)
        entries, _ = await journal.read(0, 10)
        assert upto == 2 and got is not None and got.readings == 2
        assert batch_head("", got.first_id, got.last_id) + got.data == batch_bytes(entries, "")
    finally:
        await journal.close()
