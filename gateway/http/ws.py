"""GET /api/v1/ws: a JSON WebSocket for live readings and commands.

Client -> gateway (text frames, one JSON object each; `ref` is echoed back):
  {"op": "subscribe", "filter": "dev-01/#", "after": 123?, "ref": ...}
  {"op": "unsubscribe", "filter": "dev-01/#", "ref": ...}
  {"op": "command", "device": "dev-01", "name": "ping", "args": ..., "timeout": 5?, "queue": false?, "ref": ...}
Gateway -> client:
  {"type": "hello", "last_id": N}
  {"type": "subscribed" | "unsubscribed", "filter": ..., "count": n, "last_id": N, "ref": ...}
  {"type": "readings", "events": [{"id", "device", "stream", "value", "ts", "boot", "seq"}, ...]}
  {"type": "gap", "after", "first_available", "missed", "reason"}  (resume older than retention)
  {"type": "result", "ref", "device", "command", "id", "ok", "value", "error", "elapsed"}
  {"type": "error", "error": code, "message": ..., "ref": ...}

Readings are batched: one frame carries every queued event (up to [http]
ws_batch). `after` is a journal id, valid across gateway restarts; the
events after it come in id order, none twice, also when several filters
are subscribed with different `after` (the stream rewinds to the oldest and
merges). A client too slow for the live stream is served from the journal. All output goes through one sender task, so frames never interleave.
Control replies wait in a bounded queue; a client that lets it overflow
(never reads) is disconnected with close code 1008."""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from aiohttp import WSMsgType, web

from edgewire.gateway.errors import CommandBusy, CommandOffline, CommandRejected, CommandTimeout, MqttError
from edgewire.gateway.auth import Principal
from edgewire.gateway.http.access import PRINCIPAL
from edgewire.gateway.http.common import (ACCESS, GATEWAY, BadJson, GatewayView, check_filter, dumps, live_refusal,
                                          loads)
from edgewire.gateway.hub import HubFull, Subscription, readings_frame

log = logging.getLogger("edgewire.gateway.http.ws")

MAX_CONTROL = 1024        # queued control replies per connection
MAX_COMMANDS = 64         # commands in flight per connection


