"""Sensor drivers (firmware/edgewire/drivers/) on buses the boards hand out, run
on the MicroPython unix port over the port fakes, whose I2C, 1-Wire and
dht_readinto serve the simulated chips of drivers/simbus.py at the bus level
(the BME280 register map, DS18B20 scratchpads with CRC-8, DHT22 frames with
checksum); and the same drivers over SimBoard's simulated buses in CPython.
A sensor that is missing, unplugged, NACKs or sends a bad CRC gives a counted
error reading, and the device keeps running."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import boardrun

pytestmark = pytest.mark.micropython

BOARD = {"esp32": ("Esp32Board", "esp32"), "rp2": ("PicoWBoard", "pico_w")}


def board_code(port: str) -> str:
    cls, mod = BOARD[port]
    return (f"import json\nfrom edgewire.boards.{mod} import {cls}\n"
            "from edgewire.drivers.simbus import SimBme280, SimDs18b20, SimDht22, crc8\n"
            f"b = {cls}(storage_dir='/tmp')\n"
            "def out(x):\n    print('R ' + json.dumps(x))\n"
            "def err(src):\n"
            "    try:\n"
            "        return b.read(src)\n"
            "    except Exception as e:\n"
            "        return 'E %s: %s' % (type(e).__name__, e)\n")


# ------------------------------------------------------------------ BME280

@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_bme280_datasheet_example(firmware_build: Path, port: str) -> None:
    # The BMP280 datasheet's worked example (section 3.12, the same temperature and
    # pressure compensation as the BME280): adc_T 519888 -> 25.08 C, adc_P 415148
    # -> 100653.27 Pa. The chip model answers with those raw values.
    r = boardrun.result(boardrun.run(port, board_code(port) + """
s = SimBme280(clock=fakehw.now)
s.raw = (519888, 415148, 0x8000)
fakehw.buses[('i2c', 0)] = {0x76: s}
out([b.read('bme280:temperature'), b.read('bme280:pressure'), s.measurements])
"""))
    assert r == [25.08, 1006.53, 1]  # one forced measurement for both streams


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_bme280_compensation_matches_the_float_formulas(firmware_build: Path, port: str) -> None:
    # The chip model finds raw values by inverting the datasheet's floating-point
    # formulas; the driver's integer compensation must give the physical values back.
    cases = [(-20.0, 10.0, 870.0), (0.5, 35.5, 990.25), (21.37, 45.0, 1013.25), (39.9, 92.0, 1080.0)]
    r = boardrun.result(boardrun.run(port, board_code(port) + f"""
s = SimBme280(clock=fakehw.now)
fakehw.buses[('i2c', 0)] = {{0x77: s}}
res = []
for t, h, p in {cases!r}:
    s.temperature, s.humidity, s.pressure = t, h, p
    fakehw.advance(1000)
    res.append([b.read('bme280@0x77:temperature'), b.read('bme280@0x77:humidity'), b.read('bme280@0x77:pressure')])
out([res, s.regs[0xF4] & 3])
"""))
    got, mode = r
    assert mode == 0  # forced mode: back to sleep after each measurement
    for (t, h, p), (gt, gh, gp) in zip(cases, got):
        assert abs(gt - t) <= 0.011, (t, gt)
        assert abs(gh - h) <= 0.06, (h, gh)
        assert abs(gp - p) <= 0.03, (p, gp)


def test_bme280_missing_wrong_chip_and_stuck(firmware_build: Path) -> None:
    r = boardrun.results(boardrun.run("rp2", board_code("rp2") + """
out(err('bme280:temperature'))                 # nothing at 0x76: NACK (rp2: EIO 5)
s = SimBme280(clock=fakehw.now)
s.regs[0xD0] = 0x58                            # a BMP280 (no humidity) at 0x76
fakehw.buses[('i2c', 0)] = {0x76: s}
out(err('bme280:humidity'))
s.regs[0xD0] = 0x60
out(err('bme280:humidity'))                    # opened now: a sensor plugged in later works
s.stuck = True
fakehw.advance(1000)
out(err('bme280:humidity'))
""").stdout)
    assert r[0].startswith("E SensorError: bme280:temperature: ") and "does not answer" in r[0] and "5" in r[0]
    assert "not a BME280" in r[1] and "0x58" in r[1]
    assert isinstance(r[2], float)
    assert "did not finish" in r[3]


# ------------------------------------------------------------------ DS18B20

def test_ds18b20_bus_search_match_rom_and_crc(firmware_build: Path) -> None:
    r = boardrun.results(boardrun.run("esp32", board_code("esp32") + """
