"""The `amqp` sink: every reading of the journal to a RabbitMQ topic exchange
(AMQP 0-9-1, aio-pika), persistent, with publisher confirms; the sink's
cursor moves only when RabbitMQ confirmed the whole batch.

    [[sinks]]
    type = "amqp"
    url = "amqp://guest:guest@127.0.0.1:5672/"
    exchange = "edgewire"

Each reading is one message (or, with `readings_per_message` > 1, a JSON
array of readings that share a routing key):

- exchange: `exchange`, type topic, declared durable;
- routing key `<site>.<device>.<stream>` (site: `[gateway] site`), so that
  consumers bind with `#.sensor-17.*` or `site-a.#`;
- body: the reading exactly as the SSE stream shows it
  (`{"id","device","stream","value","ts","boot","seq"[,"error"]}`), as JSON
  (`application/json`) or msgpack (`application/msgpack`);
- `message_id` `<device>/<boot>/<seq>/<stream>`: the same reading always has
  the same id, so a consumer drops repeats by it (the sink delivers at least
  once: what was sent but not confirmed before a crash or an outage is sent
  again). A batched message's id is that of its first reading plus `+<n>`;
  de-duplicate its elements by (device, boot, seq, stream);
- headers `device`, `stream`, `site`, `boot`, `seq`, `gateway_id` (the
  journal id), and for a batch `count`;
- delivery mode 2 (persistent), `app_id` "edgewire", `type` "reading".

Births, deaths and command results are not forwarded. Credentials: in the url
(the minimal form above), or `username` with `password_file` or
`password_env`; never logged (errors are reported with the password and the
url's credentials removed). TLS: an `amqps://` url verifies RabbitMQ's
certificate against `ca_file` (default: the system's CAs) and the host name,
and presents `cert_file`/`key_file` when given (gateway/sinks/tls.py).
docs/backends.md shows consumers, docs/config.md every key."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgpack

from edgewire.gateway.errors import ConfigError
from edgewire.gateway.hub import Event, events_of
from edgewire.gateway.journal import Entry
from edgewire.gateway.sinks import JournalReader, JournalSink
from edgewire.gateway.sinks.tls import TLS_KEYS, client_context, validate_tls

__all__ = ["Sink", "message_id", "routing_key", "validate"]

log = logging.getLogger("edgewire.gateway.sinks.amqp")

_KNOWN = ("url", "exchange", "username", "password_file", "password_env", "content_type", "readings_per_message",
          "connect_timeout", "confirm_timeout", "heartbeat", "command_queue", "command_prefetch", *TLS_KEYS)
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
CONTENT_TYPES = {"json": "application/json", "msgpack": "application/msgpack"}


class AmqpDeliveryError(Exception):
    """A delivery failed; the message never holds credentials."""


def validate(options: dict[str, Any]) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("aio_pika") is None:
        raise ConfigError("sinks", "type", "amqp", "the amqp sink needs aio-pika: pip install 'edgewire[amqp]'")
    for k in options:
        if k not in _KNOWN:
            raise ConfigError("sinks", k, options[k], "unknown key for an amqp sink (known: " + ", ".join(_KNOWN) + ")")
    url = options.get("url")
    fix = "expected amqp://[user:password@]host[:port]/[vhost] or amqps://..., e.g. amqp://guest:guest@127.0.0.1:5672/"
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise ConfigError("sinks", "url", "<redacted>" if isinstance(url, str) else url, fix)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError("sinks", "url", "<redacted>", fix) from None
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError("sinks", "url", _redact_url(url), fix)
    exchange = options.get("exchange", "edgewire")
    if not isinstance(exchange, str) or not 1 <= len(exchange) <= 127 or not set(exchange) <= _NAME_OK \
            or exchange.startswith("amq."):
        raise ConfigError("sinks", "exchange", exchange,
                          "expected 1-127 of A-Z a-z 0-9 - _ . : (not starting with amq., RabbitMQ's own)")
    username = options.get("username", "")
    if not isinstance(username, str) or len(username) > 256:
        raise ConfigError("sinks", "username", username, "expected a string of at most 256 characters")
    pw_file = options.get("password_file", "")
    pw_env = options.get("password_env", "")
    for key, v in (("password_file", pw_file), ("password_env", pw_env)):
        if not isinstance(v, str) or len(v) > 4096:
            raise ConfigError("sinks", key, v, "expected a string")
    if pw_file and pw_env:
        raise ConfigError("sinks", "password_env", pw_env, "give password_file or password_env, not both")
    if (pw_file or pw_env) and not username:
        raise ConfigError("sinks", "username", username, "password_file/password_env need a username too")
    if username and (parts.username is not None or parts.password is not None):
        raise ConfigError("sinks", "username", username,
                          "credentials are in the url already; give them in one place (username + password_file "
                          "keeps the password out of the config)")
    if pw_env and not (pw_env.replace("_", "a").isalnum() and pw_env.isascii()):
        raise ConfigError("sinks", "password_env", pw_env, "expected an environment variable's name")
    ctype = options.get("content_type", "json")
    if ctype not in CONTENT_TYPES:
        raise ConfigError("sinks", "content_type", ctype, "expected json or msgpack")
    rpm = options.get("readings_per_message", 1)
    if not isinstance(rpm, int) or isinstance(rpm, bool) or not 1 <= rpm <= 10_000:
        raise ConfigError("sinks", "readings_per_message", rpm,
                          "expected an integer 1-10000 (1: one reading per message; more: a JSON array)")
    out: dict[str, Any] = {"url": url, "exchange": exchange, "username": username, "password_file": pw_file,
                           "password_env": pw_env, "content_type": ctype, "readings_per_message": rpm}
    for key, default, lo, hi in (("connect_timeout", 10.0, 0.1, 300), ("confirm_timeout", 30.0, 0.1, 3600),
                                 ("heartbeat", 30, 0, 3600)):
        v = options.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError("sinks", key, v, f"expected seconds {lo:g}-{hi:g}")
        out[key] = v
    cq = options.get("command_queue", "")
    if not isinstance(cq, str) or len(cq) > 255 or (cq and (not set(cq) <= _NAME_OK or cq.startswith("amq."))):
        raise ConfigError("sinks", "command_queue", cq,
                          "expected a queue name, 1-255 of A-Z a-z 0-9 - _ . : (not amq.*); empty: no commands")
    out["command_queue"] = cq
    prefetch = options.get("command_prefetch", 16)
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or not 1 <= prefetch <= 1000:
        raise ConfigError("sinks", "command_prefetch", prefetch, "expected an integer 1-1000 (commands run at once)")
    out["command_prefetch"] = prefetch
    if not isinstance(out["heartbeat"], int):
        raise ConfigError("sinks", "heartbeat", out["heartbeat"], "expected whole seconds 0-3600 (0: off)")
    out.update(validate_tls(options))
    for key in TLS_KEYS:
        if out[key] and parts.scheme != "amqps":
            raise ConfigError("sinks", key, out[key], "TLS options need an amqps:// url")
    return out


def _redact_url(url: str) -> str:
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "<redacted>"
    cred = "***@" if (p.username or p.password) else ""
    return f"{p.scheme}://{cred}{host}{port}{p.path}"


def message_id(e: Event, repeat: int = 0) -> str:
    """The reading's id for de-duplication: <device>/<boot>/<seq>/<stream>
    (`#k` appended for the k-th repeat of one stream in one message)."""
    base = f"{e.device}/{e.boot}/{e.seq}/{e.stream}"
    return base if not repeat else f"{base}#{repeat}"


def routing_key(site: str, e: Event) -> str:
    return f"{site}.{e.device}.{e.stream}"


def _as_dict(e: Event) -> dict[str, Any]:
    d: dict[str, Any] = {"id": e.id, "device": e.device, "stream": e.stream, "value": e.value, "ts": e.ts,
                         "boot": e.boot, "seq": e.seq}
    if e.error is not None:
        d["error"] = e.error
    return d


class Sink(JournalSink):
    def __init__(self, table: dict[str, Any], journal: JournalReader) -> None:
        super().__init__(table, journal)
        self.url: str = table["url"]
        self.exchange_name: str = table["exchange"]
        self.site: str = table.get("site", "edgewire")
        self.username: str = table["username"]
        self.password_file: str = table["password_file"]
        self.password_env: str = table["password_env"]
        self.content_type: str = table["content_type"]
        self.readings_per_message: int = table["readings_per_message"]
        self.connect_timeout: float = table["connect_timeout"]
        self.confirm_timeout: float = table["confirm_timeout"]
        self.heartbeat: int = table["heartbeat"]
        self.tls_options = {k: table.get(k, "") for k in TLS_KEYS}
        self._ssl: Any = None   # ssl.SSLContext for amqps, built at start
        self.published_messages = 0
        self.connects = 0
        self._secrets: list[str] = []
        self._password: str | None = None
        self._conn: Any = None
        self._exchange: Any = None
        self._raw: Any = None   # the aiormq channel under the aio-pika one (publishing)
        self._ready: tuple[list[Entry], list[tuple[str, bytes, Any]]] | None = None
        self.command_queue: str = table["command_queue"]
        self.command_prefetch: int = table["command_prefetch"]
        self.commands = {"received": 0, "answered": 0, "refused": 0, "no_reply_to": 0, "consumer_connects": 0}
        self.commands_error = ""
        self._cmd_task: asyncio.Task[None] | None = None
        self._cmd_tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        import aio_pika  # noqa: F401  (fail at start, not at the first delivery, when it is not installed)

        p = urlsplit(self.url)
        if p.password:
            self._secrets.append(p.password)
        if self.password_file:
            try:
                self._password = Path(self.password_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError("sinks", "password_file", self.password_file, f"cannot be read: {e.strerror}") \
                    from None
        elif self.password_env:
            pw = os.environ.get(self.password_env)
            if pw is None:
                raise ConfigError("sinks", "password_env", self.password_env, "is not set in the environment")
            self._password = pw
        if self._password:
            self._secrets.append(self._password)
        if p.scheme == "amqps":
            self._ssl = client_context(self.tls_options)
        if self.command_queue:
            if self.gateway is None:
                raise RuntimeError("an amqp sink with a command_queue needs the gateway (build_sink(..., gateway=))")
            self._cmd_task = asyncio.get_running_loop().create_task(self._serve_commands(),
                                                                   name=f"sink-{self.name}-commands")
        # the connection is made at the first delivery: a broker that is down at start is an outage like any
        # other (the sink retries with backoff; the gateway runs)

    def _clean(self, text: str) -> str:
        text = text.replace(self.url, _redact_url(self.url))
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _amqp_url(self, role: str) -> str:
        p = urlsplit(self.url)
        netloc = p.netloc
        if self.username:
            host = netloc.rpartition("@")[2]
            netloc = f"{quote(self.username, safe='')}:{quote(self._password or '', safe='')}@{host}"
        q = dict(parse_qsl(p.query))
        q.setdefault("heartbeat", str(self.heartbeat))
        q.setdefault("name", f"edgewire {role} {self.name} ({self.site})")
        return urlunsplit((p.scheme, netloc, p.path or "/", urlencode(q), ""))

    async def _connect(self) -> Any:
        import aio_pika

        conn = await self._open_connection("sink")
        try:
            channel = await asyncio.wait_for(conn.channel(publisher_confirms=True), self.connect_timeout)
            exchange = await asyncio.wait_for(
                channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True),
                self.connect_timeout)
        except BaseException:
            await self._drop(conn)
            raise
        self.connects += 1
        log.info("sink %s: connected to %s, exchange %s", self.name, _redact_url(self.url), self.exchange_name)
        self._conn, self._exchange = conn, exchange
        self._raw = await channel.get_underlay_channel()
        return exchange

    async def _open_connection(self, role: str) -> Any:
        """aio_pika.connect(), but a connection that fails half-way is closed here: aio-pika closes an
        unclosed Connection from its __del__, outside any event loop, which leaves a coroutine never awaited."""
        import aio_pika

        conn = aio_pika.Connection(self._amqp_url(role), ssl_context=self._ssl)
        try:
            await conn.connect(timeout=self.connect_timeout)
        except BaseException:
            await self._drop(conn)
            raise
        return conn

    async def _drop(self, conn: Any) -> None:
        """Close a connection that may be dead or swallowing: never wait long."""
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), 2.0)
        except (Exception, asyncio.TimeoutError):  # it is being abandoned either way
            pass
        closed = getattr(conn, "_closed", None)   # (see _open_connection) abandoned: it counts as closed
        if isinstance(closed, asyncio.Future) and not closed.done():
            closed.set_result(True)

    def messages(self, entries: list[Entry]) -> list[tuple[str, bytes, Any]]:
        """(routing key, body, aiormq Basic.Properties) for the readings of entries, in order."""
        from aiormq import spec

        Basic = spec.Basic

        ctype = CONTENT_TYPES[self.content_type]
        out: list[tuple[str, bytes, Any]] = []
        groups: dict[str, list[tuple[Event, str]]] = {}
        site, single, as_json = self.site, self.readings_per_message == 1, self.content_type == "json"
        for entry in entries:
            seen: dict[str, int] = {}
            for e in events_of(entry):
                k = seen.get(e.stream, 0)
                seen[e.stream] = k + 1
                mid = message_id(e, k)
                if single:
                    body = e.json.encode() if as_json else msgpack.packb(_as_dict(e))
                    out.append((f"{site}.{e.device}.{e.stream}", body, Basic.Properties(
                        content_type=ctype, delivery_mode=2, message_id=mid, app_id="edgewire",
                        message_type="reading", headers={"device": e.device, "stream": e.stream, "site": site,
                                                         "boot": e.boot, "seq": e.seq, "gateway_id": e.id})))
                else:
                    groups.setdefault(routing_key(site, e), []).append((e, mid))
        for rk, items in groups.items():
            for i in range(0, len(items), self.readings_per_message):
                chunk = items[i:i + self.readings_per_message]
                first = chunk[0][0]
                if as_json:
                    body = ("[" + ",".join(e.json for e, _ in chunk) + "]").encode()
                else:
                    body = msgpack.packb([_as_dict(e) for e, _ in chunk])
                out.append((rk, body, Basic.Properties(
                    content_type=ctype, delivery_mode=2, message_id=f"{chunk[0][1]}+{len(chunk)}",
                    app_id="edgewire", message_type="readings",
                    headers={"device": first.device, "stream": first.stream, "site": site, "boot": first.boot,
                             "seq": first.seq, "gateway_id": first.id, "count": len(chunk)})))
        return out

    def prepare(self, entries: list[Entry]) -> None:
        self._ready = (entries, self.messages(entries))   # built while the previous batch waits for confirms

    async def deliver(self, entries: list[Entry]) -> None:
        ready, self._ready = self._ready, None
        msgs = ready[1] if ready is not None and ready[0] is entries else self.messages(entries)
        if not msgs:
            return
        try:
            if self._exchange is None:
                await asyncio.wait_for(self._connect(), self.connect_timeout * 3)
            ch, name = self._raw, self.exchange_name
            # Publish the whole batch, then wait for every confirm (RabbitMQ confirms in batches). aiormq
            # directly, with wait=False: each publish is queued for the connection's writer without waiting
            # for its own socket drain (aio-pika's Exchange.publish waits for each, one loop round trip per
            # message, with the channel's lock held); the confirms are what the cursor waits for.
            await asyncio.wait_for(asyncio.gather(*(ch.basic_publish(body, exchange=name, routing_key=rk,
                                                                     properties=props, wait=False)
                                                    for rk, body, props in msgs)), self.confirm_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            conn, self._conn, self._exchange, self._raw = self._conn, None, None, None
            await self._drop(conn)
            what = "no confirm within confirm_timeout" if isinstance(e, asyncio.TimeoutError) else str(e)
            raise AmqpDeliveryError(self._clean(f"{type(e).__name__}: {what}")) from None
        self.published_messages += len(msgs)

    async def close(self) -> None:
        tasks = [t for t in (self._cmd_task, *self._cmd_tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._cmd_task = None
        conn, self._conn, self._exchange, self._raw = self._conn, None, None, None
        await self._drop(conn)

    # commands from backends: the RabbitMQ RPC pattern
    async def _serve_commands(self) -> None:
        """Consume `command_queue` (declared durable) while the gateway runs;
        reconnect with backoff when the connection is lost."""
        import aio_pika

        attempt = 0
        while True:
            conn = None
            try:
                conn = await self._open_connection("commands")
                lost = asyncio.Event()
                conn.close_callbacks.add(lambda *_: lost.set())
                channel = await asyncio.wait_for(conn.channel(), self.connect_timeout)
                await channel.set_qos(prefetch_count=self.command_prefetch)
                queue = await asyncio.wait_for(channel.declare_queue(self.command_queue, durable=True),
                                               self.connect_timeout)
                async def on_message(message: Any, channel: Any = channel) -> None:
                    await self._on_command(channel, message)

                await queue.consume(on_message)
                self.commands["consumer_connects"] += 1
                self.commands_error = ""
                attempt = 0
                log.info("sink %s: taking commands from queue %s", self.name, self.command_queue)
                await lost.wait()   # the connection was lost (conn.closed() waits for close() only)
                self.commands_error = "connection lost"
            except asyncio.CancelledError:
                await self._drop(conn)
                raise
            except Exception as e:
                self.commands_error = self._clean(f"{type(e).__name__}: {e}")
                log.warning("sink %s: command queue: %s", self.name, self.commands_error)
            await self._drop(conn)
            delay = random.uniform(self.retry_min, min(self.retry_max, self.retry_min * 2 ** min(attempt, 30)))
            attempt += 1
            await asyncio.sleep(delay)

    async def _on_command(self, channel: Any, message: Any) -> None:
        t = asyncio.get_running_loop().create_task(self._command(channel, message))
        self._cmd_tasks.add(t)
        t.add_done_callback(self._cmd_tasks.discard)

    async def _command(self, channel: Any, message: Any) -> None:
        """{"device", "command", "args"?, "timeout"?, "queue"?} -> the REST route's outcome, with `status`,
        to reply_to with the same correlation_id. Acked once answered (or refused)."""
        import aio_pika

        from edgewire.gateway.command_call import call_command, failure

        self.commands["received"] += 1
        try:
            req = json.loads(message.body)
            if not isinstance(req, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            status, body = 400, failure("bad_request", f"the body is not a JSON command ({e}); nothing was sent")
        else:
            device, name = req.get("device"), req.get("command")
            timeout, queue = req.get("timeout"), req.get("queue", False)
            unknown = sorted(set(req) - {"device", "command", "args", "timeout", "queue"})
            if unknown:
                status, body = 400, failure("bad_request", f"unknown fields {unknown}; nothing was sent")
            elif not isinstance(device, str) or not isinstance(name, str):
                status, body = 400, failure("bad_request", "device and command must be strings; nothing was sent")
            elif timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
                status, body = 400, failure("bad_request", f"timeout {timeout!r} is not a number of seconds")
            elif not isinstance(queue, bool):
                status, body = 400, failure("bad_request", f"queue {queue!r} is not true or false")
            else:
                status, body = await call_command(self.gateway.core, device, name, req.get("args"),
                                                  timeout=None if timeout is None else float(timeout), queue=queue)
        if status != 200:
            self.commands["refused"] += 1
        body["status"] = status
        try:
            if message.reply_to:
                await channel.default_exchange.publish(
                    aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                                     correlation_id=message.correlation_id, app_id="edgewire", type="command-result"),
                    routing_key=message.reply_to)
                self.commands["answered"] += 1
            else:
                self.commands["no_reply_to"] += 1
            await message.ack()
        except Exception as e:  # the channel went away: the unacked command is redelivered to a consumer
            self.commands_error = self._clean(f"{type(e).__name__}: {e}")

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(exchange=self.exchange_name, url=_redact_url(self.url), published_messages=self.published_messages,
                   connects=self.connects, connected=self._exchange is not None)
        if self.command_queue:
            out["commands"] = {"queue": self.command_queue, **self.commands, "last_error": self.commands_error}
        return out
