"""The registry's state in the journal: each device as one msgpack blob,
written in the same transaction as the messages that changed it, and read
back at start (so `GET /api/v1/devices` after a restart, even after SIGKILL,
says what it said before).

The encoding follows `Device`'s `__slots__`, so a counter added to it is
kept without touching this module; `SeqWindow` names what it keeps in its
`STATE` (a counter added to it goes there too), its bitmap as the int `bits`,
the form journals have always held. Integers that do not fit msgpack (that
bitmap) travel as {"~int": bytes}."""
from __future__ import annotations

import collections
import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any

from edgewire.gateway.journal import pack, unpack
from edgewire.gateway.registry import Device, Registry, SeqWindow

__all__ = ["device_state", "registry_state", "restore_registry"]

_BIG = "~int"


def _enc(v: Any) -> Any:
    if type(v) is int and not -(1 << 63) <= v < (1 << 64):
        return {_BIG: v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)}
    return v


def _dec(v: Any) -> Any:
    if type(v) is dict and len(v) == 1 and _BIG in v:
        return int.from_bytes(v[_BIG], "big", signed=True)
    return v


@functools.cache
def _slots(cls: type) -> list[str]:
    """The fields of cls that the journal keeps: its STATE when it names them
    (SeqWindow: its bitmap as the `bits` int, not the ring it works on), else
    its __slots__."""
    state = cls.__dict__.get("STATE")
    if state is not None:
        return list(state)
    out: list[str] = []
    for k in reversed(cls.__mro__):
        s = k.__dict__.get("__slots__", ())
        out.extend([s] if isinstance(s, str) else s)
    return [n for n in out if not n.startswith("__")]


def device_state(dev: Device, adapter: str | None = None) -> bytes:
    """One device's state; `adapter`: the ingest adapter it last came through."""
    names, get = _getter(type(dev))
    d = dict(zip(names, [_enc(v) if type(v) is int else v for v in get(dev)]))
    d["boots"] = [[b, _window(w)] for b, w in dev.boots.items()]
    d["values"] = [[s, list(t)] for s, t in dev.values.items()]
    if adapter is not None:
        d["~adapter"] = adapter
    return pack(d)  # type: ignore[no-any-return]


def _window(w: SeqWindow) -> dict[str, Any]:
    names, get = _getter(type(w))
    return dict(zip(names, [_enc(v) if type(v) is int else v for v in get(w)]))


@functools.cache
def _getter(cls: type) -> tuple[list[str], Callable[[Any], tuple[Any, ...]]]:
    """The slot names of a class and one C call that reads them all (a
    one-element tuple even for a single slot)."""
    names = _slots(cls)
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return names, lambda o: (get(o),)
    return names, get


def _settings(reg: Registry) -> frozenset[str]:
    return _init_params(type(reg))


@functools.cache
def _init_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters)


def registry_state(reg: Registry) -> bytes:
    """The registry's own counters: its int attributes that are not settings
    (devices travel separately)."""
    skip = _settings(reg)
    return pack({k: v for k, v in vars(reg).items() if type(v) is int and k not in skip})  # type: ignore[no-any-return]


def restore_registry(reg: Registry, devices: dict[str, Any], meta: Any,
                     adapters: dict[str, str] | None = None) -> int:
    """Put the journal's registry state into an empty registry; returns how
    many devices were restored. Unknown fields (from a newer gateway) are
    ignored; missing ones keep their defaults. `adapters` gets each device's
    last ingest adapter."""
    if isinstance(meta, (bytes, bytearray)):
        meta = unpack(meta)
    if isinstance(meta, dict):
        skip = _settings(reg)
        for k, v in meta.items():
            if k not in skip and type(getattr(reg, k, None)) is int and type(v) is int:
                setattr(reg, k, v)
    dev_slots = set(_slots(Device))
    win_slots = set(_slots(SeqWindow))
    n = 0
    for dev_id, state in devices.items():
        if not isinstance(state, dict):
            continue
        dev = Device(dev_id, int(state.get("first_seen", 0)))
        if adapters is not None and isinstance(state.get("~adapter"), str):
            adapters[dev_id] = state["~adapter"]
        for name, v in state.items():
            if name not in dev_slots or name == "id":
                continue
            v = _dec(v)
            if name == "boots":
                boots: collections.OrderedDict[int, SeqWindow] = collections.OrderedDict()
                for b, wd in v:
                    w = SeqWindow(int(wd.get("window", reg.window)))
                    for k, wv in wd.items():
                        if k in win_slots and k != "bits":
                            setattr(w, k, _dec(wv))
                    if "bits" in wd:  # relative to `high`: after it (also from journals that stored `mask`)
                        w.bits = _dec(wd["bits"])
                    boots[b] = w
                v = boots
            elif name == "values":
                v = {s: tuple(t) for s, t in v}
            setattr(dev, name, v)
        reg.devices[dev_id] = dev
        n += 1
    reg.restored()
    return n
