"""The dashboard page in a real browser (headless Debian Chromium): it lists
devices, shows live values as they arrive over EventSource, and shows a device
going offline."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewire import wire
from tests.gateway.conftest import Publisher
from tests.support.broker import Mosquitto, free_port, wait_port
from tests.support.browser import Browser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway_url(broker: Mosquitto, tmp_path: Path) -> Iterator[str]:
    """`edgewire gateway --config` as a user runs it, on the private broker."""
    port = free_port()
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[mqtt]\nurl = "{broker.url}"\n\n[http]\nhost = "127.0.0.1"\nport = {port}\n')
    proc = subprocess.Popen([str(Path(sys.executable).parent / "edgewire"), "gateway", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)  # the default [journal] path is relative to it
    try:
        wait_port(port, timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


def row_text(device: str) -> str:
    return f"(() => {{ const r = document.querySelector('tr[data-device=\"{device}\"]'); return r ? r.innerText : ''; }})()"


def test_dashboard_shows_devices_live_values_and_offline(broker: Mosquitto, gateway_url: str) -> None:
    dev, boot, conn = "ui-dev-1", 4242, 1
    pub = Publisher(broker.port)
    try:
        pub.pub(wire.topic(dev, "status"),
                wire.encode_birth(dev, boot, conn, 10, "1.2.3", "esp32", {"temperature": {"u": "C", "q": 1, "i": 1000}}),
                qos=1, retain=True)
        pub.telemetry(dev, boot, 1, [["temperature", 21.5, 10]])
        with Browser() as b:
            b.goto(gateway_url + "/")
            # The device list comes from the REST API...
            b.wait_for(f"{row_text(dev)}.includes('online')")
            assert "1.2.3 / esp32" in b.evaluate(row_text(dev))
            b.wait_for("document.getElementById('status').textContent.startsWith('live')")
            # ...and values published while the page is open arrive over SSE.
            pub.telemetry(dev, boot, 2, [["temperature", 22.75, 20], ["door", True, 20]])
            b.wait_for(f"{row_text(dev)}.includes('temperature = 22.75 C')")
            assert "door = true" in b.evaluate(row_text(dev))
            pub.telemetry(dev, boot, 3, [["temperature", None, 30, "i2c timeout"]])
            b.wait_for(f"{row_text(dev)}.includes('error: i2c timeout')")
            # The device dies: its last will (same boot and connection) turns the row offline.
            pub.pub(wire.topic(dev, "status"), wire.encode_death(dev, boot, conn, "lost"), qos=1, retain=True)
            b.wait_for(f"{row_text(dev)}.includes('offline')", timeout=10)
            b.screenshot(str(Path(broker.workdir) / "dashboard.png"))
    finally:
        pub.close()
