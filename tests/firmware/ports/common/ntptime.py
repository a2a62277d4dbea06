# Fake `ntptime` (micropython-lib micropython/net/ntptime/ntptime.py, frozen
# into both ports): module attributes `host` ("pool.ntp.org") and `timeout` (1 s);
# time() resolves host with socket.getaddrinfo (blocking, see socket.py), sends
# one NTP request over UDP and blocks up to `timeout` for the answer (OSError
# ETIMEDOUT otherwise); settime() sets machine.RTC from it. The answers come
# from fakehw.ntp_servers: host -> epoch seconds (None or absent: no answer).

import fakehw
import socket

host = "pool.ntp.org"
timeout = 1


def time():
    socket.getaddrinfo(host, 123)
    fakehw.remember(fakehw.ntp_queries, host)
    t = fakehw.ntp_servers.get(host)
    if t is None:
        fakehw.advance(int(timeout * 1000))
        raise OSError(socket.E["TIMEDOUT"])
    fakehw.advance(20)
    return t


def settime():
    import machine
    import utime
    t = utime.gmtime(time())
    machine.RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0))
