"""Relay benchmark: how fast does the gateway pass MQTT telemetry to a WebSocket
client, against the broker's own relay limit measured in the same run?

Per QoS (0 and 1), per repeat, on loopback, each phase with a private mosquitto
under its DEFAULT limits (max_inflight_messages 20, max_queued_messages 1000):

  baseline  raw publisher ─► mosquitto ─► mosquitto_sub | raw-socket counter | gmqtt
            (the broker's relay limit = the best of the three in this repeat)
  gateway   raw publisher ─► mosquitto ─► edgewire gateway ─WS─► one client

Every message is a valid 100-byte telemetry envelope (wire.encode_telemetry,
distinct (device, boot, seq)) from a raw socket writing pre-built PUBLISH
packets, so the publisher is never the bottleneck. The rate of a phase is the
messages received over the time from the first to the last one received. The
gateway's ratio is taken against the baseline of the same repeat; the report
gives the median and the spread (min-max) of the repeats and says which goals
are met (ratio >= 0.5 at each QoS, gateway peak RSS < 60 MB).

Loss in the gateway phase is accounted per device from the sequence numbers
the WebSocket client saw: head (before the first seen), interior (gaps between
the first and last seen) and tail (after the last seen), set against the
gateway's own `missing` counters (which can only see interior gaps) and its
hub drops.

    .venv/bin/python bench/relay.py                       # = make bench
    .venv/bin/python bench/relay.py --repeat 1 --seconds 2 --qos 0
    .venv/bin/python bench/relay.py --clients ours,gmqtt,aiomqtt   # the MQTT client decision
    .venv/bin/python bench/relay.py --json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (  # noqa: E402  (bench/ is not a package; this file runs as a script)
    SEQ_BASE,
    BenchError,
    PacketTemplate,
    device_ids,
    run_gmqttsub,
    run_publisher,
    run_rawsub,
    run_wsclient,
    send_probe,
)

from edgewire import wire  # noqa: E402

__all__ = ["PacketTemplate", "SEQ_BASE", "BenchError", "phase_baseline", "phase_gateway", "account_loss"]

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
EDGEWIRE = Path(sys.executable).parent / "edgewire"
GOAL_RATIO = 0.5
GOAL_RSS_MB = 60.0
SUBSCRIBERS = ("mosquitto_sub", "raw", "gmqtt")
DEPLOY_CONF = ROOT / "deploy" / "mosquitto.conf"  # the example broker config a site uses
TELEMETRY_FILTER = f"{wire.ROOT}/+/telemetry"
GATEWAY_EXTRA: list[str] = []  # --gateway-set SECTION.KEY=VALUE, appended to every gateway's TOML


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(p: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Mosquitto:
    """A private mosquitto with its default limits, plus `extra` config lines
    (e.g. deploy/mosquitto.conf's)."""

    def __init__(self, workdir: Path, extra: str = "") -> None:
        if not os.path.exists(MOSQUITTO):
            raise BenchError("mosquitto is not installed: make system-deps (apt-get install mosquitto mosquitto-clients)")
        self.port = free_port()
        conf = workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_type error\nlog_type warning\n"
            f"log_dest file {workdir / f'mosquitto-{self.port}.log'}\n" + extra
        )
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Embedded:
    """The gateway's embedded amqtt broker in its own process (when this
    gateway runs it so: edgewire.gateway.embedded_broker.EmbeddedBroker)."""

    def __init__(self) -> None:
        from edgewire.gateway.embedded_broker import EmbeddedBroker

        self.broker: Any = EmbeddedBroker(host="127.0.0.1", port=0).start()
        self.port = int(self.broker.port)

    @property
    def pid(self) -> int:
        return int(self.broker.pid)

    def stop(self) -> None:
        self.broker.stop()


def embedded_missing() -> str | None:
    """Why the embedded broker cannot be measured on its own, or None."""
    try:
        from edgewire.gateway import embedded_broker
    except ImportError as e:
        return f"edgewire.gateway.embedded_broker is not importable ({e})"
    if not hasattr(getattr(embedded_broker, "EmbeddedBroker", None), "pid"):
        return "this gateway runs the embedded broker on its own event loop (not in a process of its own)"
    return None


def start_broker(kind: str, workdir: Path, extra: str) -> Mosquitto | Embedded:
    return Embedded() if kind == "embedded" else Mosquitto(workdir, extra)


def broker_settings(path: Path | None) -> str:
    """The limit lines of a mosquitto config file (listeners, persistence and
    logging stay the bench's own)."""
    if path is None:
        return ""
    keep = ("max_inflight_messages", "max_queued_messages", "max_queued_bytes", "max_inflight_bytes",
            "max_packet_size", "message_size_limit")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return "".join(ln + "\n" for ln in lines if ln.split(" ")[0] in keep)


class Receiver:
    """One receiving process. `count` is live; `finish()` gives the final
    numbers: measured, first, last (monotonic), and per-device seqs where known."""

    pid: int
    count: int

    def arm(self) -> None: ...

    def finish(self) -> dict[str, Any]: ...


