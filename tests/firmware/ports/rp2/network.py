# Fake `network` of the rp2 port on a Pico W (CYW43439), MicroPython 1.2x.
# Sources: extmod/network_cyw43.c (WLAN methods, config keys, status codes:
# STAT_IDLE = CYW43_LINK_DOWN 0, STAT_CONNECTING = CYW43_LINK_JOIN 1,
# link up without an address = CYW43_LINK_NOIP 2, STAT_GOT_IP = CYW43_LINK_UP 3,
# STAT_CONNECT_FAIL = CYW43_LINK_FAIL -1, STAT_NO_AP_FOUND = CYW43_LINK_NONET -2,
# STAT_WRONG_PASSWORD = CYW43_LINK_BADAUTH -3), lib/cyw43-driver/src/cyw43.h
# (PM values: CYW43_NO_POWERSAVE_MODE 0xa11140, CYW43_PERFORMANCE_PM 0xa11142,
# CYW43_AGGRESSIVE_PM 0xa11c82; CYW43_DEFAULT_PM = CYW43_PERFORMANCE_PM), and
# docs/library/network.WLAN.html. The first active(True) brings the chip up and
# cyw43_wifi_set_up() applies CYW43_DEFAULT_PM: a pm set before it is lost
# (the reason mqtt_as sets pm after active(True)).
# Timing of the status codes: tests/firmware/ports/common/_wlan.py.

from _wlan import WlanModel, hostname_of as _hostname_of

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 3
STAT_CONNECT_FAIL = -1
STAT_NO_AP_FOUND = -2
STAT_WRONG_PASSWORD = -3

hostname = _hostname_of("PicoW")


def country(*cc):
    return "XX" if not cc else None


class WLAN(WlanModel):
    IF_STA = 0
    IF_AP = 1
    PM_NONE = 0xA11140
    PM_PERFORMANCE = 0xA11142
    PM_POWERSAVE = 0xA11C82
    SEC_OPEN = 0
    SEC_WPA_WPA2 = 0x00400004
    CODES = {"IDLE": 0, "CONNECTING": 1, "NOIP": 2, "GOT_IP": 3, "BADAUTH": -3, "NONET": -2, "LOST": -1}
    CONFIG = ("pm", "ssid", "channel", "mac", "security", "key", "hostname", "txpower", "hidden")
    PM_DEFAULT = 0xA11142

    def _on_first_active(self):
        self._cfg["pm"] = self.PM_DEFAULT  # cyw43_wifi_set_up: CYW43_DEFAULT_PM

    def _not_active(self):
        raise OSError(-1)  # cyw43_wifi_join on a chip that is not up

    def deinit(self):
        self.active(False)