class _Session:
    def __init__(self, gw: GatewayView, ws: web.WebSocketResponse, sub: Subscription,
                 who: Principal, access: Any) -> None:
        self.gw = gw
        self.who = who
        self.access = access
        self.ws = ws
        self.sub = sub
        self.control: collections.deque[str] = collections.deque()
        self.commands: set[asyncio.Task[None]] = set()
        self.overflowed = False
        self.transport: asyncio.BaseTransport | None = None
        self.closing: asyncio.Task[bool] | None = None

    def revoked(self) -> None:
        """The token was revoked (a reload): close with 1008, policy."""
        self.closing = asyncio.get_running_loop().create_task(self.ws.close(code=1008, message=b"token revoked"))

    def reply(self, obj: dict[str, Any]) -> None:
        if len(self.control) >= MAX_CONTROL:
            self.overflowed = True
        else:
            self.control.append(dumps(obj))
        self.sub.wake()

    def err(self, code: str, message: str, ref: Any = None) -> None:
        self.reply({"type": "error", "error": code, "message": message, "ref": ref})

    async def sender(self) -> None:
        try:
            await self._sender()
        except TimeoutError:
            # a client that stops reading (or vanished) is cut after write_timeout
            log.info("WebSocket client %s read nothing for %gs: closed", self.sub.peer,
                     self.gw.config.http.write_timeout)
            if self.transport is not None:
                self.transport.abort()

    async def _sender(self) -> None:
        sub, ws = self.sub, self.ws
        batch = self.gw.config.http.ws_batch
        write_timeout = self.gw.config.http.write_timeout

        async def send(text: str) -> None:
            async with asyncio.timeout(write_timeout):
                await ws.send_str(text)

        while not sub.closed and not ws.closed:
            await sub.wait()
            if self.overflowed:
                await ws.close(code=1008, message=b"control replies overflowed: the client does not read")
                return
            while self.control:
                await send(self.control.popleft())
            events = await sub.next(batch)
            gap = sub.take_gap()
            if gap is not None:
                await send('{"type":"gap",' + gap.json[1:])
            if events:
                await send(readings_frame(events))

    def handle(self, text: str) -> None:
        try:
            msg = loads(text, "message")
        except BadJson as e:
            self.err("bad_request", str(e))
            return
        if not isinstance(msg, dict):
            self.err("bad_request", "expected a JSON object with an 'op'")
            return
        op, ref = msg.get("op"), msg.get("ref")
        hub = self.gw.core.hub
        if op in ("subscribe", "unsubscribe"):
            flt = msg.get("filter", "#")
            try:
                check_filter(flt)
                if op == "subscribe":
                    after = msg.get("after")
                    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
                        self.err("bad_request", f"after {after!r} is not an event id", ref)
                        return
                    if flt not in self.sub.filters:
                        cap = self.gw.config.http.max_filters
                        if len(self.sub.filters) >= cap:
                            self.err("too_many_filters", f"this connection holds {cap} filters already "
                                     "([http] max_filters); unsubscribe one first", ref)
                            return
                        # with `after`, the stream rewinds: the filter's events after that id,
                        # merged in id order with what the held filters have not delivered yet
                        self.sub.add_filter(flt, after)
                elif not self.sub.remove_filter(flt):
                    self.err("not_subscribed", f"filter {flt[:140]!r} is not subscribed on this connection; "
                             f"nothing changed ({len(self.sub.filters)} filters held)", ref)
                    return
            except ValueError as e:
                self.err("bad_request", str(e), ref)
                return
            # the filter and the count, not the whole list: replies stay small
            self.reply({"type": op + "d", "filter": flt, "count": len(self.sub.filters),
                        "last_id": hub.last_id, "ref": ref})
        elif op == "command":
            # the token as the store knows it now: a revoked one (SIGHUP) commands no more
            who = self.access.current(self.who)
            if who is None or not who.allows("command"):
                self.err("unauthorized" if who is None else "forbidden",
                         "the token of this connection was revoked" if who is None else
                         f"token {who.name!r} has scope {who.scope!r}; commands need 'command'; nothing was sent",
                         ref)
                return
            if len(self.commands) >= MAX_COMMANDS:
                self.err("busy", f"{MAX_COMMANDS} commands of this connection are still pending", ref)
                return
            task = asyncio.get_running_loop().create_task(self._command(msg, ref), name="ws-command")
            self.commands.add(task)
            task.add_done_callback(self.commands.discard)
        else:
            self.err("bad_request", f"unknown op {str(op)[:40]!r} (subscribe, unsubscribe, command)", ref)

    async def _command(self, msg: dict[str, Any], ref: Any) -> None:
        device, name, timeout, queue = msg.get("device"), msg.get("name"), msg.get("timeout"), msg.get("queue", False)
        commands = self.gw.core.commands
        try:
            if not isinstance(device, str) or not isinstance(name, str):
                raise CommandRejected("a command needs 'device' and 'name' strings")
            if not isinstance(queue, bool):
                raise CommandRejected(f"queue {queue!r} is not true or false")
            commands.check(device, name, msg.get("args"), timeout)
            if self.gw.core.registry.get(device) is None:
                self.err("unknown_device", f"no device {device!r} has been seen; nothing was sent", ref)
                return
            res = await commands.send(device, name, msg.get("args"), timeout=timeout, queue=queue)
        except CommandRejected as e:
            self.err("bad_request", str(e), ref)
        except CommandOffline as e:
            self.err("device_offline", str(e), ref)
        except CommandBusy as e:
            self.err("busy", str(e), ref)
        except CommandTimeout as e:
            self.err("timeout", str(e), ref)
        except MqttError as e:
            self.err("broker_unavailable", f"command not sent: {e}", ref)
        else:
            out = res.as_dict()
            out["type"] = "result"
            out["ref"] = ref
            self.reply(out)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    gw = request.app[GATEWAY]
    ws = web.WebSocketResponse(compress=False, max_msg_size=gw.config.http.ws_max_message,
                               heartbeat=gw.config.http.heartbeat)
    await ws.prepare(request)
    hub = gw.core.hub
    peer = request.remote or ""
    try:
        refusal = live_refusal(gw, peer)
        if refusal is not None:
            raise HubFull(refusal)
        sub = hub.open([], kind="ws", peer=peer)
    except HubFull as e:
        await ws.close(code=1013, message=str(e).encode()[:120])
        return ws
    session = _Session(gw, ws, sub, request[PRINCIPAL], request.app[ACCESS])
    # a reload that revokes the token closes the connection (1008, policy)
    forget = session.access.track(session.who, session.revoked)
    session.transport = request.transport
    session.reply({"type": "hello", "last_id": hub.last_id})
    sender = asyncio.get_running_loop().create_task(session.sender(), name="ws-sender")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                session.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.err("bad_request", "binary frames are not understood; send JSON text")
            if sender.done():
                break
    except ConnectionError:
        pass
    finally:
        forget()
        hub.close(sub)
        for t in list(session.commands):
            t.cancel()
        sender.cancel()
        try:
            await sender
        except (asyncio.CancelledError, ConnectionError):
            pass
        if not ws.closed:
            await ws.close()
    return ws
