"""A real browser for the web UI's tests: Debian's chromium driven by playwright (never a downloaded one).

One browser per test module (a persistent context in a fresh user data directory), one page per test.
Every page error and console error fails the test, unless the test names the one it expects (a 404
page logs "Failed to load resource"). Screenshots go under the module's temporary directory, and also
to `$SPANLAKE_WEB_SCREENSHOTS` when set (how docs/screenshots/ is made).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from harness import RUST_FIXTURES, post

EXPECTED = json.loads((RUST_FIXTURES / "expected.json").read_text())
RUST_PROCESS_ID = EXPECTED["process"]["process_info"]["process_id"]

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 720}


def chromium_path() -> str:
    """The system chromium; in CI (CI=true) its absence fails, elsewhere it skips loudly."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        reason = "BROWSER TESTS NOT RUN: no chromium at /usr/bin/chromium (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class Browser:
    context: object  # playwright BrowserContext
    screenshots: Path

    def shot(self, page: object, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        page.screenshot(path=str(path))
        extra = os.environ.get("SPANLAKE_WEB_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path


@contextlib.contextmanager
def browser(screenshots: Path) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    screenshots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spanlake-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport=VIEWPORT,
        )
        try:
            yield Browser(context, screenshots)
        finally:
            context.close()


@dataclass
class WatchedPage:
    """A page whose errors are collected; `expect_error` names one a test provokes on purpose."""

    page: object
    errors: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    def expect_error(self, text: str) -> None:
        self.expected.append(text)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(x in e for x in self.expected)]


@contextlib.contextmanager
def watched_page(browser: Browser) -> Iterator[WatchedPage]:
    page = browser.context.new_page()
    watched = WatchedPage(page)
    page.on("pageerror", lambda err: watched.errors.append(f"page error: {err}"))
    page.on("console", lambda msg: watched.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    try:
        yield watched
    finally:
        page.close()
    assert watched.unexpected_errors() == [], watched.unexpected_errors()


def off_loop(function: Callable[..., T], *args: object) -> T:
    """Runs `function` on another thread: playwright's sync API keeps an asyncio loop running on this
    one, where the harness's `asyncio.run` cannot start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def upload_rust_fixture(http_url: str, headers: dict[str, str] | None = None) -> None:
    """The micromegas Rust fixture, posted as its sink posted it."""
    for step in EXPECTED["upload_sequence"]:
        status, text = post(http_url + step["endpoint"], (RUST_FIXTURES / step["file"]).read_bytes(), headers)
        assert status == 200, (step, text)


def generate(http_url: str, *args: str, api_key: str | None = None) -> str:
    """Runs `spanlake generate` against the server; returns the generated process id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")}
    if api_key:
        env["MICROMEGAS_INGESTION_API_KEY"] = api_key
    result = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", "generate", "--url", http_url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0].strip()
