"""A real browser for the tests: Debian's headless Chromium, driven over the DevTools
protocol with the websockets package (no Selenium, no Playwright download), and a tiny
HTTP server for the test page, on origins of its own.

    with launch_chromium(profile_dir) as browser, browser.page(url) as page:
        page.evaluate("chatTest({...})")   # awaited, returned by value
        page.log                            # what Chromium said: CORS refusals land here

Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

PAGE_DIR = Path(__file__).parent / "browser"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class CDPError(Exception):
    pass


class DevTools:
    """One DevTools connection; events that arrive while waiting are kept in ``events``."""

    def __init__(self, url: str) -> None:
        self._opened = connect(url, max_size=None, open_timeout=15)
        self.ws: ClientConnection = self._opened.__enter__()
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            data = self._recv(deadline, method)
            if data.get("id") == ident:
                if "error" in data:
                    raise CDPError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result
            self.events.append(data)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._recv(deadline, method))

    def _recv(self, deadline: float, what: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"Chromium did not answer {what} in time")
        data: dict[str, Any] = json.loads(self.ws.recv(timeout=remaining))
        return data

    def close(self) -> None:
        self._opened.__exit__(None, None, None)


class Page:
    def __init__(self, devtools: DevTools, target: str, session: str) -> None:
        self.devtools = devtools
        self.target = target
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self.devtools.send(method, params, session=self.session, **kw)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.devtools.wait_event("Page.loadEventFired", self.session)

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of ``expression`` (a promise is awaited), as JSON-able data."""
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            raise CDPError(f"the page threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    @property
    def log(self) -> list[str]:
        """What the browser logged for this page (console errors, refused requests)."""
        lines = []
        for event in self.devtools.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event.get("method") == "Log.entryAdded":
                lines.append(params["entry"].get("text", ""))
            elif event.get("method") == "Runtime.consoleAPICalled":
                lines.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
            elif event.get("method") == "Runtime.exceptionThrown":
                lines.append(params["exceptionDetails"].get("text", ""))
        return lines


class Chromium:
    def __init__(self, proc: subprocess.Popen[bytes], devtools: DevTools) -> None:
        self.proc = proc
        self.devtools = devtools

    @contextlib.contextmanager
    def page(self, url: str) -> Iterator[Page]:
        target = self.devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.devtools.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        page = Page(self.devtools, target, session)
        try:
            for domain in ("Page", "Runtime", "Log"):
                page.send(f"{domain}.enable")
            page.goto(url)
            yield page
        finally:
            self.devtools.send("Target.closeTarget", {"targetId": target})


@contextlib.contextmanager
def launch_chromium(executable: str, profile: Path) -> Iterator[Chromium]:
    """Start headless Chromium with a fresh profile; stop it (and its children) after."""
    log = profile.parent / "chromium.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        # Chromium writes the port it chose (and the browser's path) into the profile.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Chromium did not start: {log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        devtools = DevTools(f"ws://127.0.0.1:{port}{path}")
        try:
            yield Chromium(proc, devtools)
        finally:
            devtools.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """Serve ``tests/compat/browser/`` on 127.0.0.1; yields the origin (``http://…:PORT``)."""
    handler = partial(_QuietHandler, directory=str(PAGE_DIR))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
