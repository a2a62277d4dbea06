"""A fault-injecting TCP proxy between simulated devices and the broker.

The simulator runs it itself on loopback (no root, no tc): the devices connect
to the proxy, the proxy to the broker, and the observer straight to the
broker, so it keeps counting through every fault. The proxy learns which device
a connection belongs to from the client id in its MQTT CONNECT packet, so
faults can hit a group or a fraction of one. Faults:

  outage        the broker is unreachable: live connections are reset, new
                ones reset at once (what devices see when a broker dies)
  partition     "drop": nothing passes either way, as when a route is lost (the
                device notices through its own timeouts: a missing PINGRESP,
                CONNACK or PUBACK); "reject": connections are reset and new ones
                refused (a firewall's REJECT)
  latency_ms, jitter_ms   each chunk is held that long (jitter: +- uniform)
  loss          a share of chunks (0..1) is held one retransmission timeout
                (200 ms, Linux's minimum RTO) more: what a lost TCP segment
                costs, since TCP itself never loses data
  kbps          bandwidth per connection and direction

TCP order is kept: a chunk never overtakes the one before it. The proxy runs a
selector loop in its own process (edgewire.sim.scenario starts it), controlled
over a multiprocessing Connection:
    ("outage", bool)  ("rule", ids | None, {field: value | None})  ("stats",)

`ProxyProcess` runs one from a test (or any script) and waits for each change
to take effect. Connections that are not MQTT (AMQP, gRPC) get the rules for
all (`ids` None): `outage` cuts a backend, `partition` "drop" swallows its
answers (a backend that never confirms) until lifted.
"""
from __future__ import annotations

import heapq
import itertools
import random
import selectors
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edgewire.sim.engine import raise_file_limit, report_crash
from edgewire.sim.observer import remaining_length

RTO_S = 0.2
CHUNK = 65536
FIELDS = ("partition", "latency_ms", "jitter_ms", "loss", "kbps")
INF = float("inf")


@dataclass
class _Dir:
    """One direction of one connection: chunks waiting for their release time."""

    q: deque[tuple[float, bytes]] = field(default_factory=deque)
    out: bytearray = field(default_factory=bytearray)
    last: float = 0.0       # release time of the newest chunk (order is kept)
    free_at: float = 0.0    # bandwidth: when the link is free again
    writing: bool = False


class _Conn:
    __slots__ = ("dev", "up", "device", "hello", "to_up", "to_dev", "closed")

    def __init__(self, dev: socket.socket, up: socket.socket) -> None:
        self.dev = dev
        self.up = up
        self.device: str | None = None
        self.hello = bytearray()
        self.to_up = _Dir()
        self.to_dev = _Dir()
        self.closed = False


def client_id_of(data: bytes | bytearray) -> str | None:
    """The client id of an MQTT CONNECT at the start of data; None while
    incomplete, '' when it is not a CONNECT."""
    if not data:
        return None
    if data[0] != 0x10:
        return ""
    try:
        got = remaining_length(data, 1)
    except ValueError:
        return ""
    if got is None:
        return None
    i = got[1]
    if len(data) < i + 2:
        return None
    pn = struct.unpack_from("!H", data, i)[0]
    j = i + 2 + pn + 4   # protocol name, level, flags, keepalive
    if len(data) < j + 2:
        return None
    n = struct.unpack_from("!H", data, j)[0]
    if len(data) < j + 2 + n:
        return None
    return bytes(data[j + 2:j + 2 + n]).decode("utf-8", "replace")


