"""Gateway objects as protobuf messages (protos/edgewire/v1/), shared by the
grpc sink and the gRPC gateway service."""
from __future__ import annotations

from typing import Any

from edgewire.gateway.hub import Event

__all__ = ["reading_message"]

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
