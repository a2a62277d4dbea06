# Fake `network` of the esp32 port (ESP32-WROOM-32), MicroPython 1.2x.
# Sources: ports/esp32/network_wlan.c (WLAN methods, config keys incl.
# `reconnects`, status codes: STAT_IDLE 1000, STAT_CONNECTING 1001,
# STAT_GOT_IP 1010, and on failure the ESP-IDF disconnect reason:
# STAT_BEACON_TIMEOUT 200, STAT_NO_AP_FOUND 201, STAT_WRONG_PASSWORD 202,
# STAT_ASSOC_FAIL 203, STAT_HANDSHAKE_TIMEOUT 204), ports/esp32/modnetwork_globals.h
# and docs/library/network.WLAN.html. PM_NONE/PM_PERFORMANCE/PM_POWERSAVE map
# to WIFI_PS_NONE/MIN_MODEM/MAX_MODEM (0, 1, 2); power saving can be set at any
# time. connect() on an inactive interface raises OSError("Wifi Not Started").
# Timing of the status codes: tests/firmware/ports/common/_wlan.py.

from _wlan import WlanModel, hostname_of as _hostname_of

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
AUTH_OPEN = 0
AUTH_WPA2_PSK = 3
MODE_11B = 1
MODE_11G = 2
MODE_11N = 4

hostname = _hostname_of("espressif")


def phy_mode(*mode):
    return MODE_11B | MODE_11G | MODE_11N


class WLAN(WlanModel):
    IF_STA = 0
    IF_AP = 1
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2
    CODES = {"IDLE": 1000, "CONNECTING": 1001, "NOIP": 1001, "GOT_IP": 1010, "BADAUTH": 202, "NONET": 201,
             "LOST": 200}
    CONFIG = ("pm", "ssid", "channel", "mac", "hidden", "security", "key", "reconnects", "txpower",
              "dhcp_hostname", "hostname", "protocol")
    PM_DEFAULT = 1

    def _not_active(self):
        raise OSError("Wifi Not Started")
