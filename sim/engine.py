"""One selector loop driving thousands of simulated devices (a shard of a fleet).

Each device is the SDK's Device (edgewire.sim.loop.LoopDevice) on a SimBoard
with its own MQTT connection. The loop owns the waiting: a device step never
blocks and returns when the device next needs to run; the loop keeps those
deadlines in a heap and the devices' sockets in one epoll selector, and steps a
device when its deadline comes or its socket turns readable. A shard runs in a
thread (small fleets, tests that reach the boards) or in a process of its own
(`procs`), talking to the fleet over a multiprocessing Connection:

    fleet -> shard   ("stop",) ("board", method, ids, args) ("reboot", ids)
                     ("snapshot", token)
    shard -> fleet   ("progress", dict) every PROGRESS_S
                     ("snapshot", token, [DeviceReport])  ("done", [DeviceReport], series)
                     ("crash", text)

Connections ramp up at a bounded rate (`ramp` per second for this shard).
`lag` is how late the loop ran a device's timed step: the one measure of
whether the machine keeps up (a device that runs late misses its sampling
times, and past half its keepalive, its pings).
"""
from __future__ import annotations

import heapq
import resource
import selectors
import socket
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgewire.boards import ResetRequested
from edgewire.boards.sim import SimBoard
from edgewire.sim.loop import LoopDevice
from edgewire.sim.report import DeviceReport

PROGRESS_S = 0.5
WORKERS = 32   # threads per shard running the SDK's blocking connect and goodbye
STOP_S = 60.0  # a stopping shard gives its devices this long to say goodbye


