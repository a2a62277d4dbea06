# TLS for the device's MQTT connection, loaded only when config.json names a
# CA ("tls_ca": "ca.der", a DER file in the board's storage, as `edgewire
# device provision --ca` writes it; PEM only where the port's mbedTLS was
# built with PEM parsing, and on CPython). The broker's certificate must
# be signed by that CA and name broker_host (a DNS name or an IP address in
# its SANs; `edgewire certs init` makes such a certificate).
#
#   sock = tls.wrap(board.connect(host, port, timeout_ms), board, cfg)
#
# MicroPython (the `tls` module of 1.23+, `ssl` before): an SSLContext with
# the CA, verification required (PROTOCOL_TLS_CLIENT), wrap_socket with
# server_hostname and do_handshake_on_connect=False: the handshake then runs
# inside the MQTT client's first writes on the non-blocking socket, under its
# deadlines and with the watchdog fed (a blocking handshake has no deadline on
# these ports). A certificate the CA does not vouch for fails that first
# write with mbedTLS's reason (a ValueError the Device counts as a failed connect).
#
# CPython (the simulator): the handshake is done here, blocking with
# timeout_ms, then the socket goes non-blocking behind a small adapter that
# returns None where CPython's ssl raises SSLWantReadError/SSLWantWriteError.
#
# RAM: mbedTLS keeps a 16 KB input and a 4 KB output record buffer per
# connection, plus the parsed CA and the session; measured on the unix port
# in docs/firmware.md ("TLS"). The context (the parsed CA) is made once and kept.

try:
    import tls as _t  # MicroPython 1.23+
except ImportError:
    import ssl as _t  # CPython; MicroPython before 1.23

_MP = hasattr(_t, "MBEDTLS_VERSION")
_ctx = [None, None]  # [CA file name, SSLContext]


def context(board, name):
    if _ctx[0] == name:
        return _ctx[1]
    ca = board.read_file(name)
    if ca is None:
        raise OSError(2, "TLS: CA file %r is not in the board's storage (config tls_ca)" % name)
    ctx = _t.SSLContext(_t.PROTOCOL_TLS_CLIENT)
    try:
        if _MP:
            ctx.load_verify_locations(ca)
        else:  # CPython: PEM as text, DER as bytes
            ctx.load_verify_locations(cadata=ca.decode() if ca[:5] == b"-----" else ca)
    except (ValueError, OSError) as e:
        raise OSError(22, "TLS: CA file %r cannot be loaded (%s)" % (name, e))
    _ctx[0] = name
    _ctx[1] = ctx
    return ctx


def wrap(sock, board, cfg):
    """The connected TCP socket `sock` wrapped in TLS to cfg["broker_host"]."""
    try:
        ctx = context(board, cfg["tls_ca"])
        host = cfg["broker_host"]
        if _MP:
            return ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        sock.setblocking(True)
        sock.settimeout(cfg["timeout_ms"] / 1000)
        s = ctx.wrap_socket(sock, server_hostname=host)
        s.setblocking(False)
        return _Py(s)
    except BaseException as e:
        sock.close()
        if isinstance(e, ValueError):
            raise OSError(22, "TLS to %s: %s" % (cfg["broker_host"], e))
        raise


class _Py:
    """CPython's SSLSocket as the MQTT client reads it: None, not an
    exception, when a non-blocking read or write would block."""

    def __init__(self, s):
        self.s = s
        self.fileno = s.fileno
        self.setblocking = s.setblocking
        self.close = s.close
        self.shutdown = s.shutdown

    def recv_into(self, buf, n):
        try:
            return self.s.recv_into(buf, n)
        except (_t.SSLWantReadError, _t.SSLWantWriteError):
            return None

    def send(self, data):
        try:
            return self.s.send(data)
        except (_t.SSLWantReadError, _t.SSLWantWriteError):
            return None
