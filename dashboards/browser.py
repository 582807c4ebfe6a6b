"""Load a page in headless Chromium over the DevTools protocol (a pipe: no websocket library, no port).

`inspect_page(path)` returns the console errors, uncaught exceptions, browser log errors (CSP
violations, failed loads) and the page's state (charts drawn, videos and images loaded), and can
save a full-page screenshot. Used by tests/test_dashboard_browser.py and for docs/dashboard.png.
Install the browser on Debian: `apt-get install -y --no-install-recommends chromium` (as root).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Collected in the page after it has loaded; plain JSON back.
_STATE_JS = """JSON.stringify({
  ready: document.body.dataset.ready === "1",
  charts: [...document.querySelectorAll(".chart")].map(c => ({title: c.dataset.chart,
    rendered: c.dataset.rendered === "1", marks: +(c.dataset.marks || 0),
    svg_shapes: c.querySelectorAll("svg circle, svg path[d], svg rect").length})),
  videos: [...document.querySelectorAll("video")].map(v => ({src: v.getAttribute("src"), ready_state: v.readyState,
    width: v.videoWidth, loaded: v.dataset.loaded || ""})),
  images: [...document.querySelectorAll("img")].map(i => ({src: i.getAttribute("src"), width: i.naturalWidth})),
  sections: [...document.querySelectorAll("section")].map(s => s.id),
  notes: [...document.querySelectorAll(".note")].map(n => n.textContent),
  table_rows: document.querySelectorAll("#runs-table tbody tr").length,
})"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome", "chromium-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """DevTools protocol over --remote-debugging-pipe: JSON messages separated by NUL bytes."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.events: list[dict[str, Any]] = []
        self._replies: dict[int, queue.Queue] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._replies:
                    self._replies[msg["id"]].put(msg)
                else:
                    self.events.append(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            self._replies[msg_id] = queue.Queue()
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        try:
            reply = self._replies[msg_id].get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no DevTools reply to {method} within {timeout} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(e.get("method") == method for e in self.events):
                return True
            time.sleep(0.05)
        return False


def _describe_console(event: dict[str, Any]) -> str:
    args = event["params"].get("args", [])
    return " ".join(str(a.get("value", a.get("description", ""))) for a in args)


def inspect_page(page: str | os.PathLike, screenshot: str | os.PathLike | None = None, *,
                 chromium: str | None = None, width: int = 1400, height: int = 900,
                 settle_s: float = 10.0, expressions: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Open `page` (a local HTML file); returns {"console_errors", "exceptions", "log_errors", "state",
    "values"}: `values` are the results of `expressions` (JS, evaluated in order after loading)."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary; apt-get install -y --no-install-recommends chromium")
    url = Path(page).resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
        # copy both first: the pipes may themselves be fds 3/4, and dup2(3, 3) keeps close-on-exec
        read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        args = [binary, "--headless", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-extensions", "--disable-background-networking", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
                f"--window-size={width},{height}", "about:blank"]
        if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox on
            args.insert(1, "--no-sandbox")
        proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        pipe = _Pipe(to_chrome_w, from_chrome_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.call("Page.navigate", {"url": url}, session=session)
            loaded = pipe.wait_event("Page.loadEventFired", timeout=30)
            state: dict[str, Any] = {}
            end = time.monotonic() + settle_s
            while time.monotonic() < end:  # wait for media to decode (or fail)
                res = pipe.call("Runtime.evaluate", {"expression": _STATE_JS, "returnByValue": True}, session=session)
                state = json.loads(res["result"].get("value", "{}"))
                if state.get("ready") and all(v["loaded"] for v in state.get("videos", [])):
                    break
                time.sleep(0.2)
            values = []
            for expr in expressions:
                res = pipe.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session)
                values.append(res["result"].get("value"))
            if screenshot is not None:
                metrics = pipe.call("Page.getLayoutMetrics", session=session)
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                shot = pipe.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": min(int(size["height"]), 16000), "scale": 1},
                }, session=session, timeout=60)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            with_session = [e for e in pipe.events if e.get("sessionId") == session]
            result = {
                "loaded": loaded,
                "console_errors": [_describe_console(e) for e in with_session
                                   if e.get("method") == "Runtime.consoleAPICalled"
                                   and e["params"].get("type") in ("error", "assert")],
                "console_warnings": [_describe_console(e) for e in with_session
                                     if e.get("method") == "Runtime.consoleAPICalled"
                                     and e["params"].get("type") == "warning"],
                "exceptions": [e["params"]["exceptionDetails"].get("exception", {}).get("description")
                               or e["params"]["exceptionDetails"].get("text") for e in with_session
                               if e.get("method") == "Runtime.exceptionThrown"],
                "log_errors": [e["params"]["entry"].get("text") for e in with_session
                               if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"],
                "state": state, "values": values,
            }
            try:
                pipe.call("Browser.close", timeout=5)
            except (TimeoutError, RuntimeError, OSError):
                pass
            return result
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_chrome_w)
            os.close(from_chrome_r)
