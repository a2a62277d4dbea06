"""Wall time for devices: after every birth the gateway sends the device a
`time` command carrying its own clock ({"ms": epoch milliseconds}).

A Pico W's RTC restarts at 2021 on every boot and a site often has no
internet for NTP, so the gateway (whose Pi keeps time, or is the site's
reference) is the devices' clock. The device sets its wall clock from the
command (firmware/edgewire/commands.py) and answers with how far off it was
(null when it had no time), which is logged. Until then its telemetry goes
without `t`, and the gateway stamps readings from its receive time.

These are not user commands: they do not count in `Commands.stats()`, take no
slot of its pending limits, and their results are claimed here before the
`Commands` matcher sees them (so they are not "unmatched"). A device that does
not know `time` (older firmware) answers "unknown command", counted in
`refused`. At most `max_pending` wait for an answer; beyond, a birth gets no
time (counted in `skipped`) until the next one.

Wiring (`attach`): the birth hook wraps `Core.accept_status` and the result hook
`Commands.resolve`, from gateway/service.py, so gateway/core.py needs no change;
a core with an explicit birth callback would replace the first wrapper."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edgewire import wire
from edgewire.gateway.aio import cancel_and_wait

__all__ = ["TimeSync"]

log = logging.getLogger("edgewire.gateway.timesync")

Publish = Callable[..., Awaitable[None]]


class TimeSync:
    def __init__(self, publish: Publish, *, timeout: float = 30.0, max_pending: int = 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self._publish = publish
        self.timeout = timeout
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, tuple[str, float]] = {}  # command id -> (device, when sent, monotonic)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.answered = 0
        self.refused = 0
        self.failed = 0
        self.skipped = 0

    def attach(self, core: Any, commands: Any) -> None:
        """Send the time after each birth the core accepts; claim the answers
        before `commands` matches results to user commands."""
        accept_status = core.accept_status
        resolve = commands.resolve
        registry = core.registry

        def accept_status_then_time(status: Any, received_ms: int, **kw: Any) -> None:
            accept_status(status, received_ms, **kw)
            if status.online:
                dev = registry.get(status.device)
                if dev is not None and dev.online:
                    self.birth(status.device)

        def resolve_time_first(result: Any) -> bool:
            return self.resolve(result) or resolve(result)

        core.accept_status = accept_status_then_time
        commands.resolve = resolve_time_first

    def birth(self, device: str) -> None:
        """Send `device` the time (from the event loop; without one, nothing)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._expire()
        if len(self._pending) >= self.max_pending:
            self.skipped += 1
            return
        cid = secrets.token_hex(8)
        self._pending[cid] = (device, time.monotonic())
        task = loop.create_task(self._send(device, cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, device: str, cid: str) -> None:
        payload = wire.encode_command(cid, "time", {"ms": int(self._clock() * 1000)})
        try:
            await self._publish(wire.topic(device, wire.KIND_CMD), payload, qos=1)
        except Exception as e:  # broker gone, device's adapter gone: the next birth tries again
            self._pending.pop(cid, None)
            self.failed += 1
            log.info("time for %s not sent: %s", device, e)
            return
        self.sent += 1

    def resolve(self, result: Any) -> bool:
        """True when `result` answers one of our time commands (then it is ours)."""
        item = self._pending.get(result.id)
        if item is None or item[0] != result.device:
            return False
        del self._pending[result.id]
        if result.ok:
            self.answered += 1
            skew = result.value
            # a first setting or a drift past a second is news; a resync on time is not
            level = logging.INFO if not isinstance(skew, int) or abs(skew) > 1000 else logging.DEBUG
            log.log(level, "device %s clock set%s", result.device,
                    "" if not isinstance(skew, int) else f" (it was {skew / 1000:+.3f} s off)")
        else:
            self.refused += 1
            log.info("device %s did not take the time: %s", result.device, result.error)
        return True

    def _expire(self) -> None:
        cut = time.monotonic() - self.timeout
        for cid in [c for c, (_, t) in self._pending.items() if t < cut]:
            del self._pending[cid]

    async def close(self) -> None:
        for t in list(self._tasks):
            await cancel_and_wait(t)

    def stats(self) -> dict[str, int]:
        return {"pending": len(self._pending), "sent": self.sent, "answered": self.answered,
                "refused": self.refused, "failed": self.failed, "skipped": self.skipped}
