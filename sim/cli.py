"""`edgewire sim`: run a simulated fleet and report what it sent.

    edgewire sim --devices 200 --rate 5 --qos 1 --broker mqtt://127.0.0.1:1883 --duration 10
    edgewire sim --devices 5 --duration 3 --json          # embedded amqtt broker

The simulator is a client of any MQTT broker and does not import the gateway.
Without `--broker` the caller hands in `start_broker`, which starts a broker
and returns it (the `edgewire` command passes the gateway's embedded broker).

Exit status: 0 the run completed; 1 the run failed (broker unreachable,
devices that would not connect or stop); 2 bad arguments; 130 interrupted
(the report of the partial run is still printed)."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from edgewire.sim.errors import SimError

MAX_DURATION = 7 * 86400.0
CONNECT_TIMEOUT = 60.0


class RunningBroker(Protocol):
    """A broker started for one run: where it listens, and how to stop it."""

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


def _fail(msg: str, code: int, err: TextIO) -> int:
    print(f"edgewire sim: error: {msg}", file=err)
    return code


def check_args(args: argparse.Namespace) -> None:
    """SimError for settings that cannot work, before anything starts."""
    from edgewire.sim.fleet import MAX_DEVICES, plan_streams
    from edgewire.sim.url import parse_broker_url

    if not 1 <= args.devices <= MAX_DEVICES:
        raise SimError(f"--devices {args.devices}: must be 1..{MAX_DEVICES}")
    if not math.isfinite(args.rate) or args.rate <= 0:
        raise SimError(f"--rate {args.rate:g}: must be a positive number of messages per second per device")
    sensors = _sensors(args)
    try:
        plan_streams(1.0, 1, sensors)
    except SimError as e:
        raise SimError(f"--sensors {args.sensors}: {e}") from None
    try:
        plan_streams(args.rate, args.qos, sensors)
    except SimError as e:
        raise SimError(f"--rate {args.rate:g}: {e}") from None
    if not math.isfinite(args.duration) or not 0 < args.duration <= MAX_DURATION:
        raise SimError(f"--duration {args.duration:g}: must be more than 0 and at most {MAX_DURATION:g} seconds")
    if args.broker is not None:
        parse_broker_url(args.broker)
    if getattr(args, "ca", None) and args.broker is not None and not parse_broker_url(args.broker).tls:
        raise SimError(f"--ca {args.ca}: the broker {args.broker} is not mqtts:// (TLS)")
    if args.seed is not None and not 0 <= args.seed < 1 << 32:
        raise SimError(f"--seed {args.seed}: must be 0..{(1 << 32) - 1}")
    if args.procs is not None and not 0 <= args.procs <= 256:
        raise SimError(f"--procs {args.procs}: must be 0..256")
    if args.ramp is not None and (not math.isfinite(args.ramp) or args.ramp <= 0):
        raise SimError(f"--ramp {args.ramp:g}: must be a positive number of connections per second")
    from edgewire.sim.fleet import parse_shard
    try:
        parse_shard(args.shard)
    except SimError as e:
        raise SimError(f"--shard: {e}") from None
    for name in ("max_lag", "connect_timeout"):
        v = getattr(args, name)
        if not math.isfinite(v) or v <= 0:
            raise SimError(f"--{name.replace('_', '-')} {v:g}: must be a positive number of seconds")
    if args.command and (args.command[0] != "run" or len(args.command) != 2):
        raise SimError(f"unexpected arguments {' '.join(args.command)!r}: the one command is 'run SCENARIO.toml'")


def _sensors(args: argparse.Namespace) -> list[str] | None:
    """--sensors temperature,bme280:pressure -> ['temperature', 'bme280:pressure']."""
    text = getattr(args, "sensors", None)
    return [x.strip() for x in text.split(",")] if text else None


def add_arguments(s: argparse.ArgumentParser) -> None:
    """`edgewire sim` options (the console command builds its parser with these)."""
    s.add_argument("command", nargs="*", metavar="run SCENARIO.toml",
                   help="run a scenario file (device groups and a timeline of faults) instead of one fleet")
    s.add_argument("--devices", type=int, default=10, help="number of devices (default 10)")
    s.add_argument("--rate", type=float, default=1.0, help="telemetry messages per second per device (default 1)")
    s.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="MQTT QoS for every stream (default 1)")
    s.add_argument("--sensors", metavar="LIST", default=None,
                   help="comma-separated sensors each device streams: SimBoard models (temperature, humidity, "
                        "battery, door: the default) and driver sources that run the real drivers over simulated "
                        "chips (bme280:temperature|humidity|pressure, ds18b20@4:temperature, dht22@5:humidity)")
    s.add_argument("--broker", metavar="URL", default=None,
                   help="mqtt://host:port, or mqtts://host:port (TLS, with --ca); without it the embedded amqtt "
                        "broker is started on a free port")
    s.add_argument("--ca", metavar="FILE", default=None,
                   help="with an mqtts:// broker: the CA (PEM or DER) that signed its certificate, e.g. ca.pem "
                        "from `edgewire certs init` (default with --auth-config: the gateway's [mqtt] ca_file)")
    s.add_argument("--auth-config", metavar="GW.toml", default=None,
                   help="the gateway's configuration: every simulated device logs in with its own account in "
                        "[mqtt_auth] dir (made on first use), the observer with the gateway's account")
    s.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    s.add_argument("--prefix", default="sim", help="device id prefix (default 'sim')")
    s.add_argument("--seed", type=int, default=None, help="seed for the sensor models (default: random)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--report-json", metavar="FILE", default=None, help="also write the JSON report to FILE")
    s.add_argument("--html", metavar="FILE", default=None, help="also write an HTML report with plots to FILE")
    s.add_argument("--procs", type=int, default=None,
                   help="processes running the devices (default: one per core; 0: one thread of this process)")
    s.add_argument("--ramp", type=float, default=None,
                   help="connections started per second over all processes (default 1000)")
    s.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run the devices of a fleet whose index %% N == I (one of N machines; default 0/1)")
    s.add_argument("--max-lag", type=float, default=10.0, metavar="S",
                   help="stop with exit 1 when a device step runs more than S seconds late (default 10)")
    s.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="stop with exit 1 when no device connects for S seconds while some wait (default 60)")
    s.add_argument("--gateway", metavar="URL", default=None,
                   help="http://host:port of an edgewire gateway: the report counts what its SSE stream delivered "
                        "(default: what an MQTT subscriber on the broker received)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a live progress line on stderr (default: when stderr is a terminal)")


def _progress_line(p: dict[str, object]) -> str:
    return (f"{p.get('elapsed', 0.0):7.1f} s  connected {p.get('connected', 0):,}/{p.get('devices', 0):,}  "
            f"sent {p.get('sent', 0):,}  acked {p.get('acked', 0):,}  observed {p.get('observed', 0):,}  "
            f"reconnects {p.get('reconnects', 0):,}  lag {float(p.get('lag', 0.0)):.2f} s")  # type: ignore[arg-type]


def sim_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None, *,
             start_broker: Callable[[], RunningBroker] | None = None,
             login: Callable[[str], dict[str, Any]] | None = None) -> int:
    """Run `edgewire sim`. Without `args.broker`, `start_broker()` starts the
    broker the fleet uses (it raises SimError when it cannot) and the run ends
    with its `stop()`. With `args.auth_config`, `login(path)` gives the Fleet's
    credentials, observer_auth and default ca_file (the `edgewire` command
    reads them from the gateway's configuration)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        check_args(args)
    except SimError as e:
        return _fail(str(e), 2, err)

    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("edgewire sim: %(levelname)s: %(message)s"))
    root = logging.getLogger("edgewire")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)

    import os

    from edgewire.sim.fleet import DEFAULT_RAMP, Fleet, Overloaded, parse_shard, supervise

    if args.command:
        from edgewire.sim.scenario import ScenarioError, load_scenario
        try:
            scenario = load_scenario(args.command[1])
        except ScenarioError as e:
            return _fail(str(e), 2, err)
    else:
        scenario = None
    procs = args.procs if args.procs is not None else (os.cpu_count() or 1)
    ramp = args.ramp if args.ramp is not None else DEFAULT_RAMP
    show = args.progress if args.progress is not None else err.isatty()
    last_line = [0.0]

    def progress(p: dict[str, object]) -> None:
        el = float(p.get("elapsed", 0.0))  # type: ignore[arg-type]
        if show:
            print("\r" + _progress_line(p), end="", file=err, flush=True)
        elif args.duration >= 30 and el - last_line[0] >= 10:
            last_line[0] = el
            print("edgewire sim: " + _progress_line(p).strip(), file=err, flush=True)

    tls_and_accounts: dict[str, Any] = {}
    if getattr(args, "auth_config", None):
        if login is None:
            return _fail("--auth-config needs the edgewire command (it reads the gateway's accounts)", 2, err)
        try:
            tls_and_accounts = dict(login(args.auth_config))
        except SimError as e:
            return _fail(str(e), 2, err)
    if getattr(args, "ca", None):
        tls_and_accounts["ca_file"] = args.ca
    broker: RunningBroker | None = None
    code = 0
    try:
        url = args.broker or (scenario.broker if scenario is not None else None)
        if url is None:
            if start_broker is None:
                return _fail("--broker URL is required (no embedded broker was offered)", 2, err)
            try:
                broker = start_broker()
            except SimError as e:
                return _fail(str(e), 1, err)
            url = broker.url
        if not getattr(args, "ca", None) and not url.startswith("mqtts:"):
            tls_and_accounts.pop("ca_file", None)   # the gateway's CA, for a plain broker: not needed
        runner = None
        try:
            if scenario is not None:
                from edgewire.sim.scenario import ScenarioRun
                runner = ScenarioRun(scenario, url, procs=procs, ramp=ramp, shard=parse_shard(args.shard),
                                     seed=args.seed, gateway=args.gateway, **tls_and_accounts)
                fleet = runner.fleet
            else:
                fleet = Fleet(url, devices=args.devices, rate=args.rate, qos=args.qos, seed=args.seed,
                              sensors=_sensors(args),
                              prefix=args.prefix, procs=procs, ramp=ramp, shard=parse_shard(args.shard),
                              gateway=args.gateway, **tls_and_accounts)
        except SimError as e:
            return _fail(str(e), 2, err)
        try:
            if broker is None:
                fleet.check_broker()
            if runner is not None:
                runner.start()
                seconds = scenario.duration if scenario is not None else args.duration
                tick = runner.tick
            else:
                fleet.start(wait_connected=None, wait_observer=True)
                seconds, tick = args.duration, None
            supervise(fleet, seconds, max_lag=args.max_lag, connect_timeout=args.connect_timeout,
                      tick=tick, progress=progress)
            if show:
                print(file=err)
            fleet.stop()
        except KeyboardInterrupt:
            code = 130
            try:
                fleet.stop()
            except SimError as e:
                print(f"edgewire sim: error: {e}", file=err)
        except SimError as e:
            code = 1
            if show:
                print(file=err)
            if isinstance(e, Overloaded):
                fleet.failure = str(e)
            print(f"edgewire sim: error: {e}", file=err)
            try:
                fleet.stop()
            except SimError as e2:
                print(f"edgewire sim: error: {e2}", file=err)
            if not fleet.seconds:
                return code
        finally:
            if runner is not None:
                runner.close()
        report = fleet.report(embedded_broker=broker is not None)
        print(report.to_json() if args.json else report.render(), file=out)
        if args.report_json:
            with open(args.report_json, "w") as f:
                f.write(report.to_json())
        if args.html:
            from edgewire.sim.html import render_html
            with open(args.html, "w") as f:
                f.write(render_html(report))
        return code
    finally:
        if broker is not None:
            broker.stop()
        root.removeHandler(handler)
