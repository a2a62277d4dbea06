"""deploy/edgewire.service and docs/deploy-pi.md say the same thing and work:
the unit's commands are real `edgewire` command lines, its reload is SIGHUP,
and the example configuration of the guide passes `edgewire gateway --check`
(the unit's ExecStartPre) once its paths point somewhere writable."""
from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

from edgewire.app.cli import build_parser
from edgewire.gateway.auth import create_token
from edgewire.gateway.config import parse_config
from tests.support.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "edgewire.service"
GUIDE = ROOT / "docs/deploy-pi.md"


def _unit() -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(UNIT.read_text())
    return p


def _guide_toml() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 1, "docs/deploy-pi.md should hold one example configuration"
    return blocks[0]


def test_unit_commands_are_edgewire_command_lines() -> None:
    svc = _unit()["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(svc[key])
        assert argv[0] == "/opt/edgewire/bin/edgewire", argv
        args = build_parser().parse_args(argv[1:])
        assert args.job == "gateway" and (args.check or args.config) == "/etc/edgewire/gateway.toml"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["User"] == "edgewire" and svc["StateDirectory"] == "edgewire"
    assert "/var/lib/edgewire" in svc["ReadWritePaths"] and svc["WorkingDirectory"] == "/var/lib/edgewire"
    guide = GUIDE.read_text()
    for path in ("/etc/edgewire/gateway.toml", "/etc/edgewire/tokens.json", "/var/lib/edgewire/journal.db",
                 "deploy/edgewire.service", "systemctl reload edgewire", "journalctl -u edgewire"):
        assert path in guide, path


def test_the_guide_configuration_passes_the_check(tmp_path: Path) -> None:
    text = _guide_toml()
    cfg = parse_config(text)
    assert cfg.http.host == "0.0.0.0" and cfg.http.token_file == "/etc/edgewire/tokens.json"
    assert cfg.journal.path.startswith("/var/lib/edgewire/")
    tokens = tmp_path / "tokens.json"
    create_token(tokens, "prometheus", "read")
    local = (text.replace("/etc/edgewire/tokens.json", str(tokens))
             .replace("/var/lib/edgewire", str(tmp_path / "data"))
             .replace("port = 8080", f"port = {free_port()}"))
    conf = tmp_path / "gateway.toml"
    conf.write_text(local)
    res = subprocess.run([str(Path(sys.executable).parent / "edgewire"), "gateway", "--check", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"{conf}: ok", res
