"""When the machine cannot keep up, `edgewire sim` says so, stops, prints the
partial report and exits 1 (it used to hang)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto

EDGEWIRE = str(Path(sys.executable).parent / "edgewire")


def test_stalled_connects_exit_1_with_the_partial_report() -> None:
    # A "broker" that accepts TCP connections and never answers CONNECT.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(512)
        port = mute.getsockname()[1]
        p = subprocess.run([EDGEWIRE, "sim", "--devices", "20", "--rate", "1", "--broker", f"mqtt://127.0.0.1:{port}",
                            "--duration", "120", "--connect-timeout", "3", "--procs", "1"],
                           capture_output=True, text=True, timeout=90)
    assert p.returncode == 1, p.stderr
    assert "edgewire sim: error: connects stalled: 0 of 20 devices connected and none more in the last 3 s" \
        in p.stderr
    assert "fleet: 20 devices x 1 msg/s at QoS 1" in p.stdout
    assert "run failed: connects stalled" in p.stdout
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_a_fleet_too_big_for_the_machine_exits_1(broker: Mosquitto) -> None:
    # 2,000 devices at 20 msg/s each on one process: 40,000 msg/s, several
    # times what one core does, so device steps fall behind by seconds.
    p = subprocess.run([EDGEWIRE, "sim", "--devices", "2000", "--rate", "20", "--broker", broker.url,
                        "--duration", "120", "--max-lag", "2", "--procs", "1", "--ramp", "4000", "--json"],
                       capture_output=True, text=True, timeout=150)
    assert p.returncode == 1, p.stderr
    assert "edgewire sim: error: the machine cannot keep up: " in p.stderr
    import json
    rep = json.loads(p.stdout)
    assert rep["failure"].startswith("the machine cannot keep up")
    assert rep["seconds"] < 100 and rep["fleet"]["messages"] > 0
