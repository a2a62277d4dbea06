"""Testing your own service against a simulated fleet, with the fixtures that
come with edgewire (its pytest11 plugin): nothing to configure, no conftest.

Run it in any project that installed edgewire:  pytest test_fleet_with_edgewire.py
(tests/sim/test_plugin.py runs this file, in the project's suite and in a
clean virtualenv that has only edgewire and pytest installed)."""
import json
import time
import urllib.request


def test_every_reading_reaches_the_broker(fleet_factory):
    # 20 devices (the real device SDK on simulated boards) on a private mosquitto.
    fleet = fleet_factory(devices=20, rate=2, qos=1, seed=1)
    time.sleep(3)
    report = fleet.finish()            # stop cleanly, then count
    assert report.devices == 20
    report.assert_no_loss(qos=1)       # every acknowledged reading arrived, none twice


def test_the_gateway_sees_the_fleet(fleet_factory, edgewire_gateway):
    fleet = fleet_factory(devices=5, rate=2, qos=1, broker=edgewire_gateway.mqtt_url, prefix="shop")
    deadline = time.monotonic() + 30
    seen = set()
    while time.monotonic() < deadline and len(seen) < 5:
        with urllib.request.urlopen(edgewire_gateway.http_url + "/api/v1/devices", timeout=5) as r:
            seen = {d["id"] for d in json.load(r)["devices"] if d["messages"] > 0}
        time.sleep(0.2)
    assert seen == {f"shop-{i:04d}" for i in range(5)}
    fleet.finish().assert_no_loss(qos=1)


def test_a_fleet_on_the_embedded_broker(fleet_factory, embedded_broker):
    fleet = fleet_factory(devices=3, rate=2, qos=1, broker=embedded_broker.url)
    time.sleep(2)
    report = fleet.finish()
    assert report.totals["acked"] > 0
    report.assert_no_loss(qos=1)
