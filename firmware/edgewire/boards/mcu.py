# What the ESP32 and Pico W boards share: Wi-Fi station, watchdog, ADC, GPIO,
# buses, unique id. `machine` and `network` are imported lazily, inside
# methods, so importing this module costs nothing on the unix port and the
# imports stay in the board layer. Each behaviour is tested on port-faithful
# fakes (tests/firmware/ports/, tests/firmware/test_board_*.py).
#
# Wi-Fi join: connect_network() never blocks for long. It starts the join and
# then looks at WLAN.status() for at most _SLICE_MS per call: an error code
# (wrong password, no access point) ends the join at once with an OSError
# naming it; still joining returns False and the Device tries again after its
# backoff (the join goes on in the Wi-Fi chip meanwhile), so sampling and
# stop() carry on during a 20 s join.
#
# Watchdog: with watchdog_ms > 0 (McuBoard(watchdog_ms=8000)) the first feed() starts machine.WDT,
# clamped to the port's limit (WDT_MAX_MS: 8388 on rp2); the Device feeds it
# every step and inside every wait that can last, the board inside the join
# and the DNS lookup.
#
# RAM: one WLAN object, one WDT, and one ADC/Pin/driver object per source read (cached).

from edgewire.boards import Board, SensorError, split_source

_SLICE_MS = 200  # longest a connect_network() call waits: one Device step


