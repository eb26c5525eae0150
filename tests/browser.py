"""Open a page in headless Chromium with every network request refused, and report what a user would see.

The browser is driven through the DevTools protocol over a pipe (--remote-debugging-pipe: JSON messages
ended by NUL on file descriptors 3 and 4), so nothing but the standard library is needed.  WebGL runs on
SwiftShader, Chromium's CPU renderer, so a machine without a GPU draws plotly's 3-D surfaces too.

    shot = open_page(path, out_png, width=1100, height=620)
    shot.errors     # console errors, uncaught exceptions, failed loads: [str]
    shot.requests   # URLs the page asked for beyond its own file: [str]
    shot.scene      # (x, y, width, height) of the first WebGL canvas, or None
    shot.area       # (x, y, width, height) of the first 2-D plot area, or None
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless", "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
    # no network: no name resolves, and every connection goes to a proxy that refuses it
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--mute-audio", "--remote-debugging-pipe",
)
LOCAL = ("file:", "data:", "blob:", "about:")
# resolves once plotly has drawn (its SVG, and the WebGL canvas of each 3-D scene it lays out) or after WAIT ms,
# two frames later
RENDERED = """new Promise(done => { const t0 = Date.now(); (function poll() {
  const q = s => document.querySelectorAll(s).length;
  const drawn = q('.js-plotly-plot .main-svg') > 0 && q('.gl-container canvas') >= q('.gl-container');
  if (drawn || Date.now() - t0 > WAIT) requestAnimationFrame(() => requestAnimationFrame(() => done(drawn)));
  else setTimeout(poll, 50); })(); })"""
# the boxes of the first WebGL canvas (a 3-D scene) and of the first 2-D plot area (its drag layer)
AREAS = """(() => { const box = s => { const e = document.querySelector(s); if (!e) return null;
  const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
  return [box('.gl-container canvas'), box('.draglayer .nsewdrag')]; })()"""


def chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


@dataclass
class Shot:
    png: Path
    drawn: bool
    seconds: float
    scene: tuple[float, float, float, float] | None
    area: tuple[float, float, float, float] | None
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class _Pipe:
    """Requests and events of the DevTools protocol over Chromium's pipe."""

    def __init__(self, write_fd: int, read_fd: int, timeout: float):
        self.w, self.r, self.timeout = write_fd, read_fd, timeout
        self.buf, self.next_id, self.events = b"", 0, []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self.next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait(self, match) -> dict:
        end = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if match(msg):
                    return msg
            ready, _, _ = select.select([self.r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise TimeoutError(f"Chromium sent no matching message within {self.timeout} s")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed its DevTools pipe")
            self.buf += chunk


def _report(events: list[dict]) -> tuple[list[str], list[str]]:
    """(errors, non-local requests) among the page's events."""
    errors, requests = [], []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                    for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"uncaught: {d.get('exception', {}).get('description', d.get('text'))}")
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"{p['entry']['source']}: {p['entry']['text']} ({p['entry'].get('url', '')})")
        elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(LOCAL):
            requests.append(p["request"]["url"])
    return errors, requests


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved to descriptors >= 10, so that moving them to 3 and 4 in the child never overwrites
    one before it is read (os.pipe() may return 3 or 4, as under pytest's capture)."""
    out = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return out


def open_page(page: str | os.PathLike, png: str | os.PathLike, *, width: int = 1100, height: int = 620,
              timeout: float = 60.0, wait: float = 10.0) -> Shot:
    """Load a local HTML file, wait (at most `wait` seconds after the load event) for plotly to draw, and save a
    screenshot of the viewport to png.  `timeout` bounds each exchange with the browser."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(NAMES)})")
    t0 = time.monotonic()
    to_chrome, from_chrome = _high(os.pipe()), _high(os.pipe())
    with tempfile.TemporaryDirectory(prefix="lscape-chromium-") as profile:
        # Chromium reads commands on fd 3 and writes on fd 4: a Python trampoline puts the pipe ends there
        # (dash's redirections take one-digit descriptors only, and ours are >= 10)
        hop = (f"import os, sys; os.dup2({to_chrome[0]}, 3); os.dup2({from_chrome[1]}, 4); "
               "os.execv(sys.argv[1], sys.argv[1:])")
        cmd = [sys.executable, "-c", hop, exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "about:blank"]
        log = open(os.path.join(profile, "stderr.txt"), "w+b")  # closed in finally
        proc = subprocess.Popen(cmd, pass_fds=(to_chrome[0], from_chrome[1]), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log)
        os.close(to_chrome[0])
        os.close(from_chrome[1])
        try:
            cdp = _Pipe(to_chrome[1], from_chrome[0], timeout)
            target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                cdp.call(f"{domain}.enable", session=sid)
            cdp.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                            "mobile": False}, session=sid)
            cdp.call("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=sid)
            cdp.wait(lambda m: m.get("method") == "Page.loadEventFired")
            drawn = cdp.call("Runtime.evaluate", {"expression": RENDERED.replace("WAIT", str(int(wait * 1000))),
                                                  "awaitPromise": True,
                                                  "returnByValue": True}, session=sid)["result"]["value"]
            scene, area = cdp.call("Runtime.evaluate", {"expression": AREAS, "returnByValue": True},
                                   session=sid)["result"]["value"]
            data = cdp.call("Page.captureScreenshot", {"format": "png"}, session=sid)["data"]
            Path(png).write_bytes(base64.b64decode(data))
            errors, requests = _report(cdp.events)
            try:
                cdp.call("Browser.close")
            except (EOFError, TimeoutError, RuntimeError):
                pass
        except (EOFError, TimeoutError) as e:  # say why: Chromium's own last words
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"Chromium ({exe}) failed: {e}; its stderr ends:\n{tail}") from e
        finally:
            log.close()
            for fd in (to_chrome[1], from_chrome[0]):
                os.close(fd)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return Shot(Path(png), bool(drawn), time.monotonic() - t0, tuple(scene) if scene else None,
                tuple(area) if area else None, errors, requests)
