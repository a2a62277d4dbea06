# Edgewire boards: the one seam between the firmware and the hardware.
#
# The firmware never imports `machine` or `network`; it asks a board. A board is
# an object with this interface (edgewire.boards.base.Board implements the
# shared parts; esp32.Esp32Board, pico_w.PicoWBoard and sim.SimBoard the rest):
#
#   identity   name                      'esp32', 'pico_w', 'sim'
#              device_id()               stable id, 1-64 of [A-Za-z0-9_-]
#   clock      ticks_ms()                uptime in ms: monotonic, never wraps
#              sleep_ms(ms)
#              time_ms()                 epoch ms, or None while the clock is not set
#              random_u32()              32 random bits
#   network    network_up()              the link (Wi-Fi) is up
#              connect_network(timeout_ms) -> bool   bring the link up, bounded
#              connect(host, port, timeout_ms) -> socket
#                                        a connected TCP socket; OSError on failure
#   storage    read_file(name) -> bytes or None (missing)
#              write_file(name, data)    atomic where the filesystem allows
#   sensors    read(source) -> value     'adc:26', 'pin:5', 'internal_temp', 'sim:temperature';
#                                        raises SensorError with a message on failure
#              check_source(source) -> None or the reason it cannot be read here
#              default_streams()         streams used when config.json names none
#   system     free_memory() -> bytes or None
#              reset()                   reboot (SimBoard: raises ResetRequested)
#
# default_board() picks by sys.platform, like gpiozero picks a pin factory.
# Sensor drivers (I2C/SPI parts), a flash-backed offline queue and OTA will plug
# in here as further board services.

import sys


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
