# Fake `esp` module of the esp32 port: dht_readinto(pin, buf) from
# drivers/dht/dht.c (ports/esp32/modesp.c). It drives the start pulse, times
# the 40 bits and fills 5 bytes; OSError(ETIMEDOUT 116 on esp32's newlib errno)
# when the sensor does not answer. The frames come from the simulated DHT in
# fakehw.buses[("dht", gpio)] (edgewire.drivers.simbus.SimDht22).

import fakehw


def dht_readinto(pin, buf):
    fakehw.check()
    dev = fakehw.buses.get(("dht", pin.id))
    fakehw.advance(5)  # 18 ms start pulse on the real thing is ~ 5 ms here
    if dev is None or not dev.present:
        raise OSError(116)
    dev.frame_into(buf)


def osdebug(level):
    pass


def flash_size():
    return 4 * 1024 * 1024
