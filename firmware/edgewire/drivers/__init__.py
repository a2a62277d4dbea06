# Sensor drivers, loaded only when a stream's source names one (never by the
# core: tests/firmware/test_budgets.py). A driver takes a bus the board hands
# out (board.i2c(), board.onewire(pin), board.dht(pin)), as micropython-lib's
# drivers do, so the same driver runs on a board, on the port fakes and, over
# the simulated buses of drivers/simbus.py, in the simulator.
#
# Sources (docs/firmware.md, "Sensor drivers"; wiring in hardware/):
#   bme280:temperature|humidity|pressure        BME280 at I2C address 0x76
#   bme280@0x77:...                             ... at 0x77 (SDO to VDDIO)
#   dht22@<gpio>:temperature|humidity           DHT22 / AM2302 on that GPIO
#   ds18b20@<gpio>:temperature                  the one DS18B20 on that 1-Wire GPIO
#   ds18b20@<gpio>:<16 hex digits>              the DS18B20 with that ROM code
#
# Streams that are due together share one measurement (one BME280 read gives
# all three values; one CONVERT T serves every DS18B20 on a bus): a measurement
# is reused for FRESH_MS. A driver that fails to open is opened again at the
# next read, so a sensor plugged in later starts to report.

QUANTITIES = {"bme280": ("temperature", "humidity", "pressure"), "dht22": ("temperature", "humidity"),
              "ds18b20": ("temperature",)}
FRESH_MS = 250
FORMS = "bme280[@0x77]:temperature|humidity|pressure, dht22@PIN:temperature|humidity, ds18b20@PIN:temperature|ROM"


def parse(source, pins=None):
    """'bme280@0x77:pressure' -> ('bme280', 0x77, 'pressure'); ValueError naming
    what is wrong. pins: the GPIOs a sensor may use on this board (None: any)."""
    i = source.find(":")
    head, q = (source, "") if i < 0 else (source[:i], source[i + 1:])
    j = head.find("@")
    name, where = (head, "") if j < 0 else (head[:j], head[j + 1:])
    if name not in QUANTITIES:
        raise KeyError(name)
    if name == "bme280":
        try:
            at = int(where, 16) if where else 0x76
        except ValueError:
            at = -1
        if at not in (0x76, 0x77):
            raise ValueError("%s: I2C address %r is not 0x76 or 0x77" % (source, where))
    else:
        if not where.isdigit() or (pins is not None and int(where) not in pins):
            raise ValueError("%s: %r is not a usable GPIO (%s@PIN)" % (source, where, name))
        at = int(where)
    if q not in QUANTITIES[name]:
        if name == "ds18b20" and len(q) == 16:
            try:
                return name, at, bytes(int(q[k:k + 2], 16) for k in range(0, 16, 2))
            except ValueError:
                pass
        raise ValueError("%s: %r is not one of %s" % (source, q, "|".join(QUANTITIES[name])
                                                       + ("|ROM (16 hex digits)" if name == "ds18b20" else "")))
    return name, at, q


def check(board, source, sources=None):
    """None when `source` names a driver this board can run, else the reason
    (sources: what else the board reads, for the message)."""
    try:
        parse(source, getattr(board, "GPIO_PINS", None))
    except KeyError:
        return "source %r is not known on the %s board (expected %s, or a driver: %s)" % (
            source, board.name, sources or board.SOURCES, FORMS)
    except ValueError as e:
        return str(e)
    return None


def buses(board):
    """What hands out the buses: the board itself, or for a SimBoard (which
    keeps its code small: it shares a 64K heap in the tests) the simulated
    buses of drivers/simbus.py, kept in board._drv["sim"]."""
    if hasattr(board, "i2c"):
        return board
    cache = _cache(board)
    b = cache.get("sim")
    if b is None:
        from edgewire.drivers.simbus import SimBuses
        b = cache["sim"] = SimBuses(board)
    return b


def _cache(board):
    c = getattr(board, "_drv", None)
    if c is None:
        c = board._drv = {}
    return c


def _open(board, name, at):
    bus = buses(board)
    if name == "bme280":
        from edgewire.drivers.bme280 import BME280
        return BME280(bus.i2c(), at)
    if name == "ds18b20":
        from edgewire.drivers.ds18b20 import DS18B20
        return DS18B20(bus.onewire(at))
    from edgewire.drivers.dht22 import DHT22
    readinto, pin = bus.dht(at)
    return DHT22(readinto, pin, board.ticks_ms)


def read(board, source):
    """The value of a driver source; raises (OSError, ValueError) when the
    sensor fails: the board turns that into a SensorError, the Device into a
    counted error reading."""
    name, at, q = parse(source)
    try:
        return _read(board, name, at, q)
    except OSError as e:
        if len(e.args) == 1:  # a bare errno from the bus: say what it means
            raise OSError(e.args[0], "the %s does not answer (unplugged, or the wiring; errno %s)"
                          % (name, e.args[0]))
        raise


def _read(board, name, at, q):
    cache = _cache(board)
    key = "%s@%s" % (name, at)
    e = cache.get(key)  # [driver, last measurement, when]
    if e is None:
        e = [_open(board, name, at), None, 0]
        cache[key] = e
    now = board.ticks_ms()
    if e[1] is None or now - e[2] >= FRESH_MS:
        e[1] = None
        if name == "ds18b20":
            e[0].convert()
            v = True
        else:
            v = e[0].read()
        e[1], e[2] = v, board.ticks_ms()  # fresh from when it finished (a conversion takes 750 ms)
    if name == "ds18b20":
        return e[0].read_temp(q if isinstance(q, bytes) else None)
    v = e[1][QUANTITIES[name].index(q)]
    return round(v, 2)
