"""The gateway's gRPC service (protos/edgewire/v1/gateway.proto, service
edgewire.v1.Gateway) for backends that pull readings or send commands:
Subscribe (the SSE stream's filters and resume by journal id, also across a
restart), ListDevices, GetDevice, SendCommand (the REST route's outcomes,
as gRPC status codes), ListSinks (GET /api/v1/sinks: each sink's state,
cursor, lag and counters). Served on [grpc] listen; off when that is empty.
Needs the `grpc` extra (grpcio, protobuf)."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edgewire.gateway.command_call import call_command
from edgewire.gateway.errors import ConfigError
from edgewire.gateway.hub import Gap, HubFull, valid_filter
from edgewire.gateway.grpcapi.convert import reading_message

log = logging.getLogger("edgewire.gateway.grpc")

__all__ = ["GrpcService"]

MAX_EVENTS = 5000


def _device(d: Any, detail: dict[str, Any]) -> Any:
    from edgewire.gateway.grpcapi import gateway_pb2 as pb

    return pb.Device(id=d.id, online=bool(detail.get("online")), state=str(detail.get("state") or ""),
                     boot=int(detail.get("boot") or 0), fw=str(detail.get("fw") or ""), hw=str(detail.get("hw") or ""),
                     messages=int(detail.get("messages") or 0), readings=int(detail.get("readings") or 0),
                     duplicates=int(detail.get("duplicates") or 0), missing=int(detail.get("missing") or 0),
                     details_json=json.dumps(detail, default=str))


def _sink(st: dict[str, Any]) -> Any:
    """A sink's stats() (what GET /api/v1/sinks lists) as a Sink message."""
    from edgewire.gateway.grpcapi import gateway_pb2 as pb

    out = pb.Sink(stats_json=json.dumps(st, default=str))
    for f in ("name", "type", "state", "last_error"):
        setattr(out, f, str(st.get(f) or ""))
    for f in ("cursor", "lag", "delivered_entries", "delivered_readings", "failures", "lost_to_retention"):
        setattr(out, f, int(st.get(f) or 0))
    out.lag_seconds = float(st.get("lag_seconds") or 0.0)
    if st.get("last_delivery") is not None:
        out.last_delivery = float(st["last_delivery"])
    return out


class GrpcService:
    def __init__(self, gateway: Any, listen: str, cert_file: str = "", key_file: str = "") -> None:
        self.gw = gateway
        self.listen = listen
        self.cert_file = cert_file
        self.key_file = key_file
        self.port = 0
        self.server: Any = None
        self.calls = {"Subscribe": 0, "ListDevices": 0, "GetDevice": 0, "SendCommand": 0, "ListSinks": 0}

    async def start(self) -> None:
        import grpc

        from edgewire.gateway.grpcapi import gateway_pb2 as pb
        from edgewire.gateway.grpcapi import gateway_pb2_grpc as pbg

        svc = self
        gw = self.gw
        codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                 409: grpc.StatusCode.FAILED_PRECONDITION, 504: grpc.StatusCode.DEADLINE_EXCEEDED}

        class Servicer(pbg.GatewayServicer):
            async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
                svc.calls["Subscribe"] += 1
                filters = list(dict.fromkeys(request.filters)) or ["#"]
                if len(filters) > gw.config.http.max_filters:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"{len(filters)} filters: at most {gw.config.http.max_filters}")
                for f in filters:
                    if not valid_filter(f):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {f[:80]!r}")
                after = request.after if request.HasField("after") else None
                hub = gw.core.hub
                try:
                    sub = hub.open(filters, after=after, kind="grpc", peer=context.peer() or "")
                except HubFull as e:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
                try:
                    while not sub.closed:
                        if not await sub.wait(5.0):
                            continue
                        events = await sub.next(MAX_EVENTS)
                        gap: Gap | None = sub.take_gap()
                        if gap is not None:
                            yield pb.StreamEvent(gap=pb.Gap(after=gap.after, first_available=gap.first_available,
                                                            missed=gap.missed, reason=gap.reason))
                        for ev in events:
                            yield pb.StreamEvent(reading=reading_message(ev))
                finally:
                    hub.close(sub)

            async def ListDevices(self, request: Any, context: Any) -> Any:  # noqa: N802
                svc.calls["ListDevices"] += 1
                reg = gw.core.registry
                return pb.ListDevicesResponse(devices=[_device(d, d.summary())
                                                       for d in sorted(reg.devices.values(), key=lambda d: d.id)])

            async def GetDevice(self, request: Any, context: Any) -> Any:  # noqa: N802
                svc.calls["GetDevice"] += 1
                d = gw.core.registry.get(request.id)
                if d is None:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.id[:80]!r} has been seen")
                return _device(d, d.detail())

            async def SendCommand(self, request: Any, context: Any) -> Any:  # noqa: N802
                svc.calls["SendCommand"] += 1
                args: Any = None
                if request.args_json:
                    try:
                        args = json.loads(request.args_json)
                    except ValueError as e:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"args_json is not JSON ({e})")
                timeout = request.timeout if request.HasField("timeout") else None
                remaining = context.time_remaining()
                if remaining is not None and (timeout is None or remaining < timeout):
                    timeout = max(0.01, remaining)   # the caller's deadline bounds the wait too
                status, body = await call_command(gw.core, request.device, request.command, args, timeout=timeout,
                                                  queue=request.queue)
                if status != 200:
                    code = codes.get(status, grpc.StatusCode.RESOURCE_EXHAUSTED if body.get("error") == "busy"
                                     else grpc.StatusCode.UNAVAILABLE)
                    context.set_trailing_metadata((("edgewire-error", str(body.get("error"))),))
                    await context.abort(code, str(body.get("message")))
                return pb.CommandResult(device=body["device"], command=body["command"], id=body["id"], ok=body["ok"],
                                        value_json=json.dumps(body["value"]), error=body["error"] or "",
                                        elapsed=body["elapsed"])

            async def ListSinks(self, request: Any, context: Any) -> Any:  # noqa: N802
                svc.calls["ListSinks"] += 1
                return pb.ListSinksResponse(sinks=[_sink(s.stats()) for s in gw.sinks.values()])

        self.server = grpc.aio.server()
        pbg.add_GatewayServicer_to_server(Servicer(), self.server)
        if self.cert_file:
            try:
                creds = grpc.ssl_server_credentials([(Path(self.key_file).read_bytes(),
                                                      Path(self.cert_file).read_bytes())])
            except OSError as e:
                raise ConfigError("grpc", "cert_file", self.cert_file, f"cannot be read: {e.strerror}") from None
            self.port = self.server.add_secure_port(self.listen, creds)
        else:
            self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise ConfigError("grpc", "listen", self.listen, "cannot listen there (in use, or not an address)")
        await self.server.start()
        log.info("gateway: gRPC on %s (port %d)", self.listen, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(1.0)
            self.server = None

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.server is not None, {"listen": self.listen, "port": self.port}

    def stats(self) -> dict[str, Any]:
        return {"listen": self.listen, "port": self.port, "calls": dict(self.calls)}