class McuBoard(Board):
    name = "mcu"
    id_prefix = "mcu"
    ADC_PINS = ()
    GPIO_PINS = ()
    SOURCES = "adc:N, pin:N, internal_temp, rssi"
    ADC_VREF = 3.3      # volts at read_u16() == 65535 (calibrate per board: adc_vref=)
    WDT_MAX_MS = 0      # the port's watchdog limit, 0: none to speak of

    def __init__(self, ssid=None, password=None, storage_dir="/", hostname=None, adc_vref=None,
                 adc_offset=0.0, watchdog_ms=0, ntp_host=None):
        Board.__init__(self, storage_dir)
        self._ssid = ssid
        self._password = password
        self._hostname = hostname
        self._vref = adc_vref or self.ADC_VREF
        self._adc_off = adc_offset
        self._wlan = None
        self._join_t = -1   # ticks_ms when the running join started, -1: none
        self._hw = {}       # source -> ADC, Pin or driver object
        self._id = None
        self._wdt_ms = 0
        self._wdt = None
        self._ntp = None    # [host, next sync ms] when NTP is configured
        self.configure({"watchdog_ms": watchdog_ms, "ntp_host": ntp_host})
        self._dns = None    # the broker's address, see connect()
        self._time_off = None  # epoch ms - ticks_ms once the wall time was set

    def configure(self, config):
        if config.get("wifi_ssid"):
            self._ssid = config["wifi_ssid"]
            self._password = config.get("wifi_password")
        # watchdog_ms and ntp_host: constructor keywords, and config keys (which win)
        ms = config.get("watchdog_ms", self._wdt_ms) or 0
        if self.WDT_MAX_MS and ms > self.WDT_MAX_MS:
            ms = self.WDT_MAX_MS
        self._wdt_ms = ms
        if config.get("ntp_host"):
            self._ntp = [config["ntp_host"], 0]

    def device_id(self):
        if self._id is None:
            import machine
            uid = machine.unique_id()
            self._id = self.id_prefix + "-" + "".join("%02x" % b for b in uid)
        return self._id

    # ------------------------------------------------------------ watchdog, time

    def time_ms(self):
        """The RTC is no wall clock on these boards (rp2 restarts it at 2021 on
        every boot): the wall time comes from the gateway or NTP (set_time_ms)."""
        if self._time_off is not None:
            return self.ticks_ms() + self._time_off
        return Board.time_ms(self)

    def set_time_ms(self, ms):
        """Set the wall clock to epoch ms (the gateway's `time` command, or NTP);
        it then runs on ticks_ms until the next boot."""
        self._time_off = int(ms) - self.ticks_ms()

    def feed(self):
        if self._wdt_ms:
            if self._wdt is None:
                import machine
                self._wdt = machine.WDT(timeout=self._wdt_ms)
            self._wdt.feed()
        n = self._ntp
        if n is not None and self.ticks_ms() >= n[1] and self.network_up():
            from edgewire import ntp  # optional: loaded only when ntp_host is set
            ntp.sync(self, n)

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

    def connect(self, host, port, timeout_ms):
        """Board.connect, made right for the ports:

        DNS once, cached (an IP address never goes to DNS on any port); one
        lookup per attempt while it fails (the Device's backoff spaces them), and
        again after three failed connects in a row (DHCP may have moved the
        broker). Fed around the lookup, which blocks: esp32 mDNS takes ~5 s for a
        .local name, rp2's lwIP spins until DNS answers.

        Connected means the handshake completed: Board.connect returns once
        poll() says writable, which esp32's lwIP sockets also say for a refused
        connect, and rp2 before MicroPython 1.25 for one still connecting. A
        second connect() tells them apart: EISCONN (esp32 newlib 127, else 106)
        when connected, EALREADY/EINPROGRESS (114, 115, 119, 120) while still
        connecting, another error when refused: that fails at once."""
        d = self._dns  # [host, port, address, connects failed in a row]
        if d is None or d[0] != host or d[1] != port or d[3] > 2:
            self._dns = None
            self.feed()
            import socket
            try:
                a = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
            except OSError as e:
                raise OSError(2, "DNS lookup of %s failed (%s)" % (host, e))
            self.feed()
            d = self._dns = [host, port, a, 0]
        if self._wdt_ms:  # the wait inside Board.connect is not fed
            timeout_ms = min(timeout_ms, self._wdt_ms // 2)
        end = self.ticks_ms() + timeout_ms
        d[3] += 1
        s = Board.connect(self, d[2][0], port, timeout_ms)  # the address: no second lookup
        while True:
            e = 0
            try:
                s.connect(d[2])
                break
            except OSError as x:
                e = x.args[0]
            if e in (106, 127):
                break
            if e not in (114, 115, 119, 120, 11) or self.ticks_ms() >= end:
                s.close()
                raise OSError(111 if e else 110, "connect to %s:%d %s (%s)"
                              % (host, port, "timed out" if e in (114, 115, 119, 120, 11) else "refused", e))
            self.feed()
            self.sleep_ms(10)
        d[3] = 0
        return s

    def connect_network(self, timeout_ms):
        """Join the configured Wi-Fi: True once up; False while the join is still
        running (call again); OSError when WLAN.status() reports a failure, when
        it takes longer than timeout_ms, or when no Wi-Fi is configured."""
        w = self._if()
        if w.isconnected():
            self._join_t = -1
            return True
        if not self._ssid:
            raise OSError(22, "no Wi-Fi configured: set wifi_ssid in config.json")
        now = self.ticks_ms()
        if self._join_t < 0:
            self._start_join(w)
            self._join_t = now
        end = now + _SLICE_MS
        while True:
            self.feed()
            if w.isconnected():
                self._join_t = -1
                return True
            st = w.status()
            why = _join_error(st)
            t = self.ticks_ms()
            if why is None and t - self._join_t >= timeout_ms:
                why = "no connection within %d ms" % timeout_ms
            if why:
                self._join_t = -1
                try:
                    w.disconnect()
                except OSError:
                    pass
                raise OSError(101, "Wi-Fi %r: %s (status %s)" % (self._ssid, why, st))
            if t >= end:
                return False
            self.sleep_ms(50)

    def link_up(self):
        return self._wlan is not None and self._wlan.isconnected()

    # ------------------------------------------------------------ sensors

    def check_source(self, source):
        kind, arg = split_source(source)
        if kind == "adc":
            if arg not in self.ADC_PINS:
                return "adc pin %r is not an ADC input on %s (use one of %s)" % (arg, self.name, self.ADC_PINS)
        elif kind == "pin":
            if arg not in self.GPIO_PINS:
                return "pin %r is not a usable GPIO on %s" % (arg, self.name)
        elif source == "internal_temp":
            return self._no_internal_temp()
        elif source != "rssi":
            from edgewire import drivers  # a sensor driver (loaded only when configured)
            return drivers.check(self, source)
        return None

    def read(self, source):
        bad = self.check_source(source)
        if bad:
            raise SensorError(bad)
        try:
            kind, arg = split_source(source)
            if kind == "internal_temp":
                return round(self._internal_temp(), 2)
            if kind == "rssi":
                if not self.link_up():
                    raise SensorError("rssi: Wi-Fi is not connected")
                return self._wlan.status("rssi")
            if kind not in ("adc", "pin"):
                from edgewire import drivers
                return drivers.read(self, source)
            hw = self._hw.get(source)
            import machine
            if kind == "adc":
                if hw is None:
                    hw = self._hw[source] = self._adc(machine, arg)
                return round(self._volts(hw), 4)
            if hw is None:
                hw = self._hw[source] = machine.Pin(arg, machine.Pin.IN)
            return bool(hw.value())
        except (OSError, ValueError, AttributeError, ImportError) as e:
            raise SensorError("%s: %s" % (source, e))

    # ------------------------------------------------------------ buses: what drivers take

    def i2c(self):
        """machine.I2C(0) on I2C_PINS (SCL, SDA) at 100 kHz, shared by every driver."""
        b = self._hw.get("i2c")
        if b is None:
            import machine
            b = self._hw["i2c"] = machine.I2C(0, scl=machine.Pin(self.I2C_PINS[0]),
                                              sda=machine.Pin(self.I2C_PINS[1]), freq=100000)
        return b

    def onewire(self, pin):
        import machine
        import onewire  # micropython-lib's, frozen on esp32 and rp2
        return onewire.OneWire(machine.Pin(pin))

    def dht(self, pin):
        """(the port's dht_readinto, the Pin): single-wire timing is done in C
        (machine.dht_readinto: MicroPython 1.22 and later on esp32 and rp2)."""
        import machine
        return machine.dht_readinto, machine.Pin(pin)

    def _adc(self, machine, pin):
        return machine.ADC(machine.Pin(pin))

    def _volts(self, adc):
        """Volts at an ADC input: read_u16() scaled by this board's reference."""
        return adc.read_u16() * self._vref / 65535 + self._adc_off

    def _no_internal_temp(self):
        return "internal_temp is not available on %s" % self.name

    def _internal_temp(self):
        raise SensorError(self._no_internal_temp())

    def default_streams(self):
        return [{"name": "rssi", "source": "rssi", "interval_ms": 60000, "qos": 0, "unit": "dBm"}]

    def reset(self):
        import machine
        machine.reset()


def _join_error(st):
    """What a WLAN.status() code says went wrong, or None (joining, or joined)."""
    import network
    for name in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL", "STAT_ASSOC_FAIL",
                 "STAT_HANDSHAKE_TIMEOUT", "STAT_BEACON_TIMEOUT"):
        if getattr(network, name, None) == st:
            return name[5:].lower().replace("_", " ")
    return None
