"""Bearer tokens for the HTTP, SSE and WebSocket API: the token file, scopes,
browser sessions, and the limit on failed attempts (docs/api.md
"Authentication", decision D20).

A token reads `ew_<id>_<secret>`: `id` is 12 hex digits, public, the key of
its record (one dict look-up per request); `secret` is 32 random bytes
(base64url). The file keeps, per token, its id, name, scope, creation time,
a random salt and SHA-256(salt + secret), never the secret, so reading the
file does not give a usable token. One salted SHA-256 is enough here: the
secret is 256 random bits, not a password a person chose, so there is
nothing for a slow hash (scrypt, PBKDF2) to protect, and every request pays
for the hash on a Pi.

Scopes are ordered: `read` (devices, streams, stats, metrics), `command`
(read + send commands), `admin` (command + reload tokens over HTTP).

    store = TokenStore.load(path)            # TokenFileError if unreadable
    secret = create_token(path, "grafana", "read")   # the one time it is shown
    principal = store.verify(secret)         # AuthFailure("why") otherwise
"""
from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewire.gateway.errors import GatewayError

__all__ = ["SCOPES", "AuthFailure", "FailureLimiter", "Principal", "TokenFileError", "TokenRecord", "TokenStore",
           "create_token", "list_tokens", "revoke_token", "scope_allows", "token_main"]

SCOPES = ("read", "command", "admin")
PREFIX = "ew_"
ID_HEX = 12
_TOKEN = re.compile(r"ew_([0-9a-f]{%d})_([A-Za-z0-9_-]{43})" % ID_HEX)
FILE_VERSION = 1
MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9_.@ -]{1,%d}" % MAX_NAME)


def scope_allows(have: str, need: str) -> bool:
    """admin > command > read: a scope allows itself and those below it."""
    return SCOPES.index(have) >= SCOPES.index(need)


class TokenFileError(GatewayError):
    """The token file cannot be read, parsed or written; says which and why."""


class AuthFailure(Exception):
    """A credential was presented and is wrong. The message is for the log and
    the client: it never holds the secret."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    scope: str
    created: float
    salt: str    # hex
    sha256: str  # hex of SHA-256(salt + secret)

    def matches(self, secret: str) -> bool:
        got = hashlib.sha256(bytes.fromhex(self.salt) + secret.encode()).hexdigest()
        return hmac.compare_digest(got, self.sha256)

    @property
    def session_key(self) -> bytes:
        """Signs this token's browser sessions: derived from the stored hash,
        so revoking (or re-creating) the token ends its sessions too."""
        return hashlib.sha256(b"edgewire-session\0" + bytes.fromhex(self.sha256)).digest()

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scope": self.scope, "created": self.created}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a token's id, name and scope (`via`: "bearer",
    "cookie", or "none" when authentication is off)."""

    id: str
    name: str
    scope: str
    via: str

    def allows(self, need: str) -> bool:
        return scope_allows(self.scope, need)


ANONYMOUS = Principal(id="", name="anonymous (authentication off)", scope="admin", via="none")
# the caller of a public route (the page, login) while authentication is on: the lowest scope, no token
PUBLIC = Principal(id="", name="anonymous (public route)", scope="read", via="none")


def _record(raw: Any, where: str) -> TokenRecord:
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where}: expected an object per token")
    try:
        rec = TokenRecord(id=str(raw["id"]), name=str(raw["name"]), scope=str(raw["scope"]),
                          created=float(raw.get("created", 0)), salt=str(raw["salt"]), sha256=str(raw["sha256"]))
    except (KeyError, TypeError, ValueError) as e:
        raise TokenFileError(f"{where}: missing or bad field {e}") from None
    if not re.fullmatch(r"[0-9a-f]{%d}" % ID_HEX, rec.id) or rec.scope not in SCOPES:
        raise TokenFileError(f"{where}: bad id {rec.id[:20]!r} or scope {rec.scope[:20]!r}")
    try:
        bytes.fromhex(rec.salt)
        if len(bytes.fromhex(rec.sha256)) != 32:
            raise ValueError
    except ValueError:
        raise TokenFileError(f"{where}: salt and sha256 must be hex (sha256: 64 digits)") from None
    return rec


