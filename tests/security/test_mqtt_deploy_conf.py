"""deploy/mosquitto.conf with its commented per-device account and TLS lines
turned on, pointed at files from `edgewire certs init` and the gateway's
generated passwd/acl: mosquitto accepts it, a provisioned device logs in over
TLS (paho, verifying the broker with ca.pem), anonymous clients are refused,
and the device's own topics work while another device's do not."""
from __future__ import annotations

import re
import ssl
import subprocess
import tempfile
from pathlib import Path


from edgewire import wire
from edgewire.gateway.certs import init_site
from edgewire.gateway.provision import provision
from tests.security.mqtt_support import GATEWAY_USER, Client, site_config, site_dir, wait
from tests.support.broker import MOSQUITTO, free_port, terminate, wait_port

CONF = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto.conf"
SECURE = ("allow_anonymous", "password_file", "acl_file", "listener", "cafile", "certfile", "keyfile",
          "tls_version")


def secured_conf(site: Path, plain: int, tls: int, store: Path) -> str:
    text = CONF.read_text()
    for key in SECURE:  # uncomment the account and TLS lines, as docs/mqtt-security.md says
        text = re.sub(rf"^#({key} )", r"\1", text, flags=re.M)
    text = (text.replace("/var/lib/edgewire/mqtt-auth", str(site / "auth"))
            .replace("/etc/edgewire/tls", str(site / "tls"))
            .replace("listener 1883\n", f"listener {plain} 127.0.0.1\n")
            .replace("listener 8883\n", f"listener {tls} 127.0.0.1\n"))
    return text + f"persistence_location {store}/\nlog_dest stderr\n"


def test_shipped_config_with_accounts_and_tls() -> None:
    with site_dir() as site, tempfile.TemporaryDirectory(prefix="edgewire-mosq-") as store_dir:
        store = Path(store_dir)
        store.chmod(0o777)  # mosquitto saves its store as its own user
        init_site(site / "tls")
        cfg = site_config(site)
        password = provision(cfg, "conf-dev", out=site / "conf-dev")["password"]
        gw_password = (site / "gateway.password").read_text().strip()
        plain, tls = free_port(), free_port()
        conf = site / "m.conf"
        conf.write_text(secured_conf(site, plain, tls, store))
        assert "\nallow_anonymous false\n" in conf.read_text() and "\nrequire_certificate" not in conf.read_text()
        p = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        clients: list[Client] = []
        try:
            wait_port(plain)
            wait_port(tls)
            anon = Client(plain, None, None, client_id="anon")
            gw = Client(plain, GATEWAY_USER, gw_password, client_id="gw")
            dev = Client(tls, "conf-dev", password)
            dev.c.tls_set(ca_certs=str(site / "tls" / "ca.pem"), cert_reqs=ssl.CERT_REQUIRED)
            clients += [anon, gw, dev]
            for c in clients:
                c.start()
            assert not anon.accepted and gw.accepted and dev.accepted
            gw.subscribe("edgewire/v1/#")
            payload = wire.encode_telemetry("conf-dev", 1, 1, 0, [["t", 1.0, 0]])
            dev.pub(wire.topic("other-dev", "telemetry"), payload)   # not its topic: dropped
            dev.pub(wire.topic("conf-dev", "telemetry"), payload)
            wait(lambda: gw.got(wire.topic("conf-dev", "telemetry")), what="the device's telemetry over TLS")
            assert gw.got(wire.topic("other-dev", "telemetry")) == []
        finally:
            for c in clients:
                c.close()
            terminate(p)
            _, err = p.communicate(timeout=10)
        assert b"Error" not in err, err
