"""Gateway configuration: one TOML file, validated into frozen dataclasses
before any I/O. Every key has a default that works on a Raspberry Pi; an
unknown key is an error that names it. docs/config.md lists every key.

    cfg = load_config("gateway.toml")          # or parse_config(toml_text)
    cfg = GatewayConfig(http=HttpConfig(port=0))  # in code: validated the same way
"""
from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from types import MappingProxyType
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from edgewire.gateway.embedded_broker import MEASURED_LIMIT
from edgewire.gateway.errors import _MISSING as _MISSING_VALUE
from edgewire.gateway.errors import ConfigError

__all__ = [
    "CommandsConfig",
    "EmbeddedBrokerConfig",
    "GatewayConfig",
    "HttpConfig",
    "HubConfig",
    "JournalConfig",
    "LogConfig",
    "MqttAuthConfig",
    "MqttConfig",
    "RegistryConfig",
    "load_config",
    "parse_config",
]

_LEVELS = ("debug", "info", "warning", "error")


def _int(section: str, key: str, value: object, lo: int, hi: int, extra: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(section, key, value, f"expected an integer {lo}-{hi}{extra}")


def _num(section: str, key: str, value: object, lo: float, hi: float, unit: str = "seconds") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:  # type: ignore[operator]
        raise ConfigError(section, key, value, f"expected a number of {unit} {lo:g}-{hi:g}")


def _bool(section: str, key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(section, key, value, "expected true or false")


def _str(section: str, key: str, value: object, max_len: int = 1024) -> None:
    if not isinstance(value, str) or len(value) > max_len:
        raise ConfigError(section, key, value, f"expected a string of at most {max_len} characters")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """[mqtt]: the broker the gateway ingests from. An empty url starts the
    embedded amqtt broker (see [embedded_broker])."""

    url: str = ""
    client_id: str = "edgewire-gateway"
    username: str = ""
    password_file: str = ""
    keepalive: int = 30
    clean_session: bool = False
    connect_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    max_packet: int = 65536
    queue_limit: int = 10000
    # TLS (an mqtts:// url): the CA that signed the broker's certificate
    # (empty: the system's CAs), and a client certificate if the broker asks.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        s = "mqtt"
        _str(s, "url", self.url)
        if self.url:
            parse_mqtt_url(self.url)
        _str(s, "client_id", self.client_id, 23 * 4)
        if not self.client_id or not all(c.isascii() and (c.isalnum() or c in "-_") for c in self.client_id):
            raise ConfigError(s, "client_id", self.client_id, "expected 1-92 of A-Z a-z 0-9 _ -, the same on every start")
        _str(s, "username", self.username, 256)
        _str(s, "password_file", self.password_file)
        if self.password_file and not self.username:
            raise ConfigError(s, "password_file", self.password_file, "needs a username too")
        _int(s, "keepalive", self.keepalive, 5, 3600, " seconds")
        _bool(s, "clean_session", self.clean_session)
        _num(s, "connect_timeout", self.connect_timeout, 0.1, 300)
        _num(s, "reconnect_min", self.reconnect_min, 0.01, 60)
        _num(s, "reconnect_max", self.reconnect_max, 0.01, 3600)
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError(s, "reconnect_max", self.reconnect_max,
                              f"must be at least reconnect_min ({self.reconnect_min:g})")
        _int(s, "max_packet", self.max_packet, 4200, 268435455, " bytes")
        _int(s, "queue_limit", self.queue_limit, 100, 10_000_000, " messages")
        for key in ("ca_file", "cert_file", "key_file"):
            _str(s, key, getattr(self, key), 4096)
            if getattr(self, key) and not self.tls:
                raise ConfigError(s, key, getattr(self, key), "TLS files need an mqtts:// url")
        if self.key_file and not self.cert_file:
            raise ConfigError(s, "key_file", self.key_file, "needs cert_file (the client certificate) too")

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_mqtt_url(self.url)

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """'mqtt://host:port' -> (host, port); port defaults to 1883 (mqtts://: TLS, 8883)."""
    fix = "expected mqtt://host:port or mqtts://host:port (TLS), e.g. mqtt://127.0.0.1:1883 (empty: embedded broker)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("mqtt", "url", url, fix) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError("mqtt", "url", url, f"scheme {parts.scheme!r} is not supported; {fix}")
    if not parts.hostname:
        raise ConfigError("mqtt", "url", url, f"missing host; {fix}")
    if parts.password is not None or parts.username is not None:
        raise ConfigError("mqtt", "url", "<redacted>", "put credentials in username and password_file, not the url")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("mqtt", "url", url, f"unexpected path or query; {fix}")
    return parts.hostname, (8883 if parts.scheme == "mqtts" else 1883) if port is None else port


@dataclass(frozen=True, slots=True)
class EmbeddedBrokerConfig:
    """[embedded_broker]: used only when [mqtt] url is empty."""

    host: str = "127.0.0.1"
    port: int = 1883
    allow_fallback: bool = True
    # MQTT ingest rate (msg/s) at which the gateway warns that the embedded
    # broker nears its limit; 0 never warns. Default: 70% of the measured limit.
    warn_rate: float = round(0.7 * MEASURED_LIMIT)
    # TLS: cert_file/key_file (the server's PEM certificate and key, e.g. from
    # `edgewire certs init`) add a TLS listener on tls_host:tls_port; the
    # gateway's own client then connects over it, verifying with ca_file.
    tls_host: str = ""
    tls_port: int = 8883
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    def __post_init__(self) -> None:
        s = "embedded_broker"
        _str(s, "tls_host", self.tls_host, 255)
        _int(s, "tls_port", self.tls_port, 0, 65535, " (0: any free port)")
        for key in ("cert_file", "key_file", "ca_file"):
            _str(s, key, getattr(self, key), 4096)
            if getattr(self, key) and key != "cert_file" and not self.cert_file:
                raise ConfigError(s, key, getattr(self, key), "needs cert_file (the broker's certificate) too")
        if self.cert_file and not self.key_file:
            raise ConfigError(s, "cert_file", self.cert_file, "needs key_file (the certificate's key) too")
        _str("embedded_broker", "host", self.host, 255)
        if not self.host:
            raise ConfigError("embedded_broker", "host", self.host, "expected a host name or address")
        _int("embedded_broker", "port", self.port, 0, 65535, " (0: any free port)")
        _bool("embedded_broker", "allow_fallback", self.allow_fallback)
        _num("embedded_broker", "warn_rate", self.warn_rate, 0, 1e9)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """[http]: the REST, SSE and WebSocket server and the dashboard."""

    host: str = "127.0.0.1"
    port: int = 8080
    heartbeat: float = 15.0
    ws_batch: int = 2000
    ws_max_message: int = 65536
    dashboard: bool = True
    max_filters: int = 64
    idle_timeout: float = 30.0
    request_timeout: float = 10.0
    write_timeout: float = 60.0
    max_connections: int = 0
    max_connections_per_peer: int = 64
    max_live_per_peer: int = 32
    live_reserve: int = 16
    # authentication, cross-origin rules, HTTPS, metrics (issue #11; docs/api.md "Authentication")
    token_file: str = ""
    session_lifetime: float = 43200.0
    cors_origins: tuple[str, ...] = ()
    cert_file: str = ""
    key_file: str = ""
    metrics_auth: bool = True
    auth_max_failures: int = 10
    auth_failure_window: float = 60.0

    def __post_init__(self) -> None:
        _str("http", "host", self.host, 255)
        if not self.host:
            raise ConfigError("http", "host", self.host, "expected a host name or address, e.g. 0.0.0.0")
        _int("http", "port", self.port, 0, 65535, " (0: any free port)")
        _num("http", "heartbeat", self.heartbeat, 0.05, 3600)
        _int("http", "ws_batch", self.ws_batch, 1, 100_000, " events")
        _int("http", "ws_max_message", self.ws_max_message, 1024, 16 * 1024 * 1024, " bytes")
        _bool("http", "dashboard", self.dashboard)
        _int("http", "max_filters", self.max_filters, 1, 100_000, " per SSE or WebSocket client")
        _num("http", "idle_timeout", self.idle_timeout, 0.1, 86400)
        _num("http", "request_timeout", self.request_timeout, 0.1, 3600)
        _num("http", "write_timeout", self.write_timeout, 0.1, 86400)
        _int("http", "max_connections", self.max_connections, 0, 1_000_000, " (0: from the file limit)")
        _int("http", "max_connections_per_peer", self.max_connections_per_peer, 1, 1_000_000)
        _int("http", "max_live_per_peer", self.max_live_per_peer, 1, 100_000)
        _int("http", "live_reserve", self.live_reserve, 0, 100_000, " live-client slots")
        _http_security(self)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`: addresses only this machine reaches."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _http_security(c: HttpConfig) -> None:
    s = "http"
    _str(s, "token_file", c.token_file, 4096)
    if not is_loopback(c.host) and not c.token_file:
        raise ConfigError(s, "host", c.host, "listening beyond this machine needs authentication: set [http] "
                          "token_file (tokens from `edgewire token create`), or keep host = \"127.0.0.1\"")
    _num(s, "session_lifetime", c.session_lifetime, 60, 365 * 86400.0)
    origins = c.cors_origins
    if not isinstance(origins, (list, tuple)) or not all(isinstance(o, str) for o in origins):
        raise ConfigError(s, "cors_origins", origins, "expected a list of origins, e.g. [\"https://grafana.example\"]")
    for o in origins:
        u = urlsplit(o)
        if u.scheme not in ("http", "https") or not u.netloc or u.path or u.query or u.fragment or o != o.lower():
            raise ConfigError(s, "cors_origins", o, "expected an origin: scheme://host[:port] in lower case, "
                              "no path (\"*\" is not accepted)")
    object.__setattr__(c, "cors_origins", tuple(origins))
    _str(s, "cert_file", c.cert_file, 4096)
    _str(s, "key_file", c.key_file, 4096)
    if bool(c.cert_file) != bool(c.key_file):
        raise ConfigError(s, "key_file" if c.cert_file else "cert_file", c.key_file if c.cert_file else c.cert_file,
                          "HTTPS needs both cert_file and key_file (PEM); neither: plain HTTP")
    _bool(s, "metrics_auth", c.metrics_auth)
    _int(s, "auth_max_failures", c.auth_max_failures, 1, 1_000_000, " failed attempts per address")
    _num(s, "auth_failure_window", c.auth_failure_window, 1, 86400)


@dataclass(frozen=True, slots=True)
class HubConfig:
    """[hub]: live fan-out. The newest `ring` events are also kept in memory, so
    that most resumes and slow clients do not read SQLite; each live client
    has a queue of `client_queue` events (a client that lets it overflow reads
    from the journal until it has caught up)."""

    ring: int = 5000
    client_queue: int = 2000
    max_clients: int = 256

    def __post_init__(self) -> None:
        _int("hub", "ring", self.ring, 1, 10_000_000, " events")
        _int("hub", "client_queue", self.client_queue, 1, 10_000_000, " events")
        _int("hub", "max_clients", self.max_clients, 1, 100_000)


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """[journal]: the durable journal (SQLite, WAL). docs/gateway.md "The journal".

    `synchronous` "full" fsyncs the WAL at every commit: a power cut loses
    nothing acknowledged. "normal" fsyncs only at checkpoints: a crash of the
    gateway process loses nothing, a power cut can lose the last commits
    (already acknowledged to the broker). Retention removes the oldest entries
    beyond `max_bytes` or older than `max_age` seconds (0: no limit)."""

    path: str = "edgewire-journal.db"
    synchronous: str = "full"
    max_bytes: int = 512 * 1024 * 1024
    max_age: float = 30 * 86400.0
    max_pending: int = 50_000
    max_pending_bytes: int = 4 << 20
    retention_interval: float = 1.0

    def __post_init__(self) -> None:
        s = "journal"
        _str(s, "path", self.path, 4096)
        if not self.path or self.path == ":memory:":
            raise ConfigError(s, "path", self.path, "expected a file path, e.g. /var/lib/edgewire/journal.db")
        if self.synchronous not in ("full", "normal"):
            raise ConfigError(s, "synchronous", self.synchronous,
                              "expected full (safe against power cuts) or normal (safe against crashes)")
        _int(s, "max_bytes", self.max_bytes, 0, 1 << 50, " bytes (0: no size limit; at least 1 MiB otherwise)")
        if 0 < self.max_bytes < 1 << 20:
            raise ConfigError(s, "max_bytes", self.max_bytes, "expected 0 (no limit) or at least 1048576 (1 MiB)")
        _num(s, "max_age", self.max_age, 0, 100 * 365 * 86400.0)
        _int(s, "max_pending", self.max_pending, 100, 10_000_000, " entries")
        _int(s, "max_pending_bytes", self.max_pending_bytes, 1 << 18, 1 << 34, " bytes")
        _num(s, "retention_interval", self.retention_interval, 0.05, 3600)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """[registry]: devices, sessions, gaps and duplicates."""

    max_devices: int = 10000
    max_streams: int = 256
    dedup_window: int = 4096
    boots_kept: int = 4

    def __post_init__(self) -> None:
        _int("registry", "max_devices", self.max_devices, 1, 10_000_000)
        _int("registry", "max_streams", self.max_streams, 1, 100_000, " per device")
        _int("registry", "dedup_window", self.dedup_window, 8, 1 << 20, " sequence numbers")
        _int("registry", "boots_kept", self.boots_kept, 1, 64, " per device")


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """[commands]: commands to devices (QoS 1 on edgewire/v1/<id>/cmd)."""

    timeout: float = 10.0
    max_timeout: float = 300.0
    max_pending: int = 256
    max_pending_per_device: int = 16

    def __post_init__(self) -> None:
        _num("commands", "timeout", self.timeout, 0.01, 3600)
        _num("commands", "max_timeout", self.max_timeout, 0.01, 3600)
        if self.timeout > self.max_timeout:
            raise ConfigError("commands", "timeout", self.timeout,
                              f"must not exceed max_timeout ({self.max_timeout:g})")
        _int("commands", "max_pending", self.max_pending, 1, 1_000_000)
        _int("commands", "max_pending_per_device", self.max_pending_per_device, 1, 1_000_000)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """[log]: level, and how often a repeated refusal of one kind is logged."""

    level: str = "info"
    drop_log_interval: float = 60.0

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise ConfigError("log", "level", self.level, "expected one of " + ", ".join(_LEVELS))
        _num("log", "drop_log_interval", self.drop_log_interval, 0.0, 86400)

    @property
    def level_number(self) -> int:
        return int(getattr(logging, self.level.upper()))


def default_site() -> str:
    """The machine's short host name, kept to what a routing-key word may hold."""
    import socket

    name = socket.gethostname().split(".")[0]
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)[:64].strip("-")
    return name or "edgewire"


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """[gateway]: who this gateway is. `site` names it to backends (the first
    word of an AMQP routing key, <site>.<device>.<stream>), so several gateways
    can feed one RabbitMQ cluster; default: the host name."""

    site: str = field(default_factory=default_site)

    def __post_init__(self) -> None:
        _str("gateway", "site", self.site, 64)
        if not self.site or not all(c.isascii() and (c.isalnum() or c in "-_") for c in self.site):
            raise ConfigError("gateway", "site", self.site,
                              "expected 1-64 of A-Z a-z 0-9 _ - (one word of a routing key: no dots)")


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    """[grpc]: the gateway's gRPC service (Subscribe, ListDevices, GetDevice,
    SendCommand; gateway/grpc_service.py). Off while `listen` is empty."""

    listen: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        _str("grpc", "listen", self.listen, 1024)
        if self.listen:
            host, _, port = self.listen.rpartition(":")
            if not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError("grpc", "listen", self.listen,
                                  "expected host:port, e.g. 0.0.0.0:50052 (port 0: any free one); empty: off")
        _str("grpc", "cert_file", self.cert_file)
        _str("grpc", "key_file", self.key_file)
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("grpc", "key_file" if self.cert_file else "cert_file",
                              self.key_file if self.cert_file else self.cert_file,
                              "TLS needs both cert_file and key_file (PEM); neither: plaintext")


@dataclass(frozen=True, slots=True)
class MqttAuthConfig:
    """[mqtt_auth]: per-device MQTT accounts (gateway/provision.py). `dir`
    holds the device list and the broker's password and ACL files generated
    from it (at start and on SIGHUP); the embedded broker enforces the same
    rules. Empty: off (anyone who reaches the broker may publish as any device)."""

    dir: str = ""

    def __post_init__(self) -> None:
        _str("mqtt_auth", "dir", self.dir, 4096)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway: SiteConfig = field(default_factory=SiteConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    embedded_broker: EmbeddedBrokerConfig = field(default_factory=EmbeddedBrokerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    mqtt_auth: MqttAuthConfig = field(default_factory=MqttAuthConfig)
    # [[sinks]] tables, each validated by its sink's module (gateway/sinks/)
    sinks: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        from edgewire.gateway.sinks import validate_sink

        if self.mqtt_auth.dir and not (self.mqtt.username and self.mqtt.password_file):
            raise ConfigError("mqtt_auth", "dir", self.mqtt_auth.dir,
                              "per-device accounts need the gateway's own: set [mqtt] username and password_file "
                              "(the file is created with a random password if it does not exist)")

        if not isinstance(self.sinks, (tuple, list)):
            raise ConfigError("sinks", None, _MISSING_VALUE, "expected [[sinks]] tables")
        checked = []
        names: set[str] = set()
        for t in self.sinks:
            if not isinstance(t, Mapping):
                raise ConfigError("sinks", None, _MISSING_VALUE, "expected [[sinks]] tables")
            v = validate_sink(dict(t), site=self.gateway.site)
            if v["name"] in names:
                raise ConfigError("sinks", "name", v["name"], "two sinks with one name (their cursors would mix)")
            names.add(v["name"])
            checked.append(MappingProxyType(v))
        object.__setattr__(self, "sinks", tuple(checked))

    def replace(self, **sections: Any) -> GatewayConfig:
        return dataclasses.replace(self, **sections)


_SECTIONS: dict[str, type[Any]] = {
    "gateway": SiteConfig,
    "mqtt": MqttConfig,
    "embedded_broker": EmbeddedBrokerConfig,
    "http": HttpConfig,
    "hub": HubConfig,
    "journal": JournalConfig,
    "registry": RegistryConfig,
    "commands": CommandsConfig,
    "log": LogConfig,
    "grpc": GrpcConfig,
    "mqtt_auth": MqttAuthConfig,
}


def parse_config(text: str, *, source: str = "<config>") -> GatewayConfig:
    """Validate TOML text into a GatewayConfig; raises ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("file", None, source, f"not valid TOML: {e}") from None
    return config_from_mapping(data)


def config_from_mapping(data: Mapping[str, Any]) -> GatewayConfig:
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name == "sinks":
            if not isinstance(table, list):
                raise ConfigError("sinks", None, _MISSING_VALUE, "expected [[sinks]] tables (an array of tables)")
            built["sinks"] = tuple(table)
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(name, None, _MISSING_VALUE,
                              "unknown section (known: " + ", ".join([*_SECTIONS, "sinks"]) + ")")
        if not isinstance(table, dict):
            raise ConfigError(name, None, _MISSING_VALUE, "expected a table, e.g. [" + name + "]")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in table:
            if key not in known:
                raise ConfigError(name, key, _MISSING_VALUE, "unknown key (known: " + ", ".join(known) + ")")
        built[name] = cls(**table)
    return GatewayConfig(**built)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a TOML file; raises ConfigError (also for I/O errors)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("file", None, str(p), f"cannot be read: {e}") from None
    return parse_config(text, source=str(p))


def read_password(cfg: MqttConfig) -> str | None:
    """The MQTT password from password_file (never logged), or None."""
    if not cfg.password_file:
        return None
    try:
        return Path(cfg.password_file).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError("mqtt", "password_file", cfg.password_file, f"cannot be read: {e.strerror}") from None

