# Shared model of a Wi-Fi station for the port fakes' network.WLAN (the status
# codes and config keys are each port's, given by its network.py).
#
# Timeline of a join started by connect(ssid, key) at t (fakehw clock):
#   SSID in fakehw.aps, key right: CONNECTING until t + JOIN_MS, then link up
#     without an address (rp2: STAT_NOIP 2) until + DHCP_MS, then GOT_IP;
#   key wrong: CONNECTING until t + BADAUTH_MS, then the port's wrong-password
#     code, which stays until the next connect()/disconnect();
#   SSID not in range: CONNECTING until t + NONET_MS, then the no-AP code.
# isconnected() is true only with an address (rp2: cyw43 link status UP,
# extmod/network_cyw43.c; esp32: the STA_GOT_IP event, ports/esp32/network_wlan.c).
# fakehw.link["up"] = False takes the AP away: a connected station loses its link.

import fakehw


def hostname_of(default):
    """network.hostname([name]) of a port whose default name is `default`
    (extmod/modnetwork.c: at most 32 characters)."""
    name = [default]

    def hostname(*new):
        if not new:
            return name[0]
        if len(new[0]) > 32:
            raise ValueError("hostname too long")
        name[0] = new[0]
    return hostname


class WlanModel:
    CODES = {}      # IDLE, CONNECTING, NOIP, GOT_IP, BADAUTH, NONET, LOST: set by the port
    CONFIG = ()     # config keys the port accepts
    PM_DEFAULT = 0

    def __init__(self, interface=0):
        fakehw.wlan = self
        self._if = interface
        self._active = False
        self._started_once = False
        self._join = None  # (t0, outcome: 'ok'|'badauth'|'nonet', ssid)
        self._cfg = {"pm": self.PM_DEFAULT, "ssid": "", "channel": 1, "mac": b"\x28\xcd\xc1\x00\x00\x01",
                     "reconnects": -1, "txpower": 20, "security": 0, "hostname": "mpy"}

    def _state(self):
        c = self.CODES
        if not self._active or self._join is None:
            return c["IDLE"]
        t0, outcome, ssid = self._join
        dt = fakehw.now() - t0
        if outcome == "ok":
            if dt < fakehw.JOIN_MS:
                return c["CONNECTING"]
            if not fakehw.link["up"]:
                return c["LOST"]
            if dt < fakehw.JOIN_MS + fakehw.DHCP_MS:
                return c["NOIP"]
            return c["GOT_IP"]
        if outcome == "badauth":
            return c["CONNECTING"] if dt < fakehw.BADAUTH_MS else c["BADAUTH"]
        return c["CONNECTING"] if dt < fakehw.NONET_MS else c["NONET"]

    def active(self, *flag):
        fakehw.check()
        if not flag:
            return self._active
        fakehw.log("WLAN.active(%r)" % (bool(flag[0]),))
        self._active = bool(flag[0])
        if self._active and not self._started_once:
            self._started_once = True
            self._on_first_active()
        if not self._active:
            self._join = None
        return None

    def _on_first_active(self):
        pass

    def connect(self, ssid=None, key=None, *, bssid=None):
        fakehw.check()
        fakehw.log("WLAN.connect(%r)" % (ssid,))
        if not self._active:
            self._not_active()
        if ssid in fakehw.aps and fakehw.link["up"]:
            outcome = "ok" if fakehw.aps[ssid][0] == key else "badauth"
        else:
            outcome = "nonet"
        self._join = (fakehw.now(), outcome, ssid)
        self._cfg["ssid"] = ssid

    def disconnect(self):
        fakehw.check()
        fakehw.log("WLAN.disconnect()")
        self._join = None

    def isconnected(self):
        return self._state() == self.CODES["GOT_IP"]

    def status(self, *param):
        fakehw.check()
        if param:
            if param[0] == "rssi":
                if not self.isconnected():
                    raise OSError(-1)
                return fakehw.aps[self._join[2]][1]
            raise ValueError("unknown status param")
        return self._state()

    def config(self, *args, **kw):
        fakehw.check()
        if args:
            if len(args) != 1 or kw or args[0] not in self.CONFIG:
                raise ValueError("unknown config param")
            return self._cfg.get(args[0])
        for k in kw:
            if k not in self.CONFIG:
                raise ValueError("unknown config param")
        for k in kw:
            fakehw.log("WLAN.config(%s=%r)" % (k, kw[k]))
            self._cfg[k] = kw[k]

    def ifconfig(self, *a):
        if self.isconnected():
            return ("192.168.1.50", "255.255.255.0", "192.168.1.1", "192.168.1.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def scan(self):
        fakehw.advance(2000)
        return [(s.encode(), b"\x00" * 6, 6, fakehw.aps[s][1], 3, False) for s in fakehw.aps]
