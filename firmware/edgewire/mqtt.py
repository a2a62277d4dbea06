# A small MQTT 3.1.1 client for Edgewire devices; runs on MicroPython and CPython.
#
# Why not umqtt.simple: it stops at QoS 1 and blocks forever on a dead socket
# (docs/decisions.md, D1). This client does QoS 0/1/2 both ways, keeps a
# bounded in-flight window that survives reconnects (MQTT 3.1.1 section 4.4),
# pings on keepalive, and puts a deadline on every read and write: the socket is
# non-blocking and every wait goes through select.poll. Anything wrong on the
# wire raises MQTTError (the message says what) and closes the socket; the caller reconnects
# and calls connect() again on the same client, which resends what is in flight
# into a resumed session, or publishes again what was never acknowledged into a
# new one (docs/decisions.md, D9). An inbound PUBLISH larger than max_packet is
# read past without buffering, acknowledged at its QoS and reported to on_message;
# a refused subscription (SUBACK 0x80) is returned, not raised.
#
# It opens no sockets itself: connect(sock) takes a connected socket from the
# board, so simulated boards can inject faults, or a TLS socket (edgewire.tls:
# MicroPython's handshake then runs inside the first writes, under the same
# deadlines). Reading never polls first: a TLS layer can hold a decrypted
# record that poll() does not see, so the client reads until the socket would
# block and polls only then. Time comes from `clock`, a function returning
# non-wrapping milliseconds (board.ticks_ms).
#
# RAM (MicroPython, 32-bit port): the module is ~6 KB of bytecode; a client
# object ~300 B plus one list of 7 slots (~60 B) per in-flight message (the
# payload itself is referenced, not copied) and one int per inbound QoS 2
# message awaiting PUBREL. Every inbound packet body is one bytearray of its
# length, capped by max_packet (default 8 KB); a larger PUBLISH costs ~200 B
# while it is read past.

import select

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

try:
    import errno
    _EAGAIN = (11, errno.EAGAIN, getattr(errno, "EWOULDBLOCK", 11), getattr(errno, "ETIMEDOUT", 110))
except ImportError:
    _EAGAIN = (11, 110)

_CONNECT = const(1)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_PUBREC = const(5)
_PUBREL = const(6)
_PUBCOMP = const(7)
_SUBSCRIBE = const(8)
_SUBACK = const(9)
_UNSUBACK = const(11)
_PINGRESP = const(13)

# In-flight entry slots: [stage, qos, topic, payload, retain, sent_ms, order]
_STAGE = const(0)
_QOS = const(1)
_SENT = const(5)
_ORDER = const(6)
_PUB = const(0)  # waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
_REL = const(1)  # QoS 2: PUBREL sent, waiting for PUBCOMP

_MAX_RL = const(268435455)
_RX2_MAX = const(32)  # inbound QoS 2 packet ids remembered until PUBREL
_HEAD = const(256)    # bytes kept of an oversized PUBLISH: topic, packet id, payload head
_SLICE = const(500)   # longest single poll: on_wait runs at least this often
REFUSED = const(0x80)  # SUBACK return code: subscription refused

CONNACK_ERRORS = ("unacceptable protocol version", "client identifier rejected",
                  "server unavailable", "bad user name or password", "not authorized")


class MQTTError(Exception):
    """Every error this client raises: the peer closed, the socket failed, a
    deadline passed, the broker broke MQTT 3.1.1 or refused the CONNECT, on_wait
    raised it (link down). The message says which; the connection is closed."""


# One class on the device (each class costs ~250 B of heap); the names stay for callers.
MQTTTimeout = MQTTProtocolError = ConnectRefused = MQTTError


def _put_str(out, s):
    if isinstance(s, str):
        s = s.encode()
    if len(s) > 0xFFFF:
        raise ValueError("string of %d bytes is too long for MQTT" % len(s))
    out.append(len(s) >> 8)
    out.append(len(s) & 0xFF)
    out.extend(s)


