"""`edgewire demo`: the gateway, the embedded broker and a simulated fleet in
one process, with the dashboard on http://127.0.0.1:8080.

Nothing else needs to be installed: the broker is amqtt in a child process
(edgewire.gateway.embedded_broker), the devices are the real device SDK on
simulated boards (edgewire.sim.Fleet).
When the broker's port (1883) is taken, as it is where a system mosquitto
runs, the demo says so and uses a free port; the simulated devices are given
the port the embedded broker really bound, never the taken one.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from edgewire.gateway.config import EmbeddedBrokerConfig, GatewayConfig, HttpConfig, JournalConfig, MqttConfig
from edgewire.gateway.errors import GatewayError
from edgewire.gateway.service import Gateway
from edgewire.sim import Fleet
from edgewire.sim.errors import SimError

log = logging.getLogger("edgewire.demo")

DEMO_RATE = 1.0  # telemetry messages per second per device
QOS_CYCLE = (1, 0, 2)  # the fleet is split across the three QoS levels


def demo_config(*, http_port: int, mqtt_port: int, journal: Path) -> GatewayConfig:
    """A gateway with no [mqtt] url (so the embedded broker starts), the
    dashboard on loopback, and its journal at `journal` (the demo's data is
    throwaway: a temporary folder, not the user's working directory)."""
    return GatewayConfig(
        mqtt=MqttConfig(url=""),
        embedded_broker=EmbeddedBrokerConfig(host="127.0.0.1", port=mqtt_port, allow_fallback=True),
        http=HttpConfig(host="127.0.0.1", port=http_port),
        journal=JournalConfig(path=str(journal)),
    )


def _port_taken(port: int) -> bool:
    if port == 0:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _fleets(mqtt_url: str, devices: int) -> list[Fleet]:
    """`devices` simulated devices, spread over QoS 1, 0 and 2 (ids demo-q1-0000, ...)."""
    counts = [0, 0, 0]
    for i in range(devices):
        counts[i % 3] += 1
    return [Fleet(mqtt_url, devices=n, rate=DEMO_RATE, qos=qos, prefix=f"demo-q{qos}", fault_rate=0.02)
            for qos, n in zip(QOS_CYCLE, counts) if n]


async def run_demo(*, http_port: int, mqtt_port: int, devices: int, duration: float | None,
                   out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="edgewire-demo-") as tmp:
        await _run_demo(loop, Path(tmp) / "journal.db", http_port=http_port, mqtt_port=mqtt_port,
                        devices=devices, duration=duration, out=out)


async def _run_demo(loop: asyncio.AbstractEventLoop, journal: Path, *, http_port: int, mqtt_port: int,
                    devices: int, duration: float | None, out: TextIO) -> None:
    async with Gateway(demo_config(http_port=http_port, mqtt_port=mqtt_port, journal=journal)) as gw:
        # From here on Ctrl-C (or SIGTERM) ends the demo cleanly, whenever it comes.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gw.close)
        fleets = _fleets(gw.mqtt_url, devices)
        started: list[Fleet] = []
        try:
            for f in fleets:
                f.start(wait_connected=None)  # starts device threads, returns at once
                started.append(f)
            # Waiting for the devices to connect blocks; the gateway runs on this
            # loop, so the wait happens in a thread.
            for f in fleets:
                await asyncio.to_thread(f.wait_connected, 30.0)
            print(f"edgewire demo: dashboard  {gw.http_url}/\n"
                  f"               live SSE   {gw.http_url}/api/v1/stream\n"
                  f"               devices    {gw.http_url}/api/v1/devices\n"
                  f"               broker     {gw.mqtt_url} (embedded; connect mosquitto_sub here)\n"
                  f"               fleet      {devices} simulated devices, {DEMO_RATE:g} msg/s each, QoS 0/1/2\n"
                  + ("               stop with Ctrl-C" if duration is None else f"               running for {duration:g} s"),
                  file=out, flush=True)
            if duration is None:
                await gw.wait_closed()
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(gw.wait_closed(), duration)
        finally:
            for f in started:
                await asyncio.to_thread(f.stop)
            total = sum(r.messages for f in started for r in f.report().per_device)
            print(f"edgewire demo: stopped; the fleet sent {total} telemetry messages", file=out, flush=True)


def demo_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if not 0 < args.port < 65536:
        print(f"error: --port {args.port}: expected 1-65535", file=err)
        return 2
    if not 0 <= args.mqtt_port < 65536:
        print(f"error: --mqtt-port {args.mqtt_port}: expected 0-65535", file=err)
        return 2
    if not 1 <= args.devices <= 1000:
        print(f"error: --devices {args.devices}: expected 1-1000", file=err)
        return 2
    if args.duration is not None and args.duration <= 0:
        print(f"error: --duration {args.duration:g}: expected a positive number of seconds", file=err)
        return 2
    if _port_taken(args.port):
        print(f"error: port {args.port} on 127.0.0.1 is taken; choose another with --port", file=err)
        return 2
    if _port_taken(args.mqtt_port):
        print(f"edgewire demo: MQTT port {args.mqtt_port} is taken (another broker?); "
              "the embedded broker will use a free port instead", file=out, flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_demo(http_port=args.port, mqtt_port=args.mqtt_port, devices=args.devices,
                             duration=args.duration, out=out))
    except (GatewayError, SimError) as e:
        print(f"error: {e}", file=err)
        return 1
    except OSError as e:
        print(f"error: cannot start the demo: {e}", file=err)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
