# Fake `esp` module of the esp32 port (ports/esp32/modesp.c): dht_readinto(pin,
# buf) from drivers/dht/dht.c, the same function machine.dht_readinto is on
# current ports; OSError(ETIMEDOUT, 116 in esp32's newlib errno) when the sensor
# does not answer. The model behind it: _machine.dht_readinto_of.

from _machine import dht_readinto_of

dht_readinto = dht_readinto_of(116)


def osdebug(level):
    pass


def flash_size():
    return 4 * 1024 * 1024
