"""The device registry: who is online, since when, what they run, and how
complete their data is.

Online/offline comes from status messages (docs/protocol.md "Status"): a birth
makes its (boot, conn) the device's current session; a death applies only to
the session it names, so a last will that the broker delivers after the
device's newer birth is ignored (counted as `stale_deaths`).

Completeness comes from (boot, seq): per boot a `SeqWindow` remembers which of
the last `window` sequence numbers arrived (a bitmap). A number seen
twice is a duplicate and is dropped before the live hub; a number skipped is a
gap, counted as missing until it turns up late. Older than the window, a
number cannot be checked: it is passed on and counted as `unchecked`.

Defence in depth against anyone who can publish (the broker's authentication
comes first): a jump of more than the window, ahead or behind, is `suspect`:
passed on and counted, but it moves neither the window nor `missing` (one
forged seq 2**32-1 must not claim four billion lost readings nor switch off
duplicate detection). Only when the device's next messages continue from the
jump and nothing arrives in the old window meanwhile is it taken as real: the
window moves there and the numbers skipped are counted as `jumped`. A death
holds only while its session stays silent: telemetry of that boot that the
device SENT after the death brings it back online (counted `revived`). "Sent
after" is judged on the device's own clock, so that what the device sent
before its death but the broker forwarded after it (QoS 2 goes on at PUBREL,
after a QoS 1 death has overtaken it; a redelivery after a gateway restart)
never revives it: the death is dated in device uptime as its arrival minus the
session's offset (arrival - uptime of the session's latest message before
it), and telemetry revives only when its envelope's uptime is more than
`REVIVE_MARGIN_MS` past that date (the margin absorbs the two messages'
different transit and queueing times). At max_devices a new device
evicts one that never sent a birth, else the least recently seen (offline
ones first), counted as `evicted`: new devices are never refused."""
from __future__ import annotations

import collections
import heapq
from typing import Any

from edgewire.gateway.decode import Status, Telemetry
from edgewire.gateway.errors import GatewayError

__all__ = ["Device", "Registry", "RegistryFull", "SeqWindow", "REVIVE_MARGIN_MS"]

# Telemetry revives a dead session only when sent this long after the death (device clock).
REVIVE_MARGIN_MS = 5000


class RegistryFull(GatewayError):
    """A new device arrived while max_devices are already registered."""


class SeqWindow:
    """Gap and duplicate detection for one (device, boot).

    Which of the last `window` numbers arrived is a bitmap kept as a ring in
    a bytearray: sequence number s is bit (-s) mod window. Taking the next
    number sets one bit in place (the 4,096-bit int shifted per message that
    this replaced allocated three such ints each time, ~2,000 instructions).
    The persisted form is unchanged: `bits`, an int whose bit k says whether
    high-k arrived (journal_state writes and reads it)."""

    __slots__ = ("window", "first", "high", "received", "missing", "duplicates", "unchecked",
                 "suspect", "jumped", "_jumps", "_quiet", "_ring")

    CONFIRM = 3  # messages continuing from a jump that make it real
    # What the journal keeps of a window (journal_state): `bits` is the property below.
    STATE = ("window", "first", "high", "bits", "received", "missing", "duplicates", "unchecked", "suspect",
             "jumped", "_jumps", "_quiet")

    def __init__(self, window: int) -> None:
        self.window = window
        self.first = 0      # lowest sequence number seen
        self.high = 0       # highest sequence number seen
        self._ring = bytearray((window + 7) >> 3)  # bit (-s) % window set: s arrived (s in (high-window, high])
        self.received = 0
        self.missing = 0    # numbers in [first, high] that have not arrived
        self.duplicates = 0
        self.unchecked = 0
        self.suspect = 0    # messages whose seq jumped more than the window away
        self.jumped = 0     # numbers skipped by jumps the device's next messages confirmed
        self._jumps: list[int] = []  # seqs of the jump being watched, ascending
        self._quiet = True  # nothing arrived in the old window since the jump began

    @property
    def bits(self) -> int:
        """The window as an int: bit k set when sequence number high-k arrived."""
        w = self.window
        r = int.from_bytes(self._ring, "little")
        c = -self.high % w
        return ((r >> c) | (r << (w - c))) & ((1 << w) - 1)

    @bits.setter
    def bits(self, value: int) -> None:
        # relative to the current `high`: set high first (journal_state does)
        w = self.window
        value &= (1 << w) - 1
        c = -self.high % w
        r = ((value << c) | (value >> (w - c))) & ((1 << w) - 1)
        self._ring[:] = r.to_bytes(len(self._ring), "little")

    def _suspect(self, seq: int) -> bool:
        jumps = self._jumps
        if seq in jumps:
            self.duplicates += 1
            return False
        self.suspect += 1
        self.received += 1
        if jumps and seq > jumps[-1] and seq - jumps[-1] <= self.window and seq > self.high:
            jumps.append(seq)
            if len(jumps) >= self.CONFIRM and self._quiet:
                # the device really moved on: continue from there
                self.jumped += jumps[0] - self.high - 1
                self.missing += (seq - jumps[0] + 1) - len(jumps)
                ring, w = self._ring, self.window
                ring[:] = bytes(len(ring))
                for j in jumps:
                    if seq - j < w:  # (the first of a jump may lie beyond the new window)
                        p = -j % w
                        ring[p >> 3] |= 1 << (p & 7)
                self.high = seq
                jumps.clear()
        else:
            self._jumps = [seq]
            self._quiet = True
        return True

    def accept(self, seq: int) -> bool:
        """Record seq; False when it is a duplicate (drop it)."""
        high = self.high
        w = self.window
        ring = self._ring
        if seq > high:
            d = seq - high
            if self.received == 0:
                self.first = seq
                d = w
            elif d > w:
                return self._suspect(seq)
            else:
                self.missing += d - 1
            self._quiet = False
            if d >= w:
                ring[:] = bytes(len(ring))
            elif d > 1:
                # the numbers skipped leave the window's other end: clear their bits
                if d <= 16:
                    for s in range(high + 1, seq):
                        p = -s % w
                        ring[p >> 3] &= ~(1 << (p & 7))
                else:  # a long gap: through the int form (relative to high, then to seq)
                    x = self.bits
                    self.high = seq
                    self.bits = x << d
            p = -seq % w
            ring[p >> 3] |= 1 << (p & 7)
            self.high = seq
            self.received += 1
            return True
        k = high - seq
        if k >= w:
            if self.first - seq > w:
                return self._suspect(seq)
            self.unchecked += 1
            self.received += 1
            if seq < self.first:
                self.missing += self.first - seq - 1
                self.first = seq
            else:
                self.missing = max(0, self.missing - 1)
            return True
        p = -seq % w
        i = p >> 3
        bit = 1 << (p & 7)
        if ring[i] & bit:
            self.duplicates += 1
            return False
        ring[i] |= bit
        self.received += 1
        if seq < self.first:
            self.missing += self.first - seq - 1
            self.first = seq
        else:
            self.missing -= 1
        return True

    @property
    def expected(self) -> int:
        return self.high - self.first + 1 if self.received else 0

    def as_dict(self) -> dict[str, int]:
        return {"first_seq": self.first, "last_seq": self.high, "received": self.received,
                "missing": self.missing, "duplicates": self.duplicates, "unchecked": self.unchecked,
                "suspect": self.suspect, "jumped": self.jumped}


