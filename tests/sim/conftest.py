from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import msgpack
import paho.mqtt.client as mqtt
import pytest

from tests.support.broker import Mosquitto


class Checker:
    """An independent subscriber: paho, and the reference msgpack package (not
    our wire_rx), counting everything under edgewire/v1/: distinct (device,
    boot, seq), readings, duplicates, births and deaths per device, and the
    latency of each reading from its sample time (t - (u - reading uptime),
    docs/protocol.md) to its arrival here."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.seen: set[tuple[str, int, int]] = set()
        self.per_device: dict[str, int] = {}
        self.readings = 0
        self.duplicates = 0
        self.births: dict[str, list[int]] = {}   # device -> boot ids of births, in order
        self.deaths: dict[str, list[str]] = {}   # device -> why
        self.refused: list[str] = []
        self.latencies: list[float] = []   # ms, one per reading of a distinct message
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"checker-{id(self)}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe("edgewire/v1/#", 2)
        assert subscribed.wait(5), "checker got no SUBACK"

    def _on_message(self, client: object, userdata: object, m: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000.0
        parts = m.topic.split("/")
        try:
            if len(parts) != 4 or parts[:2] != ["edgewire", "v1"]:
                raise ValueError("unexpected topic")
            dev, kind = parts[2], parts[3]
            if kind == "telemetry":
                env = msgpack.unpackb(m.payload, raw=False)
                if env["v"] != 1 or env["d"] != dev:
                    raise ValueError(f"envelope {env!r} does not match the topic")
                key = (dev, env["b"], env["s"])
                with self.lock:
                    if key in self.seen:
                        self.duplicates += 1
                    else:
                        self.seen.add(key)
                        self.readings += len(env["r"])
                        self.per_device[dev] = self.per_device.get(dev, 0) + 1
                        for r in env["r"]:
                            self.latencies.append(now - (env["t"] - (env["u"] - r[2])))
            elif kind == "status" and m.payload:
                env = msgpack.unpackb(m.payload, raw=False)
                with self.lock:
                    if env["st"] == "on":
                        self.births.setdefault(dev, []).append(env["b"])
                    else:
                        self.deaths.setdefault(dev, []).append(env["why"])
        except (ValueError, KeyError, TypeError, IndexError, msgpack.ExtraData) as e:
            with self.lock:
                self.refused.append(f"{m.topic}: {e}")

    @property
    def received(self) -> int:
        with self.lock:
            return len(self.seen)

    def settle(self, expected: int | None = None, timeout: float = 10.0, quiet: float = 0.5) -> None:
        """Wait until `expected` distinct messages arrived (or, without it, no new
        message for `quiet` seconds); bounded by timeout."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.received
            if expected is not None and n >= expected:
                time.sleep(0.2)  # let any stray duplicate land too
                return
            if n != last:
                last, since = n, time.monotonic()
            elif expected is None and time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def checker(broker: Mosquitto) -> Iterator[Checker]:
    c = Checker(broker.port)
    try:
        yield c
    finally:
        c.close()
