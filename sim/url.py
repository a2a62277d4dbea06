"""Broker URLs for the simulator: mqtt://host[:port], mqtts://host[:port] (TLS)."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from edgewire.sim.errors import SimError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: object) -> BrokerAddress:
    """'mqtt://127.0.0.1:1883' -> BrokerAddress('127.0.0.1', 1883); 'mqtts://h' ->
    BrokerAddress('h', 8883, tls=True); SimError otherwise."""
    example = "expected mqtt://host:port or mqtts://host:port (TLS), e.g. mqtt://127.0.0.1:1883"
    if not isinstance(url, str) or not url.strip():
        raise SimError(f"broker URL {url!r} is empty ({example})")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise SimError(f"broker URL {url!r}: {e} ({example})") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise SimError(f"broker URL {url!r}: scheme {parts.scheme or '(none)'!r} is not 'mqtt' or 'mqtts' ({example})")
    if not parts.hostname:
        raise SimError(f"broker URL {url!r}: missing host ({example})")
    if parts.username is not None or parts.password is not None:
        raise SimError(f"broker URL {url!r}: no user names or passwords in the URL (per-device accounts: "
                       f"--auth-config; {example})")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SimError(f"broker URL {url!r}: unexpected path, query or fragment ({example})")
    if port == 0:
        raise SimError(f"broker URL {url!r}: port 0 is not a port a broker listens on ({example})")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port if port is not None else DEFAULT_TLS_PORT if tls else DEFAULT_PORT, tls)