class Device:
    __slots__ = ("id", "online", "boot", "conn", "fw", "hw", "streams", "why", "first_seen", "last_seen",
                 "status_at", "messages", "readings", "duplicates", "stale_deaths", "boots", "values",
                 "values_dropped", "revived", "offset_boot", "offset", "death_up")

    def __init__(self, device_id: str, now_ms: int) -> None:
        self.id = device_id
        self.online: bool | None = None   # None: no status seen yet
        self.boot: int | None = None      # current session (boot, conn)
        self.conn: int | None = None
        self.fw: str | None = None
        self.hw: str | None = None
        self.streams: dict[str, Any] = {}
        self.why: str | None = None
        self.first_seen = now_ms
        self.last_seen: int | None = now_ms  # None: known only from a retained status
        self.status_at: int | None = None
        self.revived = 0
        # gateway ms minus device uptime for boot offset_boot, from its latest live message
        self.offset_boot: int | None = None
        self.offset: int | None = None
        self.death_up: int | None = None  # the current session's death, in device uptime (None: unknown)
        self.messages = 0
        self.readings = 0
        self.duplicates = 0
        self.stale_deaths = 0
        self.boots: collections.OrderedDict[int, SeqWindow] = collections.OrderedDict()
        self.values: dict[str, tuple[Any, int, str | None]] = {}
        self.values_dropped = 0

    @property
    def missing(self) -> int:
        return sum(w.missing for w in self.boots.values())

    @property
    def loss(self) -> float:
        expected = sum(w.expected for w in self.boots.values())
        return round(self.missing / expected, 6) if expected else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "online": bool(self.online),
            "state": "unknown" if self.online is None else ("online" if self.online else "offline"),
            "boot": self.boot,
            "conn": self.conn,
            "fw": self.fw,
            "hw": self.hw,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "messages": self.messages,
            "readings": self.readings,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "loss": self.loss,
            "units": {name: meta["u"] for name, meta in self.streams.items()
                      if isinstance(meta, dict) and isinstance(meta.get("u"), str) and meta["u"]},
        }

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        out["why_offline"] = None if self.online else self.why
        out["status_at"] = self.status_at
        out["streams"] = self.streams
        out["stale_deaths"] = self.stale_deaths
        out["revived"] = self.revived
        out["boots"] = {str(b): w.as_dict() for b, w in self.boots.items()}
        out["values"] = {s: {"value": v, "ts": ts, "error": e} for s, (v, ts, e) in self.values.items()}
        out["values_dropped"] = self.values_dropped
        return out


