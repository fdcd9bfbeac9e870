"""Open a report in headless Chromium (Selenium + chromedriver) and say what the page did: every network
request it made, its console errors, how long it took to load and render, and a screenshot.

Used by the browser test, `benchmarks/bench_report.py` and to make the documentation's screenshot. Needs the
`selenium` package and a Chromium with its driver (Debian: `apt-get install chromium chromium-driver`);
`chromium_missing()` says what is absent.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _which(names) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def chromium_missing() -> str | None:
    """None when a report can be opened here; else what is missing, as a sentence."""
    if importlib.util.find_spec("selenium") is None:
        return "the selenium package is not installed (pip install selenium)"
    if _which(CHROMIUM_NAMES) is None:
        return "no Chromium found (Debian: apt-get install chromium chromium-driver)"
    if _which(DRIVER_NAMES) is None:
        return "no chromedriver found (Debian: apt-get install chromium-driver)"
    return None


@dataclass
class PageLoad:
    """What opening one page did. Times in seconds from the start of navigation."""

    url: str
    requests: list[str] = field(default_factory=list)  # URL of every request the page made, itself and data:
    # URIs included (those shortened)
    console_errors: list[str] = field(default_factory=list)
    load_s: float = 0.0  # until the load event ended
    rendered_s: float = 0.0  # until the first frame painted after the load event


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900):
    """A headless Chromium session (Selenium WebDriver) logging network events and the console; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM_NAMES)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-default-apps", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_which(DRIVER_NAMES)))
    try:
        yield driver
    finally:
        driver.quit()


#: Resolves once two animation frames have run after the load event: the page has been laid out and painted.
_AFTER_PAINT = """
const done = arguments[arguments.length - 1];
function measure() {
  requestAnimationFrame(() => requestAnimationFrame(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    done({load: nav.loadEventEnd / 1000, rendered: performance.now() / 1000});
  }));
}
if (document.readyState === 'complete') measure(); else window.addEventListener('load', measure);
"""


def open_page(driver, path: str | Path, *, timeout_s: float = 60.0) -> PageLoad:
    """Open a file in `driver` (from `headless_chromium`) and report its requests, console errors and times."""
    url = Path(path).resolve().as_uri()
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    driver.set_script_timeout(timeout_s)
    driver.get(url)
    times = driver.execute_async_script(_AFTER_PAINT)
    page = PageLoad(url=url, load_s=float(times["load"]), rendered_s=float(times["rendered"]))
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            page.requests.append(url if not url.startswith("data:") else url[:40] + "...")  # data: URIs are long
    page.console_errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return page


def screenshot_page(driver, path: str | Path, out_png: str | Path, *, height: int | None = None) -> Path:
    """Open `path` and save a screenshot of its top `height` pixels (the window's height when None) at
    `out_png`."""
    url = Path(path).resolve().as_uri()
    if driver.current_url != url:
        driver.get(url)
    if height is not None:
        driver.set_window_size(driver.get_window_size()["width"], height)
    out_png = Path(out_png)
    driver.save_screenshot(str(out_png))
    return out_png
