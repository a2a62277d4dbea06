# Edgewire boards: the one seam between the firmware and the hardware.
#
# The firmware never imports `machine` or `network`; it asks a board. A board is
# an object with this interface (Board below implements the shared
# parts; esp32.Esp32Board, pico_w.PicoWBoard and sim.SimBoard the rest):
#
#   identity   name                      'esp32', 'pico_w', 'sim'
#              device_id()               stable id, 1-64 of [A-Za-z0-9_-]
#   clock      ticks_ms()                uptime in ms: monotonic, never wraps
#              sleep_ms(ms)
#              time_ms()                 epoch ms, or None while the clock is not set
#              set_time_ms(ms)           McuBoard: set the wall clock (the gateway's `time`
#                                        command, NTP); SimBoard keeps its host's or clock's time
#              random_u32()              32 random bits
#   network    network_up()              the link (Wi-Fi) is up
#              link_up()                 cheap, non-blocking: the link is still up (the
#                                        Device asks at least once a second and before
#                                        each publish; down = connection lost at once)
#              connect_network(timeout_ms) -> bool   bring the link up, bounded
#              connect(host, port, timeout_ms) -> socket
#                                        a connected TCP socket; OSError on failure
#   storage    read_file(name) -> bytes or None (missing)
#              write_file(name, data)    atomic where the filesystem allows
#   sensors    read(source) -> value     'adc:26', 'pin:5', 'internal_temp', 'sim:temperature',
#                                        'bme280:pressure' (a driver, edgewire/drivers);
#                                        raises SensorError with a message on failure
#              check_source(source) -> None or the reason it cannot be read here
#              default_streams()         streams used when config.json names none
#   buses      i2c(), onewire(pin), dht(pin)   what sensor drivers take (McuBoard: machine.I2C,
#                                        onewire.OneWire, the port's dht_readinto; SimBoard:
#                                        the simulated chips of edgewire/drivers/simbus.py)
#   setup      configure(config)         take board settings (Wi-Fi) from the device config; no I/O
#   system     free_memory() -> bytes or None
#              feed()                    feed the watchdog (no-op without one); the Device
#                                        calls it every step and inside every long wait
#              reset()                   reboot (SimBoard: raises ResetRequested)
#
# Board below implements the shared parts (clock, storage, TCP connect, memory).
# default_board() picks by sys.platform, like gpiozero picks a pin factory.
# A flash-backed offline queue and OTA will plug in here as further board services.

import os
import select
import socket
import sys
import time


class SensorError(Exception):
    """A sensor read failed; the message says why (it goes into the reading)."""


class ResetRequested(Exception):
    """Raised by simulated boards' reset(): whoever runs the device starts a new boot."""


def default_board(**kwargs):
    """The board for this platform: 'esp32' -> Esp32Board, 'rp2' -> PicoWBoard,
    anything else (linux unix port, CPython) -> SimBoard. kwargs go to the board."""
    p = sys.platform
    if p == "esp32":
        from edgewire.boards.esp32 import Esp32Board
        return Esp32Board(**kwargs)
    if p == "rp2":
        from edgewire.boards.pico_w import PicoWBoard
        return PicoWBoard(**kwargs)
    from edgewire.boards.sim import SimBoard
    if "device_id" not in kwargs:
        kwargs["device_id"] = "sim-1"
    return SimBoard(**kwargs)


try:
    import errno
    _INPROGRESS = (errno.EINPROGRESS, getattr(errno, "EAGAIN", 11), 115, 119, 11)
except ImportError:
    _INPROGRESS = (115, 119, 11)

_EPOCH_2000 = 946684800  # seconds from 1970-01-01 to 2000-01-01
_CLOCK_SET_S = 1704067200  # 2024-01-01: an earlier wall clock means "not set"


class Board:
    name = "board"

    def __init__(self, storage_dir="."):
        self.storage_dir = storage_dir
        self._last_raw = None
        self._mono = 0
        self._epoch_fix = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0

    def configure(self, config):
        """Take the board settings from a validated device config (no I/O)."""

    # ------------------------------------------------------------ clock

    def _mono_ms(self):
        """Monotonic ms that never wraps. On MicroPython ticks_ms wraps after
        2**30 ms on most ports; calling this at least every few days keeps it exact."""
        if hasattr(time, "ticks_ms"):
            raw = time.ticks_ms()
            if self._last_raw is not None:
                self._mono += time.ticks_diff(raw, self._last_raw)
            self._last_raw = raw
            return self._mono
        return int(time.monotonic() * 1000)

    def ticks_ms(self):
        return self._mono_ms()

    def sleep_ms(self, ms):
        if ms > 0:
            if hasattr(time, "sleep_ms"):
                time.sleep_ms(int(ms))
            else:
                time.sleep(ms / 1000)

    def time_ms(self):
        if hasattr(time, "time_ns"):
            ms = time.time_ns() // 1000000 + self._epoch_fix * 1000
        else:
            ms = int((time.time() + self._epoch_fix) * 1000)
        return ms if ms >= _CLOCK_SET_S * 1000 else None

    def random_u32(self):
        b = os.urandom(4)
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]

    # ------------------------------------------------------------ network

    def connect(self, host, port, timeout_ms):
        """A connected, non-blocking TCP socket, or OSError within ~timeout_ms.
        (Name resolution of a host name may block on some ports; use an IP address
        or a .local name the port resolves quickly.)"""
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        s = socket.socket()
        try:
            s.setblocking(False)
            try:
                s.connect(addr)
            except OSError as e:
                if e.args[0] not in _INPROGRESS:
                    raise
            p = select.poll()
            p.register(s, select.POLLOUT)
            res = p.poll(max(1, int(timeout_ms)))
            p.unregister(s)
            if not res:
                raise OSError(110, "connect to %s:%d timed out after %d ms" % (host, port, timeout_ms))
            if res[0][1] & (select.POLLERR | select.POLLHUP):
                raise OSError(111, "connect to %s:%d refused" % (host, port))
            return s
        except BaseException:
            s.close()
            raise

    def link_up(self):
        return self.network_up()

    # ------------------------------------------------------------ storage

    def _path(self, name):
        if not name or "/" in name or name.startswith("."):
            raise ValueError("storage name %r must be a plain file name" % (name,))
        return self.storage_dir.rstrip("/") + "/" + name

    def read_file(self, name):
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except OSError as e:
            if e.args[0] == 2:  # ENOENT
                return None
            raise

    def write_file(self, name, data):
        p = self._path(name)
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        try:
            os.rename(p + ".tmp", p)
        except OSError:  # FAT will not rename over an existing file
            os.remove(p)
            os.rename(p + ".tmp", p)

    # ------------------------------------------------------------ sensors, system

    def check_source(self, source):
        return "source %r is not known on board %s" % (source, self.name)

    def read(self, source):
        raise SensorError(self.check_source(source) or "cannot read %r" % (source,))

    def default_streams(self):
        return []

    def feed(self):
        """Feed the watchdog; boards without one do nothing."""

    def free_memory(self):
        try:
            import gc
            return gc.mem_free()
        except (ImportError, AttributeError):
            return None


def split_source(source):
    """'adc:26' -> ('adc', 26); 'internal_temp' -> ('internal_temp', None);
    'sim:door' -> ('sim', 'door'). Numeric arguments become ints."""
    if not isinstance(source, str) or not source:
        return None, None
    i = source.find(":")
    if i < 0:
        return source, None
    kind, arg = source[:i], source[i + 1:]
    if arg.isdigit():
        arg = int(arg)
    return kind, arg
