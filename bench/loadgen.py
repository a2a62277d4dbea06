"""The relay benchmark's load and its receivers: MQTT packets built by hand,
the raw-socket publisher, and the receiver processes (raw-socket counter,
gmqtt subscriber, the gateway's WebSocket client), each run as its own process
by bench/relay.py so that its CPU time is measured on its own.

Every receiver process speaks the same small protocol with relay.py: it prints
a JSON line whenever its count changed (at most every 100 ms) and reads
commands on stdin: `arm` starts the measured window, `quit` prints the final
line and exits. Times are time.monotonic() (CLOCK_MONOTONIC, comparable
between processes on one machine).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from edgewire import wire  # the one protocol implementation (firmware/edgewire/wire.py)

PAYLOAD_BYTES = 100
SEQ_BASE = 1 << 24  # every seq from here to 2**32-1 is encoded as uint32 (0xce): fixed width
BOOT = 7


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


def connect_packet(client_id: str, keepalive: int = 60, clean: bool = True) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02 if clean else 0x00]) + struct.pack(">H", keepalive) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def subscribe_packet(pid: int, topic_filter: str, qos: int) -> bytes:
    body = struct.pack(">H", pid) + _str(topic_filter) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, pid: int = 1) -> bytes:
    body = _str(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


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
    """A PUBLISH packet for one device whose seq (and, at QoS 1, packet id) can
    be patched in place. The patched bytes are exactly what
    wire.encode_telemetry produces for that seq (checked at construction), so
    every message is a valid, distinct envelope."""

    def __init__(self, device: str, qos: int = 0) -> None:
        if qos not in (0, 1):
            raise BenchError(f"QoS {qos}: the publisher sends QoS 0 or 1")
        self.device = device
        self.qos = qos
        self.topic = wire.topic(device, wire.KIND_TELEMETRY)
        probe = SEQ_BASE + 0x00ABCDEF
        self.packet = publish_packet(self.topic, telemetry_payload(device, probe), qos, 0x5A5A)
        marker = b"\xa1s\xce" + struct.pack(">I", probe)
        at = self.packet.find(marker)
        if at < 0 or self.packet.find(marker, at + 1) >= 0:
            raise BenchError("sequence number not found exactly once in the template packet")
        self.offset = at + 3
        self.pid_offset = self.packet.index(self.topic.encode()) + len(self.topic) if qos else -1
        for seq in (SEQ_BASE, SEQ_BASE + 1, 0xFFFFFFFF):
            if self.build(seq, 0x5A5A) != publish_packet(self.topic, telemetry_payload(device, seq), qos, 0x5A5A):
                raise BenchError("patched template differs from wire.encode_telemetry output")

    def build(self, seq: int, pid: int = 1) -> bytes:
        b = bytearray(self.packet)
        struct.pack_into(">I", b, self.offset, seq)
        if self.qos:
            struct.pack_into(">H", b, self.pid_offset, pid)
        return bytes(b)


def device_ids(n: int) -> list[str]:
    return [f"bench-{i:03d}" for i in range(n)]


# ---------------------------------------------------------------- publisher

def connect(port: int, client_id: str, host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
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


def run_publisher(port: int, seconds: float, devices: int, first_seq: int, max_messages: int,
                  qos: int = 0) -> dict[str, Any]:
    """Write PUBLISH packets as fast as the socket takes them, round-robin over
    `devices`, each with its own increasing seq. Bounded by time and count.
    At QoS 1 a thread reads (and counts) the broker's PUBACKs, and packet ids
    cycle through 1..65535."""
    templates = [PacketTemplate(d, qos) for d in device_ids(devices)]
    size = len(templates[0].packet)
    per_chunk = 64 * devices
    chunk = bytearray(b"".join(t.packet for t in templates) * (per_chunk // devices))
    offsets = [(i * size + templates[i % devices].offset) for i in range(per_chunk)]
    pid_offsets = [(i * size + templates[i % devices].pid_offset) for i in range(per_chunk)]
    s = connect(port, f"bench-pub-{os.getpid()}")
    s.settimeout(None)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    acked = [0]

    def read_acks() -> None:
        tail = 0
        while True:
            try:
                b = s.recv(1 << 16)
            except OSError:
                return
            if not b:
                return
            tail += len(b)
            acked[0] += tail // 4  # PUBACK is exactly 4 bytes: 40 02 <pid>
            tail %= 4

    reader = threading.Thread(target=read_acks, daemon=True) if qos else None
    if reader is not None:
        reader.start()
    sent = 0
    seq = first_seq
    pid = 0
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
        if qos:
            for i in range(n):
                pid = pid % 65535 + 1
                pack(">H", chunk, pid_offsets[i], pid)
        s.sendall(memoryview(chunk)[: n * size])
        sent += n
        seq += n // devices
    elapsed = time.monotonic() - t0
    if reader is not None:  # every PUBACK in before DISCONNECT, bounded
        end = time.monotonic() + 10
        while acked[0] < sent and time.monotonic() < end:
            time.sleep(0.01)
    s.sendall(DISCONNECT)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    if reader is not None:
        reader.join(2)
    s.close()
    return {"sent": sent, "seconds": elapsed, "first_seq": first_seq, "last_seq": seq - 1, "acked": acked[0]}


def send_probe(port: int, device: str, seq: int) -> None:
    """One telemetry message from a separate probe device (to learn that the
    receiving side is subscribed before the measured traffic starts)."""
    s = connect(port, f"bench-probe-{os.getpid()}")
    s.sendall(publish_packet(wire.topic(device, wire.KIND_TELEMETRY), telemetry_payload(device, seq)) + DISCONNECT)
    s.close()


# ---------------------------------------------------------------- receivers (helper processes)

class Tally:
    """A receiver's counts and its measured window; per-device seq ranges
    where the receiver sees them (the WebSocket client), to account for loss."""

    def __init__(self) -> None:
        self.st: dict[str, Any] = {"events": 0, "measured": 0, "first": None, "last": None, "ready": False,
                                   "armed": False, "dropped": 0, "gaps": 0}
        self.armed_at = 0
        self.seqs: dict[str, list[int]] = {}  # device -> [count, min, max] inside the window

    def add(self, n: int) -> None:
        st = self.st
        st["events"] += n
        if st["armed"]:
            now = time.monotonic()
            st["measured"] = st["events"] - self.armed_at
            if st["first"] is None:
                st["first"] = now
            st["last"] = now

    def emit(self, final: bool = False) -> None:
        out = dict(self.st)
        if final:
            out["seqs"] = self.seqs
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()

    def arm(self) -> None:
        self.armed_at = self.st["events"]
        self.seqs.clear()
        self.st.update(armed=True, first=None, last=None, measured=0)
        self.emit()


async def _serve(tally: Tally, receive: Callable[[], Any]) -> None:
    """Run `receive()` with the stdin command reader and the reporter."""
    quit_ev = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def stdin_reader() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            cmd = line.strip()
            if cmd == "arm":
                tally.arm()
            elif cmd == "quit" or not line:
                quit_ev.set()
                return

    async def reporter() -> None:
        shown = -1
        while not quit_ev.is_set():
            await asyncio.sleep(0.1)
            if tally.st["events"] != shown:
                shown = tally.st["events"]
                tally.emit()

    tasks = [asyncio.create_task(stdin_reader()), asyncio.create_task(reporter()),
             asyncio.create_task(receive())]
    done, _ = await asyncio.wait([tasks[0], tasks[2]], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if t is tasks[2] and t.exception() is not None:
            sys.stderr.write(f"receiver failed: {t.exception()!r}\n")
    tally.emit(final=True)
    os._exit(0)  # the stdin reader thread may still block in readline


class _RawCounter(asyncio.Protocol):
    """Counts PUBLISH packets by MQTT framing alone; at QoS 1 answers each with
    PUBACK (all of one read in one write)."""

    def __init__(self, tally: Tally, qos: int, topic_filter: str) -> None:
        self.tally = tally
        self.qos = qos
        self.filter = topic_filter
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(connect_packet(f"bench-raw-{os.getpid()}") + subscribe_packet(1, self.filter, self.qos))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = len(buf)
        i = 0
        count = 0
        acks: list[bytes] = []
        while i + 2 <= n:
            h = buf[i]
            rl = 0
            shift = 0
            j = i + 1
            while j < n:
                b = buf[j]
                rl |= (b & 0x7F) << shift
                j += 1
                if not b & 0x80:
                    break
                shift += 7
            else:
                break
            end = j + rl
            if end > n:
                break
            t = h >> 4
            if t == 3:
                count += 1
                if h & 0x06:
                    tl = (buf[j] << 8) | buf[j + 1]
                    p = j + 2 + tl
                    acks.append(b"\x40\x02" + buf[p:p + 2])
            elif t == 9:
                self.tally.st["ready"] = True
                self.tally.emit()
            i = end
        self.buf = buf[i:]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))
        if count:
            self.tally.add(count)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def run_rawsub(port: int, qos: int, topic_filter: str) -> int:
    tally = Tally()

    async def receive() -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _RawCounter(tally, qos, topic_filter), "127.0.0.1", port)
        await proto.closed

    asyncio.run(_serve(tally, receive))
    return 0


def run_gmqttsub(port: int, qos: int, topic_filter: str) -> int:
    """gmqtt (MQTT 3.1.1, its default acknowledgement: PUBACK before the
    callback) counting messages in its on_message callback."""
    import logging

    import gmqtt

    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    tally = Tally()

    async def receive() -> None:
        from gmqtt.mqtt.constants import MQTTv311

        c = gmqtt.Client(f"bench-gmqtt-{os.getpid()}")
        add = tally.add

        def on_message(client: Any, topic: str, payload: bytes, q: int, properties: Any) -> int:
            add(1)
            return 0

        def on_subscribe(*a: Any) -> None:
            tally.st["ready"] = True
            tally.emit()

        c.on_message = on_message
        c.on_subscribe = on_subscribe
        await c.connect("127.0.0.1", port, version=MQTTv311)
        c.subscribe(topic_filter, qos=qos)
        await asyncio.Event().wait()

    asyncio.run(_serve(tally, receive))
    return 0


def run_wsclient(url: str) -> int:
    """The gateway's WebSocket client: subscribe to every reading ('#'), count
    events, and keep per-device (count, min seq, max seq) inside the window."""
    import aiohttp

    tally = Tally()
    st = tally.st
    seqs = tally.seqs

    async def receive() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, max_msg_size=0) as ws:
                await ws.send_str(json.dumps({"op": "subscribe", "filter": "#", "ref": 1}))
                loads = json.loads
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    m = loads(msg.data)
                    t = m.get("type")
                    if t == "readings":
                        events = m["events"]
                        tally.add(len(events))
                        if st["armed"]:
                            for e in events:
                                d = e["device"]
                                s = e["seq"]
                                r = seqs.get(d)
                                if r is None:
                                    seqs[d] = [1, s, s]
                                else:
                                    r[0] += 1
                                    if s < r[1]:
                                        r[1] = s
                                    if s > r[2]:
                                        r[2] = s
                    elif t == "subscribed":
                        st["ready"] = True
                        tally.emit()
                    elif t == "dropped":
                        st["dropped"] = int(m.get("total", 0))
                    elif t == "gap":
                        st["gaps"] += 1
                    elif t == "error":
                        sys.stderr.write(f"wsclient: gateway error: {m}\n")

    asyncio.run(_serve(tally, receive))
    return 0
