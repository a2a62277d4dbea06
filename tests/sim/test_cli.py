"""`edgewire sim` end to end, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.conftest import Checker
from tests.support.broker import Mosquitto

EDGEWIRE = str(Path(sys.executable).parent / "edgewire")


def run_sim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEWIRE, "sim", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_json_against_mosquitto(broker: Mosquitto, checker: Checker) -> None:
    p = run_sim("--devices", "20", "--rate", "4", "--qos", "1", "--broker", broker.url,
                "--duration", "3", "--seed", "11", "--prefix", "cli", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    fleet = rep["fleet"]
    assert (rep["broker"], rep["embedded_broker"], rep["devices"], rep["qos"], rep["seed"]) == \
        (broker.url, False, 20, 1, 11)
    assert [d["device"] for d in rep["per_device"]] == [f"cli-{i:04d}" for i in range(20)]
    assert fleet["devices_connected"] == 20 and fleet["devices_with_errors"] == 0
    assert fleet["messages"] > 0 and fleet["unacked"] == 0
    checker.settle(expected=fleet["acked"])
    assert checker.received == fleet["acked"] == fleet["messages"]
    assert checker.per_device == {d["device"]: d["acked"] for d in rep["per_device"]}
    assert set(checker.births) == {d["device"] for d in rep["per_device"]}


def test_cli_sensors_run_the_drivers(broker: Mosquitto, checker: Checker) -> None:
    p = run_sim("--devices", "2", "--rate", "6", "--qos", "1", "--broker", broker.url, "--duration", "2",
                "--seed", "4", "--sensors", "bme280:pressure,ds18b20@4:temperature,battery", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["fleet"]["devices_with_errors"] == 0 and rep["fleet"]["acked"] == rep["fleet"]["messages"] > 0
    checker.settle(expected=rep["fleet"]["acked"])
    for dev in ("sim-0000", "sim-0001"):
        pressure = [v for v, _, err in checker.values[(dev, "bme280/pressure")] if err is None]
        soil = [v for v, _, err in checker.values[(dev, "ds18b20-4/temperature")] if err is None]
        assert pressure and all(abs(v - 1013.25) < 2 for v in pressure), pressure
        assert soil and all(abs(v - 21) < 5 and (v * 16) % 1 == 0 for v in soil), soil   # 1/16 C steps
        assert checker.values[(dev, "battery")]


def test_cli_table_against_mosquitto(broker: Mosquitto) -> None:
    p = run_sim("--devices", "3", "--rate", "2", "--qos", "2", "--broker", broker.url, "--duration", "1.5")
    assert p.returncode == 0, p.stderr
    assert f"fleet: 3 devices x 2 msg/s at QoS 2 for" in p.stdout and broker.url in p.stdout
    assert "acknowledged" in p.stdout and "reconnects" in p.stdout


def test_cli_without_broker_uses_the_embedded_broker() -> None:
    p = run_sim("--devices", "5", "--rate", "2", "--qos", "1", "--duration", "2", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["embedded_broker"] is True and rep["broker"].startswith("mqtt://127.0.0.1:")
    assert rep["fleet"]["devices_connected"] == 5
    assert rep["fleet"]["acked"] == rep["fleet"]["messages"] > 0
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--devices", "0"], "--devices 0: must be 1..1000000"),
    (["--devices", "-3"], "--devices -3: must be 1..1000000"),
    (["--rate", "-1"], "--rate -1: must be a positive number of messages per second"),
    (["--rate", "0"], "--rate 0: must be a positive number"),
    (["--rate", "nan"], "--rate nan: must be a positive number"),
    (["--rate", "5000"], "--rate 5000: rate 5000 is above the 3200 messages per second one simulated device"),
    (["--duration", "0"], "--duration 0: must be more than 0"),
    (["--broker", "http://127.0.0.1:1883"], "broker URL 'http://127.0.0.1:1883': scheme 'http' is not 'mqtt'"),
    (["--broker", "mqtt://:1883"], "missing host"),
    (["--broker", "mqtt://localhost:99999"], "Port out of range"),
    (["--prefix", "no spaces"], "prefix 'no spaces' does not make valid device ids"),
    (["--seed", "-1"], "--seed -1: must be 0..4294967295"),
    (["--sensors", "temperature,bme280:kelvin"],
     "--sensors temperature,bme280:kelvin: sensor 'bme280:kelvin': bme280:kelvin: 'kelvin' is not one of"),
    (["--sensors", "door,sim:door"], "--sensors door,sim:door: sensors ['door', 'sim:door']: expected 1..32 distinct"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from edgewire.app.cli import main

    assert main(["sim", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("edgewire sim: error: ") and message in err, err


def test_bad_argument_exit_2_as_a_process() -> None:
    p = run_sim("--devices", "0", "--broker", "mqtt://127.0.0.1:1")
    assert p.returncode == 2
    assert p.stderr.strip() == "edgewire sim: error: --devices 0: must be 1..1000000"
    p = run_sim("--qos", "3")
    assert p.returncode == 2 and "invalid choice: 3" in p.stderr  # argparse's own check


def test_unreachable_broker_exits_1() -> None:
    p = run_sim("--devices", "1", "--broker", "mqtt://127.0.0.1:9", "--duration", "1")
    assert p.returncode == 1
    assert "edgewire sim: error: cannot reach the broker at mqtt://127.0.0.1:9" in p.stderr
    assert p.stdout == ""


@pytest.mark.slow
def test_cli_counts_what_the_gateway_delivered_over_sse(broker: Mosquitto, tmp_path: Path) -> None:
    from edgewire.sim.pytest_plugin import GatewayProcess

    gw = GatewayProcess(tmp_path, broker.url).start()
    try:
        p = run_sim("--devices", "10", "--rate", "2", "--qos", "1", "--broker", broker.url, "--duration", "4",
                    "--gateway", gw.http_url, "--procs", "1", "--json")
    finally:
        gw.stop()
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    q1 = rep["by_qos"][0]
    assert q1["qos"] == 1 and q1["acked"] > 0
    # Everything the broker acknowledged came out of the gateway's SSE stream, once.
    assert q1["received"] == q1["acked"] and q1["lost"] == 0 and q1["duplicated"] == 0
    assert rep["latency_ms"]["count"] == q1["received"] and rep["latency_ms"]["p50"] > 0
