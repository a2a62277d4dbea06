"""The device registry: who is online, since when, what they run, and how
complete their data is.

Online/offline comes from status messages (docs/protocol.md "Status"): a birth
makes its (boot, conn) the device's current session; a death applies only to
the session it names, so a last will that the broker delivers after the
device's newer birth is ignored (counted as `stale_deaths`).

Completeness comes from (boot, seq): per boot a `SeqWindow` remembers which of
the last `window` sequence numbers arrived (a bitmap in one int). A number seen
twice is a duplicate and is dropped before the live hub; a number skipped is a
gap, counted as missing until it turns up late. Older than the window, a
number cannot be checked: it is passed on and counted as `unchecked`."""
from __future__ import annotations

import collections
from typing import Any

from edgewire.gateway.decode import Status, Telemetry
from edgewire.gateway.errors import GatewayError

__all__ = ["Device", "Registry", "RegistryFull", "SeqWindow"]


class RegistryFull(GatewayError):
    """A new device arrived while max_devices are already registered."""


class SeqWindow:
    """Gap and duplicate detection for one (device, boot)."""

    __slots__ = ("window", "mask", "first", "high", "bits", "received", "missing", "duplicates", "unchecked")

    def __init__(self, window: int) -> None:
        self.window = window
        self.mask = (1 << window) - 1
        self.first = 0      # lowest sequence number seen
        self.high = 0       # highest sequence number seen
        self.bits = 0       # bit k set: sequence number high-k arrived
        self.received = 0
        self.missing = 0    # numbers in [first, high] that have not arrived
        self.duplicates = 0
        self.unchecked = 0

    def accept(self, seq: int) -> bool:
        """Record seq; False when it is a duplicate (drop it)."""
        high = self.high
        if seq > high:
            if self.received == 0:
                self.first = seq
            else:
                self.missing += seq - high - 1
            d = seq - high
            self.bits = ((self.bits << d) | 1) & self.mask if d < self.window else 1
            self.high = seq
            self.received += 1
            return True
        k = high - seq
        if k >= self.window:
            self.unchecked += 1
            self.received += 1
            if seq < self.first:
                self.missing += self.first - seq - 1
                self.first = seq
            else:
                self.missing = max(0, self.missing - 1)
            return True
        bit = 1 << k
        if self.bits & bit:
            self.duplicates += 1
            return False
        self.bits |= bit
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
                "missing": self.missing, "duplicates": self.duplicates, "unchecked": self.unchecked}


class Device:
    __slots__ = ("id", "online", "boot", "conn", "fw", "hw", "streams", "why", "first_seen", "last_seen",
                 "status_at", "messages", "readings", "duplicates", "stale_deaths", "boots", "values",
                 "values_dropped")

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
        self.last_seen = now_ms
        self.status_at: int | None = None
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
        self.duplicates = 0
        self.stale_deaths = 0

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def _device(self, device_id: str, now_ms: int) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            if len(self.devices) >= self.max_devices:
                raise RegistryFull(f"device {device_id!r} refused: {self.max_devices} devices registered "
                                   "(raise [registry] max_devices)")
            dev = self.devices[device_id] = Device(device_id, now_ms)
        return dev

    def telemetry(self, t: Telemetry, now_ms: int) -> bool:
        """Account one message; False if it is a duplicate to drop. Raises RegistryFull."""
        device = t["device"]
        dev = self.devices.get(device)
        if dev is None:
            dev = self._device(device, now_ms)
        dev.last_seen = now_ms
        boot = t["boot"]
        win = dev.boots.get(boot)
        if win is None:
            win = dev.boots[boot] = SeqWindow(self.window)
            while len(dev.boots) > self.boots_kept:
                dev.boots.popitem(last=False)
        if not win.accept(t["seq"]):
            dev.duplicates += 1
            self.duplicates += 1
            return False
        dev.messages += 1
        dev.readings += len(t["readings"])
        return True

    def remember(self, device: Device, stream: str, value: Any, ts: int, error: str | None) -> None:
        values = device.values
        if stream in values or len(values) < self.max_streams:
            values[stream] = (value, ts, error)
        else:
            device.values_dropped += 1

    def status(self, s: Status, now_ms: int) -> str:
        """Apply a birth or death: returns 'online', 'offline' or 'stale' (a death
        naming a session that is not the current one, ignored)."""
        dev = self._device(s.device, now_ms)
        dev.last_seen = now_ms
        if s.online:
            dev.online = True
            dev.boot, dev.conn = s.boot, s.conn
            dev.fw, dev.hw = s.fw, s.hw
            dev.streams = s.streams
            dev.why = None
            dev.status_at = now_ms
            return "online"
        current = dev.boot is None or (s.boot == dev.boot and dev.conn is not None and s.conn >= dev.conn)
        if not current:
            dev.stale_deaths += 1
            self.stale_deaths += 1
            return "stale"
        dev.online = False
        dev.boot, dev.conn = s.boot, s.conn
        dev.why = s.why
        dev.status_at = now_ms
        return "offline"

    def totals(self) -> dict[str, Any]:
        online = sum(1 for d in self.devices.values() if d.online)
        return {"devices": len(self.devices), "online": online, "duplicates": self.duplicates,
                "missing": sum(d.missing for d in self.devices.values()), "stale_deaths": self.stale_deaths}
