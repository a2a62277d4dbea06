"""Configuration: validated before any I/O; `edgewire gateway --check`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgewire.gateway.config import GatewayConfig, HttpConfig, MqttConfig, parse_config
from edgewire.gateway.errors import ConfigError
from tests.support.broker import Mosquitto

# The console script installed beside the interpreter running the tests (make's
# .venv or any other environment with `pip install '.[test]'`), so the suite
# also runs without make.
EDGEWIRE = Path(sys.executable).parent / "edgewire"


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "gw.toml"
    f.write_text(text)
    return subprocess.run([str(EDGEWIRE), "gateway", "--check", str(f)], capture_output=True, text=True, timeout=30)


def test_check_valid_file(tmp_path: Path) -> None:
    r = check(tmp_path, '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[http]\nport = 8081\n[commands]\ntimeout = 5\n')
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("text, message", [
    ('[http]\nport = "abc"\n', "ConfigError: [http] port 'abc': expected an integer 0-65535"),
    ("[http]\nport = 70000\n", "ConfigError: [http] port 70000: expected an integer 0-65535"),
    ("[http]\nprot = 8080\n", "ConfigError: [http] prot: unknown key (known: host, port,"),
    ("[htp]\nport = 8080\n", "ConfigError: [htp]: unknown section"),
    ('[mqtt]\nurl = "http://pi:1883"\n', "ConfigError: [mqtt] url 'http://pi:1883': scheme 'http' is not supported"),
    ('[mqtt]\nurl = "mqtt://user:secret@pi"\n', "credentials"),
    ("[commands]\ntimeout = 0\n", "ConfigError: [commands] timeout 0: expected a number of seconds"),
    ('[log]\nlevel = "loud"\n', "ConfigError: [log] level 'loud': expected one of debug, info, warning, error"),
    ("[http\n", "ConfigError: [file]"),
])
def test_check_invalid_file(tmp_path: Path, text: str, message: str) -> None:
    r = check(tmp_path, text)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert "secret" not in r.stderr
    assert "Traceback" not in r.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    r = subprocess.run([str(EDGEWIRE), "gateway", "--check", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot be read" in r.stderr


def test_defaults_and_in_code_validation() -> None:
    cfg = parse_config("")
    assert cfg == GatewayConfig()
    assert (cfg.mqtt.url, cfg.http.port, cfg.commands.timeout, cfg.mqtt.clean_session) == ("", 8080, 10.0, False)
    with pytest.raises(ConfigError, match=r"\[http\] port True"):
        HttpConfig(port=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reconnect_max"):
        MqttConfig(reconnect_min=5, reconnect_max=1)
    with pytest.raises(AttributeError):
        cfg.http.port = 1  # type: ignore[misc]


def test_gateway_process_runs_and_stops_on_sigterm(tmp_path: Path, broker: Mosquitto) -> None:
    import json
    import signal
    import urllib.request

    from tests.support.broker import free_port

    port = free_port()
    f = tmp_path / "gw.toml"
    f.write_text(f'[mqtt]\nurl = "{broker.url}"\nclient_id = "gw-proc"\n[http]\nhost = "127.0.0.1"\nport = {port}\n')
    # cwd: the default [journal] path is relative to the working directory
    p = subprocess.Popen([str(EDGEWIRE), "gateway", "--config", str(f)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line and broker.url in line
        import time
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert body["mqtt"]["connected"] is True
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert "shutting down" in p.stderr.read()  # type: ignore[union-attr]
        assert (tmp_path / "edgewire-journal.db").exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for s in (p.stdout, p.stderr):
            if s is not None:
                s.close()
