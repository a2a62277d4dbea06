"""The device SDK driven by an event loop: the loop owns the waiting.

`Device.step()` waits (up to ~200 ms in poll, and for CONNACK, SUBACK and the
goodbye acks), which is right on a board and costs a thread per device in a
simulator. `LoopDevice.step(block=False)` runs the same round without any wait
and returns the ms until the device next needs a step, unless its socket
(`fileno()`) becomes readable first; -1 once stop() has finished. So one
selector loop drives thousands of devices (edgewire.sim.engine).

Why a subclass here and not a keyword in edgewire/device.py: the firmware runs
in a 64 KB MicroPython heap with no room to spare (tests/firmware/test_heap.py);
every method added to device.py or mqtt.py is bytecode each board loads and no
board uses (measured: two small methods made the 64 KB tests fail with
MemoryError at import). So the SDK is unchanged and this module, which only
CPython loads, adds the non-blocking parts on top of it:

- connecting: Device._try_connect() runs as on a board up to the CONNECT
  packet; the client then hands the CONNACK wait back (Deferred) and later
  steps read CONNACK, publish the birth, send SUBSCRIBE and read SUBACK, each
  within the device's timeout_ms;
- stopping: run()'s goodbye (send what is queued, wait for the acks, death
  "shutdown", DISCONNECT) in steps.

Everything else (sampling, the queue, the in-flight window, publishing,
commands, reconnect backoff, the books) is the SDK's own code.
"""
from __future__ import annotations

import select
import socket
from typing import Any

from edgewire import wire
from edgewire.device import Device
from edgewire.mqtt import REFUSED, MQTTClient, MQTTError, MQTTProtocolError, MQTTTimeout

__all__ = ["Deferred", "LoopClient", "LoopDevice"]


class Deferred(Exception):
    """A wait the client hands back to the event loop (not an MQTTError, so
    the SDK's error handling lets it through)."""


class LoopClient(MQTTClient):
    """The SDK's MQTT client with its two handshake waits handed to the caller."""

    _defer = False

    def _await(self, cond: Any, what: str) -> Any:
        if self._defer and (cond is None or not cond()):
            raise Deferred(what)
        return MQTTClient._await(self, cond, what)

    @property
    def sock(self) -> socket.socket | None:
        return self._sock  # type: ignore[no-any-return]

    def due(self) -> int:
        """The clock() time at which poll() has keepalive or retry work to do
        (the same rule as MQTTClient.poll)."""
        due = self._ping_at + self.timeout_ms if self._ping_at else \
            min(self._last_tx, self._last_rx) + self.keepalive * 500
        for e in self._out.values():
            due = min(due, e[5] + self.retry_ms)
        return int(due)

    def poll_connack(self) -> bool:
        """After connect() deferred: False while nothing came; once the socket
        is readable, MQTTClient.connect() itself runs again on the same socket,
        without closing it and without sending CONNECT twice, so CONNACK is read
        and the session set up by the SDK's own code. Raises as connect() does."""
        sock = self._sock
        if sock is None:
            raise MQTTError("not connected")
        try:
            if not self._wait(select.POLLIN, 0, False):
                return False
        except MQTTError:
            self.close()
            raise
        self._replay = 2   # the close() and the CONNECT write at the start of connect()
        try:
            MQTTClient.connect(self, sock)
        finally:
            self._replay = 0
        return True

    _replay = 0

    def close(self) -> None:
        if self._replay == 2:
            self._replay = 1
            return
        MQTTClient.close(self)

    def _write(self, data: Any) -> None:
        if self._replay == 1:
            self._replay = 0
            return
        MQTTClient._write(self, data)

    def send_subscribe(self, topic: str, qos: int) -> None:
        """subscribe() without waiting for SUBACK (poll() reads it; granted() tells)."""
        self._defer = True
        try:
            self.subscribe(topic, qos)
        except Deferred:
            pass
        finally:
            self._defer = False

    def granted(self) -> int | None:
        """The QoS granted by the SUBACK of send_subscribe() (or REFUSED), None
        while it has not come; as MQTTClient.subscribe() returns it."""
        codes = self._suback
        if codes is None:
            return None
        self._sub_pid = 0
        if len(codes) != 1 or (codes[0] > 2 and codes[0] != REFUSED):
            self.close()
            raise MQTTProtocolError("bad SUBACK %r" % (bytes(codes),))
        return int(codes[0])