def _reset(s: socket.socket) -> None:
    """Close with RST, as a crashed peer's kernel does."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0, seed: int = 1) -> None:
        self.upstream = upstream
        self.listener = socket.create_server((host, port), backlog=4096, reuse_port=False)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.conns: set[_Conn] = set()
        self.outage = False
        self.all_rule: dict[str, Any] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.rng = random.Random(seed)
        self.timers: list[tuple[float, int, _Conn]] = []   # (release time, n, connection)
        self._n = itertools.count()
        self.stats = {"accepted": 0, "refused": 0, "cut": 0, "held_chunks": 0, "delayed_by_loss": 0}

    # ------------------------------------------------------------ rules

    def rule(self, device: str | None) -> dict[str, Any]:
        r = dict(self.all_rule)
        if device is not None:
            for k, v in self.rules.get(device, {}).items():
                r[k] = v
        return r

    def set_rule(self, ids: list[str] | None, changes: dict[str, Any]) -> None:
        targets = [self.all_rule] if ids is None else [self.rules.setdefault(i, {}) for i in ids]
        for r in targets:
            for k, v in changes.items():
                if v is None:
                    r.pop(k, None)
                else:
                    r[k] = v
        now = time.monotonic()
        for c in list(self.conns):
            rl = self.rule(c.device)
            if rl.get("partition") == "reject":
                self._close(c, reset=True)
                self.stats["cut"] += 1
            elif rl.get("partition") != "drop":
                for d in (c.to_up, c.to_dev):   # a lifted partition releases what it held
                    if d.q and d.q[-1][0] == INF:
                        d.q = deque((min(t, now), b) for t, b in d.q)
                        d.last = now
                        heapq.heappush(self.timers, (now, next(self._n), c))

    def set_outage(self, on: bool) -> None:
        self.outage = bool(on)
        if on:
            for c in list(self.conns):
                self._close(c, reset=True)
                self.stats["cut"] += 1

    # ------------------------------------------------------------ data

    def _close(self, c: _Conn, reset: bool = False) -> None:
        if c.closed:
            return
        c.closed = True
        self.conns.discard(c)
        for s in (c.dev, c.up):
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if reset:
                _reset(s)
            else:
                s.close()

    def _accept(self) -> None:
        for _ in range(256):
            try:
                s, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if self.outage:
                self.stats["refused"] += 1
                _reset(s)
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                self.stats["refused"] += 1
                _reset(s)
                continue
            for x in (s, up):
                x.setblocking(False)
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(s, up)
            self.conns.add(c)
            self.stats["accepted"] += 1
            self.sel.register(s, selectors.EVENT_READ, (c, "dev"))
            self.sel.register(up, selectors.EVENT_READ, (c, "up"))

    def _queue(self, c: _Conn, d: _Dir, data: bytes, now: float) -> None:
        r = self.rule(c.device)
        if r.get("partition") == "drop":
            t = INF
            self.stats["held_chunks"] += 1
        else:
            t = now + r.get("latency_ms", 0) / 1000.0
            j = r.get("jitter_ms", 0)
            if j:
                t += self.rng.uniform(-j, j) / 1000.0
            if r.get("loss", 0) and self.rng.random() < r["loss"]:
                t += RTO_S
                self.stats["delayed_by_loss"] += 1
            kbps = r.get("kbps", 0)
            if kbps:
                t = max(t, d.free_at) + len(data) * 8 / (kbps * 1000.0)
                d.free_at = t
        t = max(t, d.last)   # never overtake
        d.last = t
        d.q.append((t, data))
        if t != INF:
            heapq.heappush(self.timers, (t, next(self._n), c))

    def _read(self, c: _Conn, side: str, now: float) -> None:
        src = c.dev if side == "dev" else c.up
        try:
            data = src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(c, reset=False)
            return
        if side == "dev":
            if c.device is None:
                c.hello += data
                cid = client_id_of(c.hello)
                if cid is None:
                    return
                c.device = cid or None
                data, c.hello = bytes(c.hello), bytearray()
                if self.rule(c.device).get("partition") == "reject":
                    self.stats["refused"] += 1
                    self._close(c, reset=True)
                    return
            self._queue(c, c.to_up, data, now)
        else:
            self._queue(c, c.to_dev, data, now)

    def _flush(self, c: _Conn, now: float) -> None:
        for d, dst in ((c.to_up, c.up), (c.to_dev, c.dev)):
            while d.q and d.q[0][0] <= now:
                d.out += d.q.popleft()[1]
            if d.out:
                try:
                    n = dst.send(d.out)
                    del d.out[:n]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._close(c, reset=True)
                    return
            want = bool(d.out)
            if want != d.writing:
                d.writing = want
                ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
                side = "up" if dst is c.up else "dev"
                try:
                    self.sel.modify(dst, ev, (c, side))
                except (KeyError, ValueError):
                    pass

    def run(self, conn: Any) -> None:
        raise_file_limit()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(conn, selectors.EVENT_READ, "control")
        conn.send(("port", self.port))
        while True:
            now = time.monotonic()
            wake = self.timers[0][0] if self.timers else INF
            timeout = 1.0 if wake == INF else max(0.0, min(1.0, wake - now))
            touched: set[_Conn] = set()
            for key, ev in self.sel.select(timeout):
                if key.data is None:
                    self._accept()
                elif key.data == "control":
                    while conn.poll():
                        msg = conn.recv()
                        if msg[0] == "quit":
                            for c in list(self.conns):
                                self._close(c)
                            conn.send(("stats", dict(self.stats)))
                            return
                        if msg[0] == "outage":
                            self.set_outage(msg[1])
                        elif msg[0] == "rule":
                            self.set_rule(msg[1], msg[2])
                        elif msg[0] == "stats":
                            conn.send(("stats", dict(self.stats)))
                else:
                    c, side = key.data
                    if c.closed:
                        continue
                    if ev & selectors.EVENT_READ:
                        self._read(c, side, time.monotonic())
                    touched.add(c)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                touched.add(heapq.heappop(self.timers)[2])
            for c in touched:
                if not c.closed:
                    self._flush(c, now)


def proxy_main(conn: Any, upstream: tuple[str, int], seed: int) -> None:
    """Entry point of the proxy's process."""
    report_crash(conn, lambda: FaultProxy(upstream, seed=seed).run(conn))


class ProxyProcess:
    """A FaultProxy in its own process, driven synchronously: each call returns once the proxy
    applied it (the stats request behind it is answered in order)."""

    def __init__(self, upstream: tuple[str, int], seed: int = 1) -> None:
        import multiprocessing

        mine, theirs = multiprocessing.Pipe()
        self._proc = multiprocessing.get_context("spawn").Process(
            target=proxy_main, args=(theirs, upstream, seed), name="edgewire-proxy", daemon=True)
        self._proc.start()
        theirs.close()
        self._ctl = mine
        msg = self._ctl.recv() if self._ctl.poll(60) else ("crash", "the fault proxy did not start within 60 s")
        if msg[0] != "port":
            self.close()
            raise RuntimeError(f"the fault proxy failed: {msg[1]}")
        self.port: int = int(msg[1])

    def stats(self) -> dict[str, Any]:
        self._ctl.send(("stats",))
        if not self._ctl.poll(30):
            raise RuntimeError("the fault proxy does not answer")
        msg = self._ctl.recv()
        if msg[0] != "stats":
            raise RuntimeError(f"the fault proxy failed: {msg[1]}")
        return dict(msg[1])

    def outage(self, on: bool) -> None:
        self._ctl.send(("outage", on))
        self.stats()

    def rule(self, ids: list[str] | None, changes: dict[str, Any]) -> None:
        self._ctl.send(("rule", ids, changes))
        self.stats()

    def close(self) -> None:
        try:
            self._ctl.send(("quit",))
            self._ctl.poll(10)
        except (OSError, EOFError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._ctl.close()
