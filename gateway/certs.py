"""TLS for the MQTT link: the gateway's client context, and a small local CA
for sites without a PKI.

    edgewire certs init /etc/edgewire/tls --name gw.example.lan   # ca.pem, ca.key, server.pem, server.key

`init_site()` makes a CA (EC P-256, 10 years) and a server certificate signed
by it (2 years) whose SANs are the host name, `<host>.local`, localhost,
127.0.0.1, ::1 and any names or addresses given. mosquitto serves
server.pem/server.key; the gateway ([mqtt] ca_file) and every device
(provisioned with `--ca ca.pem`) verify the broker against ca.pem. ca.key
stays on the Pi (0600): it signs the next server certificate
(`--renew-server`). It needs the `cryptography` package, the `tls` extra
(docs/decisions.md D21); the gateway itself uses only the standard ssl module.

`client_context(cfg.mqtt)` builds the gateway's SSLContext: verification on,
host name checked, the CA from [mqtt] ca_file (else the system's), a client
certificate from cert_file/key_file. A broker its CA does not vouch for fails
the handshake with an error that names the broker and the CA file.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from edgewire.gateway.errors import ConfigError, GatewayError

__all__ = ["CertsError", "client_context", "tls_client_context", "issue_client_cert", "init_site", "certs_main"]


class CertsError(GatewayError):
    """Certificates could not be made or read."""


# ---------------------------------------------------------------- the gateway's client context

def _naming_sslobject(what: str) -> type[ssl.SSLObject]:
    class _SSLObject(ssl.SSLObject):
        """Says which CA did not vouch for which broker when verification fails."""

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except ssl.SSLCertVerificationError as e:
                raise ssl.SSLCertVerificationError(
                    f"the broker's certificate ({self.server_hostname}) is not trusted by {what}: "
                    f"{e.verify_message or e.reason} (wrong CA file, or a certificate for another host?)") from e

    return _SSLObject


def client_context(mqtt: Any) -> ssl.SSLContext:
    """The SSLContext for [mqtt] (an mqtts:// url); ConfigError naming the key
    when a file is missing or not what it should be."""
    return tls_client_context("mqtt", mqtt.ca_file, mqtt.cert_file, mqtt.key_file)


def tls_client_context(section: str, ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A verifying client SSLContext: the CA from `ca_file` (else the system's),
    a client certificate from cert_file/key_file; errors name [section]'s keys."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # CERT_REQUIRED, check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(section, "ca_file", ca_file, f"cannot be loaded as PEM CA certificates: {e}") from None
        what = f"[{section}] ca_file {ca_file}"
    else:
        what = f"the system's CA certificates ([{section}] ca_file is not set)"
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(section, "cert_file", cert_file,
                              f"cannot be loaded with key_file {key_file!r} as a PEM certificate and key: {e}") from None
    ctx.sslobject_class = _naming_sslobject(what)
    return ctx


# ---------------------------------------------------------------- a local CA

def _sans(names: list[str]) -> list[Any]:
    from cryptography import x509

    out: list[Any] = []
    seen: set[str] = set()
    for n in names:
        if not n or n in seen:
            continue
        seen.add(n)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def init_site(directory: str | Path, names: list[str] | tuple[str, ...] = (), *, renew_server: bool = False,
              ca_days: int = 3650, server_days: int = 730) -> dict[str, Path]:
    """Make ca.pem/ca.key and server.pem/server.key in `directory`. An existing
    CA is kept (with renew_server only the server certificate is made again);
    refuses to overwrite one otherwise. Returns the four paths."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise CertsError("`edgewire certs` needs the cryptography package: pip install 'edgewire[tls]'") from None
    d = Path(directory)
    paths = {k: d / f"{k}" for k in ("ca.pem", "ca.key", "server.pem", "server.key")}
    if paths["ca.pem"].exists() and not renew_server:
        raise CertsError(f"{paths['ca.pem']} exists; --renew-server makes a new server certificate with that CA "
                         "(a new CA would need every device provisioned again)")
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    host = socket.gethostname().split(".")[0]
    pem = serialization.Encoding.PEM

    if paths["ca.pem"].exists():
        try:
            ca = x509.load_pem_x509_certificate(paths["ca.pem"].read_bytes())
            ca_key = serialization.load_pem_private_key(paths["ca.key"].read_bytes(), None)
        except (OSError, ValueError) as e:
            raise CertsError(f"the CA in {d} cannot be read: {e}") from None
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Edgewire local CA ({host})")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=ca_days))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                           crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        _write(paths["ca.key"], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,  # type: ignore[union-attr]
                                                     serialization.NoEncryption()), 0o600)
        _write(paths["ca.pem"], ca.public_bytes(pem), 0o644)

    key = ec.generate_private_key(ec.SECP256R1())
    all_names = [host, f"{host}.local", "localhost", "127.0.0.1", "::1", *names]
    cn = names[0] if names else host
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=server_days))
            .add_extension(x509.SubjectAlternativeName(_sans(all_names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    # mosquitto reads the key after dropping to its own user: 0640, group to mosquitto (docs/mqtt-security.md)
    _write(paths["server.key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), 0o640)
    from edgewire.gateway.provision import share_with_mosquitto

    share_with_mosquitto(paths["server.key"])
    _write(paths["server.pem"], cert.public_bytes(pem), 0o644)
    return paths


CLIENT_CERT, CLIENT_KEY = "cert.der", "cert.key"  # the device finds the key by the certificate's name


def issue_client_cert(directory: str | Path, device_id: str, out: str | Path, *, days: int = 730) -> tuple[Path, Path]:
    """A device's client certificate (CN = its id, for mosquitto's
    `use_identity_as_username`), signed by the CA in `directory`, written to
    `out` in DER as the device reads it: cert.der, cert.key (PKCS#8, 0600)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise CertsError("`edgewire certs` needs the cryptography package: pip install 'edgewire[tls]'") from None
    d = Path(directory)
    try:
        ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as e:
        raise CertsError(f"the CA in {d} (ca.pem, ca.key from `edgewire certs init`) cannot be read: {e}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    der = serialization.Encoding.DER
    _write(o / CLIENT_KEY, key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
           0o600)
    _write(o / CLIENT_CERT, cert.public_bytes(der), 0o644)
    return o / CLIENT_CERT, o / CLIENT_KEY


def certs_main(args: Any) -> int:
    """`edgewire certs init DIR [--name N]... [--renew-server]`, `edgewire certs
    device DIR --device ID --out OUT` (app/cli.py parses)."""
    if args.action == "device":
        try:
            if not args.device:
                raise CertsError("--device ID is needed")
            cert, key = issue_client_cert(args.dir, args.device, args.out or args.device)
        except (CertsError, OSError) as e:
            print(f"edgewire certs: {e}", file=sys.stderr)
            return 2
        print(f"client certificate {cert} and key {key} for {args.device}; copy both to the board and set "
              f'"tls_cert": "{CLIENT_CERT}" in its config.json (the key is found by that name)')
        return 0
    try:
        paths = init_site(args.dir, list(args.name or ()), renew_server=args.renew_server)
    except (CertsError, OSError) as e:
        print(f"edgewire certs: {e}", file=sys.stderr)
        return 2
    print(f"CA {paths['ca.pem']} (key {paths['ca.key']}: keep it private), server certificate "
          f"{paths['server.pem']} with key {paths['server.key']}.\n"
          "mosquitto: cafile/certfile/keyfile (deploy/mosquitto.conf); gateway: [mqtt] url = \"mqtts://...\" and "
          "ca_file; devices: edgewire device provision ID --ca " + str(paths["ca.pem"]))
    return 0
