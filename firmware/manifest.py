# Freeze the Edgewire device SDK into a custom MicroPython firmware: the
# bytecode then runs from flash instead of being loaded into RAM (the ~23 KB of
# .mpy that tests/firmware/test_budgets.py counts stay out of the heap).
#
#   cd micropython/ports/esp32        # or ports/rp2 (BOARD=RPI_PICO_W)
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/edgewire/firmware/manifest.py
#
# Then only config.json goes onto the board's filesystem (docs/firmware.md,
# "Flash a board"); main.py is frozen too and runs at boot.
#
# The port's own manifest comes first: it freezes what the board code relies on
# (ntptime, onewire, dht, asyncio...). The receiver side of the protocol
# (wire_rx), the simulated board (boards/sim) and the simulated sensor chips
# (drivers/simbus) are for the gateway, the simulator and the tests: a device
# never imports them, so they are left out. opt=3 as for the
# .mpy files (no line numbers, no asserts).

include("$(PORT_DIR)/boards/manifest.py")

package(
    "edgewire",
    files=[
        "__init__.py",
        "mqtt.py",
        "device.py",
        "wire.py",
        "mpack.py",
        "config.py",
        "commands.py",
        "unpack.py",
        "toobig.py",
        "ntp.py",
        "tls.py",
        "boards/__init__.py",
        "boards/mcu.py",
        "boards/esp32.py",
        "boards/pico_w.py",
        "drivers/__init__.py",
        "drivers/bme280.py",
        "drivers/dht22.py",
        "drivers/ds18b20.py",
    ],
    opt=3,
)
module("main.py", opt=3)