def raise_file_limit() -> tuple[int, int]:
    """Soft file limit up to the hard one (one socket per device); -> (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft, hard


class SimClock:
    """Time for one SimBoard: the host's clocks, the epoch shifted by `skew_ms`
    (clock-skew scenarios)."""

    __slots__ = ("skew_ms",)

    def __init__(self) -> None:
        self.skew_ms = 0

    def ms(self) -> float:
        return time.monotonic() * 1000.0

    def sleep_ms(self, ms: int) -> None:
        time.sleep(ms / 1000.0)

    def time_ms(self) -> int:
        return int(time.time() * 1000.0) + self.skew_ms


@dataclass
class DeviceSpec:
    device_id: str
    group: str
    seed: int
    fault_rate: float
    cfg: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)   # the board's storage at power-on (a TLS CA)


@dataclass
class SimDevice:
    """One simulated device in a shard. A reboot starts a new LoopDevice on the
    same board (a new boot id, seq from 1); counters are summed over boots."""

    spec: DeviceSpec
    board: SimBoard
    clock: SimClock
    dev: LoopDevice | None = None
    boots: list[int] = field(default_factory=list)
    resets: int = 0
    error: str | None = None
    done: dict[str, int] = field(default_factory=dict)   # counters of finished boots
    sock: Any = None
    due: float = 0.0
    up: bool = False
    down_at: float | None = None          # epoch s the connection was lost
    outages: list[tuple[float, float]] = field(default_factory=list)  # (lost, back) epoch s
    finished: bool = False
    reboot_pending: bool = False
    offload: Any = None

    def new_boot(self) -> None:
        self.dev = LoopDevice(self.board, self.spec.cfg, offload=self.offload)

    def fold(self) -> None:
        d = self.dev
        if d is None:
            return
        if d.boot and (not self.boots or self.boots[-1] != d.boot):
            self.boots.append(d.boot)
        for k, v in d.stats.items():
            if k != "queued":
                self.done[k] = self.done.get(k, 0) + int(v)
        cl = d.client
        if cl is not None:
            cl.close()

    def counters(self) -> dict[str, int]:
        out = dict(self.done)
        d = self.dev
        if d is not None:
            for k, v in d.stats.items():
                out[k] = out.get(k, 0) + int(v)
        return out

    def report(self) -> DeviceReport:
        c = self.counters()
        boots = list(self.boots)
        d = self.dev
        if d is not None and d.boot and (not boots or boots[-1] != d.boot):
            boots.append(d.boot)
        sent = sum(c.get(f"sent_q{q}", 0) for q in (0, 1, 2))
        sampled = c.get("readings", 0)
        dropped = c.get("dropped", 0)
        return DeviceReport(
            device=self.spec.device_id,
            group=self.spec.group,
            boot=boots[-1] if boots else None,
            boots=boots,
            messages=sent,
            readings=c.get("sent_readings", 0),
            sampled=sampled,
            acked=sum(c.get(f"acked_q{q}", 0) for q in (0, 1, 2)),
            unacked=sum(c.get(f"sent_q{q}", 0) - c.get(f"acked_q{q}", 0) for q in (1, 2)),
            dropped=dropped,
            queued=d.stats["queued"] if d is not None else 0,
            connects=c.get("connects", 0),
            reconnects=c.get("reconnects", 0),
            conn_failures=c.get("conn_failures", 0),
            resets=self.resets,
            faults=c.get("faults", 0) + (1 if self.error else 0),
            connected=bool(d is not None and d.connected and not d.handshaking),
            error=self.error,
            sent_q=[c.get(f"sent_q{q}", 0) for q in (0, 1, 2)],
            acked_q=[c.get(f"acked_q{q}", 0) for q in (0, 1, 2)],
            outages=[(round(a, 3), round(b, 3)) for a, b in self.outages]
            + ([(round(self.down_at, 3), -1.0)] if self.down_at is not None else []),
        )


class Shard:
    def __init__(self, specs: list[DeviceSpec], *, ramp: float, name: int = 0) -> None:
        self.name = name
        self.sims = [SimDevice(s, SimBoard(s.device_id, storage=dict(s.files), seed=s.seed,
                                           fault_rate=s.fault_rate, clock=c), c)
                     for s in specs for c in (SimClock(),)]
        self.by_id = {s.spec.device_id: s for s in self.sims}
        self.ramp = float(ramp)
        self.sel = selectors.DefaultSelector()
        self.heap: list[tuple[float, int, SimDevice]] = []
        self.n = 0
        self.started = 0
        self.lag = 0.0           # the latest timed step, since the last progress
        self.lag_max = 0.0
        self.stopping = False
        self.series: list[dict[str, Any]] = []
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="edgewire-sim-connect")
        self._back: deque[SimDevice] = deque()   # handed back by a worker
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        for sim in self.sims:
            sim.offload = (lambda job, sim=sim: self.pool.submit(self._work, sim, job))

    def _work(self, sim: SimDevice, job: Any) -> None:
        """On a worker: the device's blocking part, then hand it back to the loop."""
        try:
            job()
        finally:
            self._back.append(sim)
            try:
                self._wake_w.send(b"x")
            except (BlockingIOError, OSError):
                pass   # the loop is being woken anyway

    # ------------------------------------------------------------ scheduling

    def _at(self, sim: SimDevice, t: float) -> None:
        sim.due = t
        self.n += 1
        heapq.heappush(self.heap, (t, self.n, sim))

    def _power_cut(self, sim: SimDevice) -> None:
        """A reboot without goodbye: the broker sends the will; RAM (the queue) is lost."""
        sim.reboot_pending = False
        sim.resets += 1
        sim.board.resets += 1
        sim.fold()
        self._watch(sim, None)
        sim.new_boot()

    def _run(self, sim: SimDevice, now: float) -> None:
        if sim.finished:
            return
        d = sim.dev
        assert d is not None
        if d.busy:
            return   # a worker has it; it comes back through _back
        if sim.reboot_pending:
            self._power_cut(sim)
            d = sim.dev
            assert d is not None
        try:
            ms = d.step(block=False)
        except ResetRequested:
            sim.resets += 1
            sim.fold()
            sim.new_boot()
            ms = 0
        except Exception as e:  # a crash is this device's fault, reported; the fleet goes on
            sim.error = f"{type(e).__name__}: {e}"
            sim.fold()
            sim.dev = None
            sim.finished = True
            self._watch(sim, None)
            return
        d = sim.dev
        assert d is not None
        if d.busy:
            self._watch(sim, None)   # the worker reads the socket now, not the loop
            return
        up = d.connected and not d.handshaking
        if up != sim.up:
            wall = time.time()
            if up and sim.down_at is not None:
                sim.outages.append((sim.down_at, wall))
                sim.down_at = None
            elif not up and not self.stopping:
                sim.down_at = wall
            sim.up = up
        self._watch(sim, d.sock)
        if ms < 0:
            sim.finished = True
            self._watch(sim, None)
            return
        self._at(sim, time.monotonic() + ms / 1000.0)

    def _watch(self, sim: SimDevice, sock: Any) -> None:
        """Keep the selector on the device's current socket (a new one after a reconnect)."""
        if sock is sim.sock:
            return
        if sim.sock is not None:
            try:
                self.sel.unregister(sim.sock)
            except (KeyError, ValueError, OSError):
                pass
        sim.sock = None
        if sock is not None:
            try:
                self.sel.register(sock, selectors.EVENT_READ, sim)
                sim.sock = sock
            except (KeyError, ValueError, OSError):
                pass  # closed already: the next step sees it

    # ------------------------------------------------------------ commands

    def _command(self, msg: tuple[Any, ...], conn: Any) -> None:
        kind = msg[0]
        if kind == "stop":
            self.stopping = True
            now = time.monotonic()
            for sim in self.sims:
                if sim.dev is not None and not sim.finished:
                    sim.dev.stop()
                    self._at(sim, now)
            for sim in self.sims[self.started:]:
                sim.finished = True   # never started: nothing to say goodbye to
        elif kind == "board":
            _, method, ids, args = msg
            for i in ids if ids is not None else self.by_id:
                sim = self.by_id.get(i)
                if sim is not None:
                    getattr(sim.board, method)(*args)
        elif kind == "attr":
            _, name, ids, value = msg
            for i in ids if ids is not None else self.by_id:
                if i in self.by_id:
                    setattr(self.by_id[i].board, name, value)
        elif kind == "skew":
            _, ids, ms = msg
            for i in ids if ids is not None else self.by_id:
                if i in self.by_id:
                    self.by_id[i].clock.skew_ms = int(ms)
        elif kind == "reboot":
            # A power cut: no goodbye, the broker sends the will; RAM (the queue) is lost.
            now = time.monotonic()
            for i in msg[1] if msg[1] is not None else self.by_id:
                sim = self.by_id.get(i)
                if sim is not None and sim.dev is not None and not sim.finished:
                    if sim.dev.busy:
                        sim.reboot_pending = True   # when the worker hands it back
                    else:
                        self._power_cut(sim)
                        self._at(sim, now)
        elif kind == "snapshot":
            conn.send(("snapshot", msg[1], [s.report() for s in self.sims]))

    # ------------------------------------------------------------ loop

    def progress(self, now: float) -> dict[str, Any]:
        conn = ever = sent = acked = sampled = fails = reconn = 0
        for sim in self.sims[:self.started]:
            c = sim.counters()
            conn += sim.up
            ever += c.get("connects", 0) > 0
            sent += c.get("sent_q0", 0) + c.get("sent_q1", 0) + c.get("sent_q2", 0)
            acked += c.get("acked_q0", 0) + c.get("acked_q1", 0) + c.get("acked_q2", 0)
            sampled += c.get("readings", 0)
            fails += c.get("conn_failures", 0)
            reconn += c.get("reconnects", 0)
        errors = [sim for sim in self.sims if sim.error]
        p = {"t": time.time(), "shard": self.name, "errors": len(errors),
             "error": f"{errors[0].spec.device_id}: {errors[0].error}" if errors else "", "devices": len(self.sims), "started": self.started, "connected": conn,
             "ever_connected": ever, "sent": sent, "acked": acked, "sampled": sampled, "conn_failures": fails,
             "reconnects": reconn, "lag": round(self.lag_max, 4)}
        self.lag_max = 0.0
        return p

    def run(self, conn: Any) -> None:
        raise_file_limit()
        self.sel.register(conn, selectors.EVENT_READ, None)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            self._loop(conn)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _loop(self, conn: Any) -> None:
        step = 1.0 / self.ramp if self.ramp > 0 else 0.0
        next_start = time.monotonic()
        next_progress = next_start
        stop_by = None
        while True:
            now = time.monotonic()
            # Ramp: start (connect) devices at `ramp` per second.
            while not self.stopping and self.started < len(self.sims) and now >= next_start:
                sim = self.sims[self.started]
                self.started += 1
                sim.new_boot()
                self._run(sim, now)
                next_start += step
                if step and next_start < now - 1.0:
                    next_start = now   # fell behind by a second: do not burst to catch up
            if now >= next_progress:
                p = self.progress(now)
                self.series.append(p)
                conn.send(("progress", p))
                next_progress = now + PROGRESS_S
            if self.stopping:
                if stop_by is None:
                    stop_by = now + STOP_S
                if now >= stop_by or all(s.finished for s in self.sims):
                    for s in self.sims:
                        if not s.finished and s.dev is not None and s.dev.client is not None:
                            s.dev.client.close()
                    # Workers still in a goodbye fail fast on the closed sockets; wait
                    # for them, so that the counters reported are final.
                    self.pool.shutdown(wait=True, cancel_futures=True)
                    break
            wake = next_progress
            if self.heap:
                wake = min(wake, self.heap[0][0])
            if not self.stopping and self.started < len(self.sims):
                wake = min(wake, next_start)
            for key, _ in self.sel.select(max(0.0, wake - time.monotonic())):
                if key.data is None:
                    while conn.poll():
                        self._command(conn.recv(), conn)
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    while self._back:
                        self._run(self._back.popleft(), now)
                else:
                    self._run(key.data, now)
            now = time.monotonic()
            heap = self.heap
            while heap and heap[0][0] <= now:
                t, _, sim = heapq.heappop(heap)
                if t != sim.due:
                    continue   # superseded by a later schedule
                late = now - t
                if late > self.lag_max:
                    self.lag_max = late
                self._run(sim, now)
        self.series.append(self.progress(time.monotonic()))
        conn.send(("done", [s.report() for s in self.sims], self.series))


def report_crash(conn: Any, target: Any, *args: Any) -> None:
    """target(*args), sending ("crash", traceback) to the fleet if it raises."""
    try:
        target(*args)
    except BaseException:
        try:
            conn.send(("crash", traceback.format_exc()))
        except OSError:
            pass
        raise


def shard_main(conn: Any, specs: list[DeviceSpec], ramp: float, name: int = 0) -> None:
    """Entry point of a shard's process."""
    report_crash(conn, lambda: Shard(specs, ramp=ramp, name=name).run(conn))
