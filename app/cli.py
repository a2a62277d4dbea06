"""`edgewire`: one console command, three jobs.

    edgewire gateway --config FILE | --check FILE
    edgewire sim --devices N --rate R --qos Q [--broker URL] --duration S
    edgewire demo [--port 8080]
    edgewire journal check|repair|export PATH | --config FILE
    edgewire backend --listen HOST:PORT | --amqp URL --store FILE
    edgewire device provision|revoke|list [ID] --config FILE
    edgewire certs init DIR [--name HOST]...
    edgewire token create|list|revoke --file PATH | --config FILE

Each job's module is imported only when that job runs. This module lives in
edgewire.app, above the gateway and the simulator, so that neither of those
imports the other: `edgewire sim` without `--broker` gets the gateway's
embedded broker from here."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgewire.gateway.embedded_broker import EmbeddedBroker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgewire", description="Edgewire: sensor data from devices to people and services.")
    sub = p.add_subparsers(dest="job", required=True, metavar="{gateway,sim,demo,journal,backend,device,certs,token}")

    g = sub.add_parser("gateway", help="run the gateway service")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--config", metavar="FILE", help="TOML configuration (defaults apply to every key left out)")
    mode.add_argument("--check", metavar="FILE", help="validate a configuration file and exit (0 valid, 2 invalid)")
    g.add_argument("--log-level", default=None, help="override [log] level: debug, info, warning, error")

    s = sub.add_parser("sim", help="run a simulated device fleet built from the real firmware SDK")
    from edgewire.sim.cli import add_arguments  # options only: the simulator itself loads when it runs

    add_arguments(s)

    d = sub.add_parser("demo", help="gateway, embedded broker and a simulated fleet, with the dashboard")
    d.add_argument("--port", type=int, default=8080, help="HTTP port of the dashboard (default 8080)")
    d.add_argument("--devices", type=int, default=5, help="simulated devices (default 5)")
    d.add_argument("--mqtt-port", type=int, default=1883, help="embedded broker port; a free one is used when taken")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")

    j = sub.add_parser("journal", help="check, repair or export a gateway journal (docs/gateway.md)")
    j.add_argument("action", choices=("check", "repair", "export"))
    j.add_argument("path", nargs="?", help="the journal file ([journal] path)")
    j.add_argument("--config", metavar="FILE", help="take the path from this gateway configuration")
    j.add_argument("--out", metavar="FILE", help="export: write here instead of standard output")
    j.add_argument("--after", type=int, default=0, help="export: only entries with ids after this one")

    b = sub.add_parser("backend", help="the reference backend: stores what a gateway's grpc or amqp sink forwards "
                                       "in SQLite, once each")
    b.add_argument("--listen", help="gRPC: HOST:PORT to serve on (port 0: any free one); "
                                    "default 127.0.0.1:50051 unless --amqp is given")
    b.add_argument("--cert", help="gRPC: serve TLS with this PEM certificate (with --key)")
    b.add_argument("--key", help="gRPC: the certificate's PEM private key")
    b.add_argument("--client-ca", help="gRPC: require client certificates signed by this PEM CA (with --cert)")
    b.add_argument("--amqp", metavar="URL", help="consume from RabbitMQ at this amqp:// or amqps:// URL")
    b.add_argument("--exchange", default="edgewire", help="AMQP: the sink's exchange (declared topic, durable)")
    b.add_argument("--queue", default="edgewire-backend", help="AMQP: the durable queue to declare and consume")
    b.add_argument("--binding", default="#", help="AMQP: routing-key pattern binding the queue (e.g. 'barn.#')")
    b.add_argument("--store", default="edgewire-backend.db", help="SQLite file for the readings")
    add_mqtt_security_parsers(sub)
    add_token_parser(sub)
    return p


def add_mqtt_security_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`device` (per-device MQTT accounts, gateway/provision.py) and `certs` (a local CA, gateway/certs.py)."""
    dv = sub.add_parser("device", help="provision, revoke or list devices' MQTT accounts ([mqtt_auth])")
    dv.add_argument("action", choices=("provision", "revoke", "list"))
    dv.add_argument("device", nargs="?", help="the device id (= its MQTT user name)")
    dv.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML configuration")
    dv.add_argument("--out", metavar="DIR", help="provision: where config.json (and ca.der) go (default: ./ID)")
    dv.add_argument("--broker-host", help="provision: the broker as the device reaches it (default: the [mqtt] "
                                          "url's host, or <this host>.local)")
    dv.add_argument("--broker-port", type=int, help="provision: default 8883 with --ca, else 1883")
    dv.add_argument("--ca", metavar="PEM", help="provision: the CA of the broker's certificate: the device uses TLS")
    dv.add_argument("--wifi-ssid", help="provision: the Wi-Fi the device joins")
    dv.add_argument("--wifi-password", help="provision: its password")
    dv.add_argument("--rotate", action="store_true", help="provision: give an existing device a new password")

    dv.add_argument("--client-cert", action="store_true",
                    help="provision: also a client certificate (cert.der, cert.key) signed by the CA of --ca (its "
                         "ca.key beside it), for a broker with require_certificate")

    c = sub.add_parser("certs", help="make a small local CA and a server certificate for the broker; "
                                     "device client certificates")
    c.add_argument("action", choices=("init", "device"))
    c.add_argument("dir", help="where ca.pem, ca.key, server.pem and server.key go (device: where they are)")
    c.add_argument("--device", metavar="ID", help="device: the device id, the certificate's CN")
    c.add_argument("--out", metavar="DIR", help="device: where cert.der and cert.key go (default: ./ID)")
    c.add_argument("--name", action="append", help="another host name or address of the broker (repeatable)")
    c.add_argument("--renew-server", action="store_true", help="keep the CA, make a new server certificate")


