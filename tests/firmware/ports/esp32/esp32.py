# Fake `esp32` module of the esp32 port on an original ESP32 (WROOM-32).
# Sources: ports/esp32/modesp32.c and docs/library/esp32.html.
# - raw_temperature(): the original ESP32's internal sensor, uncalibrated, in
#   raw Fahrenheit-like units; on many chips it reads a constant (128, shown
#   as "53.3 C" in forum reports), because the sensor is disabled in silicon.
#   Modelled as that constant.
# - mcu_temperature() exists only on ESP32-S2/S3/C3/C6 (SOC_TEMP_SENSOR_SUPPORTED),
#   so it is absent here.
# - wake_on_ext0/ext1, NVS, Partition, idf_heap_info as on the port (not behavioural).

import fakehw

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
HEAP_DATA = 4
HEAP_EXEC = 1


def raw_temperature():
    fakehw.check()
    return 128


def wake_on_ext0(pin, level):
    pass


def wake_on_ext1(pins, level):
    pass


def idf_heap_info(caps):
    return [(100000, 60000, 40000, 55000)]


class NVS:
    def __init__(self, namespace):
        self._d = {}

    def set_i32(self, k, v):
        self._d[k] = v

    def get_i32(self, k):
        if k not in self._d:
            raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND
        return self._d[k]

    def commit(self):
        pass
