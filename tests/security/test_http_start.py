"""Starting the gateway as a user does (`edgewire gateway`): beyond loopback
only with authentication configured, and `--check` says what would stop it
or leave it unsafe (the token file, its permissions, HTTPS files, the data
folder, the ports). SIGHUP reloads the token file of a running gateway."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgewire.gateway.auth import create_token, revoke_token
from tests.support.broker import Mosquitto, free_port, terminate, wait_port

EDGEWIRE = str(Path(sys.executable).parent / "edgewire")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEWIRE, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_all_addresses_without_auth_refuse_to_start(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[http]\nhost = "0.0.0.0"\nport = {free_port()}\n')
    for args in (["gateway", "--config", str(conf)], ["gateway", "--check", str(conf)]):
        res = _run(*args, cwd=tmp_path)
        assert res.returncode == 2, res
        assert ("ConfigError: [http] host '0.0.0.0': listening beyond this machine needs authentication: set "
                "[http] token_file") in res.stderr, res.stderr
    assert not (tmp_path / "edgewire-journal.db").exists()  # refused before anything was opened


def test_a_missing_token_file_refuses_the_start_before_anything_opens(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[http]\nport = 0\ntoken_file = "{tmp_path}/tokens.json"\n'
                    f'[journal]\npath = "{tmp_path}/data/journal.db"\n')
    res = _run("gateway", "--config", str(conf), cwd=tmp_path)
    assert res.returncode == 1, res
    assert f"TokenFileError: token file {tmp_path}/tokens.json does not exist: create a token with" in res.stderr
    assert not (tmp_path / "data").exists() and "embedded" not in res.stderr  # no journal, no broker


def test_check_names_files_permissions_and_ports(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    create_token(tokens, "ops", "read")
    data = tmp_path / "data"
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[http]\nhost = "0.0.0.0"\nport = {port}\ntoken_file = "{tokens}"\n'
                    f'[journal]\npath = "{data}/journal.db"\n')
    res = _run("gateway", "--check", str(conf), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"{conf}: ok", res

    os.chmod(tokens, 0o644)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        res = _run("gateway", "--check", str(conf), cwd=tmp_path)
    assert res.returncode == 2, res
    assert f"error: token file {tokens} has mode 0644" in res.stderr
    assert f"error: [http] 0.0.0.0:{port} is taken" in res.stderr
    assert "2 error(s)" in res.stderr

    os.chmod(tokens, 0o600)
    conf.write_text(f'[http]\nport = {port}\ntoken_file = "{tmp_path}/missing.json"\n'
                    f'cert_file = "{tmp_path}/cert.pem"\nkey_file = "{tmp_path}/key.pem"\n'
                    f'[journal]\npath = "{tokens}/journal.db"\n')
    res = _run("gateway", "--check", str(conf), cwd=tmp_path)
    assert res.returncode == 2, res
    for expected in (f"token file {tmp_path}/missing.json: No such file or directory",
                     f"[http] cert_file {tmp_path}/cert.pem: No such file or directory",
                     f"[journal] path {tokens}/journal.db: {tokens} is not a folder"):
        assert expected in res.stderr, res.stderr


def test_all_addresses_with_tokens_and_sighup_reload(broker: Mosquitto, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    _, first = create_token(tokens, "first", "read")
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[mqtt]\nurl = "{broker.url}"\n[http]\nhost = "0.0.0.0"\nport = {port}\n'
                    f'token_file = "{tokens}"\n')
    proc = subprocess.Popen([EDGEWIRE, "gateway", "--config", str(conf)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=20)
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/api/v1/devices")[0] == 401
        assert _get(base + "/api/v1/devices", first)[0] == 200
        _, second = create_token(tokens, "second", "read")
        revoke_token(tokens, "first")
        assert _get(base + "/api/v1/devices", second)[0] == 401  # not yet: the file is read at start and SIGHUP
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while _get(base + "/api/v1/devices", second)[0] != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the token file"
            time.sleep(0.05)
        assert _get(base + "/api/v1/devices", first)[0] == 401
        # a broken file keeps the tokens in force
        tokens.write_text("{ not json")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while _get(base + "/api/v1/stats", second)[1].get("http", {}).get("auth", {}).get("reload_failures") != 1:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _get(base + "/api/v1/devices", second)[0] == 200
    finally:
        terminate(proc, 15)
        out = proc.stdout.read() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0, out
    assert "token file not reloaded, the previous 1 tokens stay in force" in out
    assert second[16:] not in out and first[16:] not in out
