# Fake `machine` of the esp32 port (ESP32-WROOM-32), MicroPython 1.2x: only
# what that port has. Sources:
# - ADC: ports/esp32/machine_adc.c, docs/library/machine.ADC.html and
#   docs/esp32/quickref.html#adc: ADC(Pin(32-39) ADC1, 0, 2, 4, 12-15, 25-27 ADC2)
#   with atten=; read_u16() (raw, uncalibrated, scaled to 16 bits), read_uv()
#   (calibrated by the chip's eFuse values), read() (raw, width bits), atten(),
#   width(), block(). ATTN_0DB/2_5DB/6DB/11DB ~1.1/1.5/2.2/3.55 V full scale;
#   the raw reading of an uncalibrated ESP32 ADC is off by several percent
#   (modelled as gain 1.05 and an offset of 70 mV).
# - WDT: ports/esp32/machine_wdt.c: the task watchdog, timeout > 0 ms, no
#   upper bound worth modelling; no deinit.
# - Pin: GPIO 0-39 exist except 20, 24, 28-31 (ports/esp32/machine_pin.c).
#   I2C: ports/esp32/machine_i2c.c, a missing device raises OSError(ENODEV 19).
# - reset_cause(): PWRON_RESET 1, HARD_RESET 2, WDT_RESET 3, DEEPSLEEP_RESET 4,
#   SOFT_RESET 5 (ports/esp32/modmachine.c).
# - unique_id(): the 6-byte Wi-Fi MAC.

import fakehw
from _machine import Pin as _Pin, RTC, Timer, port_parts as _port_parts
from _machine import reset, soft_reset, deepsleep, lightsleep, idle, freq, disable_irq, enable_irq
from _machine import time_pulse_us

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_ADC_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


class Pin(_Pin):
    VALID = tuple(x for x in range(40) if x not in (20, 24, 28, 29, 30, 31))
    WAKE_LOW = 4
    WAKE_HIGH = 5


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 9
    WIDTH_10BIT = 10
    WIDTH_11BIT = 11
    WIDTH_12BIT = 12
    _FULL = (1.1, 1.5, 2.2, 3.55)
    _CAL_MAX = (0.95, 1.25, 1.75, 3.1)  # the calibrated range per attenuation

    def __init__(self, pin, *, atten=0):
        fakehw.check()
        if not isinstance(pin, _Pin) or pin.id not in _ADC_PINS:
            raise ValueError("invalid pin")
        self._pin = pin.id
        self._atten = atten
        self._width = 12

    def atten(self, a):
        if a not in (0, 1, 2, 3):
            raise ValueError("invalid atten")
        self._atten = a

    def width(self, w):
        if w not in (9, 10, 11, 12):
            raise ValueError("invalid width")
        self._width = w

    def init(self, *, atten=None):
        if atten is not None:
            self.atten(atten)

    def _v(self):
        fakehw.check()
        return max(0.0, min(self._FULL[self._atten], fakehw.volts.get(self._pin, 0.0)))

    def read_uv(self):
        return int(min(self._v(), self._CAL_MAX[self._atten]) * 1000000)

    def read_u16(self):
        raw = (self._v() * 1.05 + 0.07) / self._FULL[self._atten]
        return max(0, min(65535, int(raw * 65535)))

    def read(self):
        return self.read_u16() >> (16 - self._width)


# WDT limit, I2C NACK errno, dht_readinto's ETIMEDOUT (see the header)
WDT, I2C, SoftI2C, dht_readinto, unique_id = _port_parts('esp32', 0, 19, 116)


def reset_cause():
    return PWRON_RESET


def wake_reason():
    return 0