class LoopDevice(Device):  # type: ignore[misc]
    """edgewire.device.Device whose step(block=False) never waits (see the module doc)."""

    def __init__(self, board: Any, config: dict[str, Any], log: Any = None) -> None:
        Device.__init__(self, board, config, log)
        self._nb = False
        self._hs = 0          # 1 awaiting CONNACK, 2 awaiting SUBACK
        self._hs_until = 0    # ... until this uptime (ms), then the attempt failed
        self._bye = 0         # after stop(): 1 sending what is queued, 2 death sent
        self._bye_until = 0

    def _begin(self) -> None:
        Device._begin(self)
        # The same client object, with the non-blocking handshake methods above.
        self._client.__class__ = LoopClient
        # Streams may start at a phase (the simulator spreads them, so that a
        # fleet is a steady load rather than every device sampling at once).
        now = self.board.ticks_ms()
        for s, c in zip(self.streams, self.cfg["streams"]):
            s[5] = now + int(c.get("phase_ms", 0))

    @property
    def client(self) -> LoopClient | None:
        return self._client  # type: ignore[no-any-return]

    def fileno(self) -> int:
        s = self._client.sock if self._client is not None else None
        return s.fileno() if s is not None else -1

    @property
    def handshaking(self) -> bool:
        return bool(self._hs)

    def step(self, block: bool = True) -> int:
        if block:
            return Device.step(self)  # type: ignore[no-any-return]
        self._nb = True
        try:
            return self._step_nb()
        finally:
            self._nb = False

    def _step_nb(self) -> int:
        b = self.board
        if not self.boot:
            self._begin()
        cl = self._client
        now = b.ticks_ms()
        if self._stopping:
            return self._stop_nb(now)
        self._sample(now)
        if self._hs == 1:
            self._handshake(now)
        if self.connected:
            try:
                cl.poll(0)
            except MQTTError as e:
                self._lost(e)
        if self._hs == 2:
            self._handshake(now)
        if self.connected:
            self._flush()
            self._run_commands()
        if self._reboot and (now >= self._reboot or (self.connected and not cl.inflight())):
            b.reset()
        if not self.connected and not self._hs and now >= self._next_try:
            self._try_connect()
        now = b.ticks_ms()
        nxt = now + 60000
        for s in self.streams:
            nxt = min(nxt, s[5])
        if self._reboot:
            nxt = min(nxt, self._reboot)
        if self._hs:
            nxt = min(nxt, self._hs_until)
        elif self.connected:
            nxt = min(nxt, cl.due())
            if self._qn and cl.inflight() < cl.max_inflight:
                nxt = now
        else:
            nxt = min(nxt, self._next_try)
        return max(0, int(nxt - now))

    def _try_connect(self) -> None:
        if not self._nb:
            return Device._try_connect(self)  # type: ignore[no-any-return]
        cl = self._client
        cl._defer = True
        try:
            # The SDK's own attempt: network, socket, will, CONNECT; the CONNACK
            # wait comes back as Deferred and _handshake() goes on from there.
            Device._try_connect(self)
        except Deferred:
            self._hs = 1
            self._hs_until = self.board.ticks_ms() + self.cfg["timeout_ms"]
        finally:
            cl._defer = False

    def _handshake(self, now: int) -> None:
        cl = self._client
        c = self.cfg
        try:
            if self._hs == 1:
                if not cl.poll_connack():
                    if now >= self._hs_until:
                        raise MQTTTimeout("no CONNACK within %d ms" % c["timeout_ms"])
                    return
                self._up_since = self.board.ticks_ms()
                self._birth_pid = cl.publish(self.topics["status"], self._birth(), 1, True)
                if c["commands"]:
                    cl.send_subscribe(self.topics["cmd"], 1)
                    self._hs = 2
                    self._hs_until = self.board.ticks_ms() + c["timeout_ms"]
                    return
                granted: int | None = 1
            else:
                granted = cl.granted()
                if granted is None:
                    if now >= self._hs_until:
                        raise MQTTTimeout("no SUBACK within %d ms" % c["timeout_ms"])
                    return
            self._hs = 0
            if granted != 1:  # REFUSED: the session goes on without commands (as the SDK does)
                self._say("cmd subscription granted at QoS %d" % granted)
            # Counted as Device._try_connect counts: birth sent, commands subscribed.
            self.stats["connects"] += 1
            if self.stats["connects"] > 1:
                self.stats["reconnects"] += 1
            self._say("edgewire %s: connected to %s:%d as %s boot=%d c=%d"
                      % (self.board.name, c["broker_host"], c["broker_port"], self.device_id, self.boot,
                         self.conn))
        except (OSError, MQTTError) as e:
            self.stats["conn_failures"] += 1
            self._lost(e)

    def _lost(self, err: Any) -> None:
        self._hs = 0
        Device._lost(self, err)

    def _stop_nb(self, now: int) -> int:
        cl = self._client
        t = self.cfg["timeout_ms"]
        if not self._bye:
            self._bye = 1
            self._bye_until = now + t
        if cl.connected and not self._hs:
            try:
                cl.poll(0)
                if self._bye == 1:
                    self._flush()
                    if (self._qn or cl.inflight()) and now < self._bye_until:
                        return 0 if self._qn and cl.inflight() < cl.max_inflight else 20
                    cl.publish(self.topics["status"],
                               wire.encode_death(self.device_id, self.boot, self.conn, "shutdown"), 1, True)
                    self._bye = 2
                    self._bye_until = now + t
                if cl.inflight() and now < self._bye_until:
                    return 20
                cl.disconnect()
            except MQTTError:
                pass
        cl.close()
        self._hs = 0
        return -1
