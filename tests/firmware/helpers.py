"""Shared pieces of the firmware tests: a device on the MicroPython unix port
(firmware/main.py with a SimBoard and a config.json), and a paho-mqtt
subscriber that records every message, decoded with the reference msgpack."""
from __future__ import annotations

import ast
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import paho.mqtt.client as mqtt

from tests.support import micropython

# Every device test runs in a device's budget: micropython.HEAP (64K).
# test_heap.py checks the headroom left while running (docs/firmware.md, "RAM budget").
DEVICE_HEAP = micropython.HEAP

BASE_CONFIG: dict[str, Any] = {
    "broker_host": "127.0.0.1",
    "keepalive_s": 2,
    "timeout_ms": 1000,
    "retry_ms": 2000,
    "backoff_min_ms": 200,
    "backoff_max_ms": 800,
    "stable_ms": 2000,
    "queue_size": 32,
}


def device_config(port: int, streams: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    cfg = dict(BASE_CONFIG, broker_port=port, streams=streams)
    cfg.update(over)
    return cfg


def start_device(tmp: Path, device_id: str, cfg: dict[str, Any], *, seed: int = 7,
                 fault_rate: float = 0.0, heap: str = DEVICE_HEAP) -> subprocess.Popen[str]:
    """firmware/main.py on MicroPython with a SimBoard keeping its files in tmp/<id>."""
    store = tmp / device_id
    store.mkdir(parents=True, exist_ok=True)
    (store / "config.json").write_text(json.dumps(cfg))
    code = (
        "from edgewire.boards.sim import SimBoard\n"
        "import main\n"
        "main.main(SimBoard(%r, storage=%r, seed=%d, fault_rate=%r))\n"
        % (device_id, str(store), seed, fault_rate)
    )
    return micropython.spawn(code, heap=heap)


class Clock:
    """A simulator's clock: time moves only when someone sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def ms(self) -> float:
        return self.t

    def sleep_ms(self, ms: int) -> None:
        self.t += ms


def stop_process(p: subprocess.Popen[str]) -> str:
    if p.poll() is None:
        p.kill()
    out, _ = p.communicate(timeout=10)
    return out or ""


class Recorder:
    """A paho subscriber on edgewire/v1/<device>/# that keeps (topic, retain, decoded, raw).
    It reconnects by itself and may use a persistent session (clean_session=False)."""

    def __init__(self, port: int, device_id: str, client_id: str = "rec", persistent: bool = False) -> None:
        self.port = port
        self.filter = f"edgewire/v1/{device_id}/#"
        self.msgs: list[tuple[str, bool, Any, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=not persistent)
        self.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.subscribed.set()

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        c.subscribe(self.filter, 2)

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            obj = msgpack.unpackb(m.payload, raw=False)
        except ValueError:
            obj = {"undecodable": bytes(m.payload)}
        with self.lock:
            self.msgs.append((m.topic, bool(m.retain), obj, bytes(m.payload)))

    def start(self) -> "Recorder":
        self.c.connect("127.0.0.1", self.port, keepalive=5)
        self.c.loop_start()
        assert self.subscribed.wait(5), "recorder did not get SUBACK"
        return self

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        self.c._reset_sockets()  # paho keeps its wake-up socketpair open otherwise

    def of(self, kind: str) -> list[tuple[str, bool, Any, bytes]]:
        with self.lock:
            return [m for m in self.msgs if m[0].endswith("/" + kind)]

    def wait(self, what: Callable[["Recorder"], bool], timeout: float, msg: str = "") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if what(self):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {msg or what}; got "
                             f"{[(m[0].rsplit('/', 1)[1], m[2]) for m in self.msgs][-8:]}")

    def births(self) -> list[dict[str, Any]]:
        return [m[2] for m in self.of("status") if m[2].get("st") == "on"]

    def telemetry(self) -> list[dict[str, Any]]:
        return [m[2] for m in self.of("telemetry")]


CONTROLLED = r"""
import os, sys
from edgewire.boards.sim import SimBoard
CTL = %r

def _there(name):
    try:
        os.stat(CTL + "/" + name)
        return True
    except OSError:
        return False

class Board(SimBoard):
    # A SimBoard the test steers through files in CTL: 'linkdown' makes link_up()
    # say the Wi-Fi is gone (sockets stay open, as in lwIP), 'stop' asks the device
    # to stop (seen at its next sensor read). Kept small: it shares the device's 64K.
    dev = None

    def link_up(self):
        return self._net and not _there("linkdown")

    def connect_network(self, timeout_ms):
        return self.link_up()

    def read(self, source):
        if self.dev is not None and _there("stop"):
            self.dev.stop()
        return SimBoard.read(self, source)

board = Board(%r, storage=%r, seed=%d, fault_rate=0)
import edgewire
from edgewire import config
cfg = config.load(board)
del config
sys.modules.pop("edgewire.config", None)
delattr(edgewire, "config")
from edgewire.device import Device
dev = Device(board, cfg, log=print)
board.dev = dev
dev.run()
print("STATS", dev.stats, "seq", dev.seq)
"""


class Controlled:
    """A Device on MicroPython (edgewire.device.Device.run, as main.py runs it) on a
    SimBoard the test steers: link_down()/link_up() flip what board.link_up() says
    (the sockets stay open, as a Wi-Fi drop leaves them in lwIP); finish() stops it
    (death, DISCONNECT) and returns its final stats."""

    def __init__(self, tmp: Path, device_id: str, cfg: dict[str, Any], *, seed: int = 7,
                 heap: str = DEVICE_HEAP) -> None:
        self.store = tmp / device_id
        self.ctl = tmp / (device_id + "-ctl")
        self.store.mkdir(parents=True, exist_ok=True)
        self.ctl.mkdir(parents=True, exist_ok=True)
        (self.store / "config.json").write_text(json.dumps(cfg))
        self.p = micropython.spawn(CONTROLLED % (str(self.ctl), device_id, str(self.store), seed), heap=heap)
        self.out = ""
        self.stats: dict[str, int] = {}

    def link_down(self) -> None:
        (self.ctl / "linkdown").write_text("")

    def link_up(self) -> None:
        (self.ctl / "linkdown").unlink()

    def finish(self, timeout: float = 30) -> dict[str, int]:
        (self.ctl / "stop").write_text("")
        try:
            self.out, _ = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.out = stop_process(self.p)
            raise AssertionError("the device did not stop: " + self.out[-3000:])
        m = [ln for ln in self.out.splitlines() if ln.startswith("STATS ")]
        assert m, self.out[-3000:]
        head, _, seq = m[-1][len("STATS "):].partition(" seq ")
        self.stats = ast.literal_eval(head)
        self.stats["seq"] = int(seq)
        return self.stats

    def kill(self) -> str:
        self.out = stop_process(self.p)
        return self.out