def _packet(first, var, extra=0):
    """first byte + remaining length (of var and `extra` bytes sent after it) + var."""
    n = len(var) + extra
    if n > _MAX_RL:
        raise ValueError("MQTT packet of %d bytes is too large" % n)
    out = bytearray(1)
    out[0] = first
    while True:
        if n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        else:
            out.append(n)
            break
    out.extend(var)
    return out


def _check_qos(qos):
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ValueError("qos %r is not 0, 1 or 2" % (qos,))


def encode_connect(client_id, keepalive=60, clean_session=True, user=None, password=None, will=None):
    """CONNECT packet. will: (topic, payload, qos, retain) or None."""
    var = bytearray(b"\x00\x04MQTT\x04\x00")
    if clean_session:
        var[7] = 0x02
    if will:
        _check_qos(will[2])
        var[7] |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if user is not None:
        var[7] |= 0xC0 if password is not None else 0x80
    var.append(keepalive >> 8)
    var.append(keepalive & 0xFF)
    _put_str(var, client_id)
    for x in ((will[0], will[1]) if will else ()) + (user, password):
        if x is not None:
            _put_str(var, x)
    return bytes(_packet(0x10, var))


def publish_header(topic, payload_len, qos=0, retain=False, dup=False, pid=0):
    """Fixed header, topic and packet id of a PUBLISH; the payload follows."""
    var = bytearray()
    _put_str(var, topic)
    if qos:
        var.append(pid >> 8)
        var.append(pid & 0xFF)
    return _packet(0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0), var, payload_len)


def encode_subscribe(pid, topic, qos):
    var = bytearray(2)
    var[0] = pid >> 8
    var[1] = pid & 0xFF
    _put_str(var, topic)
    var.append(qos)
    return bytes(_packet(0x82, var))


