"""Headless Debian Chromium driven over the DevTools protocol, for dashboard tests.

No browser download and no driver: the test starts /usr/bin/chromium with a
private profile and talks CDP over its WebSocket (the `websockets` package)."""
from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.broker import terminate

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("chromium is not installed: apt-get install chromium (make test does it as root)")
    return path


class Browser:
    """One headless Chromium with one page; `evaluate` runs JavaScript in it."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="ew-chromium-")
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._ids = itertools.count(1)
        self._drainer: threading.Thread | None = None
        self.ws: ClientConnection | None = None
        try:
            self.ws = connect(self._page_ws(), max_size=None, open_timeout=10)
        except BaseException:
            self.close()
            raise

    def _page_ws(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 20
        browser_ws = None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with {self.proc.returncode} before DevTools was ready")
                continue
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                browser_ws = m.group(1)
                break
        if browser_ws is None:
            raise RuntimeError("chromium did not open DevTools within 20 s")
        # Keep draining stderr so chromium never blocks on a full pipe.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        port = re.search(r":(\d+)/", browser_ws)
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        if not pages:
            raise RuntimeError("chromium has no page target")
        return str(pages[0]["webSocketDebuggerUrl"])

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def goto(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.evaluate(expression)
            if last:
                return last
            time.sleep(0.1)
        raise TimeoutError(f"{expression!r} stayed falsy for {timeout}s (last: {last!r})")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # the browser may already be gone
                pass
        terminate(self.proc)
        if self._drainer is not None:
            self._drainer.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
