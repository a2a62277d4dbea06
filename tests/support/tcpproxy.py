"""The smallest fault-injecting TCP proxy the backend tests need, on loopback,
in a thread: `outage(True)` resets every connection and refuses new ones
(the backend is unreachable); `swallow(True)` holds every byte either way on
live connections (a backend that never answers), and `swallow(False)`
releases them in order. Stand-in until helper C's edgewire.sim.proxy (with
latency, loss and bandwidth faults) is on main; then tests use that one."""
from __future__ import annotations

import selectors
import socket
import struct
import threading


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.lock = threading.Lock()
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.held: dict[socket.socket, bytearray] = {}   # destination -> bytes held while swallowing
        self._outage = False
        self._swallow = False
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.accepted = 0
        self.refused = 0
        self.thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self.thread.start()

    def outage(self, on: bool) -> None:
        with self.lock:
            self._outage = on
        self._wake_w.send(b"o")

    def swallow(self, on: bool) -> None:
        with self.lock:
            self._swallow = on
        self._wake_w.send(b"s")

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"q")
        self.thread.join(10)

    def _drop(self, s: socket.socket) -> None:
        peer = self.pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self.pairs.pop(x, None)
            self.held.pop(x, None)
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            _reset(x)

    def _send(self, dst: socket.socket, data: bytes) -> None:
        dst.setblocking(True)   # loopback, small amounts: a blocking send keeps order simply
        try:
            dst.sendall(data)
        finally:
            dst.setblocking(False)

    def _run(self) -> None:
        while not self._stop:
            with self.lock:
                outage, swallow = self._outage, self._swallow
            if outage:
                for s in list(self.pairs):
                    self._drop(s)
            if not swallow and self.held:
                for dst, data in list(self.held.items()):
                    self.held.pop(dst, None)
                    try:
                        self._send(dst, bytes(data))
                    except OSError:
                        self._drop(dst)
            for key, _ in self.sel.select(1.0):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if key.data == "wake":
                    s.recv(64)
                elif key.data is None:
                    try:
                        client, _ = self.listener.accept()
                    except OSError:
                        continue
                    if outage:
                        self.refused += 1
                        _reset(client)
                        continue
                    try:
                        up = socket.create_connection(self.upstream, timeout=5)
                    except OSError:
                        _reset(client)
                        continue
                    self.accepted += 1
                    for x in (client, up):
                        x.setblocking(False)
                        self.sel.register(x, selectors.EVENT_READ, "conn")
                    self.pairs[client], self.pairs[up] = up, client
                elif s in self.pairs:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(s)
                        continue
                    dst = self.pairs[s]
                    if swallow:
                        self.held.setdefault(dst, bytearray()).extend(data)
                        continue
                    try:
                        self._send(dst, data)
                    except OSError:
                        self._drop(s)
        for s in list(self.pairs):
            self._drop(s)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
