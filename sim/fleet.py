"""A fleet of simulated devices, each the real device SDK on a SimBoard.

    from edgewire.sim import Fleet

    with Fleet("mqtt://127.0.0.1:1883", devices=200, rate=5, qos=1, seed=42) as fleet:
        time.sleep(10)
    report = fleet.report()
    print(report.render())

Every device is the SDK's Device (edgewire.sim.loop.LoopDevice) on an
`edgewire.boards.sim.SimBoard` with its own MQTT connection. Devices are driven
by selector loops (edgewire.sim.engine), one per shard: procs=0 runs one shard
in a thread of this process (the boards can be reached: fleet.board(id));
procs=N runs N shard processes (10,000 devices on two cores). An observer (an
MQTT subscriber of our own) counts what arrived and measures latency.

Rate: each device gets streams (temperature, humidity, battery, door, ... from
the SimBoard's sensor models) at QoS `qos` whose sampling adds up to `rate`
readings per second, and sends each reading as its own telemetry message
(batch_max = 1), so `rate` is telemetry messages per second per device.
With `batch` = N > 1 a device samples its streams N at a time (same interval,
same phase) and sends the N readings in one message (batch_max = N): `rate`
messages per second of N readings each, `rate` x N readings per second (a
device that samples several quantities together, and the load a gateway sees
at high reading rates).
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from edgewire import config as device_config
from edgewire import wire
from edgewire.boards.sim import MODELS, SimBoard
from edgewire.sim.engine import DeviceSpec, Shard, raise_file_limit, report_crash, shard_main
from edgewire.sim.errors import SimError
from edgewire.sim.observer import GatewayObserver, Observer
from edgewire.sim.report import DeviceReport, FleetReport, build_report
from edgewire.sim.url import BrokerAddress, parse_broker_url

__all__ = ["Fleet", "Group", "plan_streams", "sensor_stream", "MAX_DEVICES", "MAX_RATE"]

log = logging.getLogger("edgewire.sim")
device_log = logging.getLogger("edgewire.sim.device")

MAX_DEVICES = 1_000_000     # a whole fleet; one host runs its --shard of it
DEFAULT_RAMP = 1000.0       # connections started per second, over all shards
MAX_STREAMS = 32            # config.validate's limit
MIN_INTERVAL_MS = 10        # config.validate's floor for min_interval_ms
MAX_INTERVAL_MS = 86400000
MAX_RATE = MAX_STREAMS * 1000 / MIN_INTERVAL_MS  # messages per second per device
UNITS = {"temperature": "C", "humidity": "%", "battery": "V", "door": "", "pressure": "hPa"}
# Settings the simulator owns: callers' config overrides may not change them.
OWNED_KEYS = ("device_id", "broker_host", "broker_port", "streams", "batch_max", "min_interval_ms")


def sensor_stream(sensor: str) -> tuple[str, str, str]:
    """A sensor as a Fleet or scenario names it -> (stream name, source, unit):
    a SimBoard model ('temperature', or 'sim:temperature') or a driver source
    over the simulated buses ('bme280:pressure' -> stream 'bme280/pressure',
    'ds18b20@4:temperature' -> 'ds18b20-4/temperature')."""
    if not isinstance(sensor, str):
        raise SimError(f"sensor {sensor!r} is not a string")
    model = sensor[4:] if sensor.startswith("sim:") else sensor
    if model in MODELS:
        return model, f"sim:{model}", UNITS.get(model, "")
    bad = SimBoard("probe", seed=1).check_source(sensor)
    if bad:
        raise SimError(f"sensor {sensor!r}: {bad}")
    quantity = sensor.rsplit(":", 1)[1]
    return sensor.replace("@", "-").replace(":", "/"), sensor, UNITS.get(quantity, "C")


def plan_streams(rate: float, qos: int, sensors: Sequence[str] | None = None,
                 batch: int = 1) -> list[dict[str, Any]]:
    """Streams whose sampling adds up to `rate` x `batch` readings per second
    at `qos` (`rate` messages per second of `batch` readings each).

    One stream per sensor (default: the four SimBoard models) while each can
    sample at least every 10 ms; more streams (temperature/2, ...) beyond that
    (400 msg/s with the four models), and at least `batch` of them, a multiple
    of `batch` (the Fleet samples them `batch` at a time)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        shown = f"{rate:g}" if isinstance(rate, (int, float)) else repr(rate)
        raise SimError(f"rate {shown} must be a positive number of messages per second per device")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= min(MAX_STREAMS, wire.MAX_READINGS):
        raise SimError(f"batch {batch!r} must be 1..{min(MAX_STREAMS, wire.MAX_READINGS)} readings per message")
    if rate * batch > MAX_RATE:
        what = f"rate {rate:g}" if batch == 1 else f"rate {rate:g} x batch {batch} = {rate * batch:g} readings/s"
        raise SimError(f"{what} is above the {MAX_RATE:g} messages per second one simulated device "
                       f"can send ({MAX_STREAMS} streams at {MIN_INTERVAL_MS} ms); use more devices instead")
    readings = rate * batch
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise SimError(f"qos {qos!r} is not 0, 1 or 2")
    kinds = [sensor_stream(x) for x in (sensors if sensors is not None else MODELS)]
    if not kinds or len({k[0] for k in kinds}) != len(kinds) or len(kinds) > MAX_STREAMS:
        raise SimError(f"sensors {list(sensors or [])!r}: expected 1..{MAX_STREAMS} distinct sensors")
    n = max(len(kinds), batch, math.ceil(readings * MIN_INTERVAL_MS / 1000))
    n = -(-n // batch) * batch
    if n > MAX_STREAMS:
        raise SimError(f"rate {rate:g} with batch {batch} needs {n} streams, more than {MAX_STREAMS}; "
                       f"use more devices instead")
    interval = round(n * 1000 / readings)
    if interval > MAX_INTERVAL_MS:
        raise SimError(f"rate {rate:g} is too slow: a stream samples at most once a day "
                       f"(the slowest rate is {len(kinds) * 1000 / MAX_INTERVAL_MS:.6f} msg/s)")
    interval = max(MIN_INTERVAL_MS, interval)
    streams = []
    for i in range(n):
        name, source, unit = kinds[i % len(kinds)]
        if i >= len(kinds):
            name = f"{name}/{i // len(kinds) + 1}"
        streams.append({"name": name, "source": source, "interval_ms": interval, "qos": qos, "unit": unit})
    return streams


def configured_rate(streams: Sequence[Mapping[str, Any]]) -> float:
    """Messages per second the streams produce (rounding of intervals included)."""
    return float(sum(1000.0 / s["interval_ms"] for s in streams))


@dataclass
class Group:
    """Devices that share a configuration: `count` of them, ids '<prefix>-0000', ...

    streams: the device config's streams (name, source sim:<model>, interval_ms,
    qos, unit); overrides: other device config keys (docs/firmware.md);
    batch: readings per telemetry message (the streams are sampled `batch` at a
    time, each run of `batch` streams with one phase; give them one interval)."""

    name: str
    count: int
    prefix: str
    streams: list[dict[str, Any]]
    fault_rate: float = 0.01
    overrides: dict[str, Any] = field(default_factory=dict)
    batch: int = 1

    @property
    def rate(self) -> float:
        """Telemetry messages per second per device."""
        return configured_rate(self.streams) / self.batch

    def ids(self) -> list[str]:
        width = max(4, len(str(self.count - 1)))
        return [f"{self.prefix}-{i:0{width}d}" for i in range(self.count)]


def parse_shard(text: str) -> tuple[int, int]:
    """'2/10' -> (2, 10): this host runs the devices whose fleet index % 10 == 2."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SimError(f"shard {text!r} is not i/N (e.g. 0/10: the first of ten hosts)") from None
    if not (n >= 1 and 0 <= i < n):
        raise SimError(f"shard {text!r}: expected 0 <= i < N")
    return i, n


class _Link:
    """The fleet's end of one shard: its connection, a reader thread, the latest news."""

    def __init__(self, conn: Any, runner: Any) -> None:
        self.conn = conn
        self.runner = runner
        self.progress: dict[str, Any] = {}
        self.done: tuple[list[DeviceReport], list[dict[str, Any]]] | None = None
        self.crash: str | None = None
        self.snapshots: dict[int, list[DeviceReport]] = {}
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="sim-shard-reader", daemon=True)

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                with self.cond:
                    if self.done is None and self.crash is None:
                        self.crash = "the shard ended without a report"
                    self.cond.notify_all()
                return
            with self.cond:
                if msg[0] == "progress":
                    self.progress = msg[1]
                elif msg[0] == "snapshot":
                    self.snapshots[msg[1]] = msg[2]
                elif msg[0] == "done":
                    self.done = (msg[1], msg[2])
                elif msg[0] == "crash":
                    self.crash = msg[1]
                self.cond.notify_all()
            if msg[0] in ("done", "crash"):
                return

    def send(self, msg: tuple[Any, ...]) -> None:
        with self.send_lock:
            try:
                self.conn.send(msg)
            except (OSError, ValueError):
                pass

    def wait(self, pred: Any, timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(lambda: pred() or self.crash is not None, timeout))


