"""Shared pieces of the MQTT security tests: a site folder mosquitto can read
(it drops to its own user, which cannot enter pytest's private tmp_path), a
gateway configuration with per-device accounts, and a paho client that
records what it gets and how its connects end."""
from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgewire.gateway.config import (CommandsConfig, GatewayConfig, HttpConfig, JournalConfig, MqttAuthConfig,
                                     MqttConfig)
from tests.support.broker import Mosquitto

GATEWAY_USER = "edgewire-gateway"


@contextmanager
def site_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgewire-site-") as d:
        p = Path(d)
        p.chmod(0o755)
        yield p


def site_config(site: Path, url: str = "", **mqtt: Any) -> GatewayConfig:
    """A gateway with [mqtt_auth] in `site`/auth and its own account."""
    return GatewayConfig(
        mqtt=MqttConfig(url=url, client_id="gw-" + uuid.uuid4().hex[:8], keepalive=5, reconnect_min=0.05,
                        reconnect_max=0.5, connect_timeout=5.0, username=GATEWAY_USER,
                        password_file=str(site / "gateway.password"), **mqtt),
        mqtt_auth=MqttAuthConfig(dir=str(site / "auth")),
        http=HttpConfig(host="127.0.0.1", port=0),
        commands=CommandsConfig(timeout=3.0),
        journal=JournalConfig(path=str(site / f"journal-{uuid.uuid4().hex[:8]}.db")),
    )


def auth_conf(site: Path) -> str:
    """mosquitto.conf lines for the generated files (as in deploy/mosquitto.conf)."""
    return (f"allow_anonymous false\npassword_file {site / 'auth' / 'passwd'}\n"
            f"acl_file {site / 'auth' / 'acl'}\n")


def start_mosquitto(workdir: Path, extra: str) -> Mosquitto:
    return Mosquitto(workdir, extra_conf=extra).start()


def wait(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Client:
    """A paho MQTT 3.1.1 client (an independent implementation) logged in as
    `user`: records messages, SUBACK codes, connects and disconnects."""

    def __init__(self, port: int, user: str | None, password: str | None, client_id: str | None = None,
                 reconnect: bool = False) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or user or "anon",
                             protocol=mqtt.MQTTv311, clean_session=True)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.messages: list[tuple[str, bytes]] = []
        self.connacks: list[int] = []
        self.disconnects = 0
        self.subacks: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        if not reconnect:
            self.c.reconnect_delay_set(3600, 3600)
        self.port = port

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self.lock:
            self.connacks.append(int(rc.value) if hasattr(rc, "value") else int(rc))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self.lock:
            self.disconnects += 1

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Any = None) -> None:
        with self.lock:
            self.subacks[mid] = [int(x.value) if hasattr(x, "value") else int(x) for x in codes]

    def start(self) -> Client:
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        wait(lambda: self.connacks, what="CONNACK")
        return self

    @property
    def accepted(self) -> bool:
        return bool(self.connacks) and self.connacks[-1] == 0

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        _, mid = self.c.subscribe(topic, qos)
        return wait(lambda: self.subacks.get(mid), what=f"SUBACK for {topic}")  # type: ignore[no-any-return]

    def pub(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.c.publish(topic, payload, qos=qos).wait_for_publish(10)

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except Exception:
            pass
