"""Ingest adapters: each turns one transport's input into calls on the Core.
One module per transport, imported only when enabled; none imports another.

The contract (what `MqttIngest` does, and what a CoAP, serial or GPIO
adapter will do):

- it decodes its input with gateway/decode.py and hands the core
  transport-neutral messages: `core.accept_telemetry(batch, received_ms,
  adapter=name)`, `core.accept_status(...)`, `core.accept_result(...)`;
- after each transport batch it calls `core.commit(ack)`, where `ack` is the
  batch's acknowledgement handle (None when the transport has none): the core
  calls it only after the journal has committed the batch;
- between batches it awaits `core.ready()` (the journal's back-pressure) and
  stops reading its transport while that waits;
- it may offer a downlink, `await adapter.downlink(device, kind, payload)`:
  the gateway sends a device's commands through the adapter that device last
  came through (`core.last_adapter`);
- `start()`, `drain()` (stop taking input; what was taken gets committed),
  `stop()`, and `health()` / `stats()` in the shape every component has.

A module registers by one line in ADAPTERS and exposes `build(config, core)`;
`enabled(config)` says which adapters a configuration turns on, so the
service starts them without knowing them."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgewire.gateway.config import GatewayConfig
    from edgewire.gateway.core import Core

__all__ = ["ADAPTERS", "IngestAdapter", "build_adapter", "enabled"]

# name -> module
ADAPTERS = {"mqtt": "edgewire.gateway.ingest.mqtt"}


class IngestAdapter(Protocol):
    name: str

    async def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def stop(self) -> None: ...

    async def downlink(self, device: str, kind: str, payload: bytes) -> None: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...


def enabled(config: GatewayConfig) -> list[str]:
    """The adapters this configuration runs: MQTT always (with the embedded
    broker when no [mqtt] url is set); others when their section is present."""
    return ["mqtt"]


def build_adapter(name: str, config: GatewayConfig, core: Core) -> IngestAdapter:
    module = importlib.import_module(ADAPTERS[name])
    adapter: IngestAdapter = module.build(config, core)
    return adapter
