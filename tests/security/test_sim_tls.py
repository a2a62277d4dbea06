"""A simulated fleet over TLS with per-device accounts (`edgewire sim --broker
mqtts://... --auth-config GW.toml`): against a real mosquitto that serves TLS
with a certificate from `edgewire certs init` and takes only the password file
and ACL the gateway generates. The simulator makes the devices' accounts in
[mqtt_auth] dir on first use; after mosquitto's reload every device logs in
as itself and runs the real device SDK over TLS (edgewire.tls on CPython's
ssl); the observer logs in with the gateway's account; every reading the
devices had acknowledged reaches the gateway, over TLS too."""
from __future__ import annotations

import asyncio
import io
import json
import signal
from pathlib import Path

import pytest

from edgewire.app.cli import build_parser, sim_login
from edgewire.app.cli import main as cli
from edgewire.gateway.config import load_config
from edgewire.gateway.provision import SIM_PASSWORDS, DeviceList, write_broker_files
from edgewire.gateway.service import Gateway
from edgewire.sim import Fleet
from edgewire.sim.cli import sim_main
from edgewire.sim.errors import SimError
from tests.security.mqtt_support import auth_conf, site_dir, start_mosquitto
from tests.security.test_tls_mqtt import gateway_toml, until
from tests.support.broker import free_port

DEVICES = 4


async def test_sim_fleet_over_tls_with_accounts_reaches_the_gateway(tmp_path: Path) -> None:
    with site_dir() as root:
        assert cli(["certs", "init", str(root / "tls")]) == 0
        port = free_port()
        url = f"mqtts://127.0.0.1:{port}"
        toml = root / "gw.toml"
        toml.write_text(gateway_toml(root, url, root / "tls" / "ca.pem"))
        cfg = load_config(toml)
        write_broker_files(cfg)  # the gateway's account, before mosquitto reads the files
        t = root / "tls"
        broker = start_mosquitto(tmp_path, f"listener {port} 127.0.0.1\ncafile {t / 'ca.pem'}\n"
                                           f"certfile {t / 'server.pem'}\nkeyfile {t / 'server.key'}\n"
                                           + auth_conf(root))
        try:
            async with Gateway(cfg) as gw:
                assert gw.mqtt is not None
                await gw.mqtt.wait_connected(20)
                # no --ca: the CA comes from the gateway's [mqtt] ca_file
                args = build_parser().parse_args(
                    ["sim", "--broker", url, "--auth-config", str(toml), "--devices", str(DEVICES), "--rate", "2",
                     "--qos", "1", "--duration", "6", "--procs", "0", "--prefix", "tlssim", "--json", "--seed", "3"])
                out, err = io.StringIO(), io.StringIO()
                run = asyncio.create_task(asyncio.to_thread(sim_main, args, out, err, login=sim_login))
                # the accounts are new: mosquitto learns them at its reload (the devices retry until then)
                await until(lambda: (root / "auth" / SIM_PASSWORDS).exists() or run.done(), 30, "the sim's accounts")
                assert broker.proc is not None
                broker.proc.send_signal(signal.SIGHUP)
                code = await run
                assert code == 0, err.getvalue()
                assert f"{DEVICES} new device accounts" in err.getvalue()
                report = json.loads(out.getvalue())
                fleet = report["fleet"]
                assert fleet["devices_connected"] == DEVICES and fleet["devices_with_errors"] == 0, report["fleet"]
                assert fleet["messages"] > 0 and fleet["acked"] == fleet["messages"], fleet
                # the observer (the gateway's account, over TLS) got every message
                rows = report["by_qos"]
                assert sum(r["received"] for r in rows) == fleet["messages"], rows
                assert sum(r["lost"] for r in rows) == 0, rows  # (duplicates of a QoS 1 retry are allowed)
                # and so did the gateway: every reading of every device, once
                want = {d["device"]: d["messages"] for d in report["per_device"]}

                def all_in() -> bool:
                    return all((r := gw.registry.get(d)) is not None and r.messages >= n for d, n in want.items())

                await until(all_in, 30, "every reading at the gateway")
                assert {d: gw.registry.get(d).messages for d in want} == want  # type: ignore[union-attr]
                assert gw.stats()["refused"] == {}
            devices = DeviceList(root / "auth").load()
            assert sorted(d for d, e in devices.items() if e.get("simulated")) == sorted(want)
            assert (root / "auth" / SIM_PASSWORDS).stat().st_mode & 0o777 == 0o600

            # a second run reuses the accounts (no reload needed), from the Python API this time
            login = sim_login(str(toml))
            with Fleet(url, devices=2, rate=2, qos=1, prefix="tlssim", seed=4, **login) as fleet2:
                await asyncio.to_thread(fleet2.wait_connected, 30)
            rep = fleet2.report()
            rep.assert_no_loss()
            assert rep.totals["messages"] > 0 or rep.totals["connects"] == 2
        finally:
            broker.stop()


def test_tls_and_account_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SimError, match="give the CA"):
        Fleet("mqtts://127.0.0.1:8883", devices=1)
    with pytest.raises(SimError, match="not mqtts"):
        Fleet("mqtt://127.0.0.1:1883", devices=1, ca_file="ca.pem")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(SimError, match="not a PEM or DER CA"):
        Fleet("mqtts://127.0.0.1", devices=1, ca_file=str(tmp_path / "bad.pem"))
    with pytest.raises(SimError, match="no password for 1 devices"):
        Fleet("mqtt://127.0.0.1:1883", devices=2, credentials={"sim-0000": "x"})
    with site_dir() as root:
        toml = root / "gw.toml"
        toml.write_text(gateway_toml(root, "mqtt://127.0.0.1:1", root / "ca.pem").replace("ca_file", "#"))
        assert cli(["device", "provision", "real-0000", "--config", str(toml), "--out", str(root / "r")]) == 0
        err = io.StringIO()
        args = build_parser().parse_args(["sim", "--broker", "mqtt://127.0.0.1:1", "--auth-config", str(toml),
                                          "--devices", "1", "--prefix", "real", "--procs", "0"])
        assert sim_main(args, io.StringIO(), err, login=sim_login) == 2
        assert "provisioned, but not by the simulator" in err.getvalue()


def test_auth_config_on_the_embedded_broker_of_a_run() -> None:
    """Without --broker the run's own (plain, open) embedded broker: the
    gateway's CA is not used, the accounts are, and the run completes."""
    with site_dir() as root:
        assert cli(["certs", "init", str(root / "tls")]) == 0
        toml = root / "gw.toml"
        toml.write_text(gateway_toml(root, "mqtts://127.0.0.1:1", root / "tls" / "ca.pem"))
        out, err = io.StringIO(), io.StringIO()
        args = build_parser().parse_args(["sim", "--auth-config", str(toml), "--devices", "2", "--duration", "1",
                                          "--procs", "0", "--json"])
        from edgewire.app.cli import start_embedded_broker_for_sim

        assert sim_main(args, out, err, start_broker=start_embedded_broker_for_sim, login=sim_login) == 0, \
            err.getvalue()
        report = json.loads(out.getvalue())
        assert report["broker"].startswith("mqtt://") and report["fleet"]["devices_connected"] == 2
        assert len(json.loads((root / "auth" / SIM_PASSWORDS).read_text())) == 2
