"""Fixtures for the browser tests: Debian's Chromium (never a downloaded browser) driven by
Playwright, and the end-to-end fixtures (a real master, real daemons, real containers).

Without Chromium or Playwright these tests skip on a laptop but FAIL when CI is set."""

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import skip_or_fail

E2E = Path(__file__).resolve().parent.parent / "e2e"
sys.path.insert(0, str(E2E))
_spec = importlib.util.spec_from_file_location("e2e_fixtures", E2E / "conftest.py")
assert _spec is not None and _spec.loader is not None
e2e_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e_fixtures)
no_container_left_behind = e2e_fixtures.no_container_left_behind
wordfreq_image = e2e_fixtures.wordfreq_image
probe_image = e2e_fixtures.probe_image
daemons = e2e_fixtures.daemons

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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
