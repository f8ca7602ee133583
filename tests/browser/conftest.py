"""The browser tier: Debian's headless Chromium, driven through Selenium and chromedriver.

Nothing here downloads a browser: the browser and its driver are Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them), found at their usual paths or at
``LLEM_CHROMIUM`` / ``LLEM_CHROMEDRIVER``. Where they are missing the tier skips and says so.

Every page a test visits leaves a screenshot in ``test-artifacts/browser/`` (or
``$LLEM_TEST_ARTIFACTS/browser``), and every visit checks the browser's console for errors.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CHROMIUM = os.environ.get("LLEM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("LLEM_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
ARTIFACTS = Path(os.environ.get("LLEM_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    if not Path(CHROMEDRIVER).exists():
        return f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    """One headless Chromium for the whole tier (starting one costs a second or two)."""
    missing = _missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@dataclass
class Page:
    """A browser on one server: visit, wait, screenshot, and console checking.

    Attributes:
        base_url: The server.
        driver: The Selenium driver.
        allowed: Console messages (substrings) a test expects, e.g. the 401 of a wrong token.
    """

    base_url: str
    driver: Any
    allowed: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.wait_ready()

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], timeout_s: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                self.screenshot("timeout")
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.05)

    def wait_ready(self, timeout_s: float = 20) -> None:
        """The view has rendered (main[data-ready=true]) and the page has settled."""
        self.wait(
            lambda: self.js(
                "const m = document.getElementById('main');"
                "return document.readyState === 'complete' && m && m.dataset.ready === 'true';"
            ),
            timeout_s,
            "the view to render",
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        height = self.js("return document.documentElement.scrollHeight") or 1000
        self.driver.set_window_size(1400, min(max(int(height) + 40, 700), 6000))
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)
        self.shots.append(path)
        return path

    def screenshot_of(self, name: str, css: str) -> Path:
        """A screenshot of one element (the README's pictures are two of these)."""
        from selenium.webdriver.common.by import By

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        element = self.driver.find_element(By.CSS_SELECTOR, css)
        height = self.js("return arguments[0].getBoundingClientRect().height", element)
        self.driver.set_window_size(1400, int(height) + 300)
        self.js("arguments[0].scrollIntoView()", element)
        element.screenshot(str(path))
        self.driver.set_window_size(1400, 1000)
        self.shots.append(path)
        return path

    def screenshot_top(self, name: str, height: int) -> Path:
        """A screenshot of the page's first ``height`` pixels."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.js("window.scrollTo(0, 0)")
        self.driver.set_window_size(1400, height)
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)
        self.shots.append(path)
        return path

    def console_errors(self) -> list[str]:
        """Console errors since the last call, less those the test allowed."""
        entries = self.driver.get_log("browser")
        errors = [e["message"] for e in entries if e["level"] in {"SEVERE", "ERROR"}]
        return [m for m in errors if not any(a in m for a in self.allowed)]

    def unlabelled_controls(self) -> list[str]:
        """Form controls and buttons without an accessible name (label, aria-label, text)."""
        return list(
            self.js(
                """
                const out = [];
                for (const el of document.querySelectorAll('input, select, textarea, button')) {
                  if (el.type === 'hidden' || el.closest('[hidden]')) continue;
                  const byLabel = el.id && document.querySelector(`label[for="${el.id}"]`);
                  const wrapped = el.closest('label');
                  const named = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                    || byLabel || wrapped || (el.tagName === 'BUTTON' && el.textContent.trim());
                  if (!named) out.push(el.outerHTML.slice(0, 120));
                }
                return out;
                """
            )
        )


@pytest.fixture
def page(driver: Any) -> Iterator[Callable[[str], Page]]:
    """``page(base_url)`` -> a `Page`; at the end, no console errors and labelled controls."""
    made: list[Page] = []

    def make(base_url: str) -> Page:
        driver.get(base_url + "/healthz")  # cookies belong to the host: clear this one's
        driver.delete_all_cookies()
        driver.get_log("browser")  # drop what earlier tests left
        made.append(Page(base_url, driver))
        return made[-1]

    yield make
    for p in made:
        assert p.console_errors() == []