out(crc8(bytes([0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00])))   # Maxim AN27's ROM example: CRC 0xA2
a, c = SimDs18b20(0x1234, 22.5, fakehw.now), SimDs18b20(0xABCDEF, -3.25, fakehw.now)
fakehw.buses[('onewire', 4)] = [a, c]
from edgewire.drivers.ds18b20 import DS18B20
d = DS18B20(b.onewire(4))
roms = d.scan()
out(sorted(x.hex() for x in roms) == sorted([a.rom.hex(), c.rom.hex()]))
t0 = fakehw.now()
out([err('ds18b20@4:' + a.rom.hex()), err('ds18b20@4:' + c.rom.hex()), a.conversions, c.conversions])
out(fakehw.now() - t0 >= 750)                                   # a 12-bit conversion takes 750 ms
out(err('ds18b20@4:temperature'))                               # two sensors answer at once: bits collide
c.present = False
fakehw.advance(1000)
a.bad_crc = 1
out(err('ds18b20@4:temperature'))
out(err('ds18b20@4:temperature'))
a.present = False
fakehw.advance(1000)
out(err('ds18b20@4:temperature'))
""").stdout)
    assert r[0] == 0xA2
    assert r[1] is True
    assert r[2] == [22.5, -3.25, 1, 1]  # one CONVERT T (Skip ROM) served both
    assert r[3] is True
    assert "CRC error" in r[4]
    assert "CRC error" in r[5]
    assert r[6] == 22.5
    assert "does not answer" in r[7] or "no 1-Wire device" in r[7]


def test_ds18b20_power_on_value_is_an_error(firmware_build: Path) -> None:
    # parasite power without a strong pull-up: the sensor resets during the
    # conversion and its scratchpad holds the power-on 85 C, a valid CRC
    r = boardrun.results(boardrun.run("rp2", board_code("rp2") + """
a = SimDs18b20(7, 20.0, fakehw.now)
fakehw.buses[('onewire', 2)] = [a]
a.brownout = True
out(err('ds18b20@2:temperature'))
a.brownout = False
fakehw.advance(1000)
out(err('ds18b20@2:temperature'))
""").stdout)
    assert "85 C" in r[0] and "power" in r[0]
    assert r[1] == 20.0


# ------------------------------------------------------------------ DHT22

@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_dht22_frames_checksum_and_timeout(firmware_build: Path, port: str) -> None:
    r = boardrun.results(boardrun.run(port, board_code(port) + """
out(err('dht22@15:temperature'))        # nothing wired: dht_readinto times out
s = SimDht22(-10.1, 55.5)
fakehw.buses[('dht', 15)] = s
fakehw.advance(3000)
out([err('dht22@15:temperature'), err('dht22@15:humidity'), s.reads])
fakehw.advance(1000)
out([err('dht22@15:temperature'), s.reads])   # within 2 s: the sensor is not asked again
fakehw.advance(2000)
s.bad_checksum = 1
out(err('dht22@15:humidity'))
fakehw.advance(2000)
s.temperature = 31.4
out(err('dht22@15:temperature'))
"""
).stdout)
    timeout = {"esp32": 116, "rp2": 110}[port]
    assert "does not answer" in r[0] and str(timeout) in r[0]
    assert r[1] == [-10.1, 55.5, 1]
    assert r[2] == [-10.1, 1]
    assert "checksum" in r[3]
    assert r[4] == 31.4


# ------------------------------------------------------------------ config, device

@pytest.mark.parametrize("source,needle", [
    ("bme280@0x20:temperature", "not 0x76 or 0x77"),
    ("dht22@23:humidity", "not a usable GPIO"),     # GP23 belongs to the Wi-Fi chip
    ("ds18b20@4:kelvin", "not one of temperature|ROM"),
    ("bmp180:pressure", "not known on the pico_w board"),
])
def test_config_names_a_bad_driver_source(firmware_build: Path, source: str, needle: str) -> None:
    r = boardrun.result(boardrun.run("rp2", board_code("rp2") + f"""
from edgewire import config
try:
    config.build(b, {{'streams': [{{'name': 's', 'source': {source!r}, 'interval_ms': 1000}}]}})
    out('accepted')
except config.ConfigError as e:
    out(str(e))
"""))
    assert needle in r, r


@pytest.mark.parametrize("port", ["esp32", "rp2"])
def test_device_turns_sensor_faults_into_counted_error_readings(firmware_build: Path, port: str) -> None:
    # Every driver configured by name in the device config; the device is offline
    # (no Wi-Fi in range), so the readings stay queued where the test reads them.
    # Sensors are unplugged, send bad CRCs or NACK while it runs: error readings,
    # counted in `faults`, and good readings again once they are back.
    cls, mod = BOARD[port]
    pin_dht, pin_ow = (15, 4) if port == "rp2" else (27, 4)
    p = boardrun.run(port, f"""
