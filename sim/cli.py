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
from typing import Protocol, TextIO

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
    try:
        plan_streams(args.rate, args.qos)
    except SimError as e:
        raise SimError(f"--rate {args.rate:g}: {e}") from None
    if not math.isfinite(args.duration) or not 0 < args.duration <= MAX_DURATION:
        raise SimError(f"--duration {args.duration:g}: must be more than 0 and at most {MAX_DURATION:g} seconds")
    if args.broker is not None:
        parse_broker_url(args.broker)
    if args.seed is not None and not 0 <= args.seed < 1 << 32:
        raise SimError(f"--seed {args.seed}: must be 0..{(1 << 32) - 1}")


def sim_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None, *,
             start_broker: Callable[[], RunningBroker] | None = None) -> int:
    """Run `edgewire sim`. Without `args.broker`, `start_broker()` starts the
    broker the fleet uses (it raises SimError when it cannot) and the run ends
    with its `stop()`."""
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

    from edgewire.sim.fleet import Fleet

    broker: RunningBroker | None = None
    code = 0
    try:
        if args.broker is None:
            if start_broker is None:
                return _fail("--broker URL is required (no embedded broker was offered)", 2, err)
            try:
                broker = start_broker()
            except SimError as e:
                return _fail(str(e), 1, err)
        try:
            fleet = Fleet(broker.url if broker else args.broker, devices=args.devices, rate=args.rate,
                          qos=args.qos, seed=args.seed, prefix=args.prefix)
        except SimError as e:
            return _fail(str(e), 2, err)
        try:
            if broker is None:
                fleet.check_broker()
            fleet.run(args.duration)
        except KeyboardInterrupt:
            code = 130
            try:
                fleet.stop()
            except SimError as e:
                print(f"edgewire sim: error: {e}", file=err)
        except SimError as e:
            code = 1
            print(f"edgewire sim: error: {e}", file=err)
            try:
                fleet.stop()
            except SimError as e2:
                print(f"edgewire sim: error: {e2}", file=err)
            if not fleet.seconds:
                return code
        report = fleet.report(embedded_broker=broker is not None)
        print(report.to_json() if args.json else report.render(), file=out)
        return code
    finally:
        if broker is not None:
            broker.stop()
        root.removeHandler(handler)
