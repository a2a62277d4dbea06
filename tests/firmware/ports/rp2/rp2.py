# Fake `rp2` module of the rp2 port. Sources: ports/rp2/modrp2.c and
# docs/library/rp2.html: PIO, StateMachine, asm_pio, Flash, bootsel_button,
# dht_readinto (drivers/dht/dht.c, as on esp32 but errno ETIMEDOUT 110).
# dht_readinto frames come from fakehw.buses[("dht", gpio)]
# (edgewire.drivers.simbus.SimDht22).

from _machine import dht_readinto_of

dht_readinto = dht_readinto_of(110)


def bootsel_button():
    return 0


class Flash:
    def ioctl(self, op, arg):
        return 0


class PIO:
    def __init__(self, n):
        pass


class StateMachine:
    def __init__(self, *a, **k):
        pass


def asm_pio(*a, **k):
    def deco(f):
        return f
    return deco
