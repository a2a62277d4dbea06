# Raspberry Pi Pico W (RP2040 + CYW43439). Pin map and wiring: hardware/pico-w.md.
# ADC inputs GP26-28: read_u16() (the only ADC read on rp2) scaled by the
# board's reference, ADC_VREF (the 3.3 V supply; pass adc_vref= measured on
# your board, or 3.0 with an external LM4040 reference). ADC 4 is the internal
# temperature sensor. GP23, GP24, GP25 and GP29 belong to the wireless chip and
# are not offered. The watchdog cannot exceed 8388 ms (ports/rp2/machine_wdt.c).

from edgewire.boards.mcu import McuBoard


class PicoWBoard(McuBoard):
    name = "pico_w"
    id_prefix = "picow"
    ADC_PINS = (26, 27, 28)
    GPIO_PINS = tuple(range(0, 23)) + (26, 27, 28)
    WDT_MAX_MS = 8388
    I2C_PINS = (5, 4)  # I2C(0): SCL GP5, SDA GP4

    def _no_internal_temp(self):
        return None

    def _internal_temp(self):
        import machine
        v = self._volts(machine.ADC(4))
        return 27 - (v - 0.706) / 0.001721  # RP2040 datasheet, section 4.9.5

    def _start_join(self, w):
        w.active(True)
        # after active(True): the first one brings the chip up with the driver's
        # default power management, overwriting an earlier setting
        try:
            w.config(pm=getattr(w, "PM_NONE", 0xA11140))  # no power save: steady latency
        except (ValueError, OSError):
            pass
        w.connect(self._ssid, self._password)

    def default_streams(self):
        return [{"name": "mcu_temp", "source": "internal_temp", "interval_ms": 60000, "qos": 1, "unit": "C"},
                McuBoard.default_streams(self)[0]]
