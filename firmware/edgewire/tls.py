# TLS for the device's MQTT connection, loaded only when config.json names a
# CA ("tls_ca": "ca.der", a DER file in the board's storage, as `edgewire
# device provision --ca` writes it; PEM only where the port's mbedTLS was
# built with PEM parsing, and on CPython). The broker's certificate must
# be signed by that CA and name broker_host (a DNS name or an IP address in
# its SANs; `edgewire certs init` makes such a certificate).
#
#   sock = tls.wrap(board.connect(host, port, timeout_ms), board, cfg)
#
# Client certificate (optional): "tls_cert" names a DER certificate in storage
# and its PKCS#8 DER key is the same name with ".key" for its extension
# ("cert.der", "cert.key": `edgewire device provision --client-cert`; one
# config key, as a second cost every device 128 B of heap, measured at 64K),
# presented to a broker that requires one (mosquitto require_certificate,
# use_identity_as_username: the certificate's CN, the device id, is the user).
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
_ctx = [None, None]  # [(CA, cert file names), SSLContext]


def _file(board, name, key):
    data = board.read_file(name)
    if data is None:
        raise OSError(2, "TLS: file %r is not in the board's storage (config %s)" % (name, key))
    return data


def context(board, cfg):
    names = (cfg["tls_ca"], cfg.get("tls_cert"))
    if _ctx[0] == names:
        return _ctx[1]
    ca = _file(board, names[0], "tls_ca")
    ctx = _t.SSLContext(_t.PROTOCOL_TLS_CLIENT)
    try:
        if _MP:
            ctx.load_verify_locations(ca)
        else:  # CPython: PEM as text, DER as bytes
            ctx.load_verify_locations(cadata=ca.decode() if ca[:5] == b"-----" else ca)
        if names[1]:  # a client certificate, for a broker that requires one
            n = names[1]
            cert, key = _file(board, n, "tls_cert"), _file(board, n[:n.rfind(".")] + ".key", "tls_cert")
            if _MP:
                ctx.load_cert_chain(cert, key)
            else:
                _py_cert_chain(ctx, cert, key)
    except (ValueError, OSError) as e:
        raise OSError(22, "TLS: %r cannot be loaded (%s)" % (names, e))
    _ctx[0] = names
    _ctx[1] = ctx
    return ctx


def _py_cert_chain(ctx, cert, key):
    # CPython loads a certificate chain from files only, in PEM
    import os
    import tempfile
    from base64 import encodebytes

    def pem(kind, der):
        if der[:5] == b"-----":
            return der
        return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (kind, encodebytes(der), kind)

    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, pem(b"CERTIFICATE", cert) + pem(b"PRIVATE KEY", key))
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def wrap(sock, board, cfg):
    """The connected TCP socket `sock` wrapped in TLS to cfg["broker_host"]."""
    try:
        ctx = context(board, cfg)
        host = cfg["broker_host"]
        if _MP:
            return ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        sock.setblocking(True)
        sock.settimeout(cfg["timeout_ms"] / 1000)
        s = ctx.wrap_socket(sock, server_hostname=host)
        s.setblocking(False)
        socks = getattr(board, "_socks", None)
        if socks is not None:  # SimBoard: set_network(False) cuts this one (the TCP socket is detached now)
            socks.append(s)
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
