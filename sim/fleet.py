"""A fleet of simulated devices, each the real device SDK on a SimBoard.

    from edgewire.sim import Fleet

    with Fleet("mqtt://127.0.0.1:1883", devices=200, rate=5, qos=1, seed=42) as fleet:
        time.sleep(10)
    report = fleet.report()
    print(report.render())

Every device is an `edgewire.device.Device(board, config)` on an
`edgewire.boards.sim.SimBoard` with its own MQTT connection, run in its own
thread: the SDK's MQTT client waits on its socket with a poll deadline, so a
thread per device is the simple, faithful model. CPU cost is dominated by
encoding and sending messages, not by the threads (docs/simulator.md has the
measurements).

Rate: each device gets streams (temperature, humidity, battery, door, ... from
the SimBoard's sensor models) at QoS `qos` whose sampling adds up to `rate`
readings per second, and sends each reading as its own telemetry message
(batch_max = 1), so `rate` is telemetry messages per second per device.
"""
from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from edgewire import config as device_config
from edgewire import wire
from edgewire.boards import ResetRequested
from edgewire.boards.sim import MODELS, SimBoard
from edgewire.device import Device
from edgewire.sim.errors import SimError
from edgewire.sim.report import DeviceReport, FleetReport
from edgewire.sim.url import BrokerAddress, parse_broker_url

__all__ = ["Fleet", "SimDevice", "plan_streams", "MAX_DEVICES", "MAX_RATE"]

log = logging.getLogger("edgewire.sim")
device_log = logging.getLogger("edgewire.sim.device")

MAX_DEVICES = 10000
MAX_STREAMS = 32            # config.validate's limit
MIN_INTERVAL_MS = 10        # config.validate's floor for min_interval_ms
MAX_INTERVAL_MS = 86400000
MAX_RATE = MAX_STREAMS * 1000 / MIN_INTERVAL_MS  # messages per second per device
UNITS = {"temperature": "C", "humidity": "%", "battery": "V", "door": ""}
# Settings the simulator owns: callers' config overrides may not change them.
OWNED_KEYS = ("device_id", "broker_host", "broker_port", "streams", "batch_max", "min_interval_ms")


