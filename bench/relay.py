"""Relay benchmark: how fast does the gateway pass MQTT telemetry to a WebSocket
client, compared with how fast mosquitto alone relays the same packets?

One run measures two phases on loopback, each with a private mosquitto:

  broker   raw publisher ──QoS 0──► mosquitto ──► mosquitto_sub (counts lines)
  gateway  raw publisher ──QoS 0──► mosquitto ──► edgewire gateway ──WS──► client

Both phases publish the same packets: valid 100-byte telemetry envelopes
(wire.encode_telemetry, distinct (device, boot, seq)) from a raw socket writing
pre-built PUBLISH packets, so the publisher is never the bottleneck. Each
phase reports messages relayed per second (first to last message received),
messages lost, and the CPU% of every process; the gateway phase also reports
the gateway's peak RSS. The result is the ratio gateway/broker from the same
run, next to the goal (ratio >= 0.5, RSS < 60 MB).

    .venv/bin/python bench/relay.py                # both phases, ~30 s
    .venv/bin/python bench/relay.py --seconds 3 --json
    make bench

The script also runs its own helper processes (`publish`, `wsclient` modes),
so that each one's CPU time is measured on its own.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edgewire import wire  # the one protocol implementation (firmware/edgewire/wire.py)

ROOT = Path(__file__).resolve().parents[1]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
PAYLOAD_BYTES = 100
SEQ_BASE = 1 << 24  # every seq from here to 2**32-1 is encoded as uint32 (0xce): fixed width
BOOT = 7
GOAL_RATIO = 0.5
GOAL_RSS_MB = 60.0
# References measured on the development machine (see docs/benchmarks.md).
REFERENCE = "mosquitto relays ~158k msg/s; paho bare subscriber ~60k msg/s; Node-RED 82k msg/s in 132 MB"


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- MQTT packets

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack(">H", keepalive) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _str(topic) + payload
    return b"\x30" + _varint(len(body)) + body


DISCONNECT = b"\xe0\x00"


def telemetry_payload(device: str, seq: int) -> bytes:
    """A canonical telemetry envelope of exactly PAYLOAD_BYTES bytes carrying
    one reading (so one message is one event on the gateway's WebSocket); the
    stream name is padded to reach the size."""
    up = 123456
    base = "site-1/line-2/temperature"
    for pad in range(0, wire.MAX_STREAM - len(base)):
        stream = base[:7] + "x" * pad + base[7:] if pad else base
        p = wire.encode_telemetry(device, BOOT, seq, up, [[stream, 21.5, up]])
        if len(p) == PAYLOAD_BYTES:
            return p
        if len(p) > PAYLOAD_BYTES:
            break
    raise BenchError(f"cannot build a {PAYLOAD_BYTES}-byte envelope for {device!r}")


class PacketTemplate:
    """A PUBLISH packet for one device whose seq can be patched in place. The
    patched bytes are exactly what wire.encode_telemetry produces for that seq
    (checked at construction), so every message is a valid, distinct envelope."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.topic = wire.topic(device, wire.KIND_TELEMETRY)
        probe = SEQ_BASE + 0x00ABCDEF
        self.packet = publish_packet(self.topic, telemetry_payload(device, probe))
        marker = b"\xa1s\xce" + struct.pack(">I", probe)
        at = self.packet.find(marker)
        if at < 0 or self.packet.find(marker, at + 1) >= 0:
            raise BenchError("sequence number not found exactly once in the template packet")
        self.offset = at + 3
        for seq in (SEQ_BASE, SEQ_BASE + 1, 0xFFFFFFFF):
            if self.build(seq) != publish_packet(self.topic, telemetry_payload(device, seq)):
                raise BenchError("patched template differs from wire.encode_telemetry output")

    def build(self, seq: int) -> bytes:
        b = bytearray(self.packet)
        struct.pack_into(">I", b, self.offset, seq)
        return bytes(b)


def device_ids(n: int) -> list[str]:
    return [f"bench-{i:03d}" for i in range(n)]


# ---------------------------------------------------------------- helper: publisher process

def _connect(port: int, client_id: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet(client_id))
    ack = b""
    while len(ack) < 4:
        chunk = s.recv(4 - len(ack))
        if not chunk:
            raise BenchError("broker closed the connection before CONNACK")
        ack += chunk
    if ack[0] != 0x20 or ack[3] != 0:
        raise BenchError(f"broker refused CONNECT: {ack!r}")
    return s


def run_publisher(port: int, seconds: float, devices: int, first_seq: int, max_messages: int) -> dict[str, Any]:
    """Write QoS 0 PUBLISH packets as fast as the socket takes them, round-robin
    over `devices`, each with its own increasing seq. Bounded by time and count."""
    templates = [PacketTemplate(d) for d in device_ids(devices)]
    size = len(templates[0].packet)
    per_chunk = 64 * devices
    chunk = bytearray(b"".join(t.packet for t in templates) * (per_chunk // devices))
    offsets = [(i * size + templates[i % devices].offset) for i in range(per_chunk)]
    s = _connect(port, f"bench-pub-{os.getpid()}")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sent = 0
    seq = first_seq
    pack = struct.pack_into
    t0 = time.monotonic()
    deadline = t0 + seconds
    while sent < max_messages and time.monotonic() < deadline:
        n = min(per_chunk, max_messages - sent)
        n -= n % devices  # whole rounds, so seq stays in step across devices
        if n <= 0:
            break
        for i in range(n):
            pack(">I", chunk, offsets[i], seq + i // devices)
        s.sendall(memoryview(chunk)[: n * size])
        sent += n
        seq += n // devices
    elapsed = time.monotonic() - t0
    s.sendall(DISCONNECT)
    s.close()
    return {"sent": sent, "seconds": elapsed, "last_seq": seq - 1}


def send_probe(port: int, device: str, seq: int) -> None:
    """One telemetry message from a separate probe device (to learn that the
    receiving side is subscribed before the measured traffic starts)."""
    s = _connect(port, f"bench-probe-{os.getpid()}")
    s.sendall(publish_packet(wire.topic(device, wire.KIND_TELEMETRY), telemetry_payload(device, seq)) + DISCONNECT)
    s.close()


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
    def __init__(self, workdir: Path) -> None:
        if not os.path.exists(MOSQUITTO):
            raise BenchError("mosquitto is not installed: make system-deps (apt-get install mosquitto mosquitto-clients)")
        self.port = free_port()
        conf = workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nlog_type error\nlog_type warning\n"
            f"log_dest file {workdir / f'mosquitto-{self.port}.log'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class LineCounter:
    """Counts newline-terminated records from a pipe in a thread, noting the
    time of the first and last record after `arm()`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0
        self.armed_at_count = 0
        self.first: float | None = None
        self.last: float | None = None
        self._armed = False
        self._thread = threading.Thread(target=self._run, name="line-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                b = os.read(self.fd, 1 << 20)
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
        self.armed_at_count = self.count
        self._armed = True

    @property
    def measured(self) -> int:
        return self.count - self.armed_at_count


def wait_until(pred: Any, timeout: float, what: str, poll: float = 0.05, action: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if action is not None:
            action()
        if pred():
            return
        time.sleep(poll)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


def wait_drained(counter: LineCounter, quiet: float = 0.7, timeout: float = 20.0) -> None:
    """Wait until no record arrived for `quiet` seconds (bounded by `timeout`)."""
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


@dataclass
class PhaseResult:
    name: str
    sent: int = 0
    received: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    lost: int = 0
    cpu_percent: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    note: str = ""
    gateway_stats: dict[str, Any] | None = None


def _publisher_cmd(port: int, seconds: float, devices: int, max_messages: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "publish", "--port", str(port), "--seconds", str(seconds),
            "--devices", str(devices), "--max-messages", str(max_messages)]


def _run_publisher_process(port: int, seconds: float, devices: int, max_messages: int) -> tuple[dict[str, Any], float]:
    """Run the publisher to completion; returns its stats and its CPU seconds."""
    p = subprocess.Popen(_publisher_cmd(port, seconds, devices, max_messages), stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(p.pid)
    cpu = 0.0
    while p.poll() is None:
        try:
            t = ps.cpu_times()
            cpu = t.user + t.system
        except psutil.Error:
            break
        time.sleep(0.05)
    out, _ = p.communicate(timeout=seconds + 30)
    if p.returncode != 0:
        raise BenchError(f"publisher failed with exit code {p.returncode}")
    stats = json.loads(out.strip().splitlines()[-1])
    return stats, float(stats.get("cpu", cpu))


def phase_broker(workdir: Path, seconds: float, devices: int, max_messages: int) -> PhaseResult:
    """mosquitto alone: raw publisher -> mosquitto -> mosquitto_sub."""
    res = PhaseResult("broker")
    mq = Mosquitto(workdir)
    sub: subprocess.Popen[bytes] | None = None
    try:
        sub = subprocess.Popen([MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(mq.port), "-q", "0",
                                "-t", f"{wire.ROOT}/+/telemetry", "-F", ""],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert sub.stdout is not None
        counter = LineCounter(sub.stdout.fileno())
        probe_seq = [1]

        def probe() -> None:
            send_probe(mq.port, "bench-probe", probe_seq[0])
            probe_seq[0] += 1

        wait_until(lambda: counter.count > 0, 10, "mosquitto_sub to receive a probe", poll=0.1, action=probe)
        wait_drained(counter, quiet=0.3)
        counter.arm()
        cpu = CpuMeter({"broker": mq.proc.pid, "subscriber": sub.pid})  # type: ignore[union-attr]
        cpu.start()
        stats, pub_cpu = _run_publisher_process(mq.port, seconds, devices, max_messages)
        wait_drained(counter)
        cpu.stop()
        cpu.add("publisher", pub_cpu)
        res.sent = stats["sent"]
        res.received = counter.measured
        res.seconds = (counter.last - counter.first) if counter.first and counter.last else 0.0
        res.rate = res.received / res.seconds if res.seconds > 0 else 0.0
        res.lost = res.sent - res.received
        res.cpu_percent = cpu.percent()
        return res
    finally:
        stop_process(sub)
        if sub is not None and sub.stdout is not None:
            sub.stdout.close()
        mq.stop()


# ---------------------------------------------------------------- gateway phase

def gateway_missing() -> str | None:
    """What is missing for the gateway phase, or None when it can run."""
    try:
        import edgewire.gateway.service  # noqa: F401
    except ImportError as e:
        return f"edgewire.gateway.service is not importable ({e})"
    if not EDGEWIRE.exists():
        return f"{EDGEWIRE} does not exist (make venv)"
    return None


EDGEWIRE = Path(sys.executable).parent / "edgewire"


def http_json(url: str, timeout: float = 2.0) -> Any:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"_status": e.code}


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


class WsClientProcess:
    """The WebSocket client process: reports its counts as JSON lines."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "wsclient", "--url", url],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.latest: dict[str, Any] = {}
        self.count = 0  # events, for wait_drained()
        self._thread = threading.Thread(target=self._read, name="wsclient-reader", daemon=True)
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


def phase_gateway(workdir: Path, seconds: float, devices: int, max_messages: int) -> PhaseResult:
    """raw publisher -> mosquitto -> edgewire gateway -> WebSocket client."""
    missing = gateway_missing()
    if missing:
        return PhaseResult("gateway", note=f"not run: {missing}")
    res = PhaseResult("gateway")
    mq = Mosquitto(workdir)
    http_port = free_port()
    conf = workdir / "gateway.toml"
    conf.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mq.port}"\nclient_id = "bench-gateway"\n\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\ndashboard = false\n\n'
        '[log]\nlevel = "warning"\n'
    )
    log_path = workdir / "gateway.log"
    gw: subprocess.Popen[bytes] | None = None
    client: WsClientProcess | None = None
    rss: RssSampler | None = None
    try:
        with open(log_path, "wb") as logf:
            gw = subprocess.Popen([str(EDGEWIRE), "gateway", "--config", str(conf)], stdout=logf, stderr=logf)
        rss = RssSampler(gw.pid)
        base = f"http://127.0.0.1:{http_port}"

        def healthy() -> bool:
            if gw is not None and gw.poll() is not None:
                raise BenchError(f"the gateway exited with {gw.returncode}: {log_path.read_text()[-2000:]}")
            try:
                return "_status" not in http_json(base + "/healthz")
            except OSError:
                return False

        wait_until(healthy, 20, "the gateway to report healthy on /healthz", poll=0.1)
        client = WsClientProcess(f"ws://127.0.0.1:{http_port}/api/v1/ws")
        wait_until(lambda: client.latest.get("subscribed") is True, 10, "the WebSocket client to subscribe")
        probe_seq = [1]

        def probe() -> None:
            send_probe(mq.port, "bench-probe", probe_seq[0])
            probe_seq[0] += 1

        wait_until(lambda: client.count > 0, 15, "a probe message to reach the WebSocket client", poll=0.2,
                   action=probe)
        wait_drained(client, quiet=0.5)  # type: ignore[arg-type]
        client.send("arm")
        wait_until(lambda: client.latest.get("armed") is True, 5, "the WebSocket client to arm")
        assert mq.proc is not None
        cpu = CpuMeter({"broker": mq.proc.pid, "gateway": gw.pid, "client": client.proc.pid})
        cpu.start()
        stats, pub_cpu = _run_publisher_process(mq.port, seconds, devices, max_messages)
        wait_drained(client, quiet=1.5, timeout=60)  # type: ignore[arg-type]
        cpu.stop()
        cpu.add("publisher", pub_cpu)
        final = client.finish()
        res.sent = stats["sent"]
        res.received = int(final.get("measured", 0))
        first, last = final.get("first"), final.get("last")
        res.seconds = (last - first) if first is not None and last is not None else 0.0
        res.rate = res.received / res.seconds if res.seconds > 0 else 0.0
        res.lost = res.sent - res.received
        res.cpu_percent = cpu.percent()
        try:
            res.gateway_stats = http_json(base + "/api/v1/stats")
        except OSError as e:
            res.note = f"GET /api/v1/stats failed: {e}"
        drops = int(final.get("dropped", 0))
        if drops or final.get("gaps"):
            res.note = (res.note + "; " if res.note else "") + \
                f"WebSocket client was told of {drops} dropped events and {final.get('gaps', 0)} gaps"
        return res
    finally:
        if client is not None and client.proc.poll() is None:
            stop_process(client.proc)
            for f in (client.proc.stdin, client.proc.stdout):
                if f is not None:
                    f.close()
        stop_process(gw)
        if rss is not None:
            res.peak_rss_mb = round(rss.stop(), 1)
        mq.stop()


def run_wsclient(url: str) -> int:
    """Subscribe to every reading ('#') and count events. Reports a JSON line
    whenever the count changed (at most every 100 ms); stdin commands:
    'arm' starts the measured window, 'quit' prints the final line and exits."""
    import asyncio

    import aiohttp

    st: dict[str, Any] = {"events": 0, "measured": 0, "first": None, "last": None, "dropped": 0, "gaps": 0,
                          "subscribed": False, "armed": False}
    armed_at = [0]
    quit_ev = asyncio.Event()

    def emit() -> None:
        sys.stdout.write(json.dumps(st) + "\n")
        sys.stdout.flush()

    async def stdin_reader() -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            cmd = line.strip()
            if cmd == "arm":
                armed_at[0] = st["events"]
                st.update(armed=True, first=None, last=None, measured=0)
                emit()
            elif cmd == "quit" or not line:
                quit_ev.set()
                return

    async def reporter() -> None:
        shown = -1
        while not quit_ev.is_set():
            await asyncio.sleep(0.1)
            if st["events"] != shown:
                shown = st["events"]
                emit()

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, max_msg_size=0) as ws:
                await ws.send_str(json.dumps({"op": "subscribe", "filter": "#", "ref": 1}))
                tasks = [asyncio.create_task(stdin_reader()), asyncio.create_task(reporter())]

                async def receive() -> None:
                    loads = json.loads
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        m = loads(msg.data)
                        t = m.get("type")
                        if t == "readings":
                            now = time.monotonic()
                            st["events"] += len(m["events"])
                            if st["armed"]:
                                st["measured"] = st["events"] - armed_at[0]
                                if st["first"] is None:
                                    st["first"] = now
                                st["last"] = now
                        elif t == "subscribed":
                            st["subscribed"] = True
                            emit()
                        elif t == "dropped":
                            st["dropped"] = int(m.get("total", 0))
                        elif t == "gap":
                            st["gaps"] += 1
                        elif t == "error":
                            sys.stderr.write(f"wsclient: gateway error: {m}\n")

                rx = asyncio.create_task(receive())
                await quit_ev.wait()
                rx.cancel()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(rx, *tasks, return_exceptions=True)
        emit()

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------- report

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


def render(broker: PhaseResult, gateway: PhaseResult) -> str:
    lines = [f"relay benchmark: {PAYLOAD_BYTES}-byte telemetry envelopes, QoS 0, loopback, "
             f"{os.cpu_count()} CPUs", ""]
    for r in (broker, gateway):
        if r.note and not r.received:
            lines.append(f"{r.name:8s} {r.note}")
            continue
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r.cpu_percent.items())
        rss = f", gateway peak RSS {r.peak_rss_mb:.1f} MB" if r.peak_rss_mb is not None else ""
        lines.append(f"{r.name:8s} {r.rate:>10,.0f} msg/s  ({r.received:,} of {r.sent:,} received in "
                     f"{r.seconds:.2f} s, {r.lost:,} lost){rss}")
        lines.append(f"{'':8s} CPU: {cpu}")
        if r.note:
            lines.append(f"{'':8s} note: {r.note}")
        losses = loss_counters(r.gateway_stats)
        if losses:
            lines.append(f"{'':8s} gateway counters: " + ", ".join(f"{k} {v:,}" for k, v in losses.items()))
    if broker.rate and gateway.rate:
        ratio = gateway.rate / broker.rate
        lines.append("")
        lines.append(f"ratio gateway/broker {ratio:.2f}  (goal >= {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'NOT met'})")
        if gateway.peak_rss_mb is not None:
            ok = gateway.peak_rss_mb < GOAL_RSS_MB
            lines.append(f"gateway peak RSS {gateway.peak_rss_mb:.1f} MB  (goal < {GOAL_RSS_MB:.0f} MB: {'met' if ok else 'NOT met'})")
    lines.append(f"reference (this machine kind): {REFERENCE}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode")
    ap.add_argument("--seconds", type=float, default=5.0, help="publishing time per phase (default 5)")
    ap.add_argument("--devices", type=int, default=10, help="simulated device ids to round-robin (default 10)")
    ap.add_argument("--max-messages", type=int, default=3_000_000, help="cap on messages per phase")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--only", choices=("broker", "gateway"), default=None, help="run one phase")
    pp = sub.add_parser("publish", help="(internal) the raw publisher process")
    pp.add_argument("--port", type=int, required=True)
    pp.add_argument("--seconds", type=float, required=True)
    pp.add_argument("--devices", type=int, required=True)
    pp.add_argument("--max-messages", type=int, required=True)
    wp = sub.add_parser("wsclient", help="(internal) the WebSocket client process")
    wp.add_argument("--url", required=True)
    args = ap.parse_args(argv)

    if args.mode == "wsclient":
        return run_wsclient(args.url)

    if args.mode == "publish":
        stats = run_publisher(args.port, args.seconds, args.devices, SEQ_BASE, args.max_messages)
        t = os.times()
        stats["cpu"] = t.user + t.system
        print(json.dumps(stats), flush=True)
        return 0

    if not 0 < args.seconds <= 30:
        ap.error(f"--seconds {args.seconds} must be in (0, 30]")
    if not 1 <= args.devices <= 1000:
        ap.error(f"--devices {args.devices} must be 1..1000")
    if args.max_messages < args.devices:
        ap.error("--max-messages must be at least --devices")
    with tempfile.TemporaryDirectory(prefix="edgewire-bench-") as tmp:
        work = Path(tmp)
        empty = PhaseResult("-", note="not run (--only)")
        broker = phase_broker(work, args.seconds, args.devices, args.max_messages) if args.only != "gateway" else empty
        gateway = phase_gateway(work, args.seconds, args.devices, args.max_messages) if args.only != "broker" else empty
    if args.json:
        out: dict[str, Any] = {"broker": asdict(broker), "gateway": asdict(gateway),
                               "ratio": (gateway.rate / broker.rate) if broker.rate and gateway.rate else None,
                               "goal": {"ratio": GOAL_RATIO, "rss_mb": GOAL_RSS_MB}}
        print(json.dumps(out, indent=2))
    else:
        print(render(broker, gateway))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench/relay.py: {e}", file=sys.stderr)
        sys.exit(1)
