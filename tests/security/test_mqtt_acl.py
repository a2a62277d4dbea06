"""Per-device MQTT accounts on a real mosquitto with the password file and ACL
the gateway generates (issue #11, item 2): device A cannot publish under B's
topics nor read B's commands (paho-mqtt as an independent client), the
gateway's account still sees everything and commands every device, a device
that names another in its envelope is refused and counted (`mismatch`), and a
revoked device is cut off and refused once the files are regenerated and
mosquitto reloads (SIGHUP)."""
from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from edgewire import wire
from edgewire.gateway.config import EmbeddedBrokerConfig
from edgewire.gateway.provision import allowed, hash_password, provision, revoke, verify_password
from edgewire.gateway.service import Gateway
from tests.security.mqtt_support import (GATEWAY_USER, Client, auth_conf, site_config, site_dir,
                                         start_mosquitto, wait)


def telemetry(device: str, seq: int, claimed: str | None = None) -> bytes:
    return wire.encode_telemetry(claimed or device, 7, seq, seq * 10, [["t", 20.0 + seq, seq * 10]])


async def until(cond, timeout: float = 15.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(wait, cond, timeout, what)


def test_hashes_are_mosquittos_format() -> None:
    h = hash_password("s3cret", salt=b"\x01" * 12)
    assert h.startswith("$7$1000$") and verify_password("s3cret", h) and not verify_password("other", h)
    assert not verify_password("s3cret", "$6$garbage") and not verify_password("", "")


def test_rules_in_code() -> None:
    gw = GATEWAY_USER
    assert allowed("dev-a", gw, "edgewire/v1/dev-a/telemetry", "publish")
    assert not allowed("dev-a", gw, "edgewire/v1/dev-b/telemetry", "publish")
    assert not allowed("dev-a", gw, "edgewire/v1/dev-a/cmd", "publish")
    assert allowed("dev-a", gw, "edgewire/v1/dev-a/cmd", "subscribe")
    assert not allowed("dev-a", gw, "edgewire/v1/+/cmd", "subscribe")
    assert not allowed("dev-a", gw, "edgewire/v1/dev-b/cmd", "receive")
    assert allowed(gw, gw, "edgewire/v1/#", "subscribe") and allowed(gw, gw, "edgewire/v1/x/cmd", "publish")
    assert not allowed(gw, gw, "edgewire/v1/x/telemetry", "publish")
    assert not allowed(None, gw, "edgewire/v1/x/telemetry", "publish")


@pytest.fixture
def site():  # type: ignore[no-untyped-def]
    with site_dir() as d:
        yield d


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
async def test_devices_are_confined_to_their_own_topics(site: Path, tmp_path: Path, kind: str) -> None:
    """The same rules on mosquitto (generated passwd + acl files) and on the
    embedded amqtt broker (the same files, gateway/embedded_auth.py)."""
    cfg0 = site_config(site)
    creds = {d: provision(cfg0, d, out=site / d, broker_host="127.0.0.1")["password"] for d in ("dev-a", "dev-b")}
    broker = start_mosquitto(tmp_path, auth_conf(site)) if kind == "mosquitto" else None
    clients: list[Client] = []
    try:
        if broker is not None:
            cfg = site_config(site, url=broker.url).replace(journal=cfg0.journal)
        else:
            cfg = cfg0.replace(embedded_broker=EmbeddedBrokerConfig(port=0))
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(10)  # the gateway's own account
            port = broker.port if broker is not None else gw.mqtt.port

            # anonymous and wrong passwords are refused at CONNECT
            anon = Client(port, None, None, client_id="anon")
            clients.append(anon)
            await asyncio.to_thread(anon.start)
            bad = Client(port, "dev-a", "not-the-password", client_id="dev-a-bad")
            clients.append(bad)
            await asyncio.to_thread(bad.start)
            assert not anon.accepted and not bad.accepted

            a = Client(port, "dev-a", creds["dev-a"])
            b = Client(port, "dev-b", creds["dev-b"])
            clients += [a, b]
            await asyncio.to_thread(a.start)
            await asyncio.to_thread(b.start)
            assert a.accepted and b.accepted

            # reading: own command topic granted. mosquitto 2.0 grants a
            # subscription to B's commands (or a wildcard) and applies the ACL
            # to each delivery instead: what matters is that nothing of B's
            # reaches A (checked below); newer brokers answer 0x80.
            assert await asyncio.to_thread(a.subscribe, "edgewire/v1/dev-a/cmd") == [1]
            assert await asyncio.to_thread(b.subscribe, "edgewire/v1/dev-b/cmd") == [1]
            assert await asyncio.to_thread(a.subscribe, "edgewire/v1/dev-b/cmd") in ([1], [0x80])
            assert await asyncio.to_thread(a.subscribe, "edgewire/v1/#") in ([1], [0x80])

            # writing: A publishes under B's topics (dropped by the broker), then
            # names B in an envelope on its own topic (refused by the gateway:
            # mismatch), then a good message. mosquitto keeps one client's order,
            # so once the good one is in, the others would have been too.
            for kind in ("telemetry", "status", "result"):
                await asyncio.to_thread(a.pub, wire.topic("dev-b", kind), telemetry("dev-b", 1))
            await asyncio.to_thread(a.pub, wire.topic("dev-a", "telemetry"), telemetry("dev-a", 1, claimed="dev-b"))
            await asyncio.to_thread(a.pub, wire.topic("dev-a", "telemetry"), telemetry("dev-a", 2))
            await asyncio.to_thread(b.pub, wire.topic("dev-b", "telemetry"), telemetry("dev-b", 1))

            def seen() -> bool:
                da, db = gw.registry.get("dev-a"), gw.registry.get("dev-b")
                return da is not None and db is not None and da.messages == 1 and db.messages == 1

            await until(seen, what="the gateway to see one message of each device")
            assert gw.stats()["refused"] == {"mismatch": 1}
            assert gw.registry.get("dev-b").messages == 1  # type: ignore[union-attr]
            # dev-a seq 2 and dev-b seq 1 committed, nothing of A's forgeries
            await until(lambda: gw.hub.last_id == 2, what="two readings committed")

            # commands: the gateway's account writes every device's command topic;
            # each device gets its own only, also A with its '#' subscription
            cmd_b = wire.encode_command("c-b", "ping")
            cmd_a = wire.encode_command("c-a", "ping")
            await gw.publish(wire.topic("dev-b", "cmd"), cmd_b)
            await gw.publish(wire.topic("dev-a", "cmd"), cmd_a)
            await until(lambda: b.got("edgewire/v1/dev-b/cmd") and a.got("edgewire/v1/dev-a/cmd"),
                        what="each device's own command")
            assert b.got("edgewire/v1/dev-b/cmd") == [cmd_b]
            assert a.got("edgewire/v1/dev-b/cmd") == []
            assert {t for t, _ in a.messages} == {"edgewire/v1/dev-a/cmd"}  # nothing else under '#'
            # a device cannot command another, nor itself
            await asyncio.to_thread(a.pub, wire.topic("dev-b", "cmd"), wire.encode_command("forged", "reboot"))
            await asyncio.to_thread(a.pub, wire.topic("dev-a", "telemetry"), telemetry("dev-a", 3))
            await until(lambda: gw.registry.get("dev-a").messages == 2, what="dev-a's third message")  # type: ignore[union-attr]
            assert b.got("edgewire/v1/dev-b/cmd") == [cmd_b]

            # revoke B: the device list, then the gateway's SIGHUP path
            # regenerates the files; mosquitto's reload disconnects B
            revoke(cfg, "dev-b")
            gw.reload_mqtt_auth()  # what the gateway's SIGHUP does; the embedded broker reloads with it
            assert "dev-b:" not in (site / "auth" / "passwd").read_text()
            if broker is not None:
                assert broker.proc is not None
                broker.proc.send_signal(signal.SIGHUP)  # systemctl reload mosquitto
            await until(lambda: b.disconnects >= 1, what="mosquitto to disconnect the revoked device")
            again = Client(port, "dev-b", creds["dev-b"], client_id="dev-b")
            clients.append(again)
            await asyncio.to_thread(again.start)
            # bad user name or password / not authorised (paho reports MQTT 5 reason codes 134 / 135)
            assert again.connacks[-1] in (4, 5, 134, 135), again.connacks
            # A and the gateway go on
            await asyncio.to_thread(a.pub, wire.topic("dev-a", "telemetry"), telemetry("dev-a", 4))
            await until(lambda: gw.registry.get("dev-a").messages == 3, what="dev-a after the reload")  # type: ignore[union-attr]
            assert gw.mqtt.connected and a.disconnects == 0
    finally:
        for c in clients:
            c.close()
        if broker is not None:
            broker.stop()


def test_provision_refuses_what_it_should(site: Path) -> None:
    from edgewire.gateway.provision import ProvisionError

    cfg = site_config(site)
    first = provision(cfg, "dev-x", out=site / "x")
    with pytest.raises(ProvisionError, match="already provisioned"):
        provision(cfg, "dev-x", out=site / "x")
    rotated = provision(cfg, "dev-x", out=site / "x", rotate=True)
    assert rotated["password"] != first["password"]
    with pytest.raises(ProvisionError, match="gateway's own"):
        provision(cfg, GATEWAY_USER, out=site / "g")
    with pytest.raises(ProvisionError, match="not 1-64"):
        provision(cfg, "bad/id", out=site / "b")
    with pytest.raises(ProvisionError, match="not provisioned"):
        revoke(cfg, "nobody")
    # the device's config.json is what the firmware reads
    dc = json.loads((site / "x" / "config.json").read_text())
    assert dc["username"] == dc["device_id"] == "dev-x" and dc["password"] == rotated["password"]
    assert ((site / "x" / "config.json").stat().st_mode & 0o777) == 0o600


def test_device_cli_provision_list_revoke(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgewire.app.cli import main as cli

    toml = site / "gw.toml"
    toml.write_text(f'[mqtt]\nusername = "{GATEWAY_USER}"\npassword_file = "{site / "gw.password"}"\n'
                    f'[mqtt_auth]\ndir = "{site / "auth"}"\n')
    assert cli(["device", "provision", "cli-dev", "--config", str(toml), "--out", str(site / "cli-dev"),
                "--wifi-ssid", "barn", "--wifi-password", "w1f1"]) == 0
    assert "cli-dev: config.json written to" in capsys.readouterr().out
    dc = json.loads((site / "cli-dev" / "config.json").read_text())
    assert dc["wifi_ssid"] == "barn" and dc["tls_ca"] is None and dc["broker_port"] == 1883
    assert cli(["device", "list", "--config", str(toml)]) == 0
    assert capsys.readouterr().out.startswith("cli-dev\tprovisioned ")
    assert cli(["device", "provision", "cli-dev", "--config", str(toml)]) == 2
    assert "already provisioned" in capsys.readouterr().err
    assert cli(["device", "revoke", "cli-dev", "--config", str(toml)]) == 0
    assert "revoked" in capsys.readouterr().out
    assert "cli-dev" not in (site / "auth" / "passwd").read_text()
    assert cli(["device", "list", "--config", str(toml)]) == 0 and capsys.readouterr().out == ""
    # the generated passwd holds the gateway's account; the device list holds hashes only
    assert (site / "auth" / "passwd").read_text().startswith(f"{GATEWAY_USER}:$7$1000$")
    assert "w1f1" not in (site / "auth" / "devices.json").read_text()
