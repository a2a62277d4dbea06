"""The simulator's observer: an MQTT subscriber that counts what arrived.

It subscribes (QoS 1) to the fleet's telemetry and counts, per device and QoS,
the distinct messages it received (by (device, boot, seq)) and the duplicates,
and measures end-to-end latency for every reading: the observer's receive time
minus the device's sample time, which the envelope carries as the send time
`t` (epoch ms) and uptimes `u` (at send) and per reading (at sampling):
sample = t - (u - reading uptime). Both ends read the same host clock, so the
figure is exact up to the clocks' resolution (not so across hosts, and not for
devices in a clock-skew event: their `t` is skewed on purpose).

Decoding uses the msgpack C extension: the observer must keep up with the
fleet (10,000 msg/s) on the same machine.
"""
from __future__ import annotations

import array
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from edgewire import wire

MAX_SAMPLES = 1_000_000   # latencies kept for the overall percentiles (reservoir beyond)


class _Seen:
    """Distinct seqs of one (device, boot): all <= hi, plus `extra` above it."""

    __slots__ = ("hi", "extra")

    def __init__(self) -> None:
        self.hi = 0
        self.extra: set[int] = set()

    def add(self, seq: int) -> bool:
        if seq <= self.hi or seq in self.extra:
            return False
        if seq == self.hi + 1:
            self.hi = seq
            ex = self.extra
            while self.hi + 1 in ex:
                self.hi += 1
                ex.discard(self.hi)
        else:
            self.extra.add(seq)
        return True


def percentiles(values: Any) -> dict[str, float] | None:
    """p50/p95/p99/max (nearest rank) of a sequence, None when empty."""
    v = sorted(values)
    if not v:
        return None
    n = len(v)

    def rank(p: float) -> float:
        return float(v[min(n - 1, max(0, int(p * n + 0.999999) - 1))])

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": float(v[-1]), "count": n}


class Observer:
    """Counts the telemetry of `devices` ({device id: {stream: qos}})."""

    def __init__(self, host: str, port: int, devices: Mapping[str, Mapping[str, int]],
                 client_id: str | None = None) -> None:
        self.host = host
        self.port = port
        self.devices = devices
        self.lock = threading.Lock()
        self.received: dict[str, list[int]] = {}      # device -> distinct per QoS [q0, q1, q2]
        self.duplicates: dict[str, list[int]] = {}    # device -> duplicates per QoS
        self.readings = 0
        self.foreign = 0          # telemetry of devices not in this fleet (or shard)
        self.bad = 0              # payloads that did not decode
        self._seen: dict[tuple[str, int], _Seen] = {}
        self.latency = array.array("d")
        self._n_lat = 0
        self._rng = random.Random(1)
        self.per_second: dict[int, list[float]] = {}   # epoch second -> latencies (ms)
        self.received_per_second: dict[int, int] = {}
        cid = client_id or f"edgewire-sim-observer-{random.SystemRandom().randrange(1 << 30):x}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = self._on_connect
        self.late = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(wire.ROOT + "/+/" + wire.KIND_TELEMETRY, 1)

    def start(self, timeout: float = 5.0) -> "Observer":
        """Connect and subscribe; waits up to `timeout` s for the SUBACK. A broker
        that is not there yet is retried in the background (paho's reconnect):
        `late` then says the observer may have missed the first messages."""
        self.client.reconnect_delay_set(0.1, 2.0)
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.late = not self._subscribed.wait(timeout)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, m: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000.0
        parts = m.topic.split("/")
        if len(parts) != 4:
            return
        dev = parts[2]
        streams = self.devices.get(dev)
        if streams is None:
            self.foreign += 1
            return
        try:
            env = msgpack.unpackb(m.payload, raw=False, strict_map_key=False)
            key = (dev, int(env["b"]))
            seq = int(env["s"])
            t = env.get("t")
            u = int(env["u"])
            rs = env["r"]
            qos = streams.get(rs[0][0], 1) if rs else 1
        except (ValueError, KeyError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError):
            self.bad += 1
            return
        with self.lock:
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen()
            if not seen.add(seq):
                d = self.duplicates.get(dev)
                if d is None:
                    d = self.duplicates[dev] = [0, 0, 0]
                d[qos] += 1
                return
            got = self.received.get(dev)
            if got is None:
                got = self.received[dev] = [0, 0, 0]
            got[qos] += 1
            self.readings += len(rs)
            sec = int(now // 1000)
            self.received_per_second[sec] = self.received_per_second.get(sec, 0) + 1
            if isinstance(t, int):
                bucket = self.per_second.setdefault(sec, [])
                for r in rs:
                    lat = now - (t - (u - int(r[2])))
                    bucket.append(lat)
                    self._n_lat += 1
                    if len(self.latency) < MAX_SAMPLES:
                        self.latency.append(lat)
                    else:  # reservoir: every latency seen has the same chance to stay
                        j = self._rng.randrange(self._n_lat)
                        if j < MAX_SAMPLES:
                            self.latency[j] = lat

    def settle(self, expected: int | None = None, quiet: float = 1.0, timeout: float = 30.0) -> None:
        """Wait until `expected` distinct messages came, or none for `quiet` s."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.total_received
            if expected is not None and n >= expected:
                return
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    @property
    def total_received(self) -> int:
        with self.lock:
            return sum(sum(v) for v in self.received.values())