class Registry:
    def __init__(self, *, max_devices: int = 10000, max_streams: int = 256, window: int = 4096,
                 boots_kept: int = 4) -> None:
        self.max_devices = max_devices
        self.max_streams = max_streams
        self.window = window
        self.boots_kept = boots_kept
        self.devices: dict[str, Device] = {}
        self._unborn: dict[str, None] = {}  # ids with no birth yet, oldest first
        self.evicted_ids: list[str] = []
        self.duplicates = 0
        self.stale_deaths = 0
        self.evicted = 0
        self.revived = 0

    def __len__(self) -> int:
        return len(self.devices)

    def restored(self) -> None:
        """After devices were put back from the journal: rebuild the derived
        state (which ids never sent a birth, oldest first)."""
        self._unborn = {d.id: None for d in sorted(self.devices.values(), key=lambda d: d.first_seen)
                        if d.online is None}

    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def _device(self, device_id: str, now_ms: int) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            if len(self.devices) >= self.max_devices:
                self._evict()
            dev = self.devices[device_id] = Device(device_id, now_ms)
            self._unborn[device_id] = None
        return dev

    def _evict(self) -> None:
        """Make room: the oldest device that never sent a birth, else the least
        recently seen (offline and unknown before online), a batch of 1% at a
        time so a flood of new ids costs one scan per hundred."""
        if self._unborn:
            victims = [next(iter(self._unborn))]
        else:
            n = max(1, len(self.devices) // 100)
            victims = [d.id for d in heapq.nsmallest(
                n, self.devices.values(), key=lambda d: (d.online is True, d.last_seen or 0))]
        for v in victims:
            del self.devices[v]
            self._unborn.pop(v, None)
        self.evicted += len(victims)
        self.evicted_ids.extend(victims)  # the core drains this: the journal forgets them too

    def telemetry(self, t: Telemetry, now_ms: int) -> Device | None:
        """Account one message: its device, or None if it is a duplicate to drop."""
        device, boot, seq, up, _, readings = t
        dev = self.devices.get(device)
        if dev is None:
            dev = self._device(device, now_ms)
        dev.last_seen = now_ms
        win = dev.boots.get(boot)
        if win is None:
            win = dev.boots[boot] = SeqWindow(self.window)
            while len(dev.boots) > self.boots_kept:
                dev.boots.popitem(last=False)
        high = win.high
        if not win.accept(seq):
            dev.duplicates += 1
            self.duplicates += 1
            return None
        if dev.online is False and boot == dev.boot and win.high > high and (
                dev.death_up is None or up > dev.death_up + REVIVE_MARGIN_MS):
            # telemetry the session sent after a death that named it: it was not
            # dead (a forged or mistaken death holds only while the session is silent)
            dev.online = True
            dev.why = None
            dev.revived += 1
            self.revived += 1
        if dev.boot is None or boot == dev.boot:
            dev.offset_boot, dev.offset = boot, now_ms - up
        dev.messages += 1
        dev.readings += len(readings)
        return dev

    def status(self, s: Status, now_ms: int, *, retained: bool = False) -> str:
        """Apply a birth or death: returns 'online', 'offline' or 'stale' (a death
        naming a session that is not the current one, ignored). A `retained`
        status is the broker's stored copy, replayed on subscribe: it says
        nothing about when the device was last seen (status messages carry no
        time), so it leaves last_seen and status_at as they were (None for a
        device known only from it)."""
        new = s.device not in self.devices
        dev = self._device(s.device, now_ms)
        if retained:
            if new:
                dev.last_seen = None
            stamp = dev.status_at
        else:
            dev.last_seen = stamp = now_ms
            if s.online and s.uptime is not None:
                dev.offset_boot, dev.offset = s.boot, now_ms - s.uptime
        if s.online:
            self._unborn.pop(s.device, None)
            dev.online = True
            dev.boot, dev.conn = s.boot, s.conn
            dev.fw, dev.hw = s.fw, s.hw
            dev.streams = s.streams
            dev.why = None
            dev.death_up = None
            dev.status_at = stamp
            return "online"
        if dev.boot is None:
            # no birth seen: the session is the boot its telemetry comes from, if any
            streaming = next(reversed(dev.boots), None)
            current = streaming is None or s.boot == streaming
        else:
            current = s.boot == dev.boot and dev.conn is not None and s.conn >= dev.conn
        if not current:
            dev.stale_deaths += 1
            self.stale_deaths += 1
            return "stale"
        if not retained:  # a retained death keeps the date it had (restored from the journal)
            dev.death_up = now_ms - dev.offset if dev.offset_boot == s.boot and dev.offset is not None else None
        dev.online = False
        dev.boot, dev.conn = s.boot, s.conn
        dev.why = s.why
        dev.status_at = stamp
        return "offline"

    def totals(self) -> dict[str, Any]:
        online = sum(1 for d in self.devices.values() if d.online)
        return {"devices": len(self.devices), "online": online, "duplicates": self.duplicates,
                "missing": sum(d.missing for d in self.devices.values()), "stale_deaths": self.stale_deaths,
                "evicted": self.evicted, "revived": self.revived,
                "suspect": sum(w.suspect for d in self.devices.values() for w in d.boots.values())}
