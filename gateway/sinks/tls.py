"""TLS options shared by the network sinks (amqp, grpc): `ca_file` (PEM CA
bundle the backend's certificate must chain to; empty: the system's CAs),
`cert_file` + `key_file` (a client certificate, for backends that require
one). Checked as values while the configuration is read; the files are read
when the sink starts, and a file that cannot be read or parsed is a
ConfigError naming its key."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from edgewire.gateway.errors import ConfigError

__all__ = ["TLS_KEYS", "client_context", "read_pem", "validate_tls"]

TLS_KEYS = ("ca_file", "cert_file", "key_file")


def validate_tls(options: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in TLS_KEYS:
        v = options.get(key, "")
        if not isinstance(v, str) or len(v) > 4096:
            raise ConfigError("sinks", key, v, "expected the path of a PEM file (empty: none)")
        out[key] = v
    if bool(out["cert_file"]) != bool(out["key_file"]):
        missing = "key_file" if out["cert_file"] else "cert_file"
        raise ConfigError("sinks", missing, "", "cert_file and key_file go together (a client certificate)")
    return out


def read_pem(key: str, path: str) -> bytes:
    """A PEM file's bytes; ConfigError naming `key` when it cannot be read or is not PEM."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError("sinks", key, path, f"cannot be read: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError("sinks", key, path, "is not a PEM file")
    return data


def client_context(opts: dict[str, Any]) -> ssl.SSLContext:
    """A client context that verifies the server (hostname included) against ca_file, or
    the system's CAs, and presents cert_file/key_file when given."""
    for key in TLS_KEYS:
        if opts.get(key):
            read_pem(key, opts[key])
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.get("ca_file") or None)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError("sinks", "ca_file", opts["ca_file"], f"holds no usable CA certificate ({e})") from None
    if opts.get("cert_file"):
        try:
            ctx.load_cert_chain(opts["cert_file"], opts["key_file"])
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError("sinks", "cert_file", opts["cert_file"],
                              f"and key_file are not a certificate and its key ({e})") from None
    return ctx
