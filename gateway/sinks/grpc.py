"""The `grpc` sink: readings of the journal streamed to a backend over gRPC
(protos/edgewire/v1/forward.proto, service Backend, rpc Forward), one batch
at a time; the backend answers each batch with an Ack of the last journal id
it stored, and only then does the sink's cursor move.

    [[sinks]]
    type = "grpc"
    target = "127.0.0.1:50051"

One batch in flight: a slow backend slows this sink (its lag grows, visible
in /api/v1/sinks), never the gateway's memory, the live clients or the other
sinks. After a reconnect the sink sends again from its cursor, so a backend
drops repeats by (device, boot, seq, stream). The reference backend is
`edgewire backend --listen ADDR --store FILE` (app/backend.py).

TLS: `ca_file` (or `tls = true` for the system's CAs) verifies the backend's
certificate for the target's host (or `server_name`); `cert_file`/`key_file`
present a client certificate (gateway/sinks/tls.py).

Each Batch's bytes are made by hand (convert: the bytes protobuf would make,
without a message object per reading; decision D18a) and handed to grpcio as
they are. The readings' part is made once, when the journal commits them: with
this sink configured, the journal's writer stores each telemetry entry's
encoded readings beside it, and the sink reads them back joined, so a batch is
a few header bytes plus one SQLite read (decision D18b). Entries written before
the sink was configured are encoded when read, on the journal's reader thread."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgewire.gateway.errors import ConfigError
from edgewire.gateway.grpcapi.convert import batch_head, entry_bytes
from edgewire.gateway.journal import Encoded
from edgewire.gateway.sinks import JournalReader, JournalSink
from edgewire.gateway.sinks.tls import TLS_KEYS, read_pem, validate_tls

__all__ = ["Sink", "validate"]

log = logging.getLogger("edgewire.gateway.sinks.grpc")

FORWARD = "/edgewire.v1.Backend/Forward"   # protos/edgewire/v1/forward.proto: service Backend, rpc Forward

_KNOWN = ("target", "tls", "server_name", "connect_timeout", "ack_timeout", *TLS_KEYS)


def validate(options: dict[str, Any]) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("grpc") is None or importlib.util.find_spec("google.protobuf") is None:
        raise ConfigError("sinks", "type", "grpc", "the grpc sink needs grpcio and protobuf: "
                                                   "pip install 'edgewire[grpc]'")
    for k in options:
        if k not in _KNOWN:
            raise ConfigError("sinks", k, options[k], "unknown key for a grpc sink (known: " + ", ".join(_KNOWN) + ")")
    target = options.get("target")
    host, _, port = target.rpartition(":") if isinstance(target, str) else ("", "", "")
    if not isinstance(target, str) or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or len(target) > 1024:
        raise ConfigError("sinks", "target", target, "expected host:port of the backend, e.g. 127.0.0.1:50051")
    out: dict[str, Any] = {"target": target, **validate_tls(options)}
    tls = options.get("tls", bool(out["ca_file"] or out["cert_file"]))
    if not isinstance(tls, bool):
        raise ConfigError("sinks", "tls", tls, "expected true or false")
    if not tls and (out["ca_file"] or out["cert_file"]):
        raise ConfigError("sinks", "tls", tls, "ca_file/cert_file are TLS options: leave tls on")
    name = options.get("server_name", "")
    if not isinstance(name, str) or len(name) > 253 or (name and not tls):
        raise ConfigError("sinks", "server_name", name, "expected a host name to verify (with TLS)")
    out["tls"], out["server_name"] = tls, name
    for key, default, lo, hi in (("connect_timeout", 10.0, 0.1, 300), ("ack_timeout", 30.0, 0.1, 3600)):
        v = options.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError("sinks", key, v, f"expected seconds {lo:g}-{hi:g}")
        out[key] = float(v)
    return out


class Sink(JournalSink):
    def __init__(self, table: dict[str, Any], journal: JournalReader) -> None:
        super().__init__(table, journal)
        self.target: str = table["target"]
        self.tls: bool = table["tls"]
        self.tls_options = {k: table[k] for k in TLS_KEYS}
        self.server_name: str = table["server_name"]
        self.connect_timeout: float = table["connect_timeout"]
        self.ack_timeout: float = table["ack_timeout"]
        self.site: str = table.get("site", "edgewire")
        self.connects = 0
        self.batches = 0
        self._creds: Any = None
        self._channel: Any = None
        self._call: Any = None
        # D18b: the journal's writer keeps each telemetry entry's readings encoded for this sink
        journal.encoder = entry_bytes

    async def open(self) -> None:
        import grpc

        if self.tls:
            pem = {k: read_pem(k, v) if v else None for k, v in self.tls_options.items()}
            self._creds = grpc.ssl_channel_credentials(pem["ca_file"], pem["key_file"], pem["cert_file"])

    async def _stream(self) -> Any:
        import grpc

        from edgewire.gateway.grpcapi import forward_pb2

        if self._call is not None:
            return self._call
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else None
        ch = (grpc.aio.secure_channel(self.target, self._creds, options) if self._creds is not None
              else grpc.aio.insecure_channel(self.target))
        try:
            await asyncio.wait_for(ch.channel_ready(), self.connect_timeout)
        except BaseException:
            await ch.close(None)
            raise
        self._channel = ch
        # the requests are Batch bytes already (batch_bytes); grpcio sends them as they are
        self._call = ch.stream_stream(FORWARD, request_serializer=None,
                                      response_deserializer=forward_pb2.Ack.FromString)()
        self.connects += 1
        log.info("sink %s: streaming to %s", self.name, self.target)
        return self._call

    async def _drop(self) -> None:
        call, ch, self._call, self._channel = self._call, self._channel, None, None
        if call is not None:
            call.cancel()
        if ch is not None:
            try:
                await asyncio.wait_for(ch.close(None), 2.0)
            except (Exception, asyncio.TimeoutError):
                pass

    async def fetch(self, after: int) -> tuple[Encoded | None, int]:
        """The next batch's readings as the journal keeps them encoded (D18b)."""
        return await self.journal.read_encoded(after, self.batch, entry_bytes)

    def summary(self, batch: Encoded) -> tuple[int, int, int]:
        return batch.entries, batch.readings, batch.received

    def batch_message(self, batch: Encoded) -> tuple[bytes, int] | None:
        """The serialised Batch and its last_id (None when it holds no reading)."""
        if batch.error and not batch.entries:
            raise ValueError(batch.error)
        if not batch.data:
            return None
        return batch_head(self.site, batch.first_id, batch.last_id) + batch.data, batch.last_id

    async def deliver(self, entries: Encoded) -> None:
        batch = self.batch_message(entries)
        if batch is None:
            return
        data, last = batch
        try:
            call = await self._stream()
            # one timeout for the write and its Ack (asyncio.timeout: no task per await, as wait_for makes)
            async with asyncio.timeout(self.ack_timeout):
                await call.write(data)
                while True:
                    ack = await call.read()
                    if ack is None or not hasattr(ack, "last_id"):
                        raise ConnectionError("the backend ended the stream")
                    if ack.last_id >= last:
                        break
        except asyncio.CancelledError:
            await self._drop()
            raise
        except Exception as e:
            await self._drop()
            what = "no Ack within ack_timeout" if isinstance(e, asyncio.TimeoutError) else str(e)[:500]
            raise ConnectionError(f"{type(e).__name__}: {what}") from None
        self.batches += 1

    async def close(self) -> None:
        await self._drop()

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(target=self.target, connects=self.connects, batches=self.batches,
                   connected=self._call is not None)
        return out