import json
from edgewire import config
from edgewire.device import Device
from edgewire.boards.{mod} import {cls}
from edgewire.drivers.simbus import SimBme280, SimDs18b20, SimDht22
bme = SimBme280(23.5, 40.0, 1000.0, clock=fakehw.now)
ds = SimDs18b20(5, 4.5, fakehw.now)
dht = SimDht22(18.2, 61.0)
fakehw.buses[('i2c', 0)] = {{0x76: bme}}
fakehw.buses[('onewire', {pin_ow})] = [ds]
fakehw.buses[('dht', {pin_dht})] = dht
b = {cls}(storage_dir='/tmp')
cfg = config.build(b, {{'wifi_ssid': 'absent', 'wifi_password': 'pw', 'broker_host': '127.0.0.1', 'queue_size': 200,
    'streams': [{{'name': 't', 'source': 'bme280:temperature', 'interval_ms': 2000}},
                {{'name': 'h', 'source': 'bme280:humidity', 'interval_ms': 2000}},
                {{'name': 'p', 'source': 'bme280:pressure', 'interval_ms': 2000}},
                {{'name': 'water', 'source': 'ds18b20@{pin_ow}:temperature', 'interval_ms': 2000}},
                {{'name': 'air', 'source': 'dht22@{pin_dht}:temperature', 'interval_ms': 2000}}]}})
d = Device(b, cfg)
def run_for(ms):
    t0 = b.ticks_ms()
    while b.ticks_ms() - t0 < ms:
        d.step()
run_for(5000)
bme.present = False; ds.bad_crc = 1000; dht.present = False
run_for(5000)
bme.present = True; ds.bad_crc = 0; dht.bad_checksum = 1000; dht.present = True
run_for(5000)
dht.bad_checksum = 0
run_for(5000)
rs = [list(d._reading(k)) for k in range(d._qn)]
print('R ' + json.dumps([d.stats, rs, bme.measurements]))
""", heap="256K", timeout=120)
    stats, rs, measurements = boardrun.result(p)
    errors = [r for r in rs if len(r) == 4]
    good = [r for r in rs if len(r) == 3]
    assert stats["faults"] == len(errors) > 0, stats
    assert stats["readings"] == len(rs) == stats["queued"]
    by = {n: [r for r in good if r[0] == n] for n in ("t", "h", "p", "water", "air")}
    assert all(by[n] for n in by), by
    assert {r[1] for r in by["t"]} == {23.5} and {r[1] for r in by["water"]} == {4.5}
    assert {r[1] for r in by["air"]} == {18.2}
    assert any("does not answer" in r[3] for r in errors if r[0] == "t")
    assert any("CRC" in r[3] for r in errors if r[0] == "water")
    assert any("checksum" in r[3] for r in errors if r[0] == "air")
    # the last readings of every stream are good again
    last = {r[0]: r for r in rs}
    assert all(len(last[n]) == 3 for n in by), last
    # t, h and p share one measurement per round
    assert measurements <= len(by["t"]) + 2


def test_simboard_sensors_are_drivers_over_simulated_buses(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPython, as in the simulator: the same drivers over SimBoard's buses; the
    # chips measure the board's models (drift, noise), one step per measurement
    from edgewire.boards import SensorError
    from edgewire.boards.sim import SimBoard
    from edgewire.drivers.simbus import SimBuses
    monkeypatch.setattr(SimBuses, "KEEP", 10)
    b = SimBoard("sim-drv", seed=5, fault_rate=0)
    t, h, p = b.read("bme280:temperature"), b.read("bme280:humidity"), b.read("bme280:pressure")
    buses = b._drv["sim"]
    assert len(buses.measured) == 1   # one measurement serves all three
    mt, mh, mp = buses.measured[0][1]
    assert abs(t - mt) <= 0.01 and abs(h - mh) <= 0.01 and abs(p - mp) <= 0.01
    assert abs(mt - 21) < 3 and abs(mh - (45 - 2 * (mt - 21))) < 2 and abs(mp - 1013.25) < 1
    w = b.read("ds18b20@4:temperature")
    assert len(buses.measured) == 2 and abs(w - buses.measured[1][1][0]) <= 1 / 16   # 12-bit resolution
    a = b.read("dht22@5:temperature")
    assert len(buses.measured) == 3 and abs(a - buses.measured[2][1][0]) <= 0.05    # 0.1 C frames
    b._drv["sim"].chips["i2c"].devices[0x76].present = False
    b._drv["bme280@118"][1] = None  # forget the shared measurement
    with pytest.raises(SensorError, match="does not answer"):
        b.read("bme280:humidity")
    assert b.check_source("ds18b20@4:temperature") is None
    # a simulated fault (per measurement): the chip misses its next transfer, the read after is good
    b.fault_rate = 1.0
    b._drv["ds18b20@4"][1] = None  # a new conversion
    with pytest.raises(SensorError, match="no 1-Wire device answers"):
        b.read("ds18b20@4:temperature")
    b.fault_rate = 0
    assert abs(b.read("ds18b20@4:temperature") - buses.measured[-1][1][0]) <= 1 / 16
    assert b.faults == 1
