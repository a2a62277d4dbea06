"""The device SDK driven by an event loop: the loop owns the waiting.

`Device.step()` waits (up to ~200 ms in poll, and for CONNACK, SUBACK and the
goodbye's acks), which is right on a board and costs a thread per device in a
simulator. `LoopDevice.step(block=False)` never waits: it runs the round
(sample, send, read what came, run commands) with a zero poll and returns the
ms until the device next needs a step, unless its socket (`fileno()`) becomes
readable first; -1 once stop() has finished. So one selector loop drives
thousands of devices (edgewire.sim.engine).

The two parts of a round that must wait, connecting (CONNACK, birth, SUBACK)
and the goodbye (acks, death, DISCONNECT), are the SDK's own code run as is
(`Device._try_connect()`, `Device._goodbye()`), handed to `offload`: a small
pool of worker threads shared by the loop's devices. While a worker has it,
the device is `busy` and the loop leaves it (and its socket) alone; the worker
hands it back when done. A board does the same: it samples nothing while it
waits for CONNACK. So nothing of the SDK's connection logic is copied here,
and changes to it apply to the simulator at once.

Why a subclass here and not a keyword in edgewire/device.py: the firmware runs
in a 64 KB MicroPython heap with no room to spare (tests/firmware/test_heap.py);
every method added to device.py is bytecode each board loads and no board uses
(measured: two small methods made the 64 KB tests fail with MemoryError at
import). This module is loaded by CPython only.
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from edgewire.device import Device
from edgewire.mqtt import MQTTClient, MQTTError

_BaseClient = MQTTClient
_STEP_MS = 200   # edgewire.device's longest wait in one step

__all__ = ["LoopDevice", "client_due", "client_sock"]


def client_sock(cl: Any) -> socket.socket | None:
    """The client's socket (None while it has none)."""
    return getattr(cl, "_sock", None)


def _window(cl: Any) -> int:
    """QoS 1/2 messages the client still waits on."""
    w = getattr(cl, "window", None)
    return len(w) if w is not None else int(cl.inflight())


def client_due(cl: Any, now: int) -> int:
    """When (clock() ms) the client's poll() next has keepalive or retry work:
    half the keepalive after the last traffic, a pending PINGRESP's deadline, an
    in-flight message's retry. Anything it cannot tell: in a second."""
    try:
        ka = cl.keepalive * 500
        ping_at = cl._ping_at
        due = ping_at + cl.timeout_ms if ping_at else min(cl._last_tx, cl._last_rx) + ka
        window = getattr(cl, "window", None)
        if window is None:
            window = getattr(cl, "_out", {})
        for e in window.values():
            due = min(due, e[5] + cl.retry_ms)
        return int(due)
    except (AttributeError, TypeError, IndexError):
        return now + 1000


class _NoWaitClient(MQTTClient):  # type: ignore[misc]
    """The SDK's client while the loop runs a device's round: poll() does not
    wait; the wait it was asked for is kept in `asked`."""

    asked: int | None = None

    def poll(self, timeout_ms: int = 0) -> int:
        self.asked = timeout_ms
        return MQTTClient.poll(self, 0)  # type: ignore[no-any-return]


