# Fake `machine` of the rp2 port (Raspberry Pi Pico W, RP2040), MicroPython 1.2x:
# only what that port has. Sources:
# - ADC: ports/rp2/machine_adc.c and docs/library/machine.ADC.html: ADC(id) with
#   id 0-4 or Pin(26-29), read_u16() only (no read_uv, atten, width, read);
#   CORE_TEMP = 4. 12-bit samples scaled to 16 bits; full scale is ADC_VREF
#   (the Pico W's 3.3 V supply through a filter: datasheet "Pico W" 4.3).
# - WDT: ports/rp2/machine_wdt.c: timeout in ms, at most 8388 ("timeout exceeds
#   8388ms" is raised above 0x7fffff us); no deinit.
# - Pin: GPIO 0-29 (ports/rp2/machine_pin.c); "WL_GPIO0".. on the Pico W are
#   not modelled. I2C: ports/rp2/machine_i2c.c, I2C(0|1, scl=, sda=, freq=);
#   a missing device raises OSError(EIO 5).
# - reset_cause() values PWRON_RESET 1, WDT_RESET 3 (modmachine.c).
# - unique_id(): 8 bytes of the flash chip's id.

import fakehw
from _machine import Pin as _Pin, RTC, Timer, port_parts as _port_parts
from _machine import reset, soft_reset, deepsleep, lightsleep, idle, freq, disable_irq, enable_irq
from _machine import time_pulse_us

PWRON_RESET = 1
WDT_RESET = 3


class Pin(_Pin):
    VALID = tuple(range(30))
    ALT = 3


class ADC:
    CORE_TEMP = 4
    VREF = 3.3  # the volts that read 65535 (the board's reference, not exact)

    def __init__(self, pin):
        fakehw.check()
        if isinstance(pin, _Pin):
            if pin.id not in (26, 27, 28, 29):
                raise ValueError("Pin doesn't have ADC capabilities")
            self._ch = pin.id - 26
        elif pin in (0, 1, 2, 3, 4):
            self._ch = pin
        elif pin in (26, 27, 28, 29):
            self._ch = pin - 26
        else:
            raise ValueError("invalid channel")

    def read_u16(self):
        fakehw.check()
        v = fakehw.volts.get(26 + self._ch if self._ch < 4 else 4, 0.0)
        raw12 = max(0, min(4095, int(v / self.VREF * 4095 + 0.5)))
        return (raw12 << 4) | (raw12 >> 8)


# WDT limit, I2C NACK errno, dht_readinto's ETIMEDOUT (see the header)
WDT, I2C, SoftI2C, dht_readinto, unique_id = _port_parts('rp2', 8388, 5, 110)


def reset_cause():
    return PWRON_RESET


def bootloader():
    fakehw.exit_("reset", "machine.bootloader()")
