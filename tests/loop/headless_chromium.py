"""Debian's `chromium`, headless, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

Enough of a browser for dashboard tests: open a page, wait until its app has rendered something, click, read the
text and take screenshots, all in one browser session. No driver or websocket package is needed: commands and
replies are NUL-terminated JSON on file descriptors 3 and 4 of the browser process.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def chromium_or_skip() -> str:
    """The chromium executable; skips the test without it, except in CI (CI=true) where that is a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = (
            "Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it as root)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class BrowserError(RuntimeError):
    """The browser answered a command with an error, or did not answer in time."""


class Chromium:
    """One headless chromium with one page.

    Args:
        executable: Path of chromium.
        profile: An empty directory for the browser profile.
        size: Viewport width and height, CSS pixels.
    """

    def __init__(self, *, executable: str, profile: Path, size: tuple[int, int] = (1440, 1000)) -> None:
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()

        def wire_pipes() -> None:  # in the child: the protocol reads fd 3 and writes fd 4
            low_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            low_w = fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)
            os.dup2(low_r, 3)
            os.dup2(low_w, 4)

        self.proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # CI containers run as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                f"--window-size={size[0]},{size[1]}",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes,
            close_fds=False,
        )
        os.close(cmd_r)
        os.close(res_w)
        self._write_fd, self._read_fd = cmd_w, res_r
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank", timeout=120)["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=size[0],
            height=size[1],
            deviceScaleFactor=1,
            mobile=False,
            page=True,
        )
        self.call("Page.enable", page=True)

    # -- protocol -----------------------------------------------------------------------------------------------------
    def call(self, method: str, *, page: bool = False, timeout: float = 120, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session if `page`) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if page:
            message["sessionId"] = self._session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._messages(deadline, method):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    def _messages(self, deadline: float, method: str) -> list[dict[str, Any]]:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
            raise BrowserError(f"{method}: no answer from chromium in time")
        chunk = os.read(self._read_fd, 1 << 20)
        if not chunk:
            raise BrowserError(f"{method}: chromium closed the pipe (exit code {self.proc.poll()})")
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in complete if m]

    # -- page ---------------------------------------------------------------------------------------------------------
    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, *, until: str, timeout: float = 180) -> None:
        """Navigate to `url` and wait until the JavaScript condition `until` holds (the app has rendered)."""
        # A single-page app treats a change of the #-route as in-app navigation and may keep showing the old
        # view, so every page is loaded from scratch.
        self.call("Page.navigate", page=True, url="about:blank")
        self.wait("document.readyState === 'complete'", timeout=timeout, what="about:blank")
        self.call("Page.navigate", page=True, url=url)
        self.wait(until, timeout=timeout, what=url)

    def wait(self, condition: str, *, timeout: float = 180, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        # The document is replaced while a navigation commits, so a condition may throw for a moment.
        guarded = f"(() => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }})()"
        while not self.evaluate(guarded):
            if time.monotonic() > deadline:
                raise BrowserError(f"{what or 'page'}: {condition} did not hold within {timeout:.0f} s")
            time.sleep(0.5)

    def text(self) -> str:
        return str(self.evaluate("document.body.innerText"))

    def click(self, selector: str) -> None:
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (e) e.click(); return !!e; }})()"
        )
        if not found:
            raise BrowserError(f"nothing matches {selector!r}")

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        data = self.call("Page.captureScreenshot", page=True, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.call("Browser.close", timeout=20)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write_fd)
        os.close(self._read_fd)
