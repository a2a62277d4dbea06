# What the ESP32 and Pico W boards share: Wi-Fi station, ADC, GPIO, NTP, unique id.
# `machine` and `network` are imported lazily, inside methods, so importing this
# module costs nothing on the unix port and the imports stay in the board layer.
#
# RAM: one WLAN object and one ADC/Pin object per source read (cached).

from edgewire.boards import Board, SensorError, split_source


class McuBoard(Board):
    name = "mcu"
    id_prefix = "mcu"
    ADC_PINS = ()
    GPIO_PINS = ()

    def __init__(self, ssid=None, password=None, storage_dir="/", ntp=True, hostname=None):
        Board.__init__(self, storage_dir)
        self._ssid = ssid
        self._password = password
        self._ntp = ntp
        self._hostname = hostname
        self._wlan = None
        self._hw = {}  # source -> ADC or Pin object
        self._id = None

    def configure(self, config):
        if config.get("wifi_ssid"):
            self._ssid = config["wifi_ssid"]
            self._password = config.get("wifi_password")

    def device_id(self):
        if self._id is None:
            import machine
            uid = machine.unique_id()
            self._id = self.id_prefix + "-" + "".join("%02x" % b for b in uid)
        return self._id

    # ------------------------------------------------------------ network

    def _if(self):
        if self._wlan is None:
            import network
            if self._hostname:
                try:
                    network.hostname(self._hostname)
                except (AttributeError, ValueError, OSError):
                    pass
            self._wlan = network.WLAN(network.STA_IF)
        return self._wlan

    def network_up(self):
        return self._wlan is not None and self._wlan.isconnected()

    def connect_network(self, timeout_ms):
        """Join the configured Wi-Fi within timeout_ms; False when it does not come up."""
        w = self._if()
        w.active(True)
        if w.isconnected():
            return True
        if not self._ssid:
            raise OSError(22, "no Wi-Fi configured: set wifi_ssid in config.json")
        try:
            w.connect(self._ssid, self._password)
        except OSError:
            pass  # already connecting
        t0 = self.ticks_ms()
        while not w.isconnected():
            if self.ticks_ms() - t0 >= timeout_ms:
                try:
                    w.disconnect()
                except OSError:
                    pass
                return False
            self.sleep_ms(100)
        if self._ntp and self.time_ms() is None:
            try:
                import ntptime
                ntptime.settime()
            except (ImportError, OSError, OverflowError):
                pass  # time stays unset; telemetry goes without 't'
        return True

    # ------------------------------------------------------------ sensors

    def check_source(self, source):
        kind, arg = split_source(source)
        if kind == "adc":
            if arg not in self.ADC_PINS:
                return "adc pin %r is not an ADC input on %s (use one of %s)" % (arg, self.name, self.ADC_PINS)
        elif kind == "pin":
            if arg not in self.GPIO_PINS:
                return "pin %r is not a usable GPIO on %s" % (arg, self.name)
        elif kind != "internal_temp" or arg is not None:
            return "source %r is not known on %s (expected adc:N, pin:N or internal_temp)" % (source, self.name)
        return None

    def read(self, source):
        bad = self.check_source(source)
        if bad:
            raise SensorError(bad)
        try:
            kind, arg = split_source(source)
            if kind == "internal_temp":
                return round(self._internal_temp(), 2)
            hw = self._hw.get(source)
            import machine
            if kind == "adc":
                if hw is None:
                    hw = self._hw[source] = self._adc(machine, arg)
                return round(hw.read_uv() / 1000000, 4)
            if hw is None:
                hw = self._hw[source] = machine.Pin(arg, machine.Pin.IN)
            return bool(hw.value())
        except (OSError, ValueError, AttributeError) as e:
            raise SensorError("%s: %s" % (source, e))

    def _adc(self, machine, pin):
        return machine.ADC(machine.Pin(pin))

    def _internal_temp(self):
        raise SensorError("internal_temp is not available on %s" % self.name)

    def default_streams(self):
        return [{"name": "mcu_temp", "source": "internal_temp", "interval_ms": 60000, "qos": 1, "unit": "C"}]

    def reset(self):
        import machine
        machine.reset()