class Fleet:
    """`devices` simulated devices sending `rate` telemetry messages per second
    each at QoS `qos` to the broker at `broker_url` (or several `groups`).

    Nothing is opened until start() (or `with`). Options:
      seed        replays the same sensor values (None: random, reported); boot ids
                  are new every run, from os.urandom (decisions D6)
      prefix      device ids are '<prefix>-0000', '<prefix>-0001', ...
      fault_rate  probability that a sensor read fails (sent as an error reading)
      overrides   extra device config keys (docs/firmware.md), e.g. {"max_inflight": 16};
                  device_id, broker_host/port, streams, batch_max and
                  min_interval_ms belong to the simulator
      sensors     what each device's streams read (default: the SimBoard models
                  temperature, humidity, battery, door): model names and driver
                  sources over the simulated buses, e.g. ["bme280:temperature",
                  "ds18b20@4:temperature"] (the real drivers; docs/simulator.md)
      batch       readings per telemetry message (default 1): each device samples
                  its streams `batch` at a time and sends them together, `rate`
                  messages per second of `batch` readings (1..32)
      groups      instead of devices/rate/qos/prefix/sensors/batch: a list of Group
      procs       0: one selector loop in a thread of this process; N: N processes
      ramp        connections started per second (all shards together)
      shard       (i, N): run only the devices whose index % N == i (one of N hosts)
      observe     run the observer (received, lost, duplicated, latency)
      connect_to  (host, port): connect the devices here instead (a fault-injecting
                  proxy); reports still name broker_url
      gateway     http://host:port of a gateway: the observer reads its SSE stream
                  (what the gateway accepted) instead of subscribing to the broker
      ca_file     with an mqtts:// broker: the CA (PEM or DER) the devices and the
                  observer verify the broker's certificate against; each device
                  gets it in its storage and runs the SDK's TLS (edgewire.tls)
      credentials per-device accounts (user name = device id): {id: password}, or
                  a function of this shard's device ids returning that
      observer_auth  (user, password) of the observer's MQTT login (an account
                  that may read every device's telemetry, e.g. the gateway's)
    """

    def __init__(self, broker_url: str, *, devices: int | None = None, rate: float = 1.0, qos: int = 1,
                 seed: int | None = None, prefix: str = "sim", fault_rate: float = 0.01,
                 overrides: Mapping[str, Any] | None = None, groups: Sequence[Group] | None = None,
                 procs: int = 0, ramp: float = DEFAULT_RAMP, shard: tuple[int, int] = (0, 1),
                 observe: bool = True, connect_to: tuple[str, int] | None = None,
                 gateway: str | None = None, ca_file: str | None = None,
                 credentials: Mapping[str, str] | Callable[[list[str]], Mapping[str, str]] | None = None,
                 observer_auth: tuple[str, str] | None = None, sensors: Sequence[str] | None = None,
                 batch: int = 1) -> None:
        self.address: BrokerAddress = parse_broker_url(broker_url)
        self.ca = _read_ca(ca_file, self.address)
        self.credentials = credentials
        self.observer_auth = observer_auth
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise SimError(f"seed {seed!r} must be an integer or None")
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
        if isinstance(procs, bool) or not isinstance(procs, int) or not 0 <= procs <= 256:
            raise SimError(f"procs {procs!r} must be 0 (a thread) .. 256 processes")
        if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not math.isfinite(ramp) or ramp <= 0:
            raise SimError(f"ramp {ramp!r} must be a positive number of connections per second")
        self.procs = procs
        self.ramp = float(ramp)
        self.shard = shard
        self.observe = observe
        self.connect_to = connect_to
        if gateway is not None and not (isinstance(gateway, str) and gateway.startswith("http://")):
            raise SimError(f"gateway {gateway!r}: expected the gateway's http://host:port")
        self.gateway = gateway
        if groups is None:
            if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= MAX_DEVICES:
                raise SimError(f"devices {devices!r} must be an integer 1..{MAX_DEVICES}")
            if isinstance(fault_rate, bool) or not isinstance(fault_rate, (int, float)) or not 0 <= fault_rate <= 1:
                raise SimError(f"fault_rate {fault_rate!r} must be between 0 and 1")
            groups = [Group("default", devices, prefix, plan_streams(rate, qos, sensors, batch), float(fault_rate),
                            dict(overrides or {}), batch)]
            self.rate = float(rate)
            self.qos = qos
        else:
            for g in groups:
                if isinstance(g.batch, bool) or not isinstance(g.batch, int) or not 1 <= g.batch <= wire.MAX_READINGS:
                    raise SimError(f"group {g.name!r}: batch {g.batch!r} must be 1..{wire.MAX_READINGS} readings "
                                   f"per message")
            self.rate = sum(g.rate * g.count for g in groups) / max(1, sum(g.count for g in groups))
            self.qos = max(max(s.get("qos", 1) for s in g.streams) for g in groups)
        self.groups = list(groups)
        self.streams = self.groups[0].streams
        self.specs: list[DeviceSpec] = []
        self.device_ids: list[str] = []       # this shard's devices, in fleet order
        self.stream_qos: dict[str, dict[str, int]] = {}
        self.links: list[_Link] = []
        self.total_rate = 0.0                 # readings per second this shard's devices sample
        self.max_interval_s = 0.0
        self._shards: list[Shard] = []
        self._observer: Observer | None = None
        self._final: list[DeviceReport] | None = None
        self._series: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.failure: str | None = None
        self._started_at: float | None = None
        self._started_wall: float | None = None
        self._stopped_at: float | None = None
        self._state = "new"
        self._snap = 0
        self._build()  # validates every device's config now, before any I/O

    # ------------------------------------------------------------ set-up

    def _device_seed(self, i: int) -> int:
        return random.Random(self.seed * 1_000_003 + i).randrange(1, 1 << 32)

    def _build(self) -> None:
        si, sn = self.shard
        host, port = self.connect_to or (self.address.host, self.address.port)
        index = 0
        for g in self.groups:
            ids = g.ids()
            if not isinstance(g.prefix, str) or not wire.valid_id(ids[-1]):
                raise SimError(f"prefix {g.prefix!r} does not make valid device ids ('{ids[0]}'): "
                               f"ids are 1-64 characters of A-Z a-z 0-9 _ -")
            owned = sorted(set(g.overrides) & set(OWNED_KEYS))
            if owned:
                raise SimError(f"overrides {owned} are set by the simulator itself (use the Fleet arguments)")
            qos_of = {s["name"]: int(s.get("qos", 1)) for s in g.streams}
            probe = SimBoard(ids[0], seed=1, fault_rate=g.fault_rate)
            cfg_in: dict[str, Any] = {"keepalive_s": 30, "backoff_min_ms": 200, "backoff_max_ms": 5000}
            cfg_in.update(g.overrides)
            cfg_in.update({"device_id": ids[0], "broker_host": host, "broker_port": port,
                           "streams": [dict(s) for s in g.streams], "batch_max": g.batch,
                           "min_interval_ms": MIN_INTERVAL_MS})
            if self.ca is not None:
                cfg_in["tls_ca"] = self.ca[0]
            try:
                base = device_config.build(probe, cfg_in)   # validated once per group
            except device_config.ConfigError as e:
                raise SimError(f"device config: {e}") from None
            for k, did in enumerate(ids):
                if index % sn == si:
                    cfg = dict(base)
                    cfg["device_id"] = did
                    # Spread phases: each stream first samples at a random point of
                    # its interval, so a fleet is a steady load from the start;
                    # with batch > 1, each run of `batch` streams shares one phase
                    # (sampled together, sent in one message).
                    rng = random.Random(self.seed * 7_919 + index)
                    bs = base["streams"]
                    phases = [rng.randrange(max(1, min(s["interval_ms"] for s in bs[j:j + g.batch])))
                              for j in range(0, len(bs), g.batch)]
                    cfg["streams"] = [dict(s, phase_ms=phases[j // g.batch]) for j, s in enumerate(bs)]
                    files = {self.ca[0]: self.ca[1]} if self.ca is not None else {}
                    self.specs.append(DeviceSpec(did, g.name, self._device_seed(index), g.fault_rate, cfg, files))
                    self.total_rate += configured_rate(g.streams)
                    self.max_interval_s = max(self.max_interval_s, max(st["interval_ms"] for st in g.streams) / 1000)
                    self.device_ids.append(did)
                    self.stream_qos[did] = qos_of
                index += 1
        if not self.specs:
            raise SimError(f"shard {si}/{sn} holds no devices of this {index}-device fleet")
        if self.credentials is not None:
            self._log_in()

    def _log_in(self) -> None:
        """Each device logs in as its own account (user name = device id)."""
        creds = self.credentials
        passwords = creds(list(self.device_ids)) if callable(creds) else creds
        assert passwords is not None
        missing = [d for d in self.device_ids if not isinstance(passwords.get(d), str)]
        if missing:
            raise SimError(f"no password for {len(missing)} devices, e.g. {missing[0]!r} (credentials)")
        for spec in self.specs:
            spec.cfg["username"] = spec.device_id
            spec.cfg["password"] = passwords[spec.device_id]

    @property
    def configured_rate(self) -> float:
        """Telemetry messages per second per device (the first group's)."""
        return self.groups[0].rate

    def _thread_shard(self) -> Shard:
        if self.procs or len(self._shards) != 1:
            raise SimError("the boards live in shard processes (procs > 0): use procs=0 to reach them")
        return self._shards[0]

    def board(self, device_id: str) -> SimBoard:
        """The SimBoard of one device (procs=0 only), e.g. fleet.board('sim-0003')."""
        sim = self._thread_shard().by_id.get(device_id)
        if sim is None:
            raise KeyError(f"no device {device_id!r} in this fleet")
        return sim.board

    def _tell(self, msg: tuple[Any, ...]) -> None:
        for ln in self.links:
            ln.send(msg)

    def set_network(self, up: bool, device_ids: Sequence[str] | None = None) -> None:
        """Wi-Fi up or down for some devices (default: all)."""
        self._tell(("board", "set_network", list(device_ids) if device_ids is not None else None, (bool(up),)))

    def set_fault_rate(self, rate: float, device_ids: Sequence[str] | None = None) -> None:
        self._tell(("attr", "fault_rate", list(device_ids) if device_ids is not None else None, float(rate)))

    def skew_clock(self, ms: int, device_ids: Sequence[str] | None = None) -> None:
        self._tell(("skew", list(device_ids) if device_ids is not None else None, int(ms)))

    def reboot(self, device_ids: Sequence[str] | None = None) -> None:
        """Power-cycle devices: no goodbye (the broker sends their wills), queued readings lost."""
        self._tell(("reboot", list(device_ids) if device_ids is not None else None))

    # ------------------------------------------------------------ run

    def check_broker(self, timeout: float = 5.0) -> None:
        """SimError unless something accepts TCP connections at the broker address."""
        a = self.address
        try:
            with socket.create_connection((a.host, a.port), timeout=timeout):
                pass
        except OSError as e:
            raise SimError(f"cannot reach the broker at {a.url}: {e.strerror or e}") from None

    def start(self, *, wait_connected: float | None = 30.0, wait_observer: bool | None = None) -> "Fleet":
        """Start every device; with wait_connected, return once all have
        connected (births sent), raising SimError if they did not within that
        many seconds. The devices keep running (and retrying) until stop().

        The observer subscribes first, so that it sees every message: start()
        waits up to 5 s for its SUBACK when wait_observer is true (default: when
        wait_connected is set). A caller that must not block (an asyncio loop
        that itself runs the broker) passes neither; the report then says
        whether the observer came late."""
        if self._state != "new":
            raise SimError(f"fleet already {self._state}; make a new Fleet to run again")
        self._state = "running"
        raise_file_limit()
        if self.observe:
            wait = wait_observer if wait_observer is not None else wait_connected is not None
            obs = GatewayObserver(self.gateway, self.stream_qos) if self.gateway else \
                Observer(self.address.host, self.address.port, self.stream_qos,
                         tls_ca=self.ca[1] if self.ca is not None else None, auth=self.observer_auth)
            self._observer = obs.start(timeout=5.0 if wait else 0.0)
        self._started_at = time.monotonic()
        self._started_wall = time.time()
        n = max(1, self.procs)
        parts = [self.specs[i::n] for i in range(n)]
        parts = [p for p in parts if p]
        ramp = self.ramp / len(parts)
        ctx = multiprocessing.get_context("spawn")
        for k, part in enumerate(parts):
            mine, theirs = multiprocessing.Pipe()
            if self.procs:
                runner: Any = ctx.Process(target=shard_main, args=(theirs, part, ramp, k), name="edgewire-sim-shard",
                                          daemon=True)
            else:
                shard = Shard(part, ramp=ramp, name=k)
                self._shards.append(shard)
                runner = threading.Thread(target=_run_shard, args=(shard, theirs), name="edgewire-sim-shard",
                                          daemon=True)
            ln = _Link(mine, runner)
            self.links.append(ln)
            runner.start()
            ln.reader.start()
            if self.procs:
                theirs.close()
        if wait_connected is not None:
            self.wait_connected(wait_connected)
        return self

    def progress(self) -> dict[str, Any]:
        """Live counts summed over the shards (devices, connected, sent, acked, lag ...)."""
        out: dict[str, Any] = {}
        for ln in self.links:
            with ln.cond:
                p = dict(ln.progress)
            for k, v in p.items():
                if k == "lag":
                    out[k] = max(out.get(k, 0.0), v)
                elif k == "error":
                    out[k] = out.get(k) or v
                elif k != "t":
                    out[k] = out.get(k, 0) + v
        if self._observer is not None:
            out["observed"] = self._observer.total_received
        return out

    def crashed(self) -> str | None:
        for ln in self.links:
            if ln.crash:
                return ln.crash
        return None

    def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        n = len(self.specs)
        while True:
            p = self.progress()
            up = p.get("ever_connected", 0)
            if up == n:
                return
            crash = self.crashed()
            if crash:
                raise SimError(f"a shard of the fleet crashed:\n{crash}")
            if time.monotonic() >= deadline:
                errs = f"; {p['errors']} devices stopped with an error, e.g. {p['error']}" if p.get("errors") else ""
                raise SimError(f"only {up} of {n} devices connected to {self.address.url} within "
                               f"{timeout:g} s ({p.get('conn_failures', 0)} failed connection attempts{errs})")
            time.sleep(0.05)

    def finish(self) -> FleetReport:
        """stop(), then the report (what the observer counted included)."""
        self.stop()
        return self.report()

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

    def stop(self, timeout: float = 120.0) -> None:
        """Stop every device cleanly: each sends what it has queued, waits for
        the acks (up to its timeout_ms), publishes its death ('shutdown') and
        DISCONNECTs. Safe to call twice."""
        if self._state != "running":
            return
        self._stopped_at = time.monotonic()
        self._tell(("stop",))
        deadline = time.monotonic() + timeout
        stuck = 0
        reports: list[DeviceReport] = []
        for ln in self.links:
            if not ln.wait(lambda ln=ln: ln.done is not None, max(0.0, deadline - time.monotonic())):
                stuck += 1
            if ln.done is not None:
                reports.extend(ln.done[0])
                self._series.extend(ln.done[1])
            if isinstance(ln.runner, threading.Thread):
                ln.runner.join(max(0.0, deadline - time.monotonic()))
            else:
                ln.runner.join(max(0.1, deadline - time.monotonic()))
                if ln.runner.is_alive():
                    ln.runner.kill()
                    ln.runner.join()
        order = {d: i for i, d in enumerate(self.device_ids)}
        reports.sort(key=lambda r: order.get(r.device, 0))
        self._final = reports
        if self._observer is not None:
            acked = sum(r.acked for r in reports)
            self._observer.settle(expected=acked, quiet=3.0, timeout=30.0)
            self._observer.stop()
        self._state = "stopped"
        crash = self.crashed()
        if crash and not (stuck == 0 and all(ln.done for ln in self.links)):
            raise SimError(f"a shard of the fleet crashed:\n{crash}")
        if stuck:
            raise SimError(f"{stuck} of {len(self.links)} shards did not stop within {timeout:g} s")

    @property
    def seconds(self) -> float:
        if self._started_at is None:
            return 0.0
        end = self._stopped_at if self._stopped_at is not None else time.monotonic()
        return end - self._started_at

    def _snapshot(self) -> list[DeviceReport]:
        self._snap += 1
        token = self._snap
        self._tell(("snapshot", token))
        out: list[DeviceReport] = []
        for ln in self.links:
            ln.wait(lambda ln=ln: token in ln.snapshots or ln.done is not None, 30.0)
            with ln.cond:
                got = ln.snapshots.pop(token, None)
            if got is None and ln.done is not None:
                got = ln.done[0]
            out.extend(got or [])
        order = {d: i for i, d in enumerate(self.device_ids)}
        out.sort(key=lambda r: order.get(r.device, 0))
        return out

    def report(self, *, embedded_broker: bool = False) -> FleetReport:
        if self._final is not None:
            per_device = self._final
        elif self._state == "running":
            per_device = self._snapshot()
        else:
            per_device = []
        return build_report(self, per_device, embedded_broker=embedded_broker)

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _read_ca(ca_file: str | None, address: BrokerAddress) -> tuple[str, bytes] | None:
    """(name in the boards' storage, bytes) of the CA for an mqtts:// broker; None for mqtt://."""
    if not address.tls:
        if ca_file:
            raise SimError(f"ca_file {ca_file!r} is for TLS: the broker URL {address.url} is not mqtts://")
        return None
    if not ca_file:
        raise SimError(f"the broker {address.url} is TLS: give the CA that signed its certificate (ca_file, --ca; "
                       "e.g. ca.pem from `edgewire certs init`)")
    try:
        with open(ca_file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SimError(f"ca_file {ca_file}: cannot be read ({e.strerror or e})") from None
    pem = data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----")
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii") if pem else data)
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise SimError(f"ca_file {ca_file}: not a PEM or DER CA certificate ({e})") from None
    return ("ca.pem" if pem else "ca.der"), data


def _run_shard(shard: Shard, conn: Any) -> None:
    try:
        report_crash(conn, shard.run, conn)
    except BaseException:
        log.exception("a simulator shard crashed")


RATE_WINDOW_S = 10.0
MIN_RATE_SHARE = 0.8


class Overloaded(SimError):
    """The machine cannot keep up with the fleet (late steps, stalled connects)."""


def supervise(fleet: Fleet, seconds: float, *, max_lag: float = 10.0, connect_timeout: float = 60.0,
              tick: Any = None, progress: Any = None) -> None:
    """Let a started fleet run for `seconds`, watching that the machine keeps up.

    Raises Overloaded (the fleet keeps running; stop it) when a device's timed
    step ran more than `max_lag` s late (it missed sampling times; at half its
    keepalive it misses pings and the broker drops it), or when devices that
    started connecting made no progress for `connect_timeout` s while others
    still wait for their first connection. tick(elapsed) runs every ~0.1 s (a
    scenario's timeline); progress(dict) about once a second."""
    t0 = time.monotonic()
    last_up, last_change = -1, t0
    next_progress = t0
    n = len(fleet.specs)
    all_started: float | None = None
    window: list[tuple[float, int]] = []   # (time, readings sampled) once in steady state
    while True:
        now = time.monotonic()
        elapsed = now - t0
        if elapsed >= seconds:
            return
        crash = fleet.crashed()
        if crash:
            raise SimError(f"a shard of the fleet crashed:\n{crash}")
        if tick is not None:
            tick(elapsed)
        p = fleet.progress()
        if progress is not None and now >= next_progress:
            progress(dict(p, elapsed=elapsed))
            next_progress = now + 1.0
        if p.get("errors", 0) == n:
            raise SimError(f"every device stopped with an error, e.g. {p['error']}")
        lag = p.get("lag", 0.0)
        if lag > max_lag:
            raise Overloaded(f"the machine cannot keep up: a device step ran {lag:.2f} s late (limit {max_lag:g} s), "
                             f"so devices miss their sampling times and keepalives; run fewer devices per machine, "
                             f"more --procs, or --shard the fleet over more machines")
        # Sampling falls short of the configured rate: a device that falls behind
        # skips samples rather than bursting, so this is what overload looks like
        # when the steps themselves stay on time. Checked in steady state only
        # (all started, every stream past its first interval), over 10 s.
        if all_started is None and p.get("started", 0) == n:
            all_started = now
        if all_started is not None and now - all_started >= fleet.max_interval_s + 2.0:
            window.append((now, p.get("sampled", 0)))
            while len(window) > 2 and now - window[1][0] >= RATE_WINDOW_S:
                window.pop(0)
            dt = now - window[0][0]
            if dt >= RATE_WINDOW_S:
                rate = (window[-1][1] - window[0][1]) / dt
                if rate < MIN_RATE_SHARE * fleet.total_rate:
                    raise Overloaded(f"the machine cannot keep up: the devices sampled {rate:,.0f} readings/s over "
                                     f"the last {dt:.0f} s, {100 * rate / fleet.total_rate:.0f}% of the configured "
                                     f"{fleet.total_rate:,.0f}/s (devices that fall behind skip samples); run fewer "
                                     f"devices per machine, more --procs, or --shard the fleet over more machines")
        up = p.get("ever_connected", 0)
        if up != last_up:
            last_up, last_change = up, now
        elif up < n and p.get("started", 0) > up and now - last_change > connect_timeout:
            raise Overloaded(f"connects stalled: {up} of {n} devices connected and none more in the last "
                             f"{connect_timeout:g} s ({p.get('conn_failures', 0)} failed attempts)")
        time.sleep(0.1)