def plan_streams(rate: float, qos: int) -> list[dict[str, Any]]:
    """Streams whose sampling adds up to `rate` readings per second at `qos`.

    Four streams (one per SimBoard model) while each can sample at least every
    10 ms; more streams (temperature/2, ...) beyond 400 msg/s."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        shown = f"{rate:g}" if isinstance(rate, (int, float)) else repr(rate)
        raise SimError(f"rate {shown} must be a positive number of messages per second per device")
    if rate > MAX_RATE:
        raise SimError(f"rate {rate:g} is above the {MAX_RATE:g} messages per second one simulated device "
                       f"can send ({MAX_STREAMS} streams at {MIN_INTERVAL_MS} ms); use more devices instead")
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise SimError(f"qos {qos!r} is not 0, 1 or 2")
    n = max(len(MODELS), math.ceil(rate * MIN_INTERVAL_MS / 1000))
    interval = round(n * 1000 / rate)
    if interval > MAX_INTERVAL_MS:
        raise SimError(f"rate {rate:g} is too slow: a stream samples at most once a day "
                       f"(the slowest rate is {len(MODELS) * 1000 / MAX_INTERVAL_MS:.6f} msg/s)")
    interval = max(MIN_INTERVAL_MS, interval)
    streams = []
    for i in range(n):
        model = MODELS[i % len(MODELS)]
        name = model if i < len(MODELS) else f"{model}/{i // len(MODELS) + 1}"
        streams.append({"name": name, "source": f"sim:{model}", "interval_ms": interval, "qos": qos,
                        "unit": UNITS.get(model, "")})
    return streams


def configured_rate(streams: Sequence[Mapping[str, Any]]) -> float:
    """Messages per second the streams produce (rounding of intervals included)."""
    return float(sum(1000.0 / s["interval_ms"] for s in streams))


class SimDevice:
    """One simulated device: a SimBoard and the SDK's Device run in a thread.

    A reboot (the `reboot` command, or `board.reset()`) starts a new Device on
    the same board, as a real board restarts its firmware: a new boot id, seq
    from 1. Counters are summed over boots."""

    def __init__(self, device_id: str, board: SimBoard, cfg: dict[str, Any]) -> None:
        self.device_id = device_id
        self.board = board
        self.cfg = cfg
        self.device: Device | None = None
        self.boots: list[int] = []
        self.resets = 0
        self.error: str | None = None
        self._done: dict[str, int] = {}       # counters of finished boots
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise SimError(f"device {self.device_id} already started")
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.device_id}", daemon=True)
        self._thread.start()

    def _say(self, msg: str) -> None:
        device_log.info("%s: %s", self.device_id, msg)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                dev = Device(self.board, self.cfg, log=self._say)
                self.device = dev
            try:
                dev.run()
                break
            except ResetRequested:
                self.resets += 1
                self._fold(dev)
                continue
            except Exception as e:  # a crash is this device's fault, reported; the fleet goes on
                self.error = f"{type(e).__name__}: {e}"
                log.error("simulated device %s stopped: %s", self.device_id, self.error)
                break
            finally:
                if dev.boot and (not self.boots or self.boots[-1] != dev.boot):
                    self.boots.append(dev.boot)

    def _fold(self, dev: Device) -> None:
        with self._lock:
            for k, v in dev.stats.items():
                if k != "queued":
                    self._done[k] = self._done.get(k, 0) + int(v)
            self.device = None

    def request_stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self.device is not None:
                self.device.stop()

    def join(self, timeout: float) -> bool:
        """Wait for the device to finish its goodbye; True if it did."""
        t = self._thread
        if t is None:
            return True
        deadline = time.monotonic() + timeout
        t.join(max(0.0, deadline - time.monotonic()))
        return not t.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        d = self.device
        return d is not None and d.connected

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._done)
            d = self.device
            if d is not None:
                for k, v in d.stats.items():
                    out[k] = out.get(k, 0) + int(v)
        return out

    def report(self) -> DeviceReport:
        c = self.counters()
        sent = sum(c.get(f"sent_q{q}", 0) for q in (0, 1, 2))
        acked = sum(c.get(f"acked_q{q}", 0) for q in (0, 1, 2))
        unacked = sum(c.get(f"sent_q{q}", 0) - c.get(f"acked_q{q}", 0) for q in (1, 2))
        sampled = c.get("readings", 0)
        dropped = c.get("dropped", 0)
        # batch_max is 1: each telemetry message carries exactly one reading, so
        # readings sent == messages, and what was sampled but neither sent nor
        # dropped is still queued on the device.
        boots = list(self.boots)
        d = self.device
        if d is not None and d.boot and (not boots or boots[-1] != d.boot):
            boots.append(d.boot)
        return DeviceReport(
            device=self.device_id,
            boot=boots[-1] if boots else None,
            boots=boots,
            messages=sent,
            readings=sent,
            sampled=sampled,
            acked=acked,
            unacked=unacked,
            dropped=dropped,
            queued=max(0, sampled - dropped - sent),
            connects=c.get("connects", 0),
            reconnects=c.get("reconnects", 0),
            conn_failures=c.get("conn_failures", 0),
            resets=self.resets,
            faults=c.get("faults", 0) + (1 if self.error else 0),
            connected=self.connected,
            error=self.error,
        )


class Fleet:
    """`devices` simulated devices sending `rate` telemetry messages per second
    each at QoS `qos` to the broker at `broker_url`.

    Nothing is opened until start() (or `with`). Options:
      seed        replays the same sensor values (None: random, reported); boot ids
                  are new every run, from os.urandom (decisions D6)
      prefix      device ids are '<prefix>-0000', '<prefix>-0001', ...
      fault_rate  probability that a sensor read fails (sent as an error reading)
      overrides   extra device config keys (docs/firmware.md), e.g. {"max_inflight": 16};
                  device_id, broker_host/port, streams, batch_max and
                  min_interval_ms belong to the simulator
    """

    def __init__(self, broker_url: str, *, devices: int, rate: float = 1.0, qos: int = 1,
                 seed: int | None = None, prefix: str = "sim", fault_rate: float = 0.01,
                 overrides: Mapping[str, Any] | None = None) -> None:
        if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= MAX_DEVICES:
            raise SimError(f"devices {devices!r} must be an integer 1..{MAX_DEVICES}")
        self.address: BrokerAddress = parse_broker_url(broker_url)
        self.streams = plan_streams(rate, qos)
        self.rate = float(rate)
        self.qos = qos
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise SimError(f"seed {seed!r} must be an integer or None")
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
        width = max(4, len(str(devices - 1)))
        self.device_ids = [f"{prefix}-{i:0{width}d}" for i in range(devices)]
        if not isinstance(prefix, str) or not wire.valid_id(self.device_ids[-1]):
            raise SimError(f"prefix {prefix!r} does not make valid device ids ('{prefix}-{0:0{width}d}'): "
                           f"ids are 1-64 characters of A-Z a-z 0-9 _ -")
        if isinstance(fault_rate, bool) or not isinstance(fault_rate, (int, float)) or not 0 <= fault_rate <= 1:
            raise SimError(f"fault_rate {fault_rate!r} must be between 0 and 1")
        self.fault_rate = float(fault_rate)
        over = dict(overrides or {})
        owned = sorted(set(over) & set(OWNED_KEYS))
        if owned:
            raise SimError(f"overrides {owned} are set by the simulator itself (use the Fleet arguments)")
        self._overrides = over
        self.sims: list[SimDevice] = []
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._state = "new"
        self._build()  # validates every device's config now, before any I/O

    # ------------------------------------------------------------ set-up

    def _device_seed(self, i: int) -> int:
        return random.Random(self.seed * 1_000_003 + i).randrange(1, 1 << 32)

    def _build(self) -> None:
        for i, did in enumerate(self.device_ids):
            board = SimBoard(did, seed=self._device_seed(i), fault_rate=self.fault_rate)
            cfg_in: dict[str, Any] = {"keepalive_s": 30, "backoff_min_ms": 200, "backoff_max_ms": 5000}
            cfg_in.update(self._overrides)
            cfg_in.update({
                "device_id": did,
                "broker_host": self.address.host,
                "broker_port": self.address.port,
                "streams": [dict(s) for s in self.streams],
                "batch_max": 1,
                "min_interval_ms": MIN_INTERVAL_MS,
            })
            try:
                cfg = device_config.build(board, cfg_in)
            except device_config.ConfigError as e:
                raise SimError(f"device config: {e}") from None
            self.sims.append(SimDevice(did, board, cfg))

    @property
    def configured_rate(self) -> float:
        return configured_rate(self.streams)

    def board(self, device_id: str) -> SimBoard:
        """The SimBoard of one device, e.g. to cut its Wi-Fi: fleet.board('sim-0003').set_network(False)."""
        for s in self.sims:
            if s.device_id == device_id:
                return s.board
        raise KeyError(f"no device {device_id!r} in this fleet")

    def set_network(self, up: bool, device_ids: Sequence[str] | None = None) -> None:
        """Wi-Fi up or down for some devices (default: all)."""
        for s in self.sims:
            if device_ids is None or s.device_id in device_ids:
                s.board.set_network(up)

    # ------------------------------------------------------------ run

    def check_broker(self, timeout: float = 5.0) -> None:
        """SimError unless something accepts TCP connections at the broker address."""
        a = self.address
        try:
            with socket.create_connection((a.host, a.port), timeout=timeout):
                pass
        except OSError as e:
            raise SimError(f"cannot reach the broker at {a.url}: {e.strerror or e}") from None

    def start(self, *, wait_connected: float | None = 30.0) -> "Fleet":
        """Start every device; with wait_connected, return once all have
        connected (births sent), raising SimError if they did not within that
        many seconds. The devices keep running (and retrying) until stop()."""
        if self._state != "new":
            raise SimError(f"fleet already {self._state}; make a new Fleet to run again")
        self._state = "running"
        self._started_at = time.monotonic()
        for s in self.sims:
            s.start()
        if wait_connected is not None:
            self.wait_connected(wait_connected)
        return self

    def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            up = sum(1 for s in self.sims if s.report().connects > 0)
            if up == len(self.sims):
                return
            if time.monotonic() >= deadline:
                failures = sum(s.report().conn_failures for s in self.sims)
                raise SimError(f"only {up} of {len(self.sims)} devices connected to {self.address.url} within "
                               f"{timeout:g} s ({failures} failed connection attempts)")
            time.sleep(0.05)

    def run(self, seconds: float) -> FleetReport:
        """start(), run for `seconds`, stop(); returns the report. Ctrl-C stops early."""
        self.start()
        try:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(left, 0.2))
        finally:
            self.stop()
        return self.report()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every device cleanly: each sends what its in-flight window holds,
        waits for the acks (up to its timeout_ms), publishes its death
        ('shutdown') and DISCONNECTs. Safe to call twice."""
        if self._state != "running":
            return
        self._stopped_at = time.monotonic()
        for s in self.sims:
            s.request_stop()
        deadline = time.monotonic() + timeout
        stuck = [s.device_id for s in self.sims if not s.join(max(0.0, deadline - time.monotonic()))]
        self._state = "stopped"
        if stuck:
            raise SimError(f"{len(stuck)} devices did not stop within {timeout:g} s: {', '.join(stuck[:5])}")

    @property
    def seconds(self) -> float:
        if self._started_at is None:
            return 0.0
        end = self._stopped_at if self._stopped_at is not None else time.monotonic()
        return end - self._started_at

    def report(self, *, embedded_broker: bool = False) -> FleetReport:
        return FleetReport(broker=self.address.url, devices=len(self.sims), rate=self.rate,
                           configured_rate=self.configured_rate, qos=self.qos, seconds=self.seconds,
                           seed=self.seed, embedded_broker=embedded_broker,
                           per_device=[s.report() for s in self.sims])

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
