"""A hand-made device: paho-mqtt speaking the wire protocol through
edgewire.wire, run as a subprocess that a test can SIGKILL.

    python -m tests.gateway.handdevice --port P --id dev-01 --boot 7 --qos 0,1,2 --count 10

It connects with its last will, publishes its birth, then `count` telemetry
messages per QoS listed (stream "q<qos>", value = sequence number), prints
"published N" and then answers commands until killed: ping -> "pong",
echo -> its args, anything else -> an error result."""
from __future__ import annotations

import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt

from edgewire import wire


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--boot", type=int, default=1)
    p.add_argument("--conn", type=int, default=1)
    p.add_argument("--qos", default="0,1,2")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.0)
    a = p.parse_args()
    qoses = [int(q) for q in a.qos.split(",") if q]
    dev = a.id
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev, clean_session=True)
    c.will_set(wire.topic(dev, "status"), wire.encode_death(dev, a.boot, a.conn, "lost"), qos=1, retain=True)
    connected = threading.Event()

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None) -> None:
        client.subscribe(wire.topic(dev, "cmd"), qos=1)
        connected.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            cmd = wire.decode_command(msg.payload)
        except wire.ProtocolError as e:
            print("bad command:", e, flush=True)
            return
        if cmd["name"] == "ping":
            res = wire.encode_result(cmd["id"], True, "pong")
        elif cmd["name"] == "echo":
            res = wire.encode_result(cmd["id"], True, cmd["args"])
        else:
            res = wire.encode_result(cmd["id"], False, error="unknown command '%s'" % cmd["name"])
        client.publish(wire.topic(dev, "result"), res, qos=1)

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", a.port, keepalive=5)
    c.loop_start()
    if not connected.wait(10):
        print("no connection", flush=True)
        return 1
    streams = {f"q{q}": {"u": "n", "q": q, "i": 0} for q in qoses}
    c.publish(wire.topic(dev, "status"),
              wire.encode_birth(dev, a.boot, a.conn, 0, "hand-1.0", "paho", streams), qos=1, retain=True).wait_for_publish(10)
    seq = 0
    t0 = time.monotonic()
    infos = []
    for i in range(a.count):
        for q in qoses:
            seq += 1
            up = int((time.monotonic() - t0) * 1000)
            payload = wire.encode_telemetry(dev, a.boot, seq, up, [[f"q{q}", seq, up]])
            infos.append(c.publish(wire.topic(dev, "telemetry"), payload, qos=q))
        if a.interval:
            time.sleep(a.interval)
    for info in infos:
        info.wait_for_publish(10)
    print(f"published {seq}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
