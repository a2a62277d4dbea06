"""The embedded (amqtt) broker's accounts and ACL: the files and rules
mosquitto gets (gateway/provision.py), as two amqtt 0.12 plugins. Imported
only in the embedded broker's process (it imports amqtt).

`PasswordFileAuth` checks CONNECT's user name and password against the
generated `passwd` ($7$ PBKDF2 hashes, as mosquitto does); anonymous clients
are refused. `TopicAcl` applies `provision.allowed()` to every PUBLISH,
SUBSCRIBE and delivery (amqtt's RECEIVE check), so a device publishes only
under its own id and reads only its own command topic, and the gateway's
account reads all and writes commands. `load()` (at start and on SIGHUP)
reads the password file again; connected clients whose account is gone are
disconnected, as mosquitto does on reload.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from edgewire.gateway.provision import PASSWD, allowed, read_passwd, verify_password

log = logging.getLogger("edgewire.embedded_broker")

# One broker per process: the plugins read the accounts from here.
_state: dict[str, Any] = {"dir": None, "gateway_user": "", "users": {}}


def configure(auth_dir: str, gateway_user: str) -> None:
    """At start: the password file must be readable (else no one could connect)."""
    from edgewire.gateway.embedded_broker import EmbeddedBrokerError

    _state["dir"] = Path(auth_dir)
    _state["gateway_user"] = gateway_user
    try:
        _state["users"] = read_passwd(_state["dir"] / PASSWD)
    except OSError as e:
        raise EmbeddedBrokerError(f"cannot read the password file {_state['dir'] / PASSWD}: {e}") from e


def load() -> dict[str, str]:
    """Read the password file again; returns {user: hash}."""
    path = _state["dir"] / PASSWD
    try:
        users = read_passwd(path)
    except OSError as e:
        log.error("cannot read the password file %s (%s): keeping the %d accounts loaded before", path, e,
                  len(_state["users"]))
        return dict(_state["users"])
    _state["users"] = users
    return users


def refused(username: str | None) -> bool:
    return username not in _state["users"]


def plugins_config() -> dict[str, Any]:
    return {f"{__name__}.PasswordFileAuth": {}, f"{__name__}.TopicAcl": {}}


class PasswordFileAuth(BaseAuthPlugin):
    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        user = session.username
        hashed = _state["users"].get(user) if user else None
        password = session.password or ""
        if isinstance(password, (bytes, bytearray)):
            password = bytes(password).decode("utf-8", "replace")
        ok = bool(hashed) and verify_password(password, hashed)
        if not ok:
            log.warning("refused CONNECT of client %r: %s", session.client_id,
                        "no user name" if not user else f"bad user name or password for {user!r}")
        return ok


class TopicAcl(BaseTopicPlugin):
    @dataclass
    class Config:
        pass

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        user = session.username if session is not None else None
        ok = action is not None and allowed(user, _state["gateway_user"], topic or "", str(action.value))
        if not ok and action != Action.RECEIVE:
            log.info("ACL: %s of %r by %r refused", action, topic, user)
        return ok
