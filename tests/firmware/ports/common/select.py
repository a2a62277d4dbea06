# Fake `select` for the esp32 and rp2 port fakes: the real poll() of the unix
# port over the sockets inside the fake socket objects, with each port's view
# of a connecting socket (see socket.py for the sources):
#   esp32: a refused connect reports POLLOUT only (no ERR/HUP);
#   rp2 < 1.25 (fakehw.rp2_version): a connecting socket reports POLLOUT at once;
#   rp2 refused: POLLOUT | POLLHUP.
# A poll never outlasts the watchdog: the wait is cut at its deadline and the
# board resets (fakehw.check), as the hardware watchdog would during a long wait.

import uselect as _rsel
import fakehw

POLLIN = 1
POLLOUT = 4
POLLERR = 8
POLLHUP = 16


class _Poll:
    def __init__(self):
        self._p = _rsel.poll()
        self._by_real = {}

    def register(self, obj, mask=POLLIN | POLLOUT):
        real = getattr(obj, "_s", obj)
        self._by_real[id(real)] = obj
        self._p.register(real, mask)

    def modify(self, obj, mask):
        self._p.modify(getattr(obj, "_s", obj), mask)

    def unregister(self, obj):
        real = getattr(obj, "_s", obj)
        self._by_real.pop(id(real), None)
        self._p.unregister(real)

    def poll(self, timeout=-1):
        fakehw.check()
        for obj in self._by_real.values():
            if getattr(obj, "_state", None) != "connecting" or obj._real_state() != "connecting":
                continue
            if fakehw.PORT == "rp2" and fakehw.rp2_version < (1, 25):
                return [(obj, POLLOUT)]  # writable while still connecting
            # the real handshake is done, the modelled one takes connect_delay_ms
            left = obj._t_connect + fakehw.connect_delay_ms - fakehw.now()
            if 0 <= timeout < left:
                fakehw.advance(timeout)
                return []
            fakehw.advance(max(0, left))
            timeout = 0
        if fakehw.wdt_timeout:
            left = fakehw._wdt_last + fakehw.wdt_timeout - fakehw.now() + 1
            if timeout < 0 or timeout > left:
                timeout = max(0, left)
        res = self._p.poll(timeout)
        fakehw.check()
        out = []
        for real, ev in res:
            obj = self._by_real.get(id(real), real)
            if getattr(obj, "_state", None) in ("connecting", "refused") and obj._real_state() == "refused":
                ev = POLLOUT if fakehw.PORT == "esp32" else POLLOUT | POLLHUP
            out.append((obj, ev))
        return out


def poll():
    return _Poll()
