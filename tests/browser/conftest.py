"""Fixtures for the browser tests: Debian's Chromium (never a downloaded browser) driven by
Playwright. The end-to-end fixtures (real client daemons, real containers) come from
tests/fixtures/cluster.py, as for tests/e2e.

Without Chromium or Playwright these tests skip on a laptop but FAIL when CI is set."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.needs import skip_or_fail

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session", autouse=True)
def no_container_left_behind(no_container_left_behind: None) -> None:
    """Every browser test is checked by tests/fixtures/cluster.py's no_container_left_behind."""


@pytest.fixture(scope="module")  # sync_playwright runs an event loop: end it with the module
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        skip_or_fail(f"no Chromium at {CHROMIUM}; install Debian's: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield page
    context.close()
