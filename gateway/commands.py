"""Commands to devices: published at QoS 1 to edgewire/v1/<id>/cmd with a
fresh id; the device's result on edgewire/v1/<id>/result is matched by id.
At most `max_pending` commands wait at once (beyond: CommandBusy)."""
from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from edgewire import mpack, wire
from edgewire.gateway.decode import Result
from edgewire.gateway.errors import (CommandBusy, CommandRejected, CommandTimeout, MqttError)

__all__ = ["CommandResult", "Commands", "Publisher"]


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandResult:
    device: str
    name: str
    id: str
    ok: bool
    value: Any
    error: str | None
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "command": self.name, "id": self.id, "ok": self.ok,
                "value": self.value, "error": self.error, "elapsed": round(self.elapsed, 4)}


class Commands:
    def __init__(self, *, publisher: Publisher, timeout: float = 10.0, max_timeout: float = 300.0,
                 max_pending: int = 256) -> None:
        self.publisher = publisher
        self.timeout = timeout
        self.max_timeout = max_timeout
        self.max_pending = max_pending
        self._pending: dict[str, tuple[str, asyncio.Future[Result]]] = {}
        self.sent = 0
        self.answered = 0
        self.timed_out = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def check(self, device: str, name: str, args: Any, timeout: float | None) -> float:
        """Validate a command before sending; returns the effective timeout."""
        if not wire.valid_id(device):
            raise CommandRejected(f"device id {device!r} is not 1-64 of A-Z a-z 0-9 _ -")
        if not wire.valid_stream(name):
            raise CommandRejected(f"command name {name!r} is invalid (1-64 of A-Z a-z 0-9 _ - . in /-segments)")
        t = self.timeout if timeout is None else timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or not 0 < t <= self.max_timeout:
            raise CommandRejected(f"timeout {timeout!r} is not a number of seconds in (0, {self.max_timeout:g}]")
        return float(t)

    async def send(self, device: str, name: str, args: Any = None, *, timeout: float | None = None) -> CommandResult:
        """Send and wait for the device's result. Raises CommandRejected (bad
        input), CommandBusy (too many pending), MqttError (broker unreachable),
        CommandTimeout (no result in time)."""
        t = self.check(device, name, args, timeout)
        if len(self._pending) >= self.max_pending:
            raise CommandBusy(f"{self.max_pending} commands already wait for results; try again later")
        cmd_id = secrets.token_hex(8)
        try:
            payload = wire.encode_command(cmd_id, name, args)
        except (mpack.EncodeError, wire.ProtocolError, TypeError, ValueError) as e:
            raise CommandRejected(f"args cannot be sent: {e}") from None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._pending[cmd_id] = (device, fut)
        started = loop.time()
        try:
            async with asyncio.timeout(t):
                await self.publisher.publish(wire.topic(device, wire.KIND_CMD), payload, qos=1)
                self.sent += 1
                res = await fut
        except TimeoutError:
            self.timed_out += 1
            raise CommandTimeout(f"device {device!r} sent no result for command {name!r} (id {cmd_id}) "
                                 f"within {t:g} s") from None
        except MqttError:
            raise
        finally:
            self._pending.pop(cmd_id, None)
        self.answered += 1
        return CommandResult(device, name, cmd_id, res.ok, res.value, res.error, loop.time() - started)

    def resolve(self, result: Result) -> bool:
        """Deliver a device's result; False if no pending command has that id
        from that device (late, duplicate or foreign)."""
        item = self._pending.get(result.id)
        if item is None or item[0] != result.device:
            return False
        if item[1].done():
            return False
        item[1].set_result(result)
        return True

    def stats(self) -> dict[str, int]:
        return {"pending": len(self._pending), "sent": self.sent, "answered": self.answered,
                "timed_out": self.timed_out}
