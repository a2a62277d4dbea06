"""Commands to devices: published at QoS 1 to edgewire/v1/<id>/cmd with a
fresh id; the device's result on edgewire/v1/<id>/result is matched by id.

Bounds, so no caller can lock the others out: at most `max_pending` commands
wait at once, and at most `max_pending_per_device` for any one device (beyond
either: CommandBusy). A command to a device the registry knows to be offline
is refused at once (CommandOffline, with the reason) unless the caller asks to
queue it; then it is sent and waits for the device up to its timeout."""
from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edgewire import mpack, wire
from edgewire.gateway.decode import Result
from edgewire.gateway.errors import (CommandBusy, CommandOffline, CommandRejected, CommandTimeout, MqttError)

__all__ = ["CommandResult", "Commands", "Presence", "Publisher"]

MAX_ARGS_DEPTH = 32


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


Presence = Callable[[str], "tuple[bool | None, str | None]"]
"""device id -> (online: True/False/None for not known, why offline)."""


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


def _check_args(args: Any) -> None:
    """JSON-like values only, finite numbers, at most MAX_ARGS_DEPTH deep
    (walked without recursion, so any depth is refused cleanly)."""
    stack: list[tuple[Any, int]] = [(args, 1)]
    while stack:
        v, depth = stack.pop()
        if v is None or isinstance(v, (bool, int, str)):
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                raise CommandRejected(f"args hold a number that is not finite ({v!r}); nothing was sent")
            continue
        if isinstance(v, (dict, list, tuple)):
            if depth > MAX_ARGS_DEPTH:
                raise CommandRejected(f"args are nested deeper than {MAX_ARGS_DEPTH} levels; nothing was sent")
            if isinstance(v, dict):
                if not all(isinstance(k, str) for k in v):
                    raise CommandRejected("args map keys must be strings")
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)
            continue
        raise CommandRejected(f"args hold a {type(v).__name__}, which commands cannot carry")


class Commands:
    def __init__(self, *, publisher: Publisher, timeout: float = 10.0, max_timeout: float = 300.0,
                 max_pending: int = 256, max_pending_per_device: int = 16,
                 presence: Presence | None = None) -> None:
        self.publisher = publisher
        self.timeout = timeout
        self.max_timeout = max_timeout
        self.max_pending = max_pending
        self.max_pending_per_device = max_pending_per_device
        self.presence = presence
        self._pending: dict[str, tuple[str, asyncio.Future[Result]]] = {}
        self._per_device: dict[str, int] = {}
        self.sent = 0
        self.answered = 0
        self.timed_out = 0
        self.busy = 0
        self.offline = 0

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
        _check_args(args)
        return float(t)

    def _admit(self, device: str, queue: bool) -> None:
        if not queue and self.presence is not None:
            online, why = self.presence(device)
            if online is False:
                self.offline += 1
                raise CommandOffline(f"device {device!r} is offline ({why or 'no reason given'}); nothing was "
                                     "sent. Ask to queue it (REST ?queue=true, WebSocket \"queue\": true) to "
                                     "send it anyway and wait for the device up to the timeout")
        if len(self._pending) >= self.max_pending:
            self.busy += 1
            raise CommandBusy(f"{self.max_pending} commands already wait for results; try again later")
        if self._per_device.get(device, 0) >= self.max_pending_per_device:
            self.busy += 1
            raise CommandBusy(f"{self.max_pending_per_device} commands to device {device!r} already wait for "
                              "results; try again later")

    async def send(self, device: str, name: str, args: Any = None, *, timeout: float | None = None,
                   queue: bool = False) -> CommandResult:
        """Send and wait for the device's result. Raises CommandRejected (bad
        input), CommandOffline (known offline and not `queue`), CommandBusy
        (too many pending, in all or for this device), MqttError (broker
        unreachable), CommandTimeout (no result in time)."""
        t = self.check(device, name, args, timeout)
        self._admit(device, queue)
        cmd_id = secrets.token_hex(8)
        try:
            payload = wire.encode_command(cmd_id, name, args)
        except (mpack.EncodeError, wire.ProtocolError, TypeError, ValueError, RecursionError) as e:
            raise CommandRejected(f"args cannot be sent: {e}") from None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._pending[cmd_id] = (device, fut)
        self._per_device[device] = self._per_device.get(device, 0) + 1
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
            left = self._per_device.pop(device, 1) - 1
            if left:
                self._per_device[device] = left
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
                "timed_out": self.timed_out, "busy": self.busy, "offline": self.offline,
                "devices_pending": len(self._per_device)}
