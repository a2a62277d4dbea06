"""Opens idle TCP connections to a host:port and holds them until stdin
closes: the hostile or careless client of issue #6 item 4, in its own process
so the test's own file limit does not matter.

    python -m tests.gateway.idleflood --port P --count 550 --sources 127.0.0.2,127.0.0.3

Each connection binds to the next source address in turn (all of 127/8 is
loopback on Linux), connects without blocking and never sends a byte. Prints
"held N" once every connect has finished (or failed), then waits."""
from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--sources", default="127.0.0.1")
    a = p.parse_args()
    sources = a.sources.split(",")
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(a.count):
        s = socket.socket()
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        s.connect_ex((a.host, a.port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    pending = len(socks)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            sel.unregister(key.fileobj)
            pending -= 1
    print(f"held {len(socks) - pending}", flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
