"""The gateway's one error hierarchy. Messages name the offending value and,
where known, the fix."""
from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """A configuration value is wrong; raised before any I/O.

    str() reads like ``[http] port 'abc': expected an integer 1-65535``."""

    def __init__(self, section: str, key: str | None, value: object, expected: str) -> None:
        self.section = section
        self.key = key
        self.value = value
        self.expected = expected
        where = f"[{section}]" if key is None else f"[{section}] {key}"
        shown = "" if value is _MISSING else f" {_show(value)}"
        super().__init__(f"{where}{shown}: {expected}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: object = _Missing()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class MqttError(GatewayError, ConnectionError):
    """The MQTT connection failed or was lost."""


class MqttProtocolError(MqttError):
    """The broker sent bytes that break MQTT 3.1.1; the connection is dropped."""


class MqttNotConnected(MqttError):
    """An operation needs a broker connection and there is none right now."""


class CommandError(GatewayError):
    """A command could not be completed."""


class CommandTimeout(CommandError, TimeoutError):
    """The device sent no result within the timeout."""


class CommandRejected(CommandError, ValueError):
    """The command itself is invalid (bad device id, name, args or timeout)."""


class CommandBusy(CommandError):
    """Too many commands are pending; try again later."""


class CommandOffline(CommandError):
    """The registry knows the device is offline; nothing was sent (the caller
    may ask to queue the command instead)."""
