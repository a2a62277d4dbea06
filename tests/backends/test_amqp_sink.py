"""The amqp sink against the real RabbitMQ: what an independent pika consumer
gets is what devices published (counted by an independent MQTT subscriber),
in the SSE stream's shape, with ids to de-duplicate by; nothing missing
after RabbitMQ is cut off mid-stream (the gateway SIGKILLed:
test_backends_crash.py), and a backend that never confirms shows as lag
without slowing live clients or the other sink."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import msgpack
import pytest

from edgewire.gateway.config import GatewayConfig, GrpcConfig, SiteConfig, parse_config
from edgewire.gateway.grpcapi import gateway_pb2 as pb
from edgewire.gateway.grpcapi import gateway_pb2_grpc as pbg
from edgewire.gateway.errors import ConfigError
from edgewire.gateway.service import Gateway
from edgewire.sim.proxy import ProxyProcess
from tests.backends.conftest import AMQP_URL, PikaQueue, via
from tests.gateway.conftest import Publisher, gateway_config, read_readings, wait_for
from tests.gateway.test_journal_crash import Recorder
from tests.support.broker import Mosquitto


def amqp_sink(exchange: str, url: str = AMQP_URL, **extra: Any) -> dict[str, Any]:
    return {"type": "amqp", "name": "rabbit", "url": url, "exchange": exchange, **extra}


def readings_of(rec: Recorder) -> set[tuple[str, int, int, str, Any]]:
    with rec.lock:
        return {(d, b, s, st, v) for (d, b, s), rs in rec.seen.items() for st, v in rs}


def readings_at(q: PikaQueue) -> set[tuple[str, int, int, str, Any]]:
    out = set()
    for _, _, body in q.unique().values():
        r = json.loads(body)
        out.add((r["device"], r["boot"], r["seq"], r["stream"], r["value"]))
    return out


async def test_every_reading_reaches_rabbitmq_as_sse_shows_it(broker: Mosquitto, publisher: Publisher,
                                                              exchange_name: str, pika_queue: PikaQueue) -> None:
    rec = Recorder(broker.port)
    cfg = gateway_config(broker, gateway=SiteConfig(site="site-a")).replace(sinks=(amqp_sink(exchange_name),))
    try:
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as http:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            async with http.get(gw.http_url + "/api/v1/stream") as sse:
                for seq in range(1, 21):
                    for dev in ("sensor-17", "pump_2"):
                        readings = [["t", seq + 0.5, 0], ["h", -seq, 0]]
                        if seq == 3:
                            readings.append(["err", None, 0, "sensor timeout"])
                        await asyncio.to_thread(publisher.telemetry, dev, 7, seq, readings)
                live = await read_readings(sse, 82)
            await wait_for(lambda: len(readings_of(rec)) == 82, timeout=30, what="the MQTT subscriber")
            await wait_for(lambda: pika_queue.count() >= 82, timeout=30, what="82 messages at the pika consumer")
            await wait_for(lambda: gw.sinks["rabbit"].cursor == gw.journal.last_id, timeout=30, what="the cursor")
            async with http.get(gw.http_url + "/api/v1/sinks") as r:
                listed = (await r.json())["sinks"]
    finally:
        rec.close()
    # the consumer got what the devices published, each reading once
    assert readings_at(pika_queue) == readings_of(rec)
    assert pika_queue.count() == len(pika_queue.unique()) == 82
    # the body is the reading exactly as the SSE stream shows it
    by_id = {e["id"]: e for e in live}
    for key, props, body in pika_queue.messages:
        r = json.loads(body)
        assert r == by_id[r["id"]]
        assert key == f"site-a.{r['device']}.{r['stream']}"
        assert props.message_id == f"{r['device']}/{r['boot']}/{r['seq']}/{r['stream']}"
        assert props.content_type == "application/json" and props.delivery_mode == 2
        assert props.headers["device"] == r["device"] and props.headers["stream"] == r["stream"]
        assert props.headers["site"] == "site-a" and props.headers["gateway_id"] == r["id"]
    assert sum(1 for e in live if e.get("error") == "sensor timeout") == 2
    assert listed[0]["name"] == "rabbit" and listed[0]["lag"] == 0 and listed[0]["delivered_readings"] == 82
    assert listed[0]["last_error"] == "" and "guest" not in json.dumps(listed)  # credentials never shown


async def test_msgpack_and_batched_messages(broker: Mosquitto, publisher: Publisher, exchange_name: str,
                                            pika_queue: PikaQueue) -> None:
    cfg = gateway_config(broker, gateway=SiteConfig(site="b")).replace(sinks=(
        amqp_sink(exchange_name, content_type="msgpack", readings_per_message=50),))
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        for seq in range(1, 31):
            await asyncio.to_thread(publisher.telemetry, "dev-b", 1, seq, [["t", seq, 0], ["h", seq * 2, 0]])
        await wait_for(lambda: gw.sinks["rabbit"].cursor == gw.journal.last_id == 60, timeout=30, what="the cursor")
        await wait_for(lambda: sum(len(msgpack.unpackb(b)) for _, _, b in pika_queue.messages) >= 60, timeout=30,
                       what="60 readings at the consumer")
    got = []
    for key, props, body in pika_queue.messages:
        items = msgpack.unpackb(body)
        assert props.content_type == "application/msgpack" and props.headers["count"] == len(items) <= 50
        assert {f"b.{r['device']}.{r['stream']}" for r in items} == {key}   # a batch shares its routing key
        got += [(r["stream"], r["seq"], r["value"]) for r in items]
    assert sorted(got) == sorted([("t", s, s) for s in range(1, 31)] + [("h", s, s * 2) for s in range(1, 31)])


async def publish_through(publisher: Publisher, device: str, first: int, seconds: float, at_least: int) -> int:
    """Publish one reading per message from seq `first` on, for `seconds` (about 20 a second) and at
    least `at_least` messages; -> the last seq."""
    end = time.monotonic() + seconds
    seq = first - 1
    while seq < first - 1 + at_least or time.monotonic() < end:
        seq += 1
        await asyncio.to_thread(publisher.telemetry, device, 1, seq, [["t", seq, 0]])
        if seconds:
            await asyncio.sleep(0.05)   # pacing: a steady stream through the outage, not a wait
    return seq


@pytest.mark.parametrize("outage_s", [0, pytest.param(30, marks=pytest.mark.slow)])
@pytest.mark.timeout(300)
async def test_rabbitmq_cut_off_mid_stream_loses_nothing(broker: Mosquitto, publisher: Publisher,
                                                         exchange_name: str, pika_queue: PikaQueue,
                                                         amqp_proxy: ProxyProcess, outage_s: int) -> None:
    """RabbitMQ unreachable (the proxy resets every connection and refuses new ones) while devices
    go on publishing: for as long as it takes the sink to fail and back off, and for the issue's 30 s
    under the default backoff (0.5-30 s); then restored: every reading reaches the queue."""
    rec = Recorder(broker.port)
    # the quick case: short backoff so that the test does not wait out the default 0.5-30 s retries
    quick = {} if outage_s else {"retry_min": 0.05, "retry_max": 0.5, "connect_timeout": 2.0}
    cfg = gateway_config(broker).replace(sinks=(amqp_sink(exchange_name, via(amqp_proxy.port), batch=20, **quick),))
    try:
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            sink = gw.sinks["rabbit"]
            for seq in range(1, 51):
                await asyncio.to_thread(publisher.telemetry, "dev-cut", 1, seq, [["t", seq, 0]])
            await wait_for(lambda: pika_queue.count() >= 20, timeout=30, what="the first readings at the consumer")
            amqp_proxy.outage(True)   # RabbitMQ unreachable: connections reset, new ones refused
            last = await publish_through(publisher, "dev-cut", 51, outage_s, 100)
            await wait_for(lambda: sink.failures >= 3 and sink.state == "retrying", timeout=60,
                           what="the sink to fail and back off")
            assert sink.stats()["lag"] > 0 and sink.last_error and sink.lag_seconds() >= outage_s * 0.9
            amqp_proxy.outage(False)
            await wait_for(lambda: sink.cursor == gw.journal.last_id == last, timeout=120,
                           what="the sink to catch up")
            await wait_for(lambda: len(pika_queue.unique()) >= last, timeout=30, what="every reading at the consumer")
            assert sink.connects >= 2 and sink.state == "running"
    finally:
        rec.close()
    assert readings_at(pika_queue) == readings_of(rec)
    assert len(readings_of(rec)) == last >= 150 + outage_s * 10


async def test_a_backend_that_never_confirms_lags_visibly_without_slowing_live_clients(
        tmp_path: Path, broker: Mosquitto, publisher: Publisher, exchange_name: str, pika_queue: PikaQueue,
        amqp_proxy: ProxyProcess) -> None:
    archive = tmp_path / "archive.jsonl"
    # confirm_timeout 1 s instead of 30 so that the test sees the sink give up and retry
    cfg = gateway_config(broker, grpc=GrpcConfig(listen="127.0.0.1:0")).replace(sinks=(
        amqp_sink(exchange_name, via(amqp_proxy.port), confirm_timeout=1.0, connect_timeout=1.0,
                  retry_min=0.05, retry_max=0.3),
        {"type": "jsonl", "name": "archive", "path": str(archive)}))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as http:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        sink = gw.sinks["rabbit"]
        await asyncio.to_thread(publisher.telemetry, "dev-slow", 1, 1, [["t", 1, 0]])
        await wait_for(lambda: sink.cursor == 1 and pika_queue.count() == 1, timeout=30, what="the first reading")
        amqp_proxy.rule(None, {"partition": "drop"})   # connected, and from now on nothing passes: no confirms
        async with http.get(gw.http_url + "/api/v1/stream?device=dev-slow") as sse:
            for seq in range(2, 42):
                await asyncio.to_thread(publisher.telemetry, "dev-slow", 1, seq, [["t", seq, 0]])
            live = await read_readings(sse, 40)   # live clients get everything meanwhile
        assert [e["seq"] for e in live] == list(range(2, 42))
        await wait_for(lambda: gw.sinks["archive"].cursor == 41, timeout=30, what="the other sink")

        async def lagging() -> Any:
            async with http.get(gw.http_url + "/api/v1/sinks") as r:
                s = {x["name"]: x for x in (await r.json())["sinks"]}["rabbit"]
            return s if s["failures"] >= 1 and s["lag_seconds"] > 0 else None

        s = await wait_for(lagging, timeout=60, what="the lag to show")
        assert s["lag"] == 40 and s["cursor"] == 1 and s["state"] == "retrying"
        assert "confirm" in s["last_error"] or "Error" in s["last_error"]
        # the gateway's gRPC service shows the same (ListSinks: the same source as GET /api/v1/sinks)
        assert gw.grpc is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc.port}") as ch:
            listed = {x.name: x for x in (await pbg.GatewayStub(ch).ListSinks(pb.ListSinksRequest())).sinks}
        g = listed["rabbit"]
        assert (g.type, g.state, g.cursor, g.lag) == ("amqp", "retrying", 1, 40)
        assert g.lag_seconds > 0 and g.failures >= 1 and g.last_error and g.HasField("last_delivery")
        assert json.loads(g.stats_json)["exchange"] == exchange_name and "guest" not in g.stats_json
        a = listed["archive"]
        assert (a.type, a.state, a.cursor, a.lag, a.delivered_readings) == ("jsonl", "running", 41, 0, 41)
        amqp_proxy.rule(None, {"partition": None})
        await wait_for(lambda: sink.cursor == 41, timeout=60, what="the sink to catch up")
    await wait_for(lambda: len(pika_queue.unique()) >= 41, timeout=30, what="41 readings at the consumer")
    assert len(pika_queue.unique()) == 41
    assert [json.loads(x)["seq"] for x in archive.read_text().splitlines()] == list(range(1, 42))


def test_the_minimal_config_of_the_issue_is_complete() -> None:
    cfg = parse_config('[[sinks]]\ntype = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:5672/"\nexchange = "edgewire"\n')
    s = dict(cfg.sinks[0])
    assert s["content_type"] == "json" and s["readings_per_message"] == 1 and s["site"] == cfg.gateway.site
    assert cfg.gateway.site and "." not in cfg.gateway.site


def test_amqp_config_is_validated_before_any_io(tmp_path: Path) -> None:
    good = {"type": "amqp", "url": "amqp://127.0.0.1/", "exchange": "x"}
    for change, key in [({"url": "http://x/"}, "url"), ({"url": 5}, "url"), ({"exchange": "amq.topic"}, "exchange"),
                        ({"exchange": "a b"}, "exchange"), ({"content_type": "xml"}, "content_type"),
                        ({"readings_per_message": 0}, "readings_per_message"), ({"confirm_timeout": -1},
                                                                                  "confirm_timeout"),
                        ({"password_file": "/x"}, "username"), ({"colour": 1}, "colour"),
                        ({"url": "amqp://u:p@h/", "username": "u"}, "username"),
                        ({"username": "u", "password_file": "/x", "password_env": "X"}, "password_env")]:
        with pytest.raises(ConfigError, match=key):
            GatewayConfig(sinks=({**good, **change},))
    with pytest.raises(ConfigError, match="site"):
        parse_config('[gateway]\nsite = "a.b"\n')
    # a password in a bad url never appears in the error
    with pytest.raises(ConfigError) as e:
        GatewayConfig(sinks=({**good, "url": "amqp://u:s3cret@:99999/"},))
    assert "s3cret" not in str(e.value)
    # `edgewire gateway --check` says the same, before any I/O
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sinks]]\ntype = "amqp"\nurl = "amqp://127.0.0.1/"\ncontent_type = "xml"\n')
    out = subprocess.run([str(Path(sys.executable).parent / "edgewire"), "gateway", "--check", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "content_type" in out.stderr + out.stdout


async def test_credentials_from_a_file_or_the_environment_never_logged(
        tmp_path: Path, broker: Mosquitto, publisher: Publisher, exchange_name: str, pika_queue: PikaQueue,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from urllib.parse import unquote, urlsplit

    p = urlsplit(AMQP_URL)
    user, password = unquote(p.username or "guest"), unquote(p.password or "guest")
    bare = AMQP_URL.replace(p.netloc, p.netloc.rpartition("@")[2])
    secret = tmp_path / "amqp.password"
    secret.write_text(password + "\n")
    monkeypatch.setenv("EW_TEST_AMQP_PW", password)
    for how, extra in (("file", {"password_file": str(secret)}), ("env", {"password_env": "EW_TEST_AMQP_PW"})):
        cfg = gateway_config(broker).replace(sinks=(amqp_sink(exchange_name, bare, name=how, username=user, **extra),))
        async with Gateway(cfg) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected(5)
            seq = 1 if how == "file" else 2
            await asyncio.to_thread(publisher.telemetry, "dev-cred", 1, seq, [["t", seq, 0]])
            await wait_for(lambda: gw.sinks[how].cursor == 1, timeout=30, what="the cursor")
    await wait_for(lambda: pika_queue.count() >= 2, timeout=30, what="both readings")
    # a wrong password: the sink retries, and its error never shows the password
    monkeypatch.setenv("EW_TEST_AMQP_PW", "wr0ng-Pa55word")
    cfg = gateway_config(broker).replace(sinks=(amqp_sink(exchange_name, bare, name="wrong", username=user,
                                                          password_env="EW_TEST_AMQP_PW", retry_min=0.05,
                                                          retry_max=0.2),))
    async with Gateway(cfg) as gw:
        assert gw.mqtt is not None
        await gw.mqtt.wait_connected(5)
        await asyncio.to_thread(publisher.telemetry, "dev-cred", 1, 3, [["t", 3, 0]])
        await wait_for(lambda: gw.sinks["wrong"].failures >= 1, timeout=30, what="a refused login")
        shown = json.dumps(gw.stats()) + json.dumps(gw.health()[1])
    assert "wr0ng-Pa55word" not in shown + caplog.text
    assert os.environ["EW_TEST_AMQP_PW"] not in caplog.text
