# Fake `onewire` module: micropython-lib micropython/drivers/bus/onewire/
# onewire.py, frozen into the esp32 and rp2 firmware (ports/*/boards/manifest.py:
# require("onewire")). OneWire(pin) sets the pin open-drain with pull-up and
# offers reset(required), readbit/readbyte/readinto, writebit/writebyte/write,
# select_rom, scan and crc8; reset(True) raises OneWireError when no device
# gives a presence pulse. The devices on the wire are the simulated ones in
# fakehw.buses[("onewire", gpio)] (a list of edgewire.drivers.simbus models),
# served by simbus.SimOneWire, which models the bus protocol.

import fakehw
from edgewire.drivers.simbus import OneWireError, SimOneWire  # noqa: F401 (OneWireError: the module's API)


class OneWire(SimOneWire):
    def __init__(self, pin):
        pin.init(pin.OPEN_DRAIN, pin.PULL_UP)
        self.pin = pin
        SimOneWire.__init__(self, [])

    def reset(self, required=False):
        fakehw.check()  # ~1 ms of bus time per reset: the watchdog may fire here
        self.devices = fakehw.buses.get(("onewire", self.pin.id), [])  # the test may rewire the world
        return SimOneWire.reset(self, required)
