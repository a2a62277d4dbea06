# Raspberry Pi Pico W (RP2040 + CYW43439). Pin map and wiring: hardware/pico-w.md.
# ADC inputs GP26-28 (0-3.3 V); ADC 4 is the internal temperature sensor.
# GP23, GP24, GP25 and GP29 belong to the wireless chip and are not offered.

from edgewire.boards.mcu import McuBoard


class PicoWBoard(McuBoard):
    name = "pico_w"
    id_prefix = "picow"
    ADC_PINS = (26, 27, 28)
    GPIO_PINS = tuple(range(0, 23)) + (26, 27, 28)

    def _internal_temp(self):
        import machine
        v = machine.ADC(4).read_u16() * 3.3 / 65535
        return 27 - (v - 0.706) / 0.001721  # RP2040 datasheet, section 4.9.5

    def connect_network(self, timeout_ms):
        w = self._if()
        try:
            w.config(pm=getattr(w, "PM_NONE", 0xA11140))  # no power save: steady latency
        except (ValueError, OSError, AttributeError):
            pass
        return McuBoard.connect_network(self, timeout_ms)
