# A small MQTT 3.1.1 client for Edgewire devices; runs on MicroPython and CPython.
#
# Why not umqtt.simple: it stops at QoS 1 and blocks forever on a dead socket
# (docs/decisions.md, D1). This client does QoS 0/1/2 both ways, keeps a
# bounded in-flight window that survives reconnects (MQTT 3.1.1 section 4.4),
# pings on keepalive, and puts a deadline on every read and write: the socket is
# non-blocking and every wait goes through select.poll. Anything wrong on the
# wire raises an MQTTError subclass and closes the socket; the caller reconnects
# and calls connect() again on the same client, which resends what is in flight.
#
# It opens no sockets itself: connect(sock) takes a connected socket from the
# board, so simulated boards can inject faults. Time comes from `clock`, a
# function returning non-wrapping milliseconds (board.ticks_ms).
#
# RAM (MicroPython, 32-bit port): the module is ~6 KB of bytecode; a client
# object ~300 B plus one list of 7 slots (~60 B) per in-flight message (the
# payload itself is referenced, not copied) and one int per inbound QoS 2
# message awaiting PUBREL. Every inbound packet body is one bytearray of its
# length, capped by max_packet (default 8 KB).

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

CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBACK = const(11)
PINGRESP = const(13)

# In-flight entry slots: [stage, qos, topic, payload, retain, sent_ms, order]
_STAGE = const(0)
_QOS = const(1)
_SENT = const(5)
_ORDER = const(6)
_PUB = const(0)  # waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
_REL = const(1)  # QoS 2: PUBREL sent, waiting for PUBCOMP

_MAX_RL = const(268435455)
_RX2_MAX = const(32)  # inbound QoS 2 packet ids remembered until PUBREL

CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MQTTError(Exception):
    """Base of every error this client raises; the connection is closed when it is raised."""


class ConnectionClosed(MQTTError):
    """The peer closed the connection, or the socket failed."""


class MQTTTimeout(MQTTError):
    """A read, write, CONNACK, SUBACK or PINGRESP did not come in time."""


class MQTTProtocolError(MQTTError):
    """The broker sent something MQTT 3.1.1 does not allow here."""


class PacketTooLarge(MQTTProtocolError):
    """An inbound packet is larger than max_packet."""


class ConnectRefused(MQTTError):
    """CONNACK with a non-zero return code; `code` holds it."""

    def __init__(self, code):
        MQTTError.__init__(self, "broker refused the connection: %s (CONNACK code %d)"
                           % (CONNACK_ERRORS.get(code, "unknown reason"), code))
        self.code = code


class SubscribeRefused(MQTTError):
    """SUBACK returned 0x80 for a topic filter."""


def _default_clock():
    import time
    if hasattr(time, "monotonic"):
        return lambda: int(time.monotonic() * 1000)
    return time.ticks_ms  # wraps after ~12 days on a board: pass board.ticks_ms


def _put_rl(out, n):
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_str(out, s):
    if isinstance(s, str):
        s = s.encode()
    if len(s) > 0xFFFF:
        raise ValueError("string of %d bytes is longer than 65535" % len(s))
    out.append(len(s) >> 8)
    out.append(len(s) & 0xFF)
    out.extend(s)


def _check_qos(qos):
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ValueError("qos %r is not 0, 1 or 2" % (qos,))


def encode_connect(client_id, keepalive=60, clean_session=True, user=None, password=None, will=None):
    """CONNECT packet. will: (topic, payload, qos, retain) or None."""
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive %r is not 0..65535 seconds" % (keepalive,))
    var = bytearray(b"\x00\x04MQTT\x04")
    flags = 0x02 if clean_session else 0
    if will:
        _check_qos(will[2])
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if user is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    var.append(flags)
    var.append(keepalive >> 8)
    var.append(keepalive & 0xFF)
    _put_str(var, client_id)
    if will:
        _put_str(var, will[0])
        _put_str(var, will[1])
    if user is not None:
        _put_str(var, user)
        if password is not None:
            _put_str(var, password)
    out = bytearray(b"\x10")
    _put_rl(out, len(var))
    out.extend(var)
    return bytes(out)


