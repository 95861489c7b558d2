"""Shared by the service tests (and by tools/page_screenshot.py): a real `nmt serve` process on a free loopback
port, plain HTTP calls to it, `nmt translate`'s answers to compare with, and the page driver that types into
the web page in headless Chromium.

Everything talks to 127.0.0.1 only, and every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"serving .* on (http://127\.0\.0\.1:\d+)")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (SIGKILL and -9 when it does not end within `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


@contextmanager
def running_server(args: list[str], log: Path, startup_s: float = 120) -> Iterator[Server]:
    """`nmt serve ARGS --host 127.0.0.1 --port 0`, ready (its models loaded, its workers running) when entered;
    stopped with SIGTERM (SIGKILL after a minute) when left."""
    command = [sys.executable, "-m", "nmt", "serve", *args, "--host", "127.0.0.1", "--port", "0"]
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    server = Server(process, "", log)
    try:
        deadline = time.monotonic() + startup_s
        while not (match := READY.search(server.log_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nmt serve did not start (exit code {process.poll()}):\n{server.log_text()}")
            time.sleep(0.05)
        server.url = match.group(1)
        yield server
    finally:
        server.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def call(url: str, body: dict | bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> Reply:
    """GET `url`, or POST `body` (a dict is sent as JSON); an HTTP error status is a reply, not an exception."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def translate_command(checkpoint: Path, lines: list[str], folder: Path, *options: str,
                      dtype: str = "fp32") -> list[str]:
    """What `nmt translate -c CHECKPOINT OPTIONS --dtype DTYPE` writes for `lines`, line by line (run in this
    process). Compare it with a server of the same dtype: `nmt serve`'s default is auto, bf16 on a CPU with
    native bf16."""
    from nmt.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    source, output = folder / "source.txt", folder / "output.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert main(["translate", "-c", str(checkpoint), "-i", str(source), "-o", str(output), "-q",
                 "--device", "cpu", "--dtype", dtype, *options]) == 0
    return output.read_text(encoding="utf-8").split("\n")[:-1]


# ----------------------------------------------------------------------------------------------- the page


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    """Why the page cannot be driven here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "Chromium is not installed: apt-get install -y chromium (.ci/run installs it)"
    return None


@dataclass
class PageView:
    translations: list[str]  # the text shown for each line
    scores: list[str]
    nbest: list[list[str]]  # per line, the n-best texts shown (empty without an n-best view)
    heatmap: tuple[int, int]  # rows (target pieces) and columns (source pieces) of the attention shown


def drive_page(url: str, lines: list[str], screenshot: Path, profile: Path, nbest: int = 1,
               keyboard: bool = False, timeout_s: float = 60) -> PageView:
    """Open the page in headless Chromium, type `lines` into the source box, ask for `nbest` hypotheses,
    press Translate (or Ctrl+Enter), wait for the answer, and read what the page shows; a PNG of the whole
    page goes to `screenshot`. `profile` is a fresh Chromium user-data folder."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 720})
        try:
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            page.wait_for_selector("#model option", state="attached")
            page.fill("#source", "\n".join(lines))
            page.fill("#nbest", str(nbest))
            if keyboard:
                page.press("#source", "Control+Enter")
            else:
                page.click("#translate")
            page.wait_for_selector('#status[data-state="done"], #status[data-state="error"]')
            if page.get_attribute("#status", "data-state") == "error":
                raise AssertionError(f"the page shows an error: {page.text_content('#status')}")
            view = PageView(
                page.locator("#translations > li > .text").all_text_contents(),
                page.locator("#translations > li > .score").all_text_contents(),
                [item.locator("details.nbest li .text").all_text_contents()
                 for item in page.locator("#translations > li").all()],
                (page.locator("#heatmap tbody tr").count(), page.locator("#heatmap thead th").count() - 1))
            if nbest > 1:  # open the first line's n-best view, as a reader would
                page.click("#translations > li:first-child details.nbest summary")
            page.screenshot(path=str(screenshot), full_page=True)
            return view
        finally:
            context.close()
