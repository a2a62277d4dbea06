"""Scenarios: device groups and a timeline of faults, from a TOML file.

    edgewire sim run sim/scenarios/greenhouse-day.toml --broker mqtt://127.0.0.1:1883

The file is validated completely before anything starts; an error names the
key (`group[1].rate`, `event[0].kind`) and the value, and `edgewire sim` exits
2. docs/simulator.md ("Scenarios") describes every key. Network faults go
through a fault-injecting TCP proxy (edgewire.sim.proxy) that the run starts
on loopback between the devices and the broker; the observer connects to the
broker directly, so it counts through every fault.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import random
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edgewire.boards.sim import MODELS
from edgewire.sim.errors import SimError
from edgewire.sim.fleet import MAX_DEVICES, MAX_INTERVAL_MS, MIN_INTERVAL_MS, Fleet, Group, sensor_stream
from edgewire.sim.proxy import proxy_main
from edgewire.sim.url import parse_broker_url

__all__ = ["Scenario", "ScenarioError", "ScenarioRun", "load_scenario", "parse_scenario", "EVENT_KINDS"]


class ScenarioError(SimError):
    """A scenario file that cannot run; the message names the file and the key."""


# kind -> (keys it takes besides the common ones, whether for_s is required)
EVENT_KINDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "broker_outage": ((), True),
    "partition": (("mode",), True),
    "packet_loss": (("percent",), True),
    "latency": (("ms", "jitter_ms"), True),
    "bandwidth": (("kbps",), True),
    "reboot_storm": ((), False),
    "clock_skew": (("ms",), False),
    "sensor_faults": (("rate",), True),
    "command_burst": (("command", "count", "timeout_s"), False),
}
COMMON_EVENT_KEYS = ("kind", "at_s", "for_s", "group", "fraction")
GROUP_KEYS = ("name", "count", "prefix", "sensors", "rate", "qos", "qos_per_sensor", "fault_rate", "config")
SCENARIO_KEYS = ("name", "duration_s", "seed", "broker", "gateway", "description")
COMMANDS = ("ping", "info", "stats")


@dataclass
class Event:
    index: int
    kind: str
    at_s: float
    for_s: float
    group: str | None
    fraction: float
    args: dict[str, Any]
    targets: list[str] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def end_s(self) -> float:
        return self.at_s + self.for_s


@dataclass
class Scenario:
    name: str
    duration: float
    seed: int | None
    broker: str | None
    gateway: str | None
    groups: list[Group]
    events: list[Event]
    source: str = "<scenario>"


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Check:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {key}: {msg}")

    def keys(self, table: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where, f"expected a table, got {table!r}")
        for k in table:
            if k not in allowed:
                raise self.fail(f"{where}.{k}" if where else k,
                                f"unknown key (expected one of: {', '.join(allowed)})")
        return table

    def number(self, t: dict[str, Any], where: str, key: str, lo: float, hi: float, default: Any = None,
               integer: bool = False, lo_open: bool = False) -> Any:
        if key not in t:
            if default is None:
                raise self.fail(f"{where}.{key}" if where else key, "missing (required)")
            return default
        v = t[key]
        ok = _num(v) and (not integer or isinstance(v, int)) and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            kind = "an integer" if integer else "a number"
            rng = f"{'more than' if lo_open else 'at least'} {lo:g} and at most {hi:g}"
            raise self.fail(f"{where}.{key}" if where else key, f"{v!r} is not {kind} {rng}")
        return v


def parse_scenario(doc: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """A validated Scenario from a parsed TOML document, or ScenarioError naming the key."""
    c = _Check(source)
    c.keys(doc, "", ("scenario", "group", "event"))
    sc = c.keys(doc.get("scenario", {}), "scenario", SCENARIO_KEYS)
    name = sc.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise c.fail("scenario.name", f"{name!r} is not a non-empty string")
    duration = c.number(sc, "scenario", "duration_s", 0, 7 * 86400, lo_open=True)
    seed = sc.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 1 << 32):
        raise c.fail("scenario.seed", f"{seed!r} is not an integer 0..4294967295")
    broker = sc.get("broker")
    if broker is not None:
        try:
            parse_broker_url(broker)
        except SimError as e:
            raise c.fail("scenario.broker", str(e)) from None
    gateway = sc.get("gateway")
    if gateway is not None and not (isinstance(gateway, str) and gateway.startswith(("http://", "https://"))):
        raise c.fail("scenario.gateway", f"{gateway!r} is not an http:// or https:// URL")

    raw_groups = doc.get("group")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise c.fail("group", "at least one [[group]] is required")
    groups: list[Group] = []
    names: set[str] = set()
    prefixes: set[str] = set()
    total = 0
    for i, g in enumerate(raw_groups):
        w = f"group[{i}]"
        c.keys(g, w, GROUP_KEYS)
        gname = g.get("name")
        if not isinstance(gname, str) or not gname:
            raise c.fail(f"{w}.name", f"{gname!r} is not a non-empty string (required)")
        if gname in names:
            raise c.fail(f"{w}.name", f"{gname!r} is used by an earlier group")
        names.add(gname)
        count = c.number(g, w, "count", 1, MAX_DEVICES, integer=True)
        total += count
        prefix = g.get("prefix", gname)
        if not isinstance(prefix, str) or prefix in prefixes:
            raise c.fail(f"{w}.prefix", f"{prefix!r} is not a string, or another group uses it")
        prefixes.add(prefix)
        sensors = g.get("sensors", list(MODELS))
        if not isinstance(sensors, list) or not sensors or not all(isinstance(s, str) for s in sensors) or \
                len(set(sensors)) != len(sensors):
            raise c.fail(f"{w}.sensors", f"{sensors!r} is not a list of distinct sensor models "
                                         f"({', '.join(MODELS)}) or driver sources (bme280:temperature, ...)")
        kinds = []
        for k, sensor in enumerate(sensors):
            try:
                kinds.append(sensor_stream(sensor))
            except SimError as e:
                raise c.fail(f"{w}.sensors[{k}]", f"{sensor!r} is not a sensor model ({', '.join(MODELS)}) "
                                                  f"nor a driver source: {e}") from None
        if len({kd[0] for kd in kinds}) != len(kinds):
            raise c.fail(f"{w}.sensors", f"{sensors!r} names one stream twice")
        rate = c.number(g, w, "rate", 0, 1000, lo_open=True)
        interval = round(len(sensors) * 1000 / rate)
        if not MIN_INTERVAL_MS <= interval <= MAX_INTERVAL_MS:
            raise c.fail(f"{w}.rate", f"{rate!r} gives each of {len(sensors)} sensors an interval of {interval} ms, "
                                      f"outside {MIN_INTERVAL_MS}..{MAX_INTERVAL_MS}")
        qos = c.number(g, w, "qos", 0, 2, default=1, integer=True)
        per = c.keys(g.get("qos_per_sensor", {}), f"{w}.qos_per_sensor", tuple(sensors))
        for k, v in per.items():
            if v not in (0, 1, 2) or isinstance(v, bool):
                raise c.fail(f"{w}.qos_per_sensor.{k}", f"{v!r} is not 0, 1 or 2")
        fault_rate = c.number(g, w, "fault_rate", 0, 1, default=0.01)
        config = g.get("config", {})
        if not isinstance(config, dict):
            raise c.fail(f"{w}.config", f"expected a table of device config keys, got {config!r}")
        streams = [{"name": name, "source": src, "interval_ms": interval, "qos": int(per.get(m, qos)),
                    "unit": unit} for m, (name, src, unit) in zip(sensors, kinds)]
        groups.append(Group(gname, int(count), prefix, streams, float(fault_rate), dict(config)))
    if total > MAX_DEVICES:
        raise c.fail("group", f"{total} devices in all; at most {MAX_DEVICES}")

    events: list[Event] = []
    for i, e in enumerate(doc.get("event", [])):
        w = f"event[{i}]"
        if not isinstance(e, dict):
            raise c.fail(w, f"expected a table, got {e!r}")
        kind = e.get("kind")
        if kind not in EVENT_KINDS:
            raise c.fail(f"{w}.kind", f"{kind!r} is not one of: {', '.join(EVENT_KINDS)}")
        extra, needs_for = EVENT_KINDS[kind]
        c.keys(e, w, COMMON_EVENT_KEYS + extra)
        at = c.number(e, w, "at_s", 0, duration)
        if at >= duration:
            raise c.fail(f"{w}.at_s", f"{at!r} is not before the end of the scenario ({duration:g} s)")
        for_s = c.number(e, w, "for_s", 0, 7 * 86400, default=None if needs_for else 0.0, lo_open=needs_for)
        group = e.get("group")
        if group is not None and group not in names:
            raise c.fail(f"{w}.group", f"{group!r} is not a group of this scenario ({', '.join(sorted(names))})")
        fraction = c.number(e, w, "fraction", 0, 1, default=1.0, lo_open=True)
        args: dict[str, Any] = {}
        if kind == "partition":
            mode = e.get("mode", "drop")
            if mode not in ("drop", "reject"):
                raise c.fail(f"{w}.mode", f"{mode!r} is not 'drop' or 'reject'")
            args["mode"] = mode
        elif kind == "packet_loss":
            args["percent"] = c.number(e, w, "percent", 0, 100, lo_open=True)
        elif kind == "latency":
            args["ms"] = c.number(e, w, "ms", 0, 60000)
            args["jitter_ms"] = c.number(e, w, "jitter_ms", 0, 60000, default=0)
            if args["jitter_ms"] > args["ms"]:
                raise c.fail(f"{w}.jitter_ms", f"{args['jitter_ms']!r} is more than ms ({args['ms']!r})")
        elif kind == "bandwidth":
            args["kbps"] = c.number(e, w, "kbps", 0, 10_000_000, lo_open=True)
        elif kind == "clock_skew":
            args["ms"] = c.number(e, w, "ms", -86400000 * 365, 86400000 * 365, integer=True)
        elif kind == "sensor_faults":
            args["rate"] = c.number(e, w, "rate", 0, 1)
        elif kind == "command_burst":
            if gateway is None:
                raise c.fail(f"{w}.kind", "command_burst goes through the gateway: set scenario.gateway "
                                          "(e.g. \"http://127.0.0.1:8080\")")
            cmd = e.get("command", "ping")
            if cmd not in COMMANDS:
                raise c.fail(f"{w}.command", f"{cmd!r} is not one of: {', '.join(COMMANDS)}")
            args.update(command=cmd, count=c.number(e, w, "count", 1, 100000, default=1, integer=True),
                        timeout_s=c.number(e, w, "timeout_s", 0, 600, default=10, lo_open=True))
        events.append(Event(i, kind, float(at), float(for_s), group, float(fraction), args))
    return Scenario(name, float(duration), seed, broker, gateway, groups, events, source)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from None
    return parse_scenario(doc, str(p))


class ScenarioRun:
    """Runs a Scenario: the fault proxy, the fleet behind it, the timeline.

        run = ScenarioRun(scenario, "mqtt://127.0.0.1:1883")
        run.start()
        supervise(run.fleet, scenario.duration, tick=run.tick)
        run.fleet.stop(); run.close()
        report = run.fleet.report()
    """

    def __init__(self, scenario: Scenario, broker_url: str, *, procs: int = 0, ramp: float = 1000.0,
                 shard: tuple[int, int] = (0, 1), seed: int | None = None, gateway: str | None = None,
                 **login: Any) -> None:
        self.scenario = scenario
        self.address = parse_broker_url(broker_url)
        self.seed = seed if seed is not None else scenario.seed
        self.procs = procs
        self.ramp = ramp
        self.shard = shard
        self._proxy: Any = None
        self._ctl: Any = None
        self.proxy_port: int | None = None
        # Built now (validated before I/O), pointed at the proxy once it listens.
        self.fleet = Fleet(broker_url, groups=scenario.groups, seed=self.seed, procs=procs, ramp=ramp, shard=shard,
                           connect_to=("127.0.0.1", 1), gateway=gateway, **login)  # ca_file, credentials, ...
        self._t0: float | None = None
        self._threads: list[threading.Thread] = []
        self._resolve()

    def _resolve(self) -> None:
        """Each event's devices: a group (or all), a fraction of it picked by the seed."""
        by_group = {g.name: g.ids() for g in self.scenario.groups}
        for e in self.scenario.events:
            ids = by_group[e.group] if e.group else [i for g in self.scenario.groups for i in by_group[g.name]]
            n = max(1, math.ceil(len(ids) * e.fraction))
            rng = random.Random((self.fleet.seed or 0) * 31 + e.index)
            e.targets = sorted(rng.sample(ids, n)) if n < len(ids) else list(ids)

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = multiprocessing.Pipe()
        self._proxy = ctx.Process(target=proxy_main, args=(theirs, (self.address.host, self.address.port),
                                                           self.fleet.seed), name="edgewire-sim-proxy", daemon=True)
        self._proxy.start()
        theirs.close()
        self._ctl = mine
        if not mine.poll(30):
            raise SimError("the fault proxy did not start within 30 s")
        msg = mine.recv()
        if msg[0] != "port":
            raise SimError(f"the fault proxy failed:\n{msg[1]}")
        self.proxy_port = int(msg[1])
        self.fleet.connect_to = ("127.0.0.1", self.proxy_port)
        for spec in self.fleet.specs:
            spec.cfg["broker_host"], spec.cfg["broker_port"] = "127.0.0.1", self.proxy_port
        self.fleet.start(wait_connected=None, wait_observer=True)
        self._t0 = time.monotonic()

    def _proxy_cmd(self, *msg: Any) -> None:
        self._ctl.send(msg)

    def tick(self, elapsed: float) -> None:
        """Start and end the timeline's events due by `elapsed` seconds."""
        for e in self.scenario.events:
            if e.started is None and elapsed >= e.at_s:
                e.started = time.time()
                self._begin(e)
                self._record(e)
            if e.kind == "reboot_storm" and e.started is not None and e.ended is None:
                self._storm(e, elapsed)
            if e.started is not None and e.ended is None and elapsed >= e.end_s and e.kind != "command_burst":
                if e.kind == "reboot_storm" and e.result.get("rebooted", 0) < len(e.targets):
                    continue
                e.ended = time.time()
                self._end(e)
                self._record(e)

    def _record(self, e: Event) -> None:
        d = {"index": e.index, "kind": e.kind, "at_s": e.at_s, "for_s": e.for_s, "group": e.group,
             "fraction": e.fraction, "devices": len(e.targets), "args": e.args, "started": e.started,
             "ended": e.ended, "result": e.result}
        evs = self.fleet.events
        for i, x in enumerate(evs):
            if x["index"] == e.index:
                evs[i] = d
                return
        evs.append(d)
        evs.sort(key=lambda x: x["index"])

    def _begin(self, e: Event) -> None:
        f, ids = self.fleet, e.targets
        if e.kind == "broker_outage":
            self._proxy_cmd("outage", True)
        elif e.kind == "partition":
            self._proxy_cmd("rule", ids, {"partition": e.args["mode"]})
        elif e.kind == "packet_loss":
            self._proxy_cmd("rule", ids, {"loss": e.args["percent"] / 100.0})
        elif e.kind == "latency":
            self._proxy_cmd("rule", ids, {"latency_ms": e.args["ms"], "jitter_ms": e.args["jitter_ms"]})
        elif e.kind == "bandwidth":
            self._proxy_cmd("rule", ids, {"kbps": e.args["kbps"]})
        elif e.kind == "clock_skew":
            f.skew_clock(e.args["ms"], ids)
        elif e.kind == "sensor_faults":
            f.set_fault_rate(e.args["rate"], ids)
        elif e.kind == "reboot_storm":
            rng = random.Random((f.seed or 0) * 17 + e.index)
            e.result["plan"] = sorted((rng.uniform(0, e.for_s), i) for i in ids)
            e.result["rebooted"] = 0
        elif e.kind == "command_burst":
            t = threading.Thread(target=self._commands, args=(e,), name="edgewire-sim-commands", daemon=True)
            self._threads.append(t)
            t.start()

    def _storm(self, e: Event, elapsed: float) -> None:
        plan = e.result.get("plan")
        if not plan:
            return
        k = e.result["rebooted"]
        due = []
        while k < len(plan) and elapsed - e.at_s >= plan[k][0]:
            due.append(plan[k][1])
            k += 1
        if due:
            self.fleet.reboot(due)
            e.result["rebooted"] = k
        if k >= len(plan):
            e.result.pop("plan", None)

    def _end(self, e: Event) -> None:
        f, ids = self.fleet, e.targets
        if e.kind == "broker_outage":
            self._proxy_cmd("outage", False)
        elif e.kind == "partition":
            self._proxy_cmd("rule", ids, {"partition": None})
        elif e.kind == "packet_loss":
            self._proxy_cmd("rule", ids, {"loss": None})
        elif e.kind == "latency":
            self._proxy_cmd("rule", ids, {"latency_ms": None, "jitter_ms": None})
        elif e.kind == "bandwidth":
            self._proxy_cmd("rule", ids, {"kbps": None})
        elif e.kind == "clock_skew" and e.for_s:
            f.skew_clock(0, ids)
        elif e.kind == "sensor_faults":
            by = {g.name: g.fault_rate for g in self.scenario.groups}
            for g in self.scenario.groups:
                mine = [i for i in ids if i.startswith(g.prefix + "-")]
                if mine:
                    f.set_fault_rate(by[g.name], mine)

    def _commands(self, e: Event) -> None:
        """`count` commands through the gateway's REST API, spread over for_s, to the targets in turn."""
        assert self.scenario.gateway is not None
        base = self.scenario.gateway.rstrip("/")
        n = int(e.args["count"])
        lat: list[float] = []
        ok = failed = 0
        errors: dict[str, int] = {}
        lock = threading.Lock()

        def one(k: int) -> None:
            nonlocal ok, failed
            dev = e.targets[k % len(e.targets)]
            url = f"{base}/api/v1/devices/{quote(dev)}/commands/{e.args['command']}?timeout={e.args['timeout_s']:g}"
            t0 = time.monotonic()
            try:
                req = urllib.request.Request(url, data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=e.args["timeout_s"] + 5) as r:
                    body = json.loads(r.read())
                good = bool(body.get("ok"))
                why = None if good else str(body.get("error"))
            except urllib.error.HTTPError as err:
                good, why = False, f"HTTP {err.code}"
            except (OSError, ValueError) as err:
                good, why = False, type(err).__name__
            with lock:
                lat.append((time.monotonic() - t0) * 1000)
                if good:
                    ok += 1
                else:
                    failed += 1
                    errors[why or "?"] = errors.get(why or "?", 0) + 1

        workers: list[threading.Thread] = []
        start = time.monotonic()
        for k in range(n):
            wait = start + (e.for_s * k / n) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            t = threading.Thread(target=one, args=(k,), daemon=True)
            t.start()
            workers.append(t)
            if len(workers) >= 32:
                workers.pop(0).join()
        for t in workers:
            t.join()
        from edgewire.sim.observer import percentiles
        e.result.update(sent=n, ok=ok, failed=failed, errors=errors, latency_ms=percentiles(lat))
        e.ended = time.time()
        self._record(e)

    def close(self) -> dict[str, Any]:
        """Stop the proxy; -> its counters."""
        stats: dict[str, Any] = {}
        for t in self._threads:
            t.join(30)
        if self._ctl is not None:
            try:
                self._ctl.send(("quit",))
                if self._ctl.poll(10):
                    msg = self._ctl.recv()
                    if msg[0] == "stats":
                        stats = msg[1]
            except (OSError, EOFError):
                pass
            self._ctl = None
        if self._proxy is not None:
            self._proxy.join(10)
            if self._proxy.is_alive():
                self._proxy.kill()
                self._proxy.join()
            self._proxy = None
        return stats
