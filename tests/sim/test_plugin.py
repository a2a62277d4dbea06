"""The simulator's pytest plugin (pytest11 entry point): its fixtures in this
project's own suite, and from a test file outside it, in a clean virtualenv
with only edgewire (and pytest) installed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgewire.sim.report import DeviceReport, FleetReport

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "test_fleet_with_edgewire.py"


@pytest.mark.slow
def test_the_documented_example_runs_in_this_suite(tmp_path: Path) -> None:
    # A copy outside the tests folder: the plugin comes from the installed
    # entry point of this checkout's package, nothing is configured there.
    # (pytest-asyncio, of the test extra, warns when its loop scope is not
    # configured, and -W error would fail on that: the example needs no asyncio.)
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
                        "-W", "error", EXAMPLE.name], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "3 passed" in p.stdout


def test_assert_no_loss_names_what_was_lost_or_duplicated() -> None:
    d = DeviceReport(device="d-1", sent_q=[0, 5, 0], acked_q=[0, 5, 0], received_q=[0, 4, 0],
                     duplicated_q=[0, 1, 0], lost_q=[0, 1, 0])
    ok = DeviceReport(device="d-2", sent_q=[0, 5, 0], acked_q=[0, 5, 0], received_q=[0, 5, 0],
                      duplicated_q=[0, 0, 0], lost_q=[0, 0, 0])
    rep = FleetReport(broker="mqtt://x:1", devices=2, rate=1, configured_rate=1, qos=1, seconds=1, seed=1,
                      per_device=[d, ok], observed=True)
    with pytest.raises(AssertionError, match=r"1 lost on 1 device/QoS pairs, e.g. d-1 QoS 1: 1; "
                                             r"1 duplicated, e.g. d-1 QoS 1: 1"):
        rep.assert_no_loss(qos=1)
    with pytest.raises(AssertionError, match=r"^1 lost"):
        rep.assert_no_loss(qos=1, duplicates=False)
    rep.assert_no_loss(qos=0)
    rep.observed = False
    with pytest.raises(AssertionError, match="without its observer"):
        rep.assert_no_loss()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fixtures_from_a_test_file_outside_the_project_in_a_clean_venv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".mpy-build", "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(src), "pytest"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    user = tmp_path / "someone-elses-project"
    user.mkdir()
    shutil.copy(EXAMPLE, user / EXAMPLE.name)
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                        EXAMPLE.name], cwd=user, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "3 passed" in p.stdout
