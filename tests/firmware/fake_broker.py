"""A scripted MQTT peer on a real socket: each accepted connection plays the next
scenario (bad CONNACK, garbage, truncation, oversize, silence...), the last one
repeats and behaves like a broker (CONNACK, SUBACK, PUBACK/PUBREC/PUBCOMP, PINGRESP)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable

GOOD_CONNACK = b"\x20\x02\x00\x00"


def read_packet(s: socket.socket) -> tuple[int, bytes] | None:
    """One MQTT packet from the client: (first byte, body); None when it closed."""
    def exact(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf
    h = exact(1)
    if h is None:
        return None
    rl, shift = 0, 0
    while True:
        b = exact(1)
        if b is None:
            return None
        rl |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = exact(rl) if rl else b""
    return None if body is None else (h[0], body)


class FakeBroker:
    def __init__(self, scenarios: list[Callable[[socket.socket], None]]) -> None:
        self.scenarios = scenarios
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.connections = 0
        self.published: list[tuple[str, int, bytes]] = []
        self.connects: list[bytes] = []
        self.refuse_subscriptions = 0  # good(): answer this many SUBSCRIBEs with SUBACK 0x80
        self.subscribes = 0
        self.done = threading.Event()
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.t = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> "FakeBroker":
        self.t.start()
        return self

    def close(self) -> None:
        self.done.set()
        self.srv.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(2)
        self.t.join(2)

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            self.socks.append(s)
            i = self.connections
            self.connections += 1
            play = self.scenarios[min(i, len(self.scenarios) - 1)]
            t = threading.Thread(target=self._run, args=(play, s), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, play: Callable[[socket.socket], None], s: socket.socket) -> None:
        try:
            s.settimeout(10)
            pkt = read_packet(s)  # the client's CONNECT
            if pkt is None or pkt[0] != 0x10:
                return
            self.connects.append(pkt[1])
            play(s)
        except OSError:
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    # ------------------------------------------------------------ scenarios

    def send_then_close(self, data: bytes) -> Callable[[socket.socket], None]:
        def play(s: socket.socket) -> None:
            s.sendall(data)
            time.sleep(0.05)
        return play

    def send_then_hold(self, data: bytes) -> Callable[[socket.socket], None]:
        """Send and go quiet with the socket open: only the client's deadline ends it."""
        def play(s: socket.socket) -> None:
            if data:
                s.sendall(data)
            while not self.done.is_set():
                try:
                    if not s.recv(4096):
                        return
                except socket.timeout:
                    continue
        return play

    def good(self, s: socket.socket) -> None:
        s.sendall(GOOD_CONNACK)
        while not self.done.is_set():
            pkt = read_packet(s)
            if pkt is None:
                return
            first, body = pkt
            typ = first >> 4
            if typ == 3:
                qos = (first >> 1) & 3
                tl = (body[0] << 8) | body[1]
                topic = body[2:2 + tl].decode()
                pos = 2 + tl
                if qos:
                    pid = body[pos:pos + 2]
                    pos += 2
                    s.sendall((b"\x40\x02" if qos == 1 else b"\x50\x02") + pid)
                self.published.append((topic, qos, body[pos:]))
            elif typ == 6:  # PUBREL
                s.sendall(b"\x70\x02" + body[:2])
            elif typ == 8:  # SUBSCRIBE: grant what was asked, or refuse
                self.subscribes += 1
                if self.refuse_subscriptions > 0:
                    self.refuse_subscriptions -= 1
                    s.sendall(b"\x90\x03" + body[:2] + b"\x80")
                else:
                    s.sendall(b"\x90\x03" + body[:2] + body[-1:])
            elif typ == 12:
                s.sendall(b"\xd0\x00")
            elif typ == 14:
                return


class Proxy:
    """A TCP proxy between a device and a real broker that can cut every live
    connection at once (both sides closed, whatever was in flight), and can cut at
    a chosen point of a QoS 2 exchange: arm("publish") forwards the device's next
    QoS 2 PUBLISH to the broker, withholds the answer and cuts; arm("pubrel")
    does the same with the next PUBREL; arm("pubrel-lost") swallows the next PUBREL
    and cuts. drop_to_device: packet types never passed to the device (6: PUBREL)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.drop_to_device: set[int] = set()
        self.armed: str | None = None
        self.cuts = 0
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.srv.close()
        self.cut()

    def arm(self, point: str) -> None:
        assert point in ("publish", "pubrel", "pubrel-lost")
        self.armed = point

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
            if pairs:
                self.cuts += 1
        for d, b, _ in pairs:
            for s in (d, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                d, _ = self.srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.broker_port), timeout=5)
            except OSError:
                d.close()
                continue
            b.settimeout(None)
            frozen = threading.Event()  # set: nothing more goes to the device
            with self.lock:
                self.pairs.append((d, b, frozen))
            threading.Thread(target=self._pump, args=(d, b, frozen, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, d, frozen, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, frozen: threading.Event, up: bool) -> None:
        try:
            while True:
                pkt = read_packet(src)
                if pkt is None:
                    break
                first, body = pkt
                typ = first >> 4
                raw = bytes([first]) + _remaining_length(len(body)) + body
                if up:
                    point = self.armed
                    hit = (point == "publish" and typ == 3 and (first >> 1) & 3 == 2) or \
                          (point in ("pubrel", "pubrel-lost") and typ == 6)
                    if hit:
                        self.armed = None
                        frozen.set()
                        if point != "pubrel-lost":
                            dst.sendall(raw)
                        time.sleep(0.2)  # let the broker act on it; its answer goes nowhere
                        self.cut()
                        return
                    dst.sendall(raw)
                elif typ not in self.drop_to_device and not frozen.is_set():
                    dst.sendall(raw)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
