# Device configuration: DEFAULTS below, overridden by config.json in the board's
# storage. load() merges and validates before any network I/O; a bad value
# raises ConfigError naming the key, the value and what is expected.
# docs/firmware.md lists every key.
#
# RAM: only needed at boot; main.py drops this module after load().

import json

from edgewire import wire

DEFAULTS = {
    # identity
    "device_id": None,          # None: the board's id (machine.unique_id based)
    "client_id": None,          # MQTT client id; None: the device id
    # network
    "wifi_ssid": None,          # real boards: the Wi-Fi to join
    "wifi_password": None,
    "net_timeout_ms": 20000,    # how long to wait for Wi-Fi to come up
    # broker
    "broker_host": "raspberrypi.local",  # the gateway Pi running mosquitto
    "broker_port": 1883,
    "username": None,
    "password": None,
    "tls_ca": None,             # TLS: the broker's CA, a DER file in the board's storage ("ca.der")
    "tls_cert": None,           # TLS client certificate, DER ("cert.der"); its key beside it as "cert.key"
    "keepalive_s": 30,          # PINGREQ after keepalive/2 of silence; dead after +timeout_ms
    "clean_session": False,     # a persistent session keeps QoS 1 commands while offline
    "timeout_ms": 5000,         # deadline for every socket read/write, CONNACK, SUBACK, PINGRESP
    "retry_ms": 15000,          # resend an unacknowledged QoS 1/2 message after this (DUP)
    "max_inflight": 4,          # QoS 1/2 messages awaiting acknowledgement
    "max_packet": 8192,         # larger inbound MQTT packets drop the connection
    # reconnect backoff: jittered exponential between min and max, reset after stable_ms up
    "backoff_min_ms": 1000,
    "backoff_max_ms": 60000,
    "stable_ms": 30000,
    # telemetry
    "streams": None,            # None: the board's default streams; else a list of
                                # {"name", "source", "interval_ms", "qos", "unit"}
    "batch_max": 16,            # readings per telemetry message (1-64)
    "queue_size": 64,           # readings kept in RAM while offline (drop-oldest, counted)
    # commands
    "commands": True,           # subscribe to <device>/cmd and execute commands
    "cmd_cache": 4,             # recent command ids remembered to answer repeats without re-executing
    "allow_reboot": True,       # the reboot command may reset the board
    "min_interval_ms": 100,     # set_interval and streams accept no faster rate
    # board services
    "watchdog_ms": 8000,        # machine.WDT timeout on real boards (clamped to the port's limit), 0: off
    "ntp_host": None,           # optional NTP server for the wall time (the gateway sends it anyway)
    # diagnostics
    "debug": False,             # log details and periodic stats to stdout
    "stats_ms": 60000,          # period of the debug stats line
}

STREAM_KEYS = ("name", "source", "interval_ms", "qos", "unit")
# The board's own settings: build() hands them to board.configure() and leaves
# them out of the config the Device keeps (each key is a dict slot of heap for
# the device's life; at 29 keys the dict is one allocation size smaller).
BOARD_KEYS = ("wifi_ssid", "wifi_password", "watchdog_ms", "ntp_host")
# Options that are off when None: left out of the Device's config unless set
# (the Device reads them with get()), for the same reason.
UNSET_KEYS = ("tls_ca", "tls_cert")


class ConfigError(ValueError):
    pass


def _int(cfg, key, lo, hi):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError("config %r: %r is not an integer in %d..%d" % (key, v, lo, hi))


def _str(cfg, key, optional, maxlen=128):
    v = cfg[key]
    if v is None and optional:
        return
    if not isinstance(v, str) or not 0 < len(v) <= maxlen:
        raise ConfigError("config %r: %r is not a string of 1-%d characters%s"
                          % (key, v, maxlen, " (or null)" if optional else ""))


def _bool(cfg, key):
    if cfg[key] is not True and cfg[key] is not False:
        raise ConfigError("config %r: %r is not true or false" % (key, cfg[key]))


def validate_stream(i, s, board=None, min_interval=10):
    where = "config 'streams'[%d]" % i
    if not isinstance(s, dict):
        raise ConfigError("%s: %r is not an object with keys %s" % (where, s, ", ".join(STREAM_KEYS)))
    for k in s:
        if k not in STREAM_KEYS:
            raise ConfigError("%s: unknown key %r (expected %s)" % (where, k, ", ".join(STREAM_KEYS)))
    for k in ("name", "source", "interval_ms"):
        if k not in s:
            raise ConfigError("%s: missing %r" % (where, k))
    if not wire.valid_stream(s["name"]):
        raise ConfigError("%s 'name': %r is not 1-64 characters of A-Z a-z 0-9 _ - . in /-separated segments"
                          % (where, s["name"]))
    where = "config 'streams' %r" % s["name"]
    if not isinstance(s["source"], str) or not s["source"]:
        raise ConfigError("%s 'source': %r is not a source string such as 'adc:26'" % (where, s["source"]))
    if board is not None:
        bad = board.check_source(s["source"])
        if bad:
            raise ConfigError("%s 'source': %s" % (where, bad))
    iv = s["interval_ms"]
    if isinstance(iv, bool) or not isinstance(iv, int) or not min_interval <= iv <= 86400000:
        raise ConfigError("%s 'interval_ms': %r is not an integer in %d..86400000" % (where, iv, min_interval))
    q = s.get("qos", 1)
    if isinstance(q, bool) or q not in (0, 1, 2):
        raise ConfigError("%s 'qos': %r is not 0, 1 or 2" % (where, q))
    u = s.get("unit", "")
    if not isinstance(u, str) or len(u) > 16:
        raise ConfigError("%s 'unit': %r is not a string of at most 16 characters" % (where, u))


