# Fake `socket` for the esp32 and rp2 port fakes: real TCP over the unix port's
# sockets, with the connect behaviour and error numbers of each port's stack.
#
# esp32 (ports/esp32/modsocket.c over lwIP's BSD socket layer, newlib errno:
#   EINPROGRESS 119, EALREADY 120, EISCONN 127, ENOTCONN 128):
#   - a refused non-blocking connect looks writable to poll(): lwIP keeps the
#     error in the netconn, select() reports the socket writable (the issue #9
#     finding); only a second connect() (ENOTCONN: the pcb is gone) or the
#     first send/recv tells. A second connect() on a connected socket raises
#     EISCONN, on one still connecting EALREADY (lwip api_msg.c
#     lwip_netconn_do_connect).
# rp2 (extmod/modlwip.c over lwIP's raw API, MicroPython's own errno, Linux
#   numbers: EINPROGRESS 115, EALREADY 114, EISCONN 106):
#   - before MicroPython 1.25 poll() reports a connecting socket writable as
#     soon as the send buffer has room, i.e. at once (fakehw.rp2_version);
#   - a refused connect puts the socket in state ERR_RST: poll() reports
#     writable + HUP; a second connect() raises EALREADY for every state but
#     connected (EISCONN), errors included (lwip_socket_connect).
#   - no fileno() (modlwip has none).
# getaddrinfo: an IP literal never queries DNS (lwIP ipaddr_aton first, both
# ports); a name is looked up in fakehw.dns, taking its delay on the clock and
# blocking as both ports do (esp32: getaddrinfo does mDNS for .local, ~5 s to
# fail; rp2: modlwip spins in lwip_getaddrinfo until the DNS callback).
# Failure: esp32 raises OSError(-202) (EAI_FAIL as a negative number,
# modsocket.c _getaddrinfo_inner), rp2 OSError(-2) (modlwip: the lwIP err).

import usocket as _rs
import fakehw

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
SOL_SOCKET = _rs.SOL_SOCKET
SO_REUSEADDR = _rs.SO_REUSEADDR
IPPROTO_TCP = 6
IPPROTO_UDP = 17

if fakehw.PORT == "esp32":
    E = {"INPROGRESS": 119, "ALREADY": 120, "ISCONN": 127, "NOTCONN": 128, "CONNRESET": 104, "AGAIN": 11,
         "TIMEDOUT": 116}
else:
    E = {"INPROGRESS": 115, "ALREADY": 114, "ISCONN": 106, "NOTCONN": 107, "CONNRESET": 104, "AGAIN": 11,
         "TIMEDOUT": 110}

def _is_ip(host):
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    fakehw.check()
    if not _is_ip(host):
        fakehw.remember(fakehw.dns_queries, host)
        addr, delay = fakehw.dns.get(host, (None, 5000))
        fakehw.advance(delay)  # the ports block for the whole lookup
        if addr is None:
            raise OSError(-202 if fakehw.PORT == "esp32" else -2)
        host = addr
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (host, port))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=IPPROTO_TCP):
        self._s = _rs.socket()
        self._state = "new"
        self._t_connect = 0
        self._blocking = True

    def _real_state(self):
        if self._state != "connecting":
            return self._state
        p = _rs_poll()
        p.register(self._s, 4)  # POLLOUT
        r = p.poll(0)
        if r and r[0][1] & (8 | 16):  # POLLERR | POLLHUP
            self._state = "refused"
        elif r and r[0][1] & 4 and fakehw.now() - self._t_connect >= fakehw.connect_delay_ms:
            self._state = "connected"
        return self._state

    def connect(self, addr):
        fakehw.check()
        if self._state != "new":
            st = self._real_state()
            if st == "connected":
                raise OSError(E["ISCONN"])
            if st == "refused" and fakehw.PORT == "esp32":
                raise OSError(E["NOTCONN"])
            raise OSError(E["ALREADY"])
        ip, port = addr
        real = _rs.getaddrinfo(ip, port)[0][-1]
        self._t_connect = fakehw.now()
        if self._blocking:
            if fakehw.now() < fakehw.refuse_until:
                self._state = "refused"
                raise OSError(E["CONNRESET"])
            try:
                self._s.connect(real)
            except OSError:
                self._state = "refused"
                raise OSError(E["CONNRESET"])
            fakehw.advance(fakehw.connect_delay_ms)
            self._state = "connected"
            return
        self._s.setblocking(False)
        self._state = "connecting"
        if fakehw.now() < fakehw.refuse_until:  # the peer is not listening (yet)
            self._state = "refused"
            raise OSError(E["INPROGRESS"])
        try:
            self._s.connect(real)
        except OSError as e:
            if e.args[0] not in (115, 11):
                # the unix port may learn of a refusal on loopback at once; lwIP
                # always answers EINPROGRESS and reports the outcome later
                self._state = "refused"
        raise OSError(E["INPROGRESS"])

    def _io(self, fn, *a):
        fakehw.check()
        st = self._real_state()
        if st == "connecting":
            raise OSError(E["AGAIN"] if not self._blocking else E["NOTCONN"])
        if st == "refused":
            raise OSError(E["CONNRESET"])
        try:
            return fn(*a)
        except OSError as e:
            n = e.args[0]
            if n in (11, 115):
                raise OSError(E["AGAIN"])
            if n in (32, 104, 111):
                raise OSError(E["CONNRESET"])
            raise

    def send(self, data):
        return self._io(self._s.send, data)

    def write(self, data):
        return self._io(self._s.write, data)

    def sendall(self, data):
        return self._io(self._s.sendall, data)

    def recv(self, n):
        return self._io(self._s.recv, n)

    def read(self, *a):
        return self._io(self._s.read, *a)

    def readinto(self, *a):
        return self._io(self._s.readinto, *a)

    def readline(self):
        return self._io(self._s.readline)

    def setblocking(self, flag):
        self._blocking = bool(flag)
        if self._state != "new":
            self._s.setblocking(flag)

    def settimeout(self, t):
        self._blocking = t is None or t > 0
        if self._state != "new":
            self._s.settimeout(t)

    def setsockopt(self, *a):
        self._s.setsockopt(*a)

    def close(self):
        self._state = "closed"
        self._s.close()

    def makefile(self, *a, **k):
        return self

    def bind(self, addr):
        raise OSError(95)  # not modelled: the boards here only connect

    listen = accept = recvfrom = sendto = bind


if fakehw.PORT == "esp32":
    def _fileno(self):
        return self._s.fileno()
    socket.fileno = _fileno


def _rs_poll():
    import uselect
    return uselect.poll()
