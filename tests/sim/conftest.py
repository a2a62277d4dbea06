from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest

from tests.support.broker import Mosquitto


class Checker:
    """An independent subscriber (paho) that decodes everything under
    edgewire/v1/ the way docs/protocol.md describes it, with the reference
    `msgpack` package and none of the project's protocol code (the code under
    test), and counts it: distinct (device, boot, seq), readings, duplicates,
    births and deaths per device, and the latency of each reading from its
    sample time (t - (u - reading uptime), docs/protocol.md) to its arrival
    here. Whatever does not match the spec is listed in `refused`."""

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
        # (device, stream) -> [(value, uptime ms, error text or None)], of distinct messages
        self.values: dict[tuple[str, str], list[tuple[Any, int, str | None]]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"checker-{id(self)}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe("edgewire/v1/#", 2)
        assert subscribed.wait(5), "checker got no SUBACK"

    @staticmethod
    def _u32(env: dict[str, Any], key: str) -> int:
        value = env.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
            raise ValueError(f"{key!r} is {value!r}, not a uint32")
        return value

    def _on_message(self, client: object, userdata: object, m: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000.0
        try:
            parts = m.topic.split("/")
            if len(parts) != 4 or parts[:2] != ["edgewire", "v1"]:
                raise ValueError("not edgewire/v1/<device>/<kind>")
            dev, kind = parts[2], parts[3]
            if kind in ("cmd",) or (kind == "status" and not m.payload):
                return  # commands go the other way; an empty retained status clears it
            env = msgpack.unpackb(m.payload, raw=False)  # one map, no trailing bytes
            if not isinstance(env, dict) or env.get("v") != 1 or env.get("d") != dev:
                raise ValueError(f"envelope {env!r} is not a v1 map for {dev}")
            if kind == "telemetry":
                readings = env.get("r")
                if not isinstance(readings, list) or not 1 <= len(readings) <= 64 or not all(
                        isinstance(r, list) and len(r) in (3, 4) and isinstance(r[0], str) for r in readings):
                    raise ValueError(f"readings {readings!r}")
                key = (dev, self._u32(env, "b"), self._u32(env, "s"))
                with self.lock:
                    if key in self.seen:
                        self.duplicates += 1
                    else:
                        self.seen.add(key)
                        self.readings += len(readings)
                        self.per_device[dev] = self.per_device.get(dev, 0) + 1
                        for r in readings:
                            self.values.setdefault((dev, r[0]), []).append(
                                (r[1], r[2], r[3] if len(r) == 4 else None))
                        if isinstance(env.get("t"), int) and isinstance(env.get("u"), int):
                            for r in readings:
                                self.latencies.append(now - (env["t"] - (env["u"] - r[2])))
            elif kind == "status":
                boot, state = self._u32(env, "b"), env.get("st")
                self._u32(env, "c")
                with self.lock:
                    if state == "on":
                        self.births.setdefault(dev, []).append(boot)
                    elif state == "off":
                        self.deaths.setdefault(dev, []).append(str(env.get("why")))
                    else:
                        raise ValueError(f"status st {state!r}")
            elif kind != "result":
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
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
