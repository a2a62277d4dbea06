"""Gateway objects as protobuf messages (protos/edgewire/v1/), shared by the
grpc sink and the gRPC gateway service."""
from __future__ import annotations

from typing import Any

from edgewire.gateway.hub import Event
from edgewire.gateway.journal import KIND_TELEMETRY, Entry

__all__ = ["batch_of", "reading_message"]

INT64 = 2 ** 63


def reading_message(e: Event) -> Any:
    from edgewire.gateway.grpcapi import forward_pb2 as pb

    r = pb.Reading(id=e.id, device=e.device, stream=e.stream, ts=e.ts, boot=e.boot, seq=e.seq, error=e.error or "")
    v = e.value
    if isinstance(v, bool):
        r.flag = v
    elif isinstance(v, int):
        if -INT64 <= v < INT64:
            r.integer = v
        else:
            r.number = float(v)
    elif isinstance(v, float):
        r.number = v
    elif isinstance(v, str):
        r.text = v
    return r


def batch_of(entries: list[Entry], site: str) -> Any:
    """The Batch of the readings of journal entries (the grpc sink's message), built
    straight from the entries with `readings.add` (about 4x faster than a Reading per
    Event, measured by bench/grpc_sink.py); None when they hold no reading."""
    from edgewire.gateway.grpcapi import forward_pb2 as pb

    last = entries[-1].id + entries[-1].n - 1 if entries else 0
    batch = pb.Batch(site=site, first_id=entries[0].id if entries else 0, last_id=last)
    add = batch.readings.add
    for entry in entries:
        if entry.kind != KIND_TELEMETRY:
            continue
        i, d, b, q = entry.id, entry.device, entry.boot or 0, entry.seq or 0
        for stream, v, ts, error in entry.data:
            t = type(v)
            if t is float:
                r = add(id=i, device=d, stream=stream, ts=ts, boot=b, seq=q, number=v)
            elif t is int:
                if -INT64 <= v < INT64:
                    r = add(id=i, device=d, stream=stream, ts=ts, boot=b, seq=q, integer=v)
                else:
                    r = add(id=i, device=d, stream=stream, ts=ts, boot=b, seq=q, number=float(v))
            elif t is bool:
                r = add(id=i, device=d, stream=stream, ts=ts, boot=b, seq=q, flag=v)
            elif t is str:
                r = add(id=i, device=d, stream=stream, ts=ts, boot=b, seq=q, text=v)
            else:
                r = add(id=i, device=d, stream=stream, ts=ts, boot=b, seq=q)
            if error:
                r.error = error
            i += 1
    return batch if batch.readings else None
