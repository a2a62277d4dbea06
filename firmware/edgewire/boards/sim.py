# SimBoard: a simulated board with real sockets, for the simulator, the tests
# and a device on the MicroPython unix port. Runs on CPython and MicroPython.
#
# It behaves, it does not just answer: temperature drifts slowly with noise,
# humidity follows it the other way, the battery discharges over `battery_life_s`,
# the door flips now and then, and any read fails with probability `fault_rate`.
# Wi-Fi is controllable: set_network(False) makes connect() fail and cuts every
# live socket the board handed out. The sensor models draw from one seeded
# xorshift32 per board, so a seed replays the same sensor story on both
# interpreters, and boards in CPython threads share nothing. random_u32() (boot
# ids, reconnect jitter) is real entropy from os.urandom, never the seed: two
# runs with one seed are still two boots to the gateway, which would otherwise
# drop the second as duplicates of (device, boot, seq).
#
# clock: None for real time, or an object with ms() (monotonic ms) and
# sleep_ms(ms), and optionally time_ms() (epoch ms or None), for a simulator that
# keeps its own time.
#
# RAM: ~30 slots of state per board; storage=None keeps files in a dict.


from edgewire.boards import Board, ResetRequested, SensorError, split_source

MODELS = ("temperature", "humidity", "battery", "door")


class SimBoard(Board):
    name = "sim"

    def __init__(self, device_id, storage=None, seed=None, host_override=None, clock=None,
                 fault_rate=0.01, battery_life_s=86400, door_mean_s=120):
        Board.__init__(self, storage if isinstance(storage, str) else ".")
        if not isinstance(device_id, str) or not 0 < len(device_id) <= 64:
            raise ValueError("device_id %r must be 1-64 characters" % (device_id,))
        if isinstance(fault_rate, bool) or not isinstance(fault_rate, (int, float)) or not 0 <= fault_rate <= 1:
            raise ValueError("fault_rate %r must be between 0 and 1" % (fault_rate,))
        self._id = device_id
        self._files = {} if storage is None else (storage if isinstance(storage, dict) else None)
        self.host_override = host_override
        self.fault_rate = fault_rate
        self.battery_life_s = battery_life_s
        self.door_mean_s = door_mean_s
        self._clock = clock
        if seed is None:
            seed = self.random_u32()
        self._rng = (seed & 0xFFFFFFFF) or 0x9E3779B9
        self._net = True
        self._socks = []
        self.resets = 0
        self.reads = 0
        self.faults = 0
        self._boot = self._now()
        self._drift = (self._uniform() - 0.5) * 2  # degrees C away from 21
        self._last_read = {}
        self._door = False

    # ------------------------------------------------------------ identity, clock

    def device_id(self):
        return self._id

    def _now(self):
        return self._clock.ms() if self._clock is not None else self._mono_ms()

    def ticks_ms(self):
        return int(self._now() - self._boot)

    def sleep_ms(self, ms):
        if self._clock is not None:
            self._clock.sleep_ms(ms)
        else:
            Board.sleep_ms(self, ms)

    def time_ms(self):
        if self._clock is not None and hasattr(self._clock, "time_ms"):
            return self._clock.time_ms()
        return Board.time_ms(self)

    def _next_u32(self):
        """The seeded sensor-model generator (xorshift32)."""
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x

    def _uniform(self):
        return self._next_u32() / 4294967296.0

    def _gauss(self):
        # Irwin-Hall: the sum of 6 uniforms, centred; sd 1 is close enough here.
        s = 0.0
        for _ in range(6):
            s += self._uniform()
        return (s - 3.0) * 1.41421356

    # ------------------------------------------------------------ network

    def set_network(self, up):
        """Wi-Fi up or down. Down: connect() fails and live sockets are cut."""
        self._net = bool(up)
        if not up:
            self._cut()

    def _cut(self):
        socks = self._socks
        self._socks = []
        for s in socks:
            try:
                s.shutdown(2)  # CPython: wakes a thread polling it, keeps the fd valid
            except AttributeError:
                try:
                    s.close()  # MicroPython: single-threaded, closing is enough
                except OSError:
                    pass
            except OSError:
                pass

    def network_up(self):
        return self._net

    def connect_network(self, timeout_ms):
        return self._net

    def connect(self, host, port, timeout_ms):
        if not self._net:
            raise OSError(101, "network is down (simulated)")
        s = Board.connect(self, self.host_override or host, port, timeout_ms)
        self._socks = [x for x in self._socks if _alive(x)]
        self._socks.append(s)
        return s

    # ------------------------------------------------------------ storage

    def read_file(self, name):
        if self._files is None:
            return Board.read_file(self, name)
        self._path(name)
        return self._files.get(name)

    def write_file(self, name, data):
        if self._files is None:
            return Board.write_file(self, name, data)
        self._path(name)
        self._files[name] = bytes(data)

    # ------------------------------------------------------------ sensors

    def check_source(self, source):
        kind, arg = split_source(source)
        if kind == "sim" and arg in MODELS:
            return None
        # a real driver over the simulated buses of edgewire/drivers/simbus.py
        from edgewire import drivers
        return drivers.check(self, source, "sim:" + "|".join(MODELS))

    def read(self, source):
        bad = self.check_source(source)
        if bad:
            raise SensorError(bad)
        if not source.startswith("sim:"):
            from edgewire import drivers
            try:
                return drivers.read(self, source)
            except (OSError, ValueError) as e:
                raise SensorError("%s: %s" % (source, e))
        model = source[4:]
        now = self.ticks_ms()
        dt = (now - self._last_read.get(model, now)) / 1000
        self._last_read[model] = now
        self.reads += 1
        if self.fault_rate and self._uniform() < self.fault_rate:
            self.faults += 1
            raise SensorError("%s: no answer from sensor (simulated fault)" % model)
        if model == "temperature":
            # slow random walk, pulled back towards 21 C, plus read noise
            self._drift += self._gauss() * 0.05 * (dt ** 0.5) - self._drift * min(1.0, dt / 3600)
            return round(21.0 + self._drift + self._gauss() * 0.05, 2)
        if model == "humidity":
            return round(min(100.0, max(0.0, 45.0 - 2.0 * self._drift + self._gauss() * 0.3)), 1)
        if model == "battery":
            used = min(1.0, now / 1000 / self.battery_life_s)
            return round(4.2 - 0.9 * used + self._gauss() * 0.002, 3)
        # door: flips as a Poisson process with mean door_mean_s between flips
        if self._uniform() < min(1.0, dt / self.door_mean_s):  # always draw: replayable
            self._door = not self._door
        return self._door

    def default_streams(self):
        return [
            {"name": "temperature", "source": "sim:temperature", "interval_ms": 10000, "qos": 1, "unit": "C"},
            {"name": "humidity", "source": "sim:humidity", "interval_ms": 30000, "qos": 0, "unit": "%"},
            {"name": "battery", "source": "sim:battery", "interval_ms": 60000, "qos": 1, "unit": "V"},
            {"name": "door", "source": "sim:door", "interval_ms": 5000, "qos": 2, "unit": ""},
        ]

    # ------------------------------------------------------------ system

    def reset(self):
        """A simulated reboot: the link drops, uptime restarts, ResetRequested is raised."""
        self.resets += 1
        self._cut()
        self._boot = self._now()
        self._last_read = {}
        raise ResetRequested("reset requested on %s" % self._id)


def _alive(s):
    try:
        return s.fileno() >= 0
    except (OSError, AttributeError, ValueError):
        return False
