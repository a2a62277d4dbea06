"""SeqWindow against the int-bitmap model it replaced (D23, second pass), and
its state through the journal's encoding: the form older journals hold."""
from __future__ import annotations

import random

from edgewire.gateway.journal import pack, unpack
from edgewire.gateway.journal_state import _window, restore_registry
from edgewire.gateway.registry import Registry, SeqWindow


class IntWindow:
    """The window as it was until D23's second pass: the bitmap is one int,
    bit k set when high-k arrived, shifted on every new high."""

    CONFIRM = 3

    def __init__(self, window: int) -> None:
        self.window, self.mask = window, (1 << window) - 1
        self.first = self.high = self.bits = self.received = self.missing = 0
        self.duplicates = self.unchecked = self.suspect = self.jumped = 0
        self._jumps: list[int] = []
        self._quiet = True

    def _suspect(self, seq: int) -> bool:
        jumps = self._jumps
        if seq in jumps:
            self.duplicates += 1
            return False
        self.suspect += 1
        self.received += 1
        if jumps and seq > jumps[-1] and seq - jumps[-1] <= self.window and seq > self.high:
            jumps.append(seq)
            if len(jumps) >= self.CONFIRM and self._quiet:
                self.jumped += jumps[0] - self.high - 1
                self.missing += (seq - jumps[0] + 1) - len(jumps)
                self.bits = 0
                for j in jumps:
                    self.bits |= 1 << (seq - j)
                self.high = seq
                jumps.clear()
        else:
            self._jumps = [seq]
            self._quiet = True
        return True

    def accept(self, seq: int) -> bool:
        high = self.high
        if seq > high:
            if self.received == 0:
                self.first = seq
            elif seq - high > self.window:
                return self._suspect(seq)
            else:
                self.missing += seq - high - 1
            self._quiet = False
            d = seq - high
            self.bits = ((self.bits << d) | 1) & self.mask if d < self.window else 1
            self.high = seq
            self.received += 1
            return True
        k = high - seq
        if k >= self.window:
            if self.first - seq > self.window:
                return self._suspect(seq)
            self.unchecked += 1
            self.received += 1
            if seq < self.first:
                self.missing += self.first - seq - 1
                self.first = seq
            else:
                self.missing = max(0, self.missing - 1)
            return True
        bit = 1 << k
        if self.bits & bit:
            self.duplicates += 1
            return False
        self.bits |= bit
        self.received += 1
        if seq < self.first:
            self.missing += self.first - seq - 1
            self.first = seq
        else:
            self.missing -= 1
        return True


FIELDS = ("first", "high", "bits", "received", "missing", "duplicates", "unchecked", "suspect", "jumped", "_jumps",
          "_quiet")


def _same(a: SeqWindow, b: IntWindow) -> None:
    # the int model could keep bits past the window after a confirmed jump; no check ever read them
    mine = {f: getattr(a, f) for f in FIELDS}
    model = {f: getattr(b, f) for f in FIELDS}
    model["bits"] &= b.mask
    assert mine == model


def _sequences(rng: random.Random, window: int) -> list[int]:
    seq = rng.randrange(0, 1 << 32)
    out = []
    for _ in range(3000):
        r = rng.random()
        if r < 0.6:
            seq += 1                                   # in order
        elif r < 0.7:
            seq += rng.randint(2, 20)                  # a short gap
        elif r < 0.75:
            seq += rng.randint(17, max(17, 2 * window))  # a long gap, or a jump past the window
        elif r < 0.8:
            seq += window                              # exactly the window
        elif r < 0.9 and out:
            out.append(rng.choice(out[-3 * window:]))  # a duplicate or a late one
            continue
        else:
            out.append(max(0, seq - rng.randint(0, 3 * window)))  # late, maybe older than the window
            continue
        out.append(seq)
    return out


def test_ring_window_matches_the_int_window() -> None:
    rng = random.Random(7)
    for window in (8, 13, 64, 100, 4096):
        for _ in range(4):
            a, b = SeqWindow(window), IntWindow(window)
            for seq in _sequences(rng, window):
                assert a.accept(seq) == b.accept(seq), (window, seq)
                _same(a, b)


def _model_copy(b: IntWindow) -> IntWindow:
    c = IntWindow(b.window)
    for f in FIELDS:
        v = getattr(b, f)
        setattr(c, f, list(v) if isinstance(v, list) else v)
    return c


def test_state_round_trip_and_the_old_form() -> None:
    """Restored from what the journal writes now and from what older gateways
    wrote (a `mask` too, the same `bits`), a window goes on as the model does."""
    rng = random.Random(11)
    a, b = SeqWindow(64), IntWindow(64)
    seqs = _sequences(rng, 64)
    for seq in seqs[:1500]:
        a.accept(seq)
        b.accept(seq)
    new = unpack(pack(_window(a)))
    old = unpack(pack(_window_of_model(b)))
    assert "mask" in old and "mask" not in new
    assert {k: v for k, v in old.items() if k != "mask"} == new  # the same form, the same values
    for st in (new, old):
        reg = Registry(window=64)
        assert restore_registry(reg, {"dev": {"first_seen": 1, "boots": [[7, st]]}}, None) == 1
        w = reg.devices["dev"].boots[7]
        m = _model_copy(b)
        _same(w, m)
        for seq in seqs[1500:]:
            assert w.accept(seq) == m.accept(seq)
            _same(w, m)


def _window_of_model(b: IntWindow) -> dict[str, object]:
    """An older gateway's state of a window: every slot, `mask` included, big ints as ~int."""
    out: dict[str, object] = {}
    for k in ("window", "mask", "first", "high", "bits", "received", "missing", "duplicates", "unchecked",
              "suspect", "jumped", "_jumps", "_quiet"):
        v = getattr(b, k)
        if type(v) is int and not -(1 << 63) <= v < (1 << 64):
            v = {"~int": v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)}
        out[k] = v
    return out