class TokenStore:
    """The tokens of one file, by id. An empty path: no file, no tokens."""

    def __init__(self, records: dict[str, TokenRecord] | None = None, path: str = "") -> None:
        self.records = records or {}
        self.path = path
        self.loaded_at = time.time()

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenFileError(f"token file {p} does not exist: create a token with "
                                 f"`edgewire token create --file {p} --name NAME --scope read`") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TokenFileError(f"token file {p} cannot be read: {e}") from None
        try:
            data = json.loads(text) if text.strip() else {"version": FILE_VERSION, "tokens": []}
        except ValueError as e:
            raise TokenFileError(f"token file {p} is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION or not isinstance(data.get("tokens"), list):
            raise TokenFileError(f"token file {p}: expected {{\"version\": {FILE_VERSION}, \"tokens\": [...]}}")
        records: dict[str, TokenRecord] = {}
        for i, raw in enumerate(data["tokens"]):
            rec = _record(raw, f"token file {p}, token {i + 1}")
            records[rec.id] = rec
        return cls(records, str(p))

    def save(self) -> None:
        """Write atomically (temporary file, fsync, rename), mode 0600."""
        p = Path(self.path)
        body = {"version": FILE_VERSION, "tokens": [
            {"id": r.id, "name": r.name, "scope": r.scope, "created": r.created, "salt": r.salt, "sha256": r.sha256}
            for r in self.records.values()]}
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=p.parent)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(body, f, indent=1)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, p)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise TokenFileError(f"token file {p} cannot be written: {e}") from None

    def verify(self, token: str) -> Principal:
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise AuthFailure("malformed token (expected ew_<12 hex>_<43 characters>)")
        rec = self.records.get(m.group(1))
        if rec is None:
            raise AuthFailure(f"unknown token id {m.group(1)} (revoked, or from another gateway)")
        if not rec.matches(m.group(2)):
            raise AuthFailure(f"wrong secret for token id {rec.id} ({rec.name!r})")
        return Principal(rec.id, rec.name, rec.scope, "bearer")

    # ---------------------------------------------------------------- sessions
    def make_session(self, token_id: str, lifetime: float) -> tuple[str, int]:
        """A cookie value `<id>.<expires>.<mac>` for a browser that logged in."""
        rec = self.records[token_id]
        expires = int(time.time() + lifetime)
        msg = f"{rec.id}.{expires}"
        mac = hmac.new(rec.session_key, msg.encode(), hashlib.sha256).hexdigest()
        return f"{msg}.{mac}", expires

    def verify_session(self, value: str) -> Principal:
        parts = value.split(".")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit() or len(parts[1]) > 12:
            raise AuthFailure("malformed session cookie")
        rec = self.records.get(parts[0])
        if rec is None:
            raise AuthFailure("session of a token that is no longer in the token file (revoked)")
        mac = hmac.new(rec.session_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, parts[2]):
            raise AuthFailure(f"session cookie for token id {rec.id} has a bad signature")
        if int(parts[1]) < time.time():
            raise AuthFailure(f"session of token id {rec.id} expired; log in again")
        return Principal(rec.id, rec.name, rec.scope, "cookie")

    def current(self, who: Principal) -> Principal | None:
        """`who` as the store now knows it (after a reload), or None if revoked."""
        if who.via == "none":
            return who
        rec = self.records.get(who.id)
        return None if rec is None else Principal(rec.id, rec.name, rec.scope, who.via)


class FailureLimiter:
    """Failed authentication attempts per client address: after `max_failures`
    within `window` seconds the address is refused (429) until the window that
    began with its first failure has passed. At most `max_peers` addresses
    are tracked (the oldest are forgotten first)."""

    def __init__(self, *, max_failures: int, window: float, max_peers: int = 4096) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_peers = max_peers
        self._peers: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self.failures = 0
        self.blocked = 0

    def retry_after(self, peer: str) -> float:
        """Seconds until `peer` may try again; 0 when it may now."""
        got = self._peers.get(peer)
        if got is None:
            return 0.0
        since, n = got
        left = since + self.window - time.monotonic()
        if left <= 0:
            del self._peers[peer]
            return 0.0
        return left if n >= self.max_failures else 0.0

    def fail(self, peer: str) -> int:
        """Count a failure; returns the address's failures in its window."""
        self.failures += 1
        now = time.monotonic()
        since, n = self._peers.get(peer, (now, 0))
        if now - since > self.window:
            since, n = now, 0
        self._peers[peer] = (since, n + 1)
        self._peers.move_to_end(peer)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        return n + 1

    def succeed(self, peer: str) -> None:
        self._peers.pop(peer, None)