def validate(cfg, board=None):
    """Raise ConfigError for the first bad key; returns cfg."""
    for k in cfg:
        if k not in DEFAULTS:
            raise ConfigError("config %r: unknown key (known keys: %s)" % (k, ", ".join(sorted(DEFAULTS))))
    for k in DEFAULTS:
        if k not in cfg:
            raise ConfigError("config %r: missing (start from config.DEFAULTS)" % k)
    if not wire.valid_id(cfg["device_id"]):
        raise ConfigError("config 'device_id': %r is not 1-64 characters of A-Z a-z 0-9 _ -" % (cfg["device_id"],))
    _str(cfg, "client_id", True, 23 * 10)
    _str(cfg, "wifi_ssid", True, 32)
    _str(cfg, "wifi_password", True, 64)
    _str(cfg, "broker_host", False, 253)
    _str(cfg, "username", True)
    _str(cfg, "password", True)
    _str(cfg, "tls_ca", True, 64)
    _str(cfg, "tls_cert", True, 64)
    _int(cfg, "broker_port", 1, 65535)
    _int(cfg, "net_timeout_ms", 100, 600000)
    _int(cfg, "keepalive_s", 1, 65535)
    _int(cfg, "timeout_ms", 50, 600000)
    _int(cfg, "retry_ms", 100, 3600000)
    _int(cfg, "max_inflight", 1, 64)
    _int(cfg, "max_packet", 256, 1048576)
    _int(cfg, "backoff_min_ms", 10, 3600000)
    _int(cfg, "backoff_max_ms", cfg["backoff_min_ms"] if isinstance(cfg["backoff_min_ms"], int) else 10, 86400000)
    _int(cfg, "stable_ms", 0, 86400000)
    _int(cfg, "batch_max", 1, wire.MAX_READINGS)
    _int(cfg, "queue_size", 1, 10000)
    _int(cfg, "cmd_cache", 1, 256)
    _int(cfg, "min_interval_ms", 10, 86400000)
    _int(cfg, "stats_ms", 1000, 86400000)
    if cfg["watchdog_ms"] != 0:
        _int(cfg, "watchdog_ms", 1000, 600000)
    _str(cfg, "ntp_host", True, 253)
    for k in ("clean_session", "commands", "allow_reboot", "debug"):
        _bool(cfg, k)
    st = cfg["streams"]
    if not isinstance(st, list) or not 0 < len(st) <= 32:
        raise ConfigError("config 'streams': %r is not a list of 1-32 stream objects" % (st,))
    names = []
    for i, s in enumerate(st):
        validate_stream(i, s, board, cfg["min_interval_ms"])
        if s["name"] in names:
            raise ConfigError("config 'streams': name %r is used twice" % s["name"])
        names.append(s["name"])
    return cfg


def build(board, overrides=None):
    """DEFAULTS + overrides + board defaults, validated; the board settings
    (BOARD_KEYS) go to board.configure() and are not in the result."""
    cfg = {}
    for k in DEFAULTS:
        cfg[k] = DEFAULTS[k]
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError("config: %r is not a JSON object" % (overrides,))
        for k in overrides:
            cfg[k] = overrides[k]
    if cfg.get("device_id") is None:
        cfg["device_id"] = board.device_id()
    if cfg.get("streams") is None:
        cfg["streams"] = board.default_streams()
    else:
        st = cfg["streams"]
        if isinstance(st, list):  # fill optional stream keys
            cfg["streams"] = [_stream_defaults(s) for s in st]
    validate(cfg, board)
    board.configure(cfg)
    return {k: cfg[k] for k in cfg if k not in BOARD_KEYS and not (k in UNSET_KEYS and cfg[k] is None)}


def _stream_defaults(s):
    if not isinstance(s, dict):
        return s
    out = {"qos": 1, "unit": ""}
    for k in s:
        out[k] = s[k]
    return out


def load(board, name="config.json"):
    """Read `name` from board storage (absent: defaults only) and build the config."""
    raw = board.read_file(name)
    over = None
    if raw is not None:
        try:
            over = json.loads(raw)
        except ValueError as e:
            raise ConfigError("%s: not valid JSON (%s)" % (name, e))
    return build(board, over)