class LineReceiver(Receiver):
    """mosquitto_sub printing one line per message; counted here in a thread."""

    def __init__(self, port: int, qos: int) -> None:
        self.proc = subprocess.Popen([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-q", str(qos),
                                      "-t", TELEMETRY_FILTER, "-F", ""],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.count = 0
        self._armed_at = 0
        self._armed = False
        self.first: float | None = None
        self.last: float | None = None
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._thread = threading.Thread(target=self._run, name="line-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                b = os.read(self._fd, 1 << 20)
            except OSError:
                return
            if not b:
                return
            n = b.count(b"\n")
            if n:
                now = time.monotonic()
                self.count += n
                if self._armed:
                    if self.first is None:
                        self.first = now
                    self.last = now

    def arm(self) -> None:
        self._armed_at = self.count
        self._armed = True

    def finish(self) -> dict[str, Any]:
        out = {"measured": self.count - self._armed_at, "first": self.first, "last": self.last}
        stop_process(self.proc)
        self._thread.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return out


class ProcessReceiver(Receiver):
    """A loadgen receiver process (raw, gmqtt, wsclient): JSON lines out,
    commands in."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.latest: dict[str, Any] = {}
        self.count = 0
        self._thread = threading.Thread(target=self._read, name="receiver-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.latest = json.loads(line)
            except ValueError:
                continue
            self.count = int(self.latest.get("events", 0))

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def arm(self) -> None:
        self.send("arm")
        wait_until(lambda: self.latest.get("armed") is True, 10, "the receiver to arm")

    def finish(self) -> dict[str, Any]:
        try:
            self.send("quit")
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            stop_process(self.proc)
        self._thread.join(2)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        return self.latest

    def close(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()


def wait_until(pred: Any, timeout: float, what: str, poll: float = 0.05, action: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if action is not None:
            action()
        if pred():
            return
        time.sleep(poll)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


def wait_drained(counter: Receiver, quiet: float = 0.7, timeout: float = 30.0) -> None:
    """Wait until no message arrived for `quiet` seconds (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    last = -1
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        if counter.count != last:
            last = counter.count
            last_change = time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return
        time.sleep(0.05)


class CpuMeter:
    """CPU seconds of named processes over a window, as % of one core."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.start_cpu: dict[str, float] = {}
        self.end_cpu: dict[str, float] = {}
        self.t0 = self.t1 = 0.0

    def _cpu(self, name: str) -> float | None:
        try:
            t = self.procs[name].cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return None

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.start_cpu = {n: c for n in self.procs if (c := self._cpu(n)) is not None}

    def stop(self) -> None:
        self.t1 = time.monotonic()
        self.end_cpu = {n: c for n in self.procs if (c := self._cpu(n)) is not None}

    def add(self, name: str, cpu_seconds: float) -> None:
        """A process measured elsewhere (e.g. one that exited within the window)."""
        self.start_cpu[name] = 0.0
        self.end_cpu[name] = cpu_seconds

    def percent(self) -> dict[str, float]:
        wall = max(self.t1 - self.t0, 1e-9)
        return {n: round(100.0 * (self.end_cpu[n] - self.start_cpu[n]) / wall, 1)
                for n in self.end_cpu if n in self.start_cpu}


class RssSampler:
    """Peak RSS of one process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(1)
        return self.peak / (1 << 20)


# ---------------------------------------------------------------- phases

@dataclass
class Load:
    seconds: float
    devices: int
    max_messages: int
    qos: int


@dataclass
class PhaseResult:
    name: str
    qos: int = 0
    sent: int = 0
    received: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    lost: int = 0
    cpu_percent: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    note: str = ""
    loss: dict[str, int] | None = None
    gateway_counters: dict[str, int] | None = None
    gateway_memory: dict[str, int] | None = None  # what the gateway held at the end (journal backlog peak, ring)


def _run_publisher_process(port: int, load: Load) -> tuple[dict[str, Any], float]:
    """Run the publisher to completion; returns its stats and its CPU seconds."""
    p = subprocess.Popen([sys.executable, str(HERE), "publish", "--port", str(port), "--seconds", str(load.seconds),
                          "--devices", str(load.devices), "--max-messages", str(load.max_messages),
                          "--qos", str(load.qos)], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=load.seconds + 60)
    if p.returncode != 0:
        raise BenchError(f"publisher failed with exit code {p.returncode}")
    stats = json.loads(out.strip().splitlines()[-1])
    return stats, float(stats["cpu"])


def _measure(res: PhaseResult, mq: Mosquitto | Embedded, rx: Receiver, procs: dict[str, int], load: Load,
             quiet: float, probe_timeout: float = 15.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Probe until the receiver gets traffic, arm, publish, wait until quiet."""
    probe_seq = [1]

    def probe() -> None:
        send_probe(mq.port, "bench-probe", probe_seq[0])
        probe_seq[0] += 1

    wait_until(lambda: rx.count > 0, probe_timeout, f"a probe message to reach the {res.name} receiver",
               poll=0.2, action=probe)
    wait_drained(rx, quiet=0.3)
    rx.arm()
    cpu = CpuMeter(procs)
    cpu.start()
    stats, pub_cpu = _run_publisher_process(mq.port, load)
    wait_drained(rx, quiet=quiet)
    cpu.stop()
    cpu.add("publisher", pub_cpu)
    final = rx.finish()
    res.sent = int(stats["sent"])
    res.received = int(final.get("measured", 0))
    first, last = final.get("first"), final.get("last")
    res.seconds = (last - first) if first is not None and last is not None else 0.0
    res.rate = res.received / res.seconds if res.seconds > 0 else 0.0
    res.lost = res.sent - res.received
    res.cpu_percent = cpu.percent()
    return stats, final


def phase_baseline(workdir: Path, load: Load, subscriber: str, broker_extra: str = "",
                   broker: str = "mosquitto") -> PhaseResult:
    """The broker alone: raw publisher -> mosquitto (or the embedded broker) -> one subscriber."""
    res = PhaseResult(subscriber, qos=load.qos)
    mq = start_broker(broker, workdir, broker_extra)
    rx: Receiver | None = None
    try:
        if subscriber == "mosquitto_sub":
            rx = LineReceiver(mq.port, load.qos)
        elif subscriber in ("raw", "gmqtt"):
            rx = ProcessReceiver([subscriber + "sub", "--port", str(mq.port), "--qos", str(load.qos),
                                  "--filter", TELEMETRY_FILTER])
        else:
            raise BenchError(f"unknown subscriber {subscriber!r}")
        _measure(res, mq, rx, {"broker": mq.pid, "subscriber": rx.pid}, load,
                 quiet=0.7 if broker == "mosquitto" else 2.0)
        return res
    finally:
        if isinstance(rx, ProcessReceiver):
            rx.close()
        elif isinstance(rx, LineReceiver):
            stop_process(rx.proc)
        mq.stop()


def http_json(url: str, timeout: float = 5.0) -> Any:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"_status": e.code}


def gateway_missing() -> str | None:
    """What is missing for the gateway phase, or None when it can run."""
    try:
        import edgewire.gateway.service  # noqa: F401
    except ImportError as e:
        return f"edgewire.gateway.service is not importable ({e})"
    if not EDGEWIRE.exists():
        return f"{EDGEWIRE} does not exist (make venv)"
    return None


def journal_supported() -> bool:
    """Whether this gateway has a durable journal to configure ([journal] path)."""
    from edgewire.gateway.config import GatewayConfig

    return hasattr(GatewayConfig(), "journal")


def gateway_toml(mq_port: int, http_port: int, workdir: Path, journal: str, embedded: bool = False) -> str:
    """The gateway's TOML; `journal` is its [journal] synchronous setting ("full"
    or "normal"), the journal file always in `workdir` (never the default path
    in the current folder, which would carry ids and de-duplication over from
    another run), or "" for a gateway without a journal."""
    extra = _settings_toml(GATEWAY_EXTRA)
    if embedded:  # no [mqtt] url: the gateway starts its embedded broker, here on a known free port
        out = (f'[embedded_broker]\nhost = "127.0.0.1"\nport = {mq_port}\nallow_fallback = false\n'
               f'{extra.pop("embedded_broker", "")}\n')
    else:
        out = f'[mqtt]\nurl = "mqtt://127.0.0.1:{mq_port}"\nclient_id = "bench-gateway"\n{extra.pop("mqtt", "")}\n'
    out += (f'[http]\nhost = "127.0.0.1"\nport = {http_port}\ndashboard = false\n{extra.pop("http", "")}\n'
            f'[log]\nlevel = "warning"\n{extra.pop("log", "")}')
    if journal:
        out += f'\n[journal]\npath = "{workdir / f"journal-{http_port}.db"}"\nsynchronous = "{journal}"\n'
        out += extra.pop("journal", "")
    for section, lines in extra.items():
        out += f"\n[{section}]\n{lines}"
    return out


def _settings_toml(settings: list[str]) -> dict[str, str]:
    """['hub.ring=2000', ...] -> {'hub': 'ring = 2000\\n'} (values as TOML literals)."""
    out: dict[str, str] = {}
    for item in settings:
        key, _, value = item.partition("=")
        section, _, name = key.strip().partition(".")
        if not section or not name or not value:
            raise BenchError(f"--gateway-set {item!r}: expected SECTION.KEY=VALUE, e.g. hub.ring=2000")
        out[section] = out.get(section, "") + f"{name} = {value.strip()}\n"
    return out


def gateway_command(client: str, conf: Path) -> list[str]:
    if client == "ours":
        return [str(EDGEWIRE), "gateway", "--config", str(conf)]
    return [sys.executable, str(HERE.parent / "candidates.py"), "--client", client, "--config", str(conf)]


def account_loss(sent_first: int, sent_last: int, devices: list[str], seqs: dict[str, list[int]],
                 registry_missing: int, hub_dropped: int) -> dict[str, int]:
    """Split what the WebSocket client did not get into head (before the first
    seq it saw of a device), interior (gaps between its first and last) and
    tail (after its last), per device, summed. The gateway's gap counter
    (`missing`) sees only interior gaps upstream of its hub; the hub's drops to
    this client are interior gaps too. So interior == missing + hub drops when
    the books balance (`registry_missing` is the registry's missing + jumped:
    runs longer than its window are counted as jumped)."""
    head = interior = tail = 0
    for d in devices:
        r = seqs.get(d)
        if r is None:
            tail += sent_last - sent_first + 1
            continue
        count, lo, hi = r
        head += lo - sent_first
        interior += (hi - lo + 1) - count
        tail += sent_last - hi
    return {"head": head, "interior": interior, "tail": tail, "registry_missing": registry_missing,
            "hub_dropped": hub_dropped, "unexplained_interior": interior - registry_missing - hub_dropped}


def registry_gaps(base: str, device: str) -> int:
    """The numbers the gateway's registry saw skipped for one device: `missing`
    (gaps within its de-duplication window) plus `jumped` (runs longer than the
    window, counted once the device's next messages confirmed the jump)."""
    d = http_json(f"{base}/api/v1/devices/{device}")
    boots = d.get("boots") if isinstance(d, dict) else None
    if not isinstance(boots, dict):
        return int(d.get("missing", 0)) if isinstance(d, dict) else 0
    return sum(int(w.get("missing", 0)) + int(w.get("jumped", 0)) for w in boots.values())


def loss_counters(stats: Any, prefix: str = "") -> dict[str, int]:
    """Non-zero counters in the gateway's /api/v1/stats that explain a loss."""
    out: dict[str, int] = {}
    if isinstance(stats, dict):
        for k, v in stats.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(loss_counters(v, name))
            elif isinstance(v, int) and not isinstance(v, bool) and v and \
                    any(w in name.lower() for w in ("drop", "refus", "overflow", "duplicate", "gap", "lost", "missing")):
                out[name] = v
    return out


class _OwnedBroker:
    """The embedded broker the gateway started itself (its child process)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pid = 0

    def stop(self) -> None:
        pass  # the gateway stops it


def phase_gateway(workdir: Path, load: Load, client: str = "ours", journal: str | None = None,
                  broker_extra: str = "", name: str | None = None, broker: str = "mosquitto") -> PhaseResult:
    """raw publisher -> mosquitto (or the gateway's own embedded broker) ->
    gateway (with `client` as its MQTT client) -> one WebSocket client."""
    res = PhaseResult(name or f"gateway/{client}", qos=load.qos)
    missing = gateway_missing()
    if missing:
        res.note = f"not run: {missing}"
        return res
    mq: Mosquitto | _OwnedBroker = _OwnedBroker(free_port()) if broker == "embedded" else Mosquitto(workdir, broker_extra)
    http_port = free_port()
    conf = workdir / f"gateway-{http_port}.toml"
    if journal is None:
        journal = "full" if journal_supported() else ""
    conf.write_text(gateway_toml(mq.port, http_port, workdir, journal, embedded=broker == "embedded"))
    log_path = workdir / f"gateway-{http_port}.log"
    gw: subprocess.Popen[bytes] | None = None
    rx: ProcessReceiver | None = None
    rss: RssSampler | None = None
    try:
        with open(log_path, "wb") as logf:
            gw = subprocess.Popen(gateway_command(client, conf), stdout=logf, stderr=logf)
        rss = RssSampler(gw.pid)
        base = f"http://127.0.0.1:{http_port}"

        def healthy() -> bool:
            if gw is not None and gw.poll() is not None:
                raise BenchError(f"the gateway exited with {gw.returncode}: {log_path.read_text()[-2000:]}")
            try:
                return "_status" not in http_json(base + "/healthz")
            except OSError:
                return False

        wait_until(healthy, 30, "the gateway to report healthy on /healthz", poll=0.1)
        if isinstance(mq, _OwnedBroker):
            kids = psutil.Process(gw.pid).children()
            if not kids:
                raise BenchError("the gateway runs no embedded broker process of its own")
            mq.pid = kids[0].pid
        rx = ProcessReceiver(["wsclient", "--url", f"ws://127.0.0.1:{http_port}/api/v1/ws"])
        wait_until(lambda: rx is not None and rx.latest.get("ready") is True, 10, "the WebSocket client to subscribe")
        stats, final = _measure(res, mq, rx, {"broker": mq.pid, "gateway": gw.pid, "client": rx.pid}, load,
                                quiet=1.5 if broker == "mosquitto" else 3.0)
        gstats = http_json(base + "/api/v1/stats")
        names = device_ids(load.devices)
        hub = gstats.get("hub", {}) if isinstance(gstats, dict) else {}
        res.loss = account_loss(int(stats["first_seq"]), int(stats["last_seq"]), names, final.get("seqs", {}),
                                sum(registry_gaps(base, d) for d in names), int(hub.get("dropped_total", 0)))
        res.gateway_counters = loss_counters(gstats)
        if isinstance(gstats, dict):
            j = gstats.get("journal", {})
            clients = hub.get("clients") or [{}]
            res.gateway_memory = {"journal_backlog_bytes_max": int(j.get("backlog_bytes_max", 0)),
                                  "hub_ring": int(hub.get("ring", 0)),
                                  # how the WebSocket client was fed: live, from the ring, or read back from SQLite
                                  "hub_ring_reads": int(hub.get("ring_reads", 0)),
                                  "hub_journal_reads": int(hub.get("journal_reads", 0)),
                                  "client_overflows": int(clients[0].get("overflows", 0)),
                                  "journal_commits": int(j.get("commits", 0)),
                                  "journal_space_waits": int(j.get("space_waits", 0))}
        if final.get("gaps"):
            res.note = f"the WebSocket client was sent {final['gaps']} gap events"
        return res
    finally:
        if rx is not None:
            rx.close()
        stop_process(gw)
        if rss is not None:
            res.peak_rss_mb = round(rss.stop(), 1)
        mq.stop()


# ---------------------------------------------------------------- the run and its report

@dataclass
class Repeat:
    qos: int
    baseline: dict[str, PhaseResult]
    gateways: dict[str, PhaseResult]
    embedded: dict[str, PhaseResult] = field(default_factory=dict)
    tuned: dict[str, PhaseResult] = field(default_factory=dict)  # under the example broker config's limits

    @property
    def best(self) -> tuple[str, float]:
        name = max(self.baseline, key=lambda k: self.baseline[k].rate)
        return name, self.baseline[name].rate

    def ratio(self, gw: str) -> float | None:
        r = self.gateways.get(gw)
        best = self.best[1]
        return (r.rate / best) if r is not None and r.rate and best else None


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def load_average() -> str:
    try:
        a = os.getloadavg()
        return f"{a[0]:.2f} {a[1]:.2f} {a[2]:.2f}"
    except OSError:
        return "?"


def render(repeats: list[Repeat], args: argparse.Namespace, load_before: str, load_after: str) -> tuple[str, dict[str, Any]]:
    lines = [f"relay benchmark: {wire.ROOT}/<device>/telemetry, 100-byte envelopes, {args.devices} devices, "
             f"{args.seconds:g} s per phase, {args.repeat} repeat(s), {os.cpu_count()} CPUs",
             f"mosquitto limits: {'defaults (max_inflight_messages 20, max_queued_messages 1000)' if not args.broker_conf else 'from ' + str(args.broker_conf)}",
             f"load average before {load_before}, after {load_after} (a loaded machine depresses and "
             "spreads absolute figures: compare ratios)", ""]
    summary: dict[str, Any] = {"goals": []}
    hdr = f"{'QoS':>3}  {'path':40s} {'median msg/s':>13} {'min-max':>17}  {'ratio median (min-max)':>24}  notes"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    goals: list[str] = []
    for qos in sorted({r.qos for r in repeats}):
        reps = [r for r in repeats if r.qos == qos]
        for sub in SUBSCRIBERS:
            rates = [r.baseline[sub].rate for r in reps if sub in r.baseline]
            if rates:
                m, lo, hi = spread(rates)
                lost = sum(r.baseline[sub].lost for r in reps if sub in r.baseline)
                lines.append(f"{qos:>3}  {'mosquitto → ' + sub:40s} {m:>13,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17}  "
                             f"{'':>24}  lost {lost:,}")
        bests = [r.best for r in reps]
        m, lo, hi = spread([b[1] for b in bests])
        winners = ", ".join(sorted({b[0] for b in bests}))
        lines.append(f"{qos:>3}  {'BASELINE (best per repeat)':40s} {m:>13,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17}  "
                     f"{'1.00':>24}  fastest: {winners}")
        for gw in reps[0].gateways:
            runs = [r.gateways[gw] for r in reps if gw in r.gateways]
            rates = [g.rate for g in runs if g.rate]
            ratios = [x for r in reps if (x := r.ratio(gw)) is not None]
            if not rates:
                lines.append(f"{qos:>3}  {gw:40s} {'-':>13} {'':>17}  {'':>24}  {runs[0].note}")
                continue
            m, lo, hi = spread(rates)
            rm, rlo, rhi = spread(ratios)
            rss = max((g.peak_rss_mb or 0.0) for g in runs)
            lost = sum(g.lost for g in runs)
            cpu = statistics.median([g.cpu_percent.get("gateway", 0.0) for g in runs])
            lines.append(f"{qos:>3}  {gw:40s} {m:>13,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17}  "
                         f"{f'{rm:.2f} ({rlo:.2f}-{rhi:.2f})':>24}  peak RSS {rss:.1f} MB, CPU {cpu:.0f}%, "
                         f"lost {lost:,}")
            summary.setdefault("gateways", {})[f"{gw} qos{qos}"] = {"rate_median": m, "ratio_median": rm,
                                                                   "ratio_min": rlo, "ratio_max": rhi,
                                                                   "peak_rss_mb": rss, "lost": lost}
            ours = next((k for k in r.gateways if k.startswith("gateway/ours")), None) if (r := reps[0]) else None
            if ours is not None and gw != ours:
                vs = [g.rate / o.rate for rr in reps if (g := rr.gateways.get(gw)) and (o := rr.gateways.get(ours))
                      and g.rate and o.rate]
                if vs:
                    vm, vlo, vhi = spread(vs)
                    lines.append(f"{'':>3}  {'':40s} {'':>13} {'':>17}  {'':>24}  "
                                 f"= {vm:.2f}x ours ({vlo:.2f}-{vhi:.2f}) in the same repeats")
                    summary["gateways"][f"{gw} qos{qos}"]["vs_ours_median"] = vm
            if gw.startswith("gateway/ours"):
                goals.append(f"QoS {qos} {gw}: ratio {rm:.3f} (min {rlo:.3f}, max {rhi:.3f}) against goal >= "
                             f"{GOAL_RATIO}: {'MET' if rm >= GOAL_RATIO else 'NOT MET'}"
                             f"{' (not in every repeat)' if rm >= GOAL_RATIO and rlo < GOAL_RATIO else ''}")
                goals.append(f"QoS {qos} {gw}: peak RSS {rss:.1f} MB against goal < {GOAL_RSS_MB:.0f} MB: "
                             f"{'MET' if rss < GOAL_RSS_MB else 'NOT MET'}")
    tun = [r for r in repeats if r.tuned]
    if tun:
        lines.append("")
        lines.append(f"QoS 1 under the example broker config's limits ({DEPLOY_CONF.relative_to(ROOT)}: "
                     f"{broker_settings(DEPLOY_CONF).strip().replace(chr(10), ', ')}), "
                     "baseline = raw counter under the same limits:")
        base = [r.tuned["mosquitto → raw"].rate for r in tun]
        m, lo, hi = spread(base)
        lines.append(f"  1  {'mosquitto → raw':40s} {m:>13,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17}  {'1.00':>24}  "
                     f"lost {sum(r.tuned['mosquitto → raw'].lost for r in tun):,}")
        for key in tun[0].tuned:
            if key == "mosquitto → raw":
                continue
            runs = [r.tuned[key] for r in tun if key in r.tuned]
            ratios = [r.tuned[key].rate / r.tuned["mosquitto → raw"].rate for r in tun
                      if key in r.tuned and r.tuned[key].rate and r.tuned["mosquitto → raw"].rate]
            if not ratios:
                continue
            m, lo, hi = spread([g.rate for g in runs if g.rate])
            rm, rlo, rhi = spread(ratios)
            rss = max((g.peak_rss_mb or 0.0) for g in runs)
            lines.append(f"  1  {key:40s} {m:>13,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17}  "
                         f"{f'{rm:.2f} ({rlo:.2f}-{rhi:.2f})':>24}  peak RSS {rss:.1f} MB, lost "
                         f"{sum(g.lost for g in runs):,}")
            goals.append(f"QoS 1 {key} with the example broker config: ratio {rm:.3f} (min {rlo:.3f}, max {rhi:.3f}) "
                         f"against goal >= {GOAL_RATIO}: {'MET' if rm >= GOAL_RATIO else 'NOT MET'}")
            summary.setdefault("tuned", {})[key] = {"ratio_median": rm, "ratio_min": rlo, "ratio_max": rhi,
                                                    "peak_rss_mb": rss}
    emb = [r for r in repeats if r.embedded]
    if emb:
        lines.append("")
        lines.append("embedded amqtt broker, in its own process (ratio against the same repeat's mosquitto baseline):")
        for qos in sorted({r.qos for r in emb}):
            reps = [r for r in emb if r.qos == qos]
            for key in reps[0].embedded:
                runs = [r.embedded[key] for r in reps if key in r.embedded]
                rates = [g.rate for g in runs if g.rate]
                if not rates:
                    lines.append(f"{qos:>3}  {key:40s} {'-':>13}  {runs[0].note}")
                    continue
                ratios = [r.embedded[key].rate / r.best[1] for r in reps
                          if key in r.embedded and r.embedded[key].rate and r.best[1]]
                m, lo, hi = spread(rates)
                rm, rlo, rhi = spread(ratios)
                rss = max((g.peak_rss_mb or 0.0) for g in runs)
                lost = sum(g.lost for g in runs)
                note = f"gateway peak RSS {rss:.1f} MB, " if rss else ""
                lines.append(f"{qos:>3}  {key:40s} {m:>13,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17}  "
                             f"{f'{rm:.3f} ({rlo:.3f}-{rhi:.3f})':>24}  {note}lost {lost:,}")
                summary.setdefault("embedded", {})[f"{key} qos{qos}"] = {"rate_median": m, "rate_min": lo,
                                                                          "ratio_median": rm, "lost": lost}
        limit = min(v["rate_median"] for k, v in summary.get("embedded", {}).items() if k.startswith("gateway/")) \
            if any(k.startswith("gateway/") for k in summary.get("embedded", {})) else None
        if limit:
            lines.append(f"     => the gateway on the embedded broker relays about {limit:,.0f} msg/s here "
                         "(lowest QoS median): the figure for its warning threshold")
    lines.append("")
    lines.append("loss accounting, gateway phases (per repeat): head + interior + tail = lost; "
                 "interior = registry missing (+ jumped) + hub drops")
    for r in repeats:
        extra_gw = [(k + " (example conf)", v) for k, v in r.tuned.items() if k.startswith("gateway/")] + \
            [(k, v) for k, v in r.embedded.items() if k.startswith("gateway/")]
        for gw, g in list(r.gateways.items()) + extra_gw:
            if g.loss is None:
                continue
            ls = g.loss
            ok = ls["head"] + ls["interior"] + ls["tail"] == g.lost and ls["unexplained_interior"] == 0
            lines.append(f"  QoS {r.qos} {gw:24s} lost {g.lost:>9,} = head {ls['head']:,} + interior "
                         f"{ls['interior']:,} + tail {ls['tail']:,}; registry missing {ls['registry_missing']:,}, "
                         f"hub drops {ls['hub_dropped']:,}: {'balanced' if ok else 'NOT balanced'}"
                         + (f"; {g.note}" if g.note else ""))
    lines.append("")
    lines.append("goals:")
    lines.extend("  " + g for g in goals)
    summary["goals"] = goals
    return "\n".join(lines), summary


def run_all(args: argparse.Namespace) -> tuple[list[Repeat], str]:
    journal = args.synchronous if journal_supported() else ""
    jl = f" +journal {journal.upper()}" if journal else ""
    extra = broker_settings(args.broker_conf)
    tuned = broker_settings(DEPLOY_CONF) if args.tuned and args.broker_conf is None and DEPLOY_CONF.exists() else ""
    why_not = embedded_missing()
    embedded = args.embedded == "on" or (args.embedded == "auto" and why_not is None)
    if args.embedded == "on" and why_not:
        raise BenchError(f"--embedded on: {why_not}")
    load_before = load_average()
    repeats: list[Repeat] = []
    with tempfile.TemporaryDirectory(prefix="edgewire-bench-") as tmp:
        work = Path(tmp)
        for i in range(args.repeat):
            for qos in args.qos:
                load = Load(args.seconds, args.devices, args.max_messages, qos)
                rep = Repeat(qos, {}, {})
                # Baselines and gateways alternate which goes first from one repeat to the
                # next, so that a machine getting busier (or quieter) during a run does not
                # favour one side of the ratio; the median of the repeats is reported.
                gateway_first = i % 2 == 1

                def baselines(rep: Repeat = rep, load: Load = load, i: int = i, qos: int = qos) -> None:
                    for sub in args.subscribers:
                        rep.baseline[sub] = phase_baseline(work, load, sub, extra)
                        progress(f"repeat {i + 1} QoS {qos} baseline {sub}: {rep.baseline[sub].rate:,.0f} msg/s")

                def gateways(rep: Repeat = rep, load: Load = load, i: int = i, qos: int = qos) -> None:
                    for client in args.clients:
                        label = f"gateway/{client}" + jl
                        rep.gateways[label] = g = phase_gateway(work, load, client, journal, extra, label)
                        progress(f"repeat {i + 1} QoS {qos} {label}: {g.rate:,.0f} msg/s {g.note}")

                for step in ((gateways, baselines) if gateway_first else (baselines, gateways)):
                    step()
                if tuned and qos == 1:
                    label = "gateway/ours" + jl
                    for which in (("gateway", "raw") if gateway_first else ("raw", "gateway")):
                        if which == "raw":
                            t = rep.tuned["mosquitto → raw"] = phase_baseline(work, load, "raw", tuned)
                            progress(f"repeat {i + 1} QoS {qos} example broker config, baseline raw: "
                                     f"{t.rate:,.0f} msg/s")
                        else:
                            t = rep.tuned[label] = phase_gateway(work, load, "ours", journal, tuned, label)
                            progress(f"repeat {i + 1} QoS {qos} example broker config, {label}: {t.rate:,.0f} msg/s")
                if embedded:
                    small = Load(args.seconds, args.devices, min(args.max_messages, args.embedded_messages), qos)
                    e = rep.embedded["embedded amqtt → raw"] = phase_baseline(work, small, "raw", broker="embedded")
                    progress(f"repeat {i + 1} QoS {qos} embedded amqtt → raw: {e.rate:,.0f} msg/s")
                    label = "gateway/ours on embedded" + jl
                    e = rep.embedded[label] = phase_gateway(work, small, "ours", journal, name=label, broker="embedded")
                    progress(f"repeat {i + 1} QoS {qos} {label}: {e.rate:,.0f} msg/s {e.note}")
                repeats.append(rep)
    return repeats, load_before


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode")
    ap.add_argument("--seconds", type=float, default=3.0, help="publishing time per phase (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats of every phase (default 3)")
    ap.add_argument("--qos", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1],
                    help="QoS levels, comma-separated (default 0,1)")
    ap.add_argument("--devices", type=int, default=10, help="simulated device ids to round-robin (default 10)")
    ap.add_argument("--max-messages", type=int, default=2_000_000, help="cap on messages per phase")
    ap.add_argument("--subscribers", type=lambda s: s.split(","), default=list(SUBSCRIBERS),
                    help="baseline subscribers (default mosquitto_sub,raw,gmqtt)")
    ap.add_argument("--clients", type=lambda s: s.split(","), default=["ours"],
                    help="the gateway's MQTT client(s): ours, gmqtt, aiomqtt (default ours)")
    ap.add_argument("--synchronous", choices=("full", "normal"), default="full",
                    help="the gateway journal's [journal] synchronous (default full, the gateway's default)")
    ap.add_argument("--no-tuned", dest="tuned", action="store_false",
                    help="skip the QoS 1 phases under deploy/mosquitto.conf's limits")
    ap.add_argument("--embedded", choices=("auto", "on", "off"), default="auto",
                    help="also measure the embedded amqtt broker in its own process (auto: when the gateway has it)")
    ap.add_argument("--embedded-messages", type=int, default=10_000,
                    help="messages per embedded-broker phase (default 10,000: it relays some thousands per second)")
    ap.add_argument("--broker-conf", type=Path, default=None,
                    help="take mosquitto's limit settings from this file (default: mosquitto's defaults)")
    ap.add_argument("--no-journal-bench", dest="journal_bench", action="store_false",
                    help="skip the journal-alone measurement (bench/journal_bench.py)")
    ap.add_argument("--gateway-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting for every gateway's config, e.g. journal.max_pending_bytes=8388608 (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    pp = sub.add_parser("publish", help="(internal) the raw publisher process")
    pp.add_argument("--port", type=int, required=True)
    pp.add_argument("--seconds", type=float, required=True)
    pp.add_argument("--devices", type=int, required=True)
    pp.add_argument("--max-messages", type=int, required=True)
    pp.add_argument("--qos", type=int, default=0)
    for mode in ("rawsub", "gmqttsub"):
        rp = sub.add_parser(mode, help="(internal) a baseline subscriber process")
        rp.add_argument("--port", type=int, required=True)
        rp.add_argument("--qos", type=int, default=0)
        rp.add_argument("--filter", required=True)
    wp = sub.add_parser("wsclient", help="(internal) the WebSocket client process")
    wp.add_argument("--url", required=True)
    args = ap.parse_args(argv)

    if args.mode == "wsclient":
        return run_wsclient(args.url)
    if args.mode == "rawsub":
        return run_rawsub(args.port, args.qos, args.filter)
    if args.mode == "gmqttsub":
        return run_gmqttsub(args.port, args.qos, args.filter)
    if args.mode == "publish":
        stats = run_publisher(args.port, args.seconds, args.devices, SEQ_BASE, args.max_messages, args.qos)
        t = os.times()
        stats["cpu"] = t.user + t.system
        print(json.dumps(stats), flush=True)
        return 0

    if not 0 < args.seconds <= 30:
        ap.error(f"--seconds {args.seconds} must be in (0, 30]")
    if not 1 <= args.repeat <= 20:
        ap.error(f"--repeat {args.repeat} must be 1..20")
    if not 1 <= args.devices <= 1000:
        ap.error(f"--devices {args.devices} must be 1..1000")
    if args.max_messages < args.devices:
        ap.error("--max-messages must be at least --devices")
    if any(q not in (0, 1) for q in args.qos):
        ap.error("--qos takes 0 and/or 1")
    if any(s not in SUBSCRIBERS for s in args.subscribers) or not args.subscribers:
        ap.error(f"--subscribers takes some of {','.join(SUBSCRIBERS)}")
    if any(c not in ("ours", "gmqtt", "aiomqtt") for c in args.clients):
        ap.error("--clients takes some of ours,gmqtt,aiomqtt")
    if args.embedded_messages < args.devices:
        ap.error("--embedded-messages must be at least --devices")
    if args.broker_conf is not None and not args.broker_conf.is_file():
        ap.error(f"--broker-conf {args.broker_conf}: no such file")
    GATEWAY_EXTRA[:] = args.gateway_set
    repeats, load_before = run_all(args)
    jres: dict[str, Any] | None = None
    if args.journal_bench and journal_supported():
        import journal_bench

        progress("the journal alone (FULL, NORMAL)")
        jres = journal_bench.run(min(args.seconds, 3.0))
    text, summary = render(repeats, args, load_before, load_average())
    if jres is not None:
        text += "\n\n" + "\n".join(journal_bench.render(jres))
        summary["journal"] = jres
    if args.json:
        print(json.dumps({"repeats": [{"qos": r.qos, "baseline": {k: asdict(v) for k, v in r.baseline.items()},
                                       "gateways": {k: asdict(v) for k, v in r.gateways.items()},
                                       "embedded": {k: asdict(v) for k, v in r.embedded.items()},
                                       "tuned": {k: asdict(v) for k, v in r.tuned.items()}}
                                      for r in repeats], "summary": summary}, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench/relay.py: {e}", file=sys.stderr)
        sys.exit(1)