class MQTTClient:
    """One MQTT 3.1.1 session over sockets the caller provides.

    on_message(topic, payload, retained) is called for each inbound PUBLISH
    (QoS 2: exactly once); for one over max_packet, read past unbuffered, the
    payload is a tuple (packet size, first 80 payload bytes). on_ack(pid, qos)
    when a QoS 1/2 publish completes;
    on_wait() before every wait on the socket, at least every 500 ms
    (feed a watchdog, check the link: an MQTTError it raises ends the session).
    Keep them short: they run inside poll(). clock() returns non-wrapping ms."""

    def __init__(self, client_id, keepalive=60, clean_session=True, user=None, password=None,
                 timeout_ms=5000, retry_ms=10000, max_inflight=8, max_packet=8192, clock=None):
        if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or not 0 < max_inflight < 1000:
            raise ValueError("max_inflight %r is not 1..999" % (max_inflight,))
        # At most 29 attributes: the instance table then stays at one 464 B block.
        self._login = (client_id, clean_session, user, password)
        self.keepalive = keepalive
        self.timeout_ms = timeout_ms
        self.retry_ms = retry_ms
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        if clock is None:
            import time
            clock = (lambda: int(time.monotonic() * 1000)) if hasattr(time, "monotonic") else time.ticks_ms
        self.clock = clock
        self.on_message = None
        self.on_ack = None
        self.on_wait = None
        self.connected = False
        self.last_pid = 0      # the packet id most recently assigned (also when publish() then failed)
        self.rx2_evicted = 0   # inbound QoS 2 ids forgotten because the table was full
        self.oversized = 0     # inbound PUBLISH packets over max_packet, read past and acknowledged
        self.q2_dropped = 0    # QoS 2 messages past PUBREC, not completed when a new session began
        self.will = None       # (topic, payload, qos, retain) sent with the next CONNECT, or None
        self._sock = None
        self._poll = None
        self._io = None        # (recv_into or readinto, send or write) of the socket
        # The in-flight window, pid -> entry (slots above): read len(), `pid in`; a
        # caller may pop() a message a newer one supersedes. (Attributes, not
        # methods: each method costs ~200 B of a device's heap.)
        self.window = {}
        self._rx2 = []         # inbound QoS 2 packet ids awaiting PUBREL
        self._order = 0
        self._sub_pid = 0
        self._suback = None
        self._last_tx = 0
        self._last_rx = 0
        self._ping_at = 0
        self._b1 = bytearray(1)                     # reused for header bytes
        self._ack = bytearray(b"\x40\x02\x00\x00")  # reused for PUBACK/PUBREC/PUBREL/PUBCOMP

    def connect(self, sock):
        """Start a session on a connected socket; returns the session-present flag.
        Resumed session: resends in-flight QoS 1/2 messages (DUP) and PUBRELs, in
        order. New session (clean, or the broker lost it): publishes again, as new
        messages, those never acknowledged, drops (counting q2_dropped) QoS 2
        ones the broker already took (PUBREC), and forgets inbound QoS 2 state."""
        self.close()
        self._sock = sock
        self._ping_at = 0
        try:
            try:
                sock.setblocking(False)
                # a TLS socket may have only readinto() and write() (ports without DTLS)
                self._io = (getattr(sock, "recv_into", None) or sock.readinto,
                            getattr(sock, "send", None) or sock.write)
                self._poll = select.poll()
                self._poll.register(sock, select.POLLIN)
            except (OSError, AttributeError) as e:
                raise MQTTError("unusable socket: %r" % (e,))
            cid, clean, user, password = self._login
            self._write(encode_connect(cid, self.keepalive, clean, user, password, self.will))
            pkt = self._await(None, "CONNACK")
            typ, flags, body = pkt
            if typ != _CONNACK:
                raise MQTTProtocolError("expected CONNACK, got packet type %d" % typ)
            if flags or len(body) != 2 or body[0] & 0xFE:
                raise MQTTProtocolError("malformed CONNACK %r" % (bytes(body),))
            if body[1]:
                c = body[1]
                raise ConnectRefused("broker refused the connection: %s (CONNACK %d)"
                                     % (CONNACK_ERRORS[c - 1] if c <= 5 else "unknown reason", c))
            self.connected = True
            sp = body[0] == 1
            if not sp:
                self._rx2 = []
            # MQTT 3.1.1 section 4.4: into a resumed session resend unacknowledged
            # PUBLISH (DUP) and PUBREL, in order. A new session holds none of them
            # (MQTT-3.1.2-6): never-acknowledged messages go again as new ones (DUP 0;
            # every packet id is free in it); a QoS 2 message past PUBREC cannot be
            # completed, and sending it again could deliver it twice (D9).
            for pid, e in sorted(self.window.items(), key=lambda kv: kv[1][_ORDER]):
                if sp or e[_STAGE] == _PUB:
                    self._resend(pid, e, sp)
                else:
                    del self.window[pid]
                    self.q2_dropped += 1
            return sp
        except MQTTError:
            self.close()
            raise

    def publish(self, topic, payload, qos=0, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). QoS 1/2 messages stay
        in flight until acknowledged, across reconnects. Waits (handling inbound
        packets) while the window is full: MQTTTimeout after timeout_ms. Out of
        heap before the first byte is written: MemoryError, the session intact."""
        _check_qos(qos)
        pid = 0
        try:
            self._require()
            if qos:
                self._await(lambda: len(self.window) < self.max_inflight, "window room")
        except MemoryError:  # while reading an inbound packet: it may be half read
            self.close()
            raise MQTTError("out of memory")
        except MQTTError:
            self.close()
            raise
        # Nothing is written yet: a MemoryError here leaves the session as it was
        # (and is raised as it is, so the caller can retry later with less).
        if qos:
            pid = self._next_pid()
            e = [_PUB, qos, topic, payload, retain, self.clock(), self._order + 1]
        hdr = publish_header(topic, len(payload), qos, retain, False, pid)
        if qos:
            self.window[pid] = e
            self._order += 1
        try:
            self._write(hdr)
            self._write(payload)
            return pid
        except MQTTError:
            self.close()
            raise
        except MemoryError:
            # A packet may be half written: the session cannot go on. A QoS 1/2
            # message already in the window is resent after the reconnect.
            self.close()
            raise MQTTError("out of memory")

    def subscribe(self, topic, qos=0):
        """SUBSCRIBE one filter and wait for SUBACK; returns the granted QoS, or
        REFUSED (0x80): the session goes on without that subscription."""
        _check_qos(qos)
        try:
            self._require()
            self._sub_pid = self._next_pid()
            self._suback = None
            self._write(encode_subscribe(self._sub_pid, topic, qos))
            self._await(lambda: self._suback is not None, "SUBACK")
            codes = self._suback
            self._sub_pid = 0
            if len(codes) != 1 or (codes[0] > 2 and codes[0] != REFUSED):
                raise MQTTProtocolError("bad SUBACK %r" % (bytes(codes),))
            return codes[0]
        except MQTTError:
            self.close()
            raise

    def poll(self, timeout_ms=0):
        """Handle inbound packets for up to timeout_ms (returning once some came),
        then keepalive and retries. Returns the number of packets handled."""
        try:
            self._require()
            n = 0
            now = self.clock()
            ka = self.keepalive * 500  # ping after half the keepalive without traffic
            due = self._ping_at + self.timeout_ms if self._ping_at else min(self._last_tx, self._last_rx) + ka
            for e in self.window.values():
                due = min(due, e[_SENT] + self.retry_ms)
            wait = max(0, min(timeout_ms, due - now))
            while True:
                pkt = self._read_packet(0 if n else wait)
                if pkt is None:
                    break
                self._handle(pkt[0], pkt[1], pkt[2])
                n += 1
            now = self.clock()
            if self._ping_at:
                if now - self._ping_at >= self.timeout_ms:
                    raise MQTTTimeout("no PINGRESP in %d ms: connection dead" % self.timeout_ms)
            elif now - min(self._last_tx, self._last_rx) >= ka:
                self._write(b"\xc0\x00")
                self._ping_at = now or 1
            for pid, e in list(self.window.items()):
                if now - e[_SENT] >= self.retry_ms:
                    self._resend(pid, e)
            return n
        except MQTTError:
            self.close()
            raise

    def disconnect(self):
        """Send DISCONNECT (best effort) and close; in-flight messages stay for a later connect()."""
        if self.connected:
            try:
                self._write(b"\xe0\x00")
            except MQTTError:
                pass
        self.close()

    def close(self):
        self.connected = False
        self._suback = None
        s = self._sock
        self._sock = None
        self._poll = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # ------------------------------------------------------------ internals

    def _require(self):
        if not self.connected:
            raise MQTTError("not connected")

    def _next_pid(self):
        pid = self.last_pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.window and pid != self._sub_pid:
                self.last_pid = pid
                return pid

    def _await(self, cond, what):
        """Handle inbound packets until cond() holds; cond None: return the first packet."""
        deadline = self.clock() + self.timeout_ms
        while cond is None or not cond():
            left = deadline - self.clock()
            if left <= 0:
                raise MQTTTimeout("no %s within %d ms" % (what, self.timeout_ms))
            pkt = self._read_packet(left)
            if pkt is not None:
                if cond is None:
                    return pkt
                self._handle(pkt[0], pkt[1], pkt[2])

    def _resend(self, pid, e, dup=True):
        e[_SENT] = self.clock()
        if e[_STAGE] == _REL:
            self._send_ack(_PUBREL, pid)
        else:
            self._send_publish(e[2], e[3], e[_QOS], e[4], dup, pid)

    def _send_publish(self, topic, payload, qos, retain, dup, pid):
        self._write(publish_header(topic, len(payload), qos, retain, dup, pid))
        self._write(payload)

    def _send_ack(self, typ, pid):
        a = self._ack
        a[0] = (typ << 4) | (2 if typ == _PUBREL else 0)
        a[2] = pid >> 8
        a[3] = pid & 0xFF
        self._write(a)

    def _write(self, data):
        if self._sock is None:
            raise MQTTError("not connected")
        deadline = self.clock() + self.timeout_ms
        sent = 0
        while sent < len(data):
            try:
                n = self._io[1](memoryview(data)[sent:] if sent else data)
            except OSError as e:
                if e.args[0] not in _EAGAIN:
                    raise MQTTError("write failed: %r" % (e,))
                n = 0
            if n:
                sent += n
            else:
                self._wait(select.POLLOUT, deadline - self.clock(), True)
        self._last_tx = self.clock()

    def _wait(self, ev, ms, must):
        """Poll for ev up to ms; False when nothing came (MQTTTimeout if must)."""
        if ms <= 0 and must:
            raise MQTTTimeout("%s timed out after %d ms" % ("write" if ev == select.POLLOUT else "read",
                                                             self.timeout_ms))
        ms = max(0, ms)
        while True:
            if self.on_wait:
                self.on_wait()
            n = min(ms, _SLICE)
            try:
                self._poll.modify(self._sock, ev)
                res = self._poll.poll(n)
            except (OSError, ValueError, AttributeError) as e:
                raise MQTTError("poll failed: %r" % (e,))
            ms -= n
            if res or ms <= 0:
                break
        for r in res:
            if r[1] & select.POLLERR or (ev == select.POLLOUT and r[1] & select.POLLHUP):
                raise MQTTError("socket error")
        return bool(res)

    def _read_into(self, buf, deadline, n=0, idle=-1):
        """Read exactly n (default len(buf)) bytes into buf. With idle >= 0,
        before the first byte: wait at most idle ms for data, False if none came.
        It reads before it polls: poll() does not see what a TLS layer has
        already decrypted (CPython's ssl, older MicroPython)."""
        mv = buf  # a view only after a partial read: no garbage for a whole one
        got = 0
        n = n or len(buf)
        while got < n:
            try:
                r = self._io[0](mv, n - got)
            except OSError as e:
                if e.args[0] not in _EAGAIN:
                    raise MQTTError("read failed: %r" % (e,))
                r = None
            if r is None:
                if idle < 0:
                    self._wait(select.POLLIN, deadline - self.clock(), True)
                elif not self._wait(select.POLLIN, idle, False):
                    return False
            elif r == 0:
                raise MQTTError("connection closed by the broker" + (" mid-packet" if got or n > 1 else ""))
            else:
                got += r
                idle = -1
                if got < n:
                    mv = memoryview(buf)[got:]
        return True

    def _read_packet(self, wait_ms):
        """-> (type, flags, body), or None when nothing arrives within wait_ms.
        Once a packet has begun, all of it must arrive within timeout_ms."""
        if self._sock is None:
            raise MQTTError("not connected")
        b = self._b1
        if not self._read_into(b, 0, 1, wait_ms):
            return None
        deadline = self.clock() + self.timeout_ms
        typ = b[0] >> 4
        flags = b[0] & 0x0F
        rl = 0
        for i in range(4):
            self._read_into(b, deadline)
            rl |= (b[0] & 0x7F) << (7 * i)
            if not b[0] & 0x80:
                break
        else:
            raise MQTTProtocolError("bad remaining length (over 4 bytes)")
        if typ == 0 or typ == 15:
            raise MQTTProtocolError("unknown packet type %d" % typ)
        n = rl
        if rl > self.max_packet:
            # A PUBLISH is read past, unbuffered: its topic, packet id and first
            # payload bytes are kept, and it is acknowledged at its QoS. A broker
            # redelivers an unacknowledged one on every reconnect, so dropping the
            # connection here would loop forever (a poison message).
            if typ != _PUBLISH:
                raise MQTTProtocolError("packet type %d: %d bytes exceeds %d"
                                        % (typ, rl, self.max_packet))
            n = min(self.max_packet, _HEAD)
        body = bytearray(n)
        if n:
            self._read_into(body, deadline)
        if n < rl:
            self.oversized += 1
            left = rl - n
            buf = bytearray(min(left, 256))
            while left > 0:  # the deadline restarts with every chunk
                k = min(left, len(buf))
                self._read_into(buf, self.clock() + self.timeout_ms, k)
                left -= k
            flags |= rl << 4  # the size rides above the 4 flag bits to _on_publish
        self._last_rx = self.clock()
        return typ, flags, body

    def _handle(self, typ, flags, body):
        if typ == _PUBLISH:
            return self._on_publish(flags, body)
        if typ == _SUBACK:
            if flags or len(body) < 3:
                raise MQTTProtocolError("malformed SUBACK")
            if self._sub_pid and ((body[0] << 8) | body[1]) == self._sub_pid:
                self._suback = body[2:]
            return  # a stray SUBACK: ignored
        if typ == _PINGRESP and not flags and not body:
            self._ping_at = 0
            return
        if typ < _PUBACK or typ > _UNSUBACK or typ == _SUBSCRIBE or typ == 10:
            raise MQTTProtocolError("unexpected packet type %d" % typ)
        # PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: exactly a non-zero packet id
        pid = (body[0] << 8) | body[1] if len(body) == 2 else 0
        if not pid or flags != (2 if typ == _PUBREL else 0):
            raise MQTTProtocolError("malformed packet type %d (flags %d, %d bytes)" % (typ, flags, len(body)))
        e = self.window.get(pid)
        if typ == _PUBACK or typ == _PUBCOMP:
            q = 1 if typ == _PUBACK else 2
            if e is not None and e[_QOS] == q and e[_STAGE] == q - 1:
                del self.window[pid]
                if self.on_ack:
                    self.on_ack(pid, q)
        elif typ == _PUBREC:
            if e is not None and e[_QOS] == 2:
                e[_STAGE] = _REL
                e[_SENT] = self.clock()
            self._send_ack(_PUBREL, pid)  # also for an id we do not hold: the broker's state ends
        elif typ == _PUBREL:
            if pid in self._rx2:
                self._rx2.remove(pid)
            self._send_ack(_PUBCOMP, pid)

    def _on_publish(self, flags, body):
        big = flags >> 4  # the size of an oversized PUBLISH that was read past, else 0
        qos = (flags >> 1) & 3
        n = len(body)
        pos = 2 + ((body[0] << 8) | body[1]) if n >= 2 else n + 1
        if qos == 3 or pos + (2 if qos else 0) > n:
            raise MQTTProtocolError("malformed PUBLISH (QoS %d, %d bytes)" % (qos, big or n))
        try:
            topic = bytes(body[2:pos]).decode()
        except (UnicodeError, ValueError):
            raise MQTTProtocolError("PUBLISH topic is not UTF-8")
        pid = 0
        if qos:
            pid = (body[pos] << 8) | body[pos + 1]
            pos += 2
            if not pid:
                raise MQTTProtocolError("PUBLISH QoS %d with packet id 0" % qos)
        if qos == 2:
            if pid in self._rx2:  # redelivered before PUBREL: deliver once only
                return self._send_ack(_PUBREC, pid)
            if len(self._rx2) >= _RX2_MAX:
                self._rx2.pop(0)
                self.rx2_evicted += 1
        if self.on_message:
            p = bytes(body[pos:pos + 80] if big else body[pos:])
            self.on_message(topic, (big, p) if big else p, bool(flags & 1))
        if qos == 1:
            self._send_ack(_PUBACK, pid)
        elif qos == 2:
            self._rx2.append(pid)
            self._send_ack(_PUBREC, pid)