def add_token_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    t = sub.add_parser("token", help="create, list or revoke the HTTP API's bearer tokens (docs/api.md)")
    t.add_argument("action", choices=("create", "list", "revoke"))
    t.add_argument("which", nargs="?", help="revoke: the token's id or name")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--file", metavar="PATH", help="the token file")
    where.add_argument("--config", metavar="FILE", help="take the file from this configuration's [http] token_file")
    t.add_argument("--name", help="create: a name for the token (who or what uses it)")
    t.add_argument("--scope", choices=("read", "command", "admin"), default="read",
                   help="create: read (default), command (read + commands) or admin (command + reload)")


def start_embedded_broker_for_sim() -> "EmbeddedBroker":
    """The gateway's embedded broker on a free port, for `edgewire sim` without --broker."""
    from edgewire.gateway.embedded_broker import EmbeddedBroker, EmbeddedBrokerError
    from edgewire.sim.errors import SimError

    try:
        return EmbeddedBroker(port=0).start()
    except EmbeddedBrokerError as e:
        raise SimError(f"the embedded broker did not start: {e}") from e


def sim_login(config_path: str) -> dict[str, Any]:
    """`edgewire sim --auth-config GW.toml`: per-device accounts in the
    gateway's [mqtt_auth] dir for the simulated devices, the gateway's own
    account for the observer, its CA for an mqtts:// broker (SimError if the
    configuration cannot give them)."""
    import logging

    from edgewire.gateway.config import load_config
    from edgewire.gateway.errors import GatewayError
    from edgewire.gateway.provision import gateway_login, sim_passwords
    from edgewire.sim.errors import SimError

    try:
        cfg = load_config(config_path)
        observer = gateway_login(cfg)
    except GatewayError as e:
        raise SimError(f"--auth-config {config_path}: {e}") from None

    def credentials(ids: list[str]) -> dict[str, str]:
        try:
            passwords, added = sim_passwords(cfg, ids)
        except GatewayError as e:
            raise SimError(f"--auth-config {config_path}: {e}") from None
        if added:
            logging.getLogger("edgewire.sim").warning(
                "%d new device accounts in %s (passwords kept in its sim-passwords.json); reload mosquitto (systemctl "
                "reload mosquitto) or the gateway (SIGHUP, embedded broker) so that they are accepted: the devices "
                "retry until then", len(added), cfg.mqtt_auth.dir)
        return passwords

    return {"credentials": credentials, "observer_auth": observer,
            "ca_file": cfg.mqtt.ca_file or cfg.embedded_broker.ca_file or None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.job == "gateway":
        from edgewire.gateway.service import gateway_main

        return gateway_main(args)
    if args.job == "journal":
        from edgewire.gateway.journal_tools import journal_main

        return journal_main(args)
    if args.job == "token":
        from edgewire.gateway.auth import token_main

        return token_main(args)
    if args.job == "backend":
        from edgewire.app.backend import backend_main

        return backend_main(args)
    if args.job == "device":
        from edgewire.gateway.provision import device_main

        return device_main(args)
    if args.job == "certs":
        from edgewire.gateway.certs import certs_main

        return certs_main(args)
    if args.job == "sim":
        from edgewire.sim.cli import sim_main

        return sim_main(args, start_broker=start_embedded_broker_for_sim, login=sim_login)
    from edgewire.app.demo import demo_main

    return demo_main(args)


if __name__ == "__main__":
    sys.exit(main())