# ---------------------------------------------------------------- token file edits (the CLI)

def _load_or_new(path: str | Path) -> TokenStore:
    if not Path(path).exists():
        return TokenStore({}, str(path))
    return TokenStore.load(path)


def create_token(path: str | Path, name: str, scope: str) -> tuple[TokenRecord, str]:
    """Add a token to the file (created 0600 if missing); returns its record
    and the token itself, which is shown once and stored nowhere."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"name {name[:80]!r}: expected 1-{MAX_NAME} of A-Z a-z 0-9 _ . @ - and spaces")
    store = _load_or_new(path)
    if any(r.name == name for r in store.records.values()):
        raise ValueError(f"a token named {name!r} exists already: revoke it first, or choose another name")
    token_id = secrets.token_hex(ID_HEX // 2)
    while token_id in store.records:
        token_id = secrets.token_hex(ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    salt = secrets.token_bytes(16)
    rec = TokenRecord(id=token_id, name=name, scope=scope, created=round(time.time(), 3), salt=salt.hex(),
                      sha256=hashlib.sha256(salt + secret.encode()).hexdigest())
    store.records[token_id] = rec
    store.save()
    return rec, f"{PREFIX}{token_id}_{secret}"


def list_tokens(path: str | Path) -> list[TokenRecord]:
    return sorted(TokenStore.load(path).records.values(), key=lambda r: r.created)


def revoke_token(path: str | Path, which: str) -> TokenRecord:
    """Remove a token by id or name; ValueError if there is none such."""
    store = TokenStore.load(path)
    found = [r for r in store.records.values() if which in (r.id, r.name)]
    if not found:
        raise ValueError(f"no token with id or name {which[:80]!r} in {path}")
    del store.records[found[0].id]
    store.save()
    return found[0]


def file_problems(path: str | Path) -> list[str]:
    """What is wrong with a token file as the gateway would read it: missing,
    unreadable, not valid, readable or writable by others, or empty."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        return [f"token file {p}: {e.strerror}; create it with `edgewire token create --file {p} ...`"]
    out = []
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        out.append(f"token file {p} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be readable or writable "
                   f"by group or others (chmod 600 {p})")
    try:
        store = TokenStore.load(p)
    except TokenFileError as e:
        return [*out, str(e)]
    if not store.records:
        out.append(f"token file {p} holds no token yet: nobody can use the API until `edgewire token create`")
    return out


def token_main(args: Any) -> int:
    """`edgewire token create|list|revoke` (app/cli.py parses). The file is
    --file, or [http] token_file of --config."""
    import sys

    path = args.file
    if not path and args.config:
        from edgewire.gateway.config import load_config
        from edgewire.gateway.errors import ConfigError

        try:
            path = load_config(args.config).http.token_file
        except ConfigError as e:
            print(f"ConfigError: {e}", file=sys.stderr)
            return 2
        if not path:
            print(f"{args.config} sets no [http] token_file; add one, or pass --file", file=sys.stderr)
            return 2
    if not path:
        print("which token file? pass --file PATH or --config FILE ([http] token_file)", file=sys.stderr)
        return 2
    try:
        if args.action == "create":
            rec, token = create_token(path, args.name or "", args.scope)
            print(token)
            print(f"token {rec.id} ({rec.name!r}, scope {rec.scope}) added to {path}; this is the only time it is "
                  "shown. A running gateway takes it after SIGHUP (systemctl reload edgewire).", file=sys.stderr)
        elif args.action == "list":
            for rec in list_tokens(path):
                made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.created))
                print(f"{rec.id}  {rec.scope:<7}  {made}Z  {rec.name}")
        else:
            rec = revoke_token(path, args.which or "")
            print(f"revoked token {rec.id} ({rec.name!r}); a running gateway drops it after SIGHUP "
                  "(systemctl reload edgewire)", file=sys.stderr)
    except (ValueError, TokenFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