def publish_header(topic, payload_len, qos=0, retain=False, dup=False, pid=0):
    """Fixed header, topic and packet id of a PUBLISH; the payload follows."""
    tb = topic.encode() if isinstance(topic, str) else topic
    rl = 2 + len(tb) + payload_len + (2 if qos else 0)
    if rl > _MAX_RL:
        raise ValueError("PUBLISH of %d bytes is too large" % rl)
    out = bytearray(1)
    out[0] = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    _put_rl(out, rl)
    _put_str(out, tb)
    if qos:
        out.append(pid >> 8)
        out.append(pid & 0xFF)
    return out


def encode_publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    out = publish_header(topic, len(payload), qos, retain, dup, pid)
    out.extend(payload)
    return bytes(out)


def encode_subscribe(pid, topic, qos):
    var = bytearray(2)
    var[0] = pid >> 8
    var[1] = pid & 0xFF
    _put_str(var, topic)
    var.append(qos)
    out = bytearray(b"\x82")
    _put_rl(out, len(var))
    out.extend(var)
    return bytes(out)


class MQTTClient:
    """One MQTT 3.1.1 session over sockets the caller provides.

    on_message(topic, payload, retained) is called for each inbound PUBLISH
    (QoS 2: exactly once); on_ack(pid, qos) when a QoS 1/2 publish completes.
    Keep both short: they run inside poll()."""

    def __init__(self, client_id, keepalive=60, clean_session=True, user=None, password=None,
                 timeout_ms=5000, retry_ms=10000, max_inflight=8, max_packet=8192, clock=None):
        if not isinstance(max_inflight, int) or isinstance(max_inflight, bool) or not 1 <= max_inflight <= 1000:
            raise ValueError("max_inflight %r is not 1..1000" % (max_inflight,))
        self.client_id = client_id
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.user = user
        self.password = password
        self.timeout_ms = timeout_ms
        self.retry_ms = retry_ms
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        self.clock = clock or _default_clock()
        self.on_message = None
        self.on_ack = None
        self.connected = False
        self.resent = 0        # PUBLISH/PUBREL packets sent again (retry or reconnect)
        self.stray = 0         # acks for packet ids we do not have in flight
        self.rx2_evicted = 0   # inbound QoS 2 ids forgotten because the table was full
        self._will = None
        self._sock = None
        self._poll = None
        self._ri = None
        self._out = {}         # pid -> in-flight entry (see slots above)
        self._rx2 = []         # inbound QoS 2 packet ids awaiting PUBREL
        self._pid = 0
        self._order = 0
        self._sub_pid = 0
        self._suback = None
        self._last_tx = 0
        self._last_rx = 0
        self._ping_at = 0
        self._b1 = bytearray(1)            # reused for header bytes
        self._ack = bytearray(b"\x40\x02\x00\x00")  # reused for PUBACK/PUBREC/PUBREL/PUBCOMP

    # ------------------------------------------------------------ public

    def set_will(self, topic, payload, qos=0, retain=False):
        _check_qos(qos)
        self._will = (topic, payload, qos, retain)

    @property
    def last_pid(self):
        """The packet id most recently assigned (also when publish() then failed)."""
        return self._pid

    def inflight(self):
        return len(self._out)

    def window_free(self):
        return self.max_inflight - len(self._out)

    def connect(self, sock):
        """Start a session on a connected socket; returns the session-present flag.
        Resends in-flight QoS 1/2 messages (DUP) and PUBRELs afterwards."""
        self.close()
        self._sock = sock
        try:
            sock.setblocking(False)
            self._ri = getattr(sock, "recv_into", None) or sock.readinto
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)
        except (OSError, AttributeError) as e:
            self.close()
            raise ConnectionClosed("unusable socket: %r" % (e,))
        self._ping_at = 0
        try:
            self._write(encode_connect(self.client_id, self.keepalive, self.clean_session,
                                       self.user, self.password, self._will))
            deadline = self.clock() + self.timeout_ms
            pkt = None
            while pkt is None:
                left = deadline - self.clock()
                if left <= 0:
                    raise MQTTTimeout("no CONNACK within %d ms" % self.timeout_ms)
                pkt = self._read_packet(left)
            typ, flags, body = pkt
            if typ != CONNACK:
                raise MQTTProtocolError("expected CONNACK, got packet type %d" % typ)
            if flags or len(body) != 2 or body[0] & 0xFE:
                raise MQTTProtocolError("malformed CONNACK %r" % (bytes(body),))
            if body[1]:
                raise ConnectRefused(body[1])
            self.connected = True
            if self.clean_session:
                self._rx2 = []
            # MQTT 3.1.1 section 4.4: resend unacknowledged PUBLISH (DUP) and PUBREL, in order.
            # With a clean session the broker forgot them too; we resend anyway (QoS 1
            # semantics for the receiver): the gateway removes duplicates by (device, boot, seq).
            entries = sorted(self._out.items(), key=lambda kv: kv[1][_ORDER])
            for pid, e in entries:
                self._resend(pid, e)
            return body[0] == 1
        except MQTTError:
            self.close()
            raise

    def publish(self, topic, payload, qos=0, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). A QoS 1/2 message is
        kept in flight until acknowledged, across reconnects. Waits (handling
        inbound packets) while the window is full; MQTTTimeout after timeout_ms."""
        _check_qos(qos)
        self._require()
        pid = 0
        try:
            if qos:
                deadline = self.clock() + self.timeout_ms
                while len(self._out) >= self.max_inflight:
                    left = deadline - self.clock()
                    if left <= 0:
                        raise MQTTTimeout("in-flight window (%d) still full after %d ms"
                                          % (self.max_inflight, self.timeout_ms))
                    self._poll_once(left)
                pid = self._next_pid()
                self._order += 1
                self._out[pid] = [_PUB, qos, topic, payload, retain, self.clock(), self._order]
            self._send_publish(topic, payload, qos, retain, False, pid)
            return pid
        except MQTTError:
            self.close()
            raise

    def subscribe(self, topic, qos=0):
        """SUBSCRIBE one filter and wait for SUBACK; returns the granted QoS."""
        _check_qos(qos)
        self._require()
        try:
            self._sub_pid = self._next_pid()
            self._suback = None
            self._write(encode_subscribe(self._sub_pid, topic, qos))
            deadline = self.clock() + self.timeout_ms
            while self._suback is None:
                left = deadline - self.clock()
                if left <= 0:
                    raise MQTTTimeout("no SUBACK for %r within %d ms" % (topic, self.timeout_ms))
                self._poll_once(left)
            codes = self._suback
            self._sub_pid = 0
            if len(codes) != 1:
                raise MQTTProtocolError("SUBACK with %d return codes for 1 filter" % len(codes))
            if codes[0] == 0x80:
                raise SubscribeRefused("broker refused subscription to %r" % (topic,))
            if codes[0] > 2:
                raise MQTTProtocolError("SUBACK return code 0x%02x is invalid" % codes[0])
            return codes[0]
        except MQTTError:
            self.close()
            raise

    def poll(self, timeout_ms=0):
        """Handle inbound packets for up to timeout_ms, then keepalive and retries.
        Returns as soon as at least one packet was handled (or the time is up)."""
        self._require()
        try:
            n = 0
            wait = min(timeout_ms, self._until_due())
            while self._poll_once(wait if n == 0 else 0):
                n += 1
            self._housekeeping()
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
        if s is not None:
            try:
                if self._poll is not None:
                    self._poll.unregister(s)
            except (OSError, ValueError, KeyError):
                pass
            try:
                s.close()
            except OSError:
                pass
        self._poll = None

    # ------------------------------------------------------------ internals

    def _require(self):
        if not self.connected:
            raise ConnectionClosed("not connected")

    def _next_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._out and self._pid != self._sub_pid:
                return self._pid

    def _until_due(self):
        """ms until the next keepalive or retry action."""
        now = self.clock()
        ka = self.keepalive * 500  # ping after half the keepalive without traffic
        if self._ping_at:
            due = self._ping_at + self.timeout_ms
        elif ka:
            due = min(self._last_tx, self._last_rx) + ka
        else:
            due = now + 60000
        for e in self._out.values():
            if e[_SENT] + self.retry_ms < due:
                due = e[_SENT] + self.retry_ms
        return max(0, due - now)

    def _housekeeping(self):
        now = self.clock()
        if self._ping_at:
            if now - self._ping_at >= self.timeout_ms:
                raise MQTTTimeout("no PINGRESP within %d ms: connection is dead" % self.timeout_ms)
        elif self.keepalive and now - min(self._last_tx, self._last_rx) >= self.keepalive * 500:
            self._write(b"\xc0\x00")
            self._ping_at = now or 1
        for pid, e in list(self._out.items()):
            if now - e[_SENT] >= self.retry_ms:
                self._resend(pid, e)

    def _resend(self, pid, e):
        e[_SENT] = self.clock()
        self.resent += 1
        if e[_STAGE] == _REL:
            self._send_ack(PUBREL, pid)
        else:
            self._send_publish(e[2], e[3], e[_QOS], e[4], True, pid)

    def _send_publish(self, topic, payload, qos, retain, dup, pid):
        self._write(publish_header(topic, len(payload), qos, retain, dup, pid))
        self._write(payload)

    def _send_ack(self, typ, pid):
        a = self._ack
        a[0] = (typ << 4) | (2 if typ == PUBREL else 0)
        a[2] = pid >> 8
        a[3] = pid & 0xFF
        self._write(a)

    def _write(self, data):
        if self._sock is None:
            raise ConnectionClosed("not connected")
        deadline = self.clock() + self.timeout_ms
        mv = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                n = self._sock.send(mv[sent:])
            except OSError as e:
                if e.args[0] not in _EAGAIN:
                    raise ConnectionClosed("write failed: %r" % (e,))
                n = 0
            if not n:
                self._wait(select.POLLOUT, deadline, "write")
            else:
                sent += n
        self._last_tx = self.clock()

    def _wait(self, ev, deadline, what):
        left = deadline - self.clock()
        if left <= 0:
            raise MQTTTimeout("%s timed out after %d ms" % (what, self.timeout_ms))
        try:
            self._poll.modify(self._sock, ev)
            res = self._poll.poll(left)
        except (OSError, ValueError, AttributeError) as e:
            raise ConnectionClosed("poll failed: %r" % (e,))
        for r in res:
            if r[1] & select.POLLERR or (ev == select.POLLOUT and r[1] & select.POLLHUP):
                raise ConnectionClosed("socket error during %s" % what)

    def _readable(self, ms):
        try:
            self._poll.modify(self._sock, select.POLLIN)
            return bool(self._poll.poll(max(0, ms)))
        except (OSError, ValueError, AttributeError) as e:
            raise ConnectionClosed("poll failed: %r" % (e,))

    def _read_into(self, buf, deadline):
        mv = memoryview(buf)
        got = 0
        n = len(buf)
        while got < n:
            try:
                r = self._ri(mv[got:], n - got)
            except OSError as e:
                if e.args[0] not in _EAGAIN:
                    raise ConnectionClosed("read failed: %r" % (e,))
                r = None
            if r is None:
                self._wait(select.POLLIN, deadline, "read")
            elif r == 0:
                raise ConnectionClosed("connection closed by the broker" +
                                       (" in the middle of a packet" if got or n > 1 else ""))
            else:
                got += r

    def _read_packet(self, wait_ms):
        """-> (type, flags, body) or None when nothing arrives within wait_ms.
        Once a packet has begun, all of it must arrive within timeout_ms."""
        if self._sock is None:
            raise ConnectionClosed("not connected")
        if not self._readable(wait_ms):
            return None
        deadline = self.clock() + self.timeout_ms
        b = self._b1
        self._read_into(b, deadline)
        typ = b[0] >> 4
        flags = b[0] & 0x0F
        rl = 0
        for i in range(4):
            self._read_into(b, deadline)
            rl |= (b[0] & 0x7F) << (7 * i)
            if not b[0] & 0x80:
                break
        else:
            raise MQTTProtocolError("malformed remaining length (more than 4 bytes)")
        if typ == 0 or typ == 15:
            raise MQTTProtocolError("unknown packet type %d" % typ)
        if rl > self.max_packet:
            raise PacketTooLarge("packet type %d of %d bytes exceeds the %d byte cap"
                                 % (typ, rl, self.max_packet))
        body = bytearray(rl)
        if rl:
            self._read_into(body, deadline)
        self._last_rx = self.clock()
        return typ, flags, body

    def _poll_once(self, wait_ms):
        pkt = self._read_packet(wait_ms)
        if pkt is None:
            return False
        self._handle(pkt[0], pkt[1], pkt[2])
        return True

    def _pid_of(self, typ, flags, body):
        if len(body) != 2 or flags != (2 if typ == PUBREL else 0):
            raise MQTTProtocolError("malformed packet type %d (flags %d, %d bytes)" % (typ, flags, len(body)))
        pid = (body[0] << 8) | body[1]
        if not pid:
            raise MQTTProtocolError("packet type %d with packet id 0" % typ)
        return pid

    def _handle(self, typ, flags, body):
        if typ == PUBLISH:
            self._on_publish(flags, body)
        elif typ == PUBACK or typ == PUBCOMP:
            pid = self._pid_of(typ, flags, body)
            e = self._out.get(pid)
            want = (_PUB, 1) if typ == PUBACK else (_REL, 2)
            if e is not None and e[_STAGE] == want[0] and e[_QOS] == want[1]:
                del self._out[pid]
                if self.on_ack:
                    self.on_ack(pid, want[1])
            else:
                self.stray += 1
        elif typ == PUBREC:
            pid = self._pid_of(typ, flags, body)
            e = self._out.get(pid)
            if e is not None and e[_QOS] == 2:
                e[_STAGE] = _REL
                e[_SENT] = self.clock()
            else:
                self.stray += 1
            self._send_ack(PUBREL, pid)
        elif typ == PUBREL:
            pid = self._pid_of(typ, flags, body)
            if pid in self._rx2:
                self._rx2.remove(pid)
            self._send_ack(PUBCOMP, pid)
        elif typ == SUBACK:
            if flags or len(body) < 3:
                raise MQTTProtocolError("malformed SUBACK (%d bytes)" % len(body))
            if self._sub_pid and ((body[0] << 8) | body[1]) == self._sub_pid:
                self._suback = body[2:]
            else:
                self.stray += 1
        elif typ == UNSUBACK:
            self._pid_of(typ, flags, body)
        elif typ == PINGRESP:
            if flags or body:
                raise MQTTProtocolError("malformed PINGRESP")
            self._ping_at = 0
        else:
            raise MQTTProtocolError("unexpected packet type %d from the broker" % typ)

    def _on_publish(self, flags, body):
        qos = (flags >> 1) & 3
        if qos == 3:
            raise MQTTProtocolError("PUBLISH with QoS 3")
        n = len(body)
        if n < 2:
            raise MQTTProtocolError("truncated PUBLISH (%d bytes)" % n)
        pos = 2 + ((body[0] << 8) | body[1])
        if pos + (2 if qos else 0) > n:
            raise MQTTProtocolError("PUBLISH topic length exceeds the packet")
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
        payload = bytes(body[pos:])
        if qos == 2:
            if pid in self._rx2:  # a redelivery before PUBREL: deliver once only
                self._send_ack(PUBREC, pid)
                return
            if len(self._rx2) >= _RX2_MAX:
                self._rx2.pop(0)
                self.rx2_evicted += 1
        if self.on_message:
            self.on_message(topic, payload, bool(flags & 1))
        if qos == 1:
            self._send_ack(PUBACK, pid)
        elif qos == 2:
            self._rx2.append(pid)
            self._send_ack(PUBREC, pid)
