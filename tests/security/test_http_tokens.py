"""The token file and the checks behind the HTTP door, on their own: what a
hostile or broken input does to them (hypothesis), how the file is written,
and that the failure limiter stays bounded."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewire.gateway.auth import (AuthFailure, FailureLimiter, TokenFileError, TokenStore, create_token,
                                   file_problems, list_tokens, revoke_token)
from edgewire.gateway.http.access import _local_host

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def test_the_file_keeps_no_secret_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tokens.json"
    rec, token = create_token(path, "grafana", "read")
    assert token.startswith(f"ew_{rec.id}_") and len(token) == 3 + 12 + 1 + 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and file_problems(path) == []
    text = path.read_text()
    assert token[16:] not in text and rec.sha256 in text
    store = TokenStore.load(path)
    who = store.verify(token)
    assert (who.id, who.name, who.scope, who.via) == (rec.id, "grafana", "read", "bearer")
    with pytest.raises(ValueError, match="exists already"):
        create_token(path, "grafana", "admin")
    with pytest.raises(ValueError, match="scope 'root'"):
        create_token(path, "x", "root")
    with pytest.raises(ValueError, match="name"):
        create_token(path, "a\nb", "read")
    assert [r.name for r in list_tokens(path)] == ["grafana"]
    assert revoke_token(path, rec.id).name == "grafana" and list_tokens(path) == []
    with pytest.raises(ValueError, match="no token"):
        revoke_token(path, "grafana")
    assert file_problems(path) == [f"token file {path} holds no token yet: nobody can use the API until "
                                   "`edgewire token create`"]


def test_sessions_are_signed_expire_and_end_with_their_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    rec, _ = create_token(path, "ui", "command")
    store = TokenStore.load(path)
    cookie, _ = store.make_session(rec.id, 3600)
    assert store.verify_session(cookie).via == "cookie"
    token_id, expires, mac = cookie.split(".")
    for forged in (f"{token_id}.{int(expires) + 999}.{mac}", f"{token_id}.{expires}.{'0' * 64}"):
        with pytest.raises(AuthFailure, match="bad signature"):
            store.verify_session(forged)
    old, _ = store.make_session(rec.id, -10)
    with pytest.raises(AuthFailure, match="expired"):
        store.verify_session(old)
    revoke_token(path, "ui")
    create_token(path, "ui", "command")  # the same name again: a new token, the old sessions stay dead
    with pytest.raises(AuthFailure, match="no longer in the token file"):
        TokenStore.load(path).verify_session(cookie)


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not JSON"),
    ('{"version": 2, "tokens": []}', "expected"),
    ('{"version": 1, "tokens": [{"id": "zz"}]}', "missing or bad field"),
    ('{"version": 1, "tokens": [{"id": "0123456789ab", "name": "n", "scope": "root", "salt": "00", '
     '"sha256": "00"}]}', "bad id"),
])
def test_a_broken_file_is_a_clear_error(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(TokenFileError, match=expected):
        TokenStore.load(path)


@FAST
@given(st.text(max_size=120))
def test_any_presented_credential_is_refused_cleanly(text: str) -> None:
    store = TokenStore(json.loads("{}"))
    for check in (store.verify, store.verify_session):
        with pytest.raises(AuthFailure):
            check(text)


@FAST
@given(st.text(max_size=80))
def test_host_check_never_fails_and_refuses_dotted_names(host: str) -> None:
    ok = _local_host(host)
    if host in ("evil.example", "evil.example:8080", "a.b.c"):
        assert ok is False


def test_host_check_examples() -> None:
    for host in ("127.0.0.1:8080", "[::1]:8080", "localhost", "raspberrypi:8080", "10.0.0.5", "app.localhost"):
        assert _local_host(host), host
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.nip.io", "pi.local:8080"):
        assert not _local_host(host), host


def test_failure_limiter_is_bounded_and_windowed() -> None:
    lim = FailureLimiter(max_failures=3, window=60.0, max_peers=100)
    for i in range(10_000):
        lim.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(lim._peers) == 100 and lim.failures == 10_000
    for _ in range(3):
        assert lim.retry_after("192.0.2.1") == 0
        lim.fail("192.0.2.1")
    assert 59 < lim.retry_after("192.0.2.1") <= 60
    lim.succeed("192.0.2.1")  # only after a success that the middleware let through (never while blocked)
    assert lim.retry_after("192.0.2.1") == 0
