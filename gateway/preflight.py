"""`edgewire gateway --check FILE`: beyond the configuration's own validation,
what would stop (or weaken) a start on this machine: the files it names
(token file, HTTPS certificate and key), their permissions, the data folder,
and the ports it would listen on. Each problem is an error (the gateway
would not start, or would start unsafe) or a warning.

    for p in preflight(config): print(p)
"""
from __future__ import annotations

import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from edgewire.gateway.auth import file_problems
from edgewire.gateway.config import GatewayConfig

__all__ = ["Problem", "preflight"]


@dataclass(frozen=True, slots=True)
class Problem:
    level: str  # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def _token_file(path: str) -> list[Problem]:
    out = []
    for msg in file_problems(path):
        # an empty file starts (nobody gets in until a token is created); the rest do not, or are unsafe
        out.append(Problem("warning" if "holds no token" in msg else "error", msg))
    return out


def _tls_files(section: str, cert: str, key: str) -> list[Problem]:
    out = []
    for what, path in (("cert_file", cert), ("key_file", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            out.append(Problem("error", f"[{section}] {what} {path}: {e.strerror}"))
    if out:
        return out
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        out.append(Problem("error", f"[{section}] cert_file {cert} and key_file {key} do not load as a PEM "
                                    f"certificate chain and its private key: {e}"))
    mode = stat.S_IMODE(Path(key).stat().st_mode)
    if mode & stat.S_IROTH:
        out.append(Problem("error", f"[{section}] key_file {key} is readable by everyone (mode {mode:04o}): "
                                    f"chmod 600 {key}"))
    return out


def _data_dir(path: str) -> list[Problem]:
    folder = Path(path).resolve().parent
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the journal creates missing folders: the nearest existing one must be writable
    if not probe.is_dir():
        return [Problem("error", f"[journal] path {path}: {probe} is not a folder")]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [Problem("error", f"[journal] path {path}: {probe} is not writable by this user "
                                 f"(uid {os.getuid()}); the journal could not be created or grow")]
    j = Path(path)
    if j.exists() and not os.access(j, os.R_OK | os.W_OK):
        return [Problem("error", f"[journal] path {path}: the journal exists but is not readable and writable "
                                 "by this user")]
    return []


def _port(what: str, host: str, port: int) -> list[Problem]:
    if port == 0:
        return []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return [Problem("error", f"{what} host {host!r} does not resolve: {e}")]
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except PermissionError:
            return [Problem("error", f"{what} {host}:{port}: this user may not listen on port {port} "
                                     "(ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
        except OSError as e:
            return [Problem("error", f"{what} {host}:{port} is taken ({e.strerror}): another program, or a "
                                     "gateway already running, listens there")]
    return []


def preflight(config: GatewayConfig) -> list[Problem]:
    """Every problem found; an empty list when the gateway can start here."""
    out: list[Problem] = []
    http = config.http
    if http.token_file:
        out += _token_file(http.token_file)
    if http.cert_file:
        out += _tls_files("http", http.cert_file, http.key_file)
    if config.grpc.cert_file:
        out += _tls_files("grpc", config.grpc.cert_file, config.grpc.key_file)
    out += _data_dir(config.journal.path)
    out += _port("[http]", http.host, http.port)
    if not config.mqtt.url and not config.embedded_broker.allow_fallback:
        out += _port("[embedded_broker]", config.embedded_broker.host, config.embedded_broker.port)
    if config.grpc.listen:
        host, _, port = config.grpc.listen.rpartition(":")
        out += _port("[grpc] listen", host.strip("[]"), int(port))
    if config.mqtt.password_file:
        try:
            mode = stat.S_IMODE(Path(config.mqtt.password_file).stat().st_mode)
        except OSError as e:
            out.append(Problem("error", f"[mqtt] password_file {config.mqtt.password_file}: {e.strerror}"))
        else:
            if mode & stat.S_IROTH:
                out.append(Problem("warning", f"[mqtt] password_file {config.mqtt.password_file} is readable by "
                                              f"everyone (mode {mode:04o}): chmod 600 it"))
    return out