class LoopDevice(Device):  # type: ignore[misc]
    """edgewire.device.Device whose step(block=False) never waits (see the module doc).

    offload(job): run job() on a worker thread, then step this device again; None
    runs the waiting parts inline (blocking), as Device.step() would."""

    def __init__(self, board: Any, config: dict[str, Any], log: Any = None,
                 offload: Callable[[Callable[[], None]], None] | None = None) -> None:
        Device.__init__(self, board, config, log)
        self._offload = offload
        self.busy = False          # a worker runs the SDK's connect or goodbye
        self.crash: BaseException | None = None
        self._bye = 0              # after stop(): 1 goodbye handed out, 2 done
        self._nb = False
        self._want_connect = False
        self._asked_sleep: int | None = None

    def _begin(self) -> None:
        Device._begin(self)
        # Streams may start at a phase (the simulator spreads them, so that a
        # fleet is a steady load rather than every device sampling at once).
        now = self.board.ticks_ms()
        for s, c in zip(self.streams, self.cfg["streams"]):
            s[5] = now + int(c.get("phase_ms", 0))

    @property
    def client(self) -> Any:
        return self._client

    @property
    def sock(self) -> socket.socket | None:
        return client_sock(self._client) if self._client is not None and not self.busy else None

    def fileno(self) -> int:
        s = self.sock
        return s.fileno() if s is not None else -1

    @property
    def handshaking(self) -> bool:
        return self.busy and self._bye < 3

    def step(self, block: bool = True) -> int:
        if block:
            return Device.step(self)  # type: ignore[no-any-return]
        if self.crash is not None:
            e, self.crash = self.crash, None
            raise e
        if self.busy:
            return 60000   # the worker hands the device back
        b = self.board
        if self._client is None:
            self._begin()
        if self._stopping:
            if self._bye == 2:
                return -1
            if self._bye == 0:
                # Drain first, in the loop: sample no more, send what is queued and
                # read the acks in ordinary rounds (all devices at once), up to
                # timeout_ms; then the worker's goodbye has only the death to wait for.
                self._bye = 1
                self._drain_until = b.ticks_ms() + self.cfg["timeout_ms"]
                for st in self.streams:
                    st[5] = 1 << 62
            if not (self.connected and (self._qn or _window(self._client)) and b.ticks_ms() < self._drain_until):
                self._bye = 3
                self._hand_out(self._finish)
                return 60000 if self.busy else -1
        if not self.connected and b.ticks_ms() >= self._next_try and not self._bye:
            self._hand_out(self._connect)
            if self.busy:
                return 60000
        cl = self._client
        if self.connected:
            # On a board the previous round ended waiting in poll(), so acks and
            # commands that came are read before the next round looks at the
            # window (a reboot waits for it to empty); here they are read now.
            try:
                cl.poll(0)
            except MQTTError as e:
                self._lost(e)
        # The SDK's own round, with its waits handed back: poll(timeout) polls
        # with 0 and board.sleep_ms() returns at once; what they asked for is kept.
        cl.__class__ = _NoWaitClient
        cl.asked = None
        self._asked_sleep = None
        self._want_connect = False
        b.sleep_ms = self._no_sleep   # an instance attribute: the board's own method is untouched
        self._nb = True
        try:
            Device.step(self)
        finally:
            self._nb = False
            del b.sleep_ms
            cl = self._client
            asked = cl.asked if cl.asked is not None else self._asked_sleep
            cl.__class__ = _BaseClient
        if self._want_connect and not self._bye:
            self._hand_out(self._connect)
            if self.busy:
                return 60000
        if asked is not None and asked < _STEP_MS:
            return max(0, int(asked))   # due before the SDK's longest wait: trust it
        # The SDK caps a wait at _STEP_MS (its stop() latency on a board); the
        # loop needs no cap, so the device next runs when something is due.
        now = b.ticks_ms()
        nxt = now + 60000
        for st in self.streams:
            nxt = min(nxt, st[5])
        if self._reboot:
            nxt = min(nxt, self._reboot)
        if self.connected:
            nxt = min(nxt, client_due(cl, now))
            if self._next_try > now:
                nxt = min(nxt, self._next_try)   # a pause after running out of heap
        else:
            nxt = min(nxt, self._next_try)
        if self._bye == 1:
            nxt = min(nxt, self._drain_until)
        return max(0, int(nxt - now))

    _drain_until = 0

    def _no_sleep(self, ms: int) -> None:
        self._asked_sleep = ms

    def _try_connect(self) -> None:
        if self._nb:   # inside the SDK's round: connect on a worker once the round is over
            self._want_connect = True
            return
        Device._try_connect(self)

    def _hand_out(self, job: Callable[[], None]) -> None:
        self.busy = True

        def run() -> None:
            try:
                job()
            except BaseException as e:  # handed to the loop: the next step raises it
                self.crash = e
            finally:
                self.busy = False

        if self._offload is None:
            run()
        else:
            self._offload(run)

    def _connect(self) -> None:
        Device._try_connect(self)   # the SDK's connect, CONNACK to SUBACK, as on a board

    def _finish(self) -> None:
        """Device.run() after stop(): its goodbye (queued readings, acks, death
        "shutdown", DISCONNECT) and close, exactly as on a board."""
        try:
            Device.run(self)
        finally:
            self._bye = 2
