"""The simulator's observer: an MQTT subscriber that counts what arrived.

It subscribes (QoS 1) to the fleet's telemetry and counts, per device and QoS,
the distinct messages it received (by (device, boot, seq)) and the duplicates,
and measures end-to-end latency for every reading: the observer's receive time
minus the device's sample time, which the envelope carries as the send time
`t` (epoch ms) and uptimes `u` (at send) and per reading (at sampling):
sample = t - (u - reading uptime). Both ends read the same host clock, so the
figure is exact up to the clocks' resolution (not so across hosts, and not for
devices in a clock-skew event: their `t` is skewed on purpose).

It must keep up with the fleet (10,000 msg/s) on the same machine, so it
reads the socket in large chunks and parses packets from a buffer (CONNECT
and SUBSCRIBE come from the SDK's encoders), acknowledges QoS 1 in batches,
and decodes with the msgpack C extension. It reconnects by itself when the
broker goes away (scenarios cut the devices, not the observer: the fault
proxy stands between the devices and the broker).
"""
from __future__ import annotations

import array
import http.client
import json
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgpack

from edgewire import wire
from edgewire.mqtt import encode_connect, encode_subscribe

MAX_SAMPLES = 1_000_000   # latencies kept for the overall percentiles (reservoir beyond)


def remaining_length(buf: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """The MQTT remaining length starting at buf[i] -> (length, index after it);
    None while incomplete; ValueError past 4 bytes."""
    rl, mul, n = 0, 1, len(buf)
    for k in range(4):
        if i + k >= n:
            return None
        c = buf[i + k]
        rl += (c & 0x7F) * mul
        if not c & 0x80:
            return rl, i + k + 1
        mul *= 128
    raise ValueError("malformed remaining length (more than 4 bytes)")


class _Seen:
    """Distinct seqs of one (device, boot): all <= hi, plus `extra` above it."""

    __slots__ = ("hi", "extra")

    def __init__(self) -> None:
        self.hi = 0
        self.extra: set[int] = set()

    def add(self, seq: int) -> bool:
        if seq <= self.hi or seq in self.extra:
            return False
        if seq == self.hi + 1:
            self.hi = seq
            ex = self.extra
            while self.hi + 1 in ex:
                self.hi += 1
                ex.discard(self.hi)
        else:
            self.extra.add(seq)
        return True


def percentiles(values: Any) -> dict[str, float] | None:
    """p50/p95/p99/max (nearest rank) of a sequence, None when empty."""
    v = sorted(values)
    if not v:
        return None
    n = len(v)

    def rank(p: float) -> float:
        return float(v[min(n - 1, max(0, int(p * n + 0.999999) - 1))])

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": float(v[-1]), "count": n}


class Observer:
    """Counts the telemetry of `devices` ({device id: {stream: qos}})."""

    def __init__(self, host: str, port: int, devices: Mapping[str, Mapping[str, int]],
                 client_id: str | None = None, tls_ca: bytes | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.auth = auth   # (user, password) of the MQTT login; None: anonymous
        self._tls: ssl.SSLContext | None = None
        if tls_ca is not None:   # verify the broker against this CA (PEM or DER)
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            pem = tls_ca.lstrip().startswith(b"-----")
            self._tls.load_verify_locations(cadata=tls_ca.decode("ascii") if pem else tls_ca)
        self.devices = devices
        self.lock = threading.Lock()
        self.received: dict[str, list[int]] = {}      # device -> distinct per QoS [q0, q1, q2]
        self.duplicates: dict[str, list[int]] = {}    # device -> duplicates per QoS
        self.readings = 0
        self.foreign = 0          # telemetry of devices not in this fleet (or shard)
        self.bad = 0              # payloads that did not decode
        self._seen: dict[tuple[str, int], _Seen] = {}
        self.latency = array.array("d")
        self._n_lat = 0
        self._rng = random.Random(1)
        self.per_second: dict[int, list[float]] = {}   # epoch second -> latencies (ms)
        self.received_per_second: dict[int, int] = {}
        self.client_id = client_id or f"edgewire-sim-observer-{random.SystemRandom().randrange(1 << 30):x}"
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="edgewire-sim-observer", daemon=True)
        self.subscribed_at: float | None = None   # epoch s of the first SUBACK
        self.connects = 0

    def start(self, timeout: float = 5.0) -> "Observer":
        """Connect and subscribe; waits up to `timeout` s for the SUBACK. A broker
        that is not there yet is retried in the background (the report says when
        the observer subscribed after the devices began to send)."""
        self._thread.start()
        self._subscribed.wait(timeout)
        return self

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def stop(self) -> None:
        self._stop.set()
        s = self._sock
        if s is not None and self._tls is None:  # TLS: the reader thread says goodbye (one thread per SSL object)
            try:
                s.sendall(b"\xe0\x00")
            except OSError:
                pass
        self._thread.join(5.0)

    # ------------------------------------------------------------ transport

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._session()
                delay = 0.1
            except (OSError, ValueError, IndexError):
                pass
            finally:
                s, self._sock = self._sock, None
                if s is not None:
                    s.close()
            self._stop.wait(delay)
            delay = min(2.0, delay * 2)

    def _session(self) -> None:
        s = socket.create_connection((self.host, self.port), timeout=5.0)
        self._sock = s
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            s = self._sock = self._tls.wrap_socket(s, server_hostname=self.host)
        user, password = self.auth if self.auth is not None else (None, None)
        s.sendall(encode_connect(self.client_id, 30, True, user, password))
        s.sendall(encode_subscribe(1, wire.ROOT + "/+/" + wire.KIND_TELEMETRY, 1))
        buf = bytearray()
        last_tx = time.monotonic()
        connacked = False
        while not self._stop.is_set():
            # a TLS socket may hold decrypted bytes select() cannot see
            r = self._tls is not None and s.pending() or select.select([s], [], [], 1.0)[0]
            now = time.monotonic()
            out = bytearray()
            if r:
                chunk = s.recv(1 << 18)
                if not chunk:
                    raise OSError("the broker closed the connection")
                buf += chunk
                pos = self._parse(buf, out)
                if pos == -1:
                    connacked = True
                    self.connects += 1
                    pos = self._parse(buf, out)
                del buf[:pos]
                if self._suback and connacked and not self._subscribed.is_set():
                    self.subscribed_at = time.time()
                    self._subscribed.set()
            if now - last_tx >= 15.0:
                out += b"\xc0\x00"   # PINGREQ
            if out:
                s.sendall(out)
                last_tx = now
        if self._tls is not None:
            s.sendall(b"\xe0\x00")   # DISCONNECT

    _suback = False

    def _parse(self, buf: bytearray, out: bytearray) -> int:
        """Handle the whole packets at the start of buf; -> bytes used (-1 right
        after an accepting CONNACK, which is removed). Acks go to `out`."""
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            got = remaining_length(buf, pos + 1)
            if got is None or got[1] + got[0] > n:
                break   # the rest of this packet has not come yet
            rl, i = got
            typ = b0 >> 4
            if typ == 3:
                qos = (b0 >> 1) & 3
                tl = (buf[i] << 8) | buf[i + 1]
                topic = bytes(buf[i + 2:i + 2 + tl]).decode("utf-8", "replace")
                j = i + 2 + tl
                if qos:
                    out += bytes((0x40, 2, buf[j], buf[j + 1]))
                    j += 2
                self._on_message(topic, bytes(buf[j:i + rl]))
            elif typ == 2:
                if rl != 2 or buf[i + 1] != 0:
                    raise OSError("the broker refused the observer (CONNACK %d)" % buf[i + 1])
                del buf[:i + rl]
                return -1
            elif typ == 9:
                self._suback = True
            pos = i + rl
        return pos

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = time.time() * 1000.0
        parts = topic.split("/")
        if len(parts) != 4:
            return
        dev = parts[2]
        streams = self.devices.get(dev)
        if streams is None:
            self.foreign += 1
            return
        try:
            env = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            key = (dev, int(env["b"]))
            seq = int(env["s"])
            t = env.get("t")
            u = int(env["u"])
            rs = env["r"]
            qos = streams.get(rs[0][0], 1) if rs else 1
        except (ValueError, KeyError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError):
            self.bad += 1
            return
        samples = [t - (u - int(r[2])) for r in rs] if isinstance(t, int) else []
        self._count(dev, key[1], seq, qos, len(rs), samples, now)

    def _count(self, dev: str, boot: int, seq: int, qos: int, readings: int, samples: list[float],
               now: float) -> None:
        """One message of `dev` arrived at `now` (epoch ms); samples: its readings'
        sample times (epoch ms)."""
        with self.lock:
            key = (dev, boot)
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen()
            if not seen.add(seq):
                d = self.duplicates.get(dev)
                if d is None:
                    d = self.duplicates[dev] = [0, 0, 0]
                d[qos] += 1
                return
            got = self.received.get(dev)
            if got is None:
                got = self.received[dev] = [0, 0, 0]
            got[qos] += 1
            self.readings += readings
            sec = int(now // 1000)
            self.received_per_second[sec] = self.received_per_second.get(sec, 0) + 1
            if samples:
                bucket = self.per_second.setdefault(sec, [])
                for sample in samples:
                    lat = now - sample
                    bucket.append(lat)
                    self._n_lat += 1
                    if len(self.latency) < MAX_SAMPLES:
                        self.latency.append(lat)
                    else:  # reservoir: every latency seen has the same chance to stay
                        j = self._rng.randrange(self._n_lat)
                        if j < MAX_SAMPLES:
                            self.latency[j] = lat

    def settle(self, expected: int | None = None, quiet: float = 1.0, timeout: float = 30.0) -> None:
        """Wait until `expected` distinct messages came, or none for `quiet` s."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.total_received
            if expected is not None and n >= expected:
                return
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    @property
    def total_received(self) -> int:
        with self.lock:
            return sum(sum(v) for v in self.received.values())


class GatewayObserver(Observer):
    """The observer reading the gateway's Server-Sent Events stream
    (`GET /api/v1/stream`, docs/api.md) instead of the broker: what arrived is
    then what the gateway accepted (it removes duplicates itself), and latency
    runs from the sample time (`ts`) to the event's arrival here. A dropped
    stream resumes with Last-Event-ID."""

    def __init__(self, gateway_url: str, devices: Mapping[str, Mapping[str, int]]) -> None:
        u = urlsplit(gateway_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"gateway URL {gateway_url!r}: expected http://host:port")
        Observer.__init__(self, u.hostname, u.port or 80, devices)
        self.base = gateway_url.rstrip("/")
        self.last_id: str | None = None
        self.gaps = 0

    def _session(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        try:
            conn.request("GET", "/api/v1/stream", headers=headers)
            r = conn.getresponse()
            if r.status != 200:
                raise OSError(f"the gateway answered {r.status} to GET /api/v1/stream")
            self.connects += 1
            if not self._subscribed.is_set():
                self.subscribed_at = time.time()
                self._subscribed.set()
            event = data = ""
            ident: str | None = None
            while not self._stop.is_set():
                raw = r.readline()
                if not raw:
                    raise OSError("the gateway closed the stream")
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line.startswith("id:"):
                    ident = line[3:].strip()
                elif not line:
                    if event == "reading" and data:
                        self._reading(data)
                    elif event == "gap":
                        self.gaps += 1
                    if ident is not None:
                        self.last_id = ident
                    event, data, ident = "", "", None
        finally:
            conn.close()

    def _reading(self, data: str) -> None:
        now = time.time() * 1000.0
        try:
            ev = json.loads(data)
            dev = ev["device"]
            streams = self.devices.get(dev)
            if streams is None:
                self.foreign += 1
                return
            qos = streams.get(ev["stream"], 1)
            ts = ev.get("ts")
            self._count(dev, int(ev["boot"]), int(ev["seq"]), qos, 1,
                        [float(ts)] if isinstance(ts, (int, float)) else [], now)
        except (ValueError, KeyError, TypeError):
            self.bad += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
