"""Reports in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium): each kind
(a simulated run, a comparison of runs, an analysis) opened from disk makes no network request and logs no
console error, and shows its summary table and every figure (by element, and by a non-blank screenshot of each).
Skipped, saying what is missing, where Chromium, its driver or selenium are absent."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from burstgpt.report.browser import chromium_missing, headless_chromium, open_page

MISSING = chromium_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser test skipped: {MISSING}")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple]:
    """(report.html path, expected figure names, run labels) per report kind."""
    from burstgpt.analysis import characterise
    from burstgpt.report.compare import compare_runs
    from burstgpt.report.rundir import write_run_directory
    from burstgpt.report.trace_figures import write_analysis
    from burstgpt.sim import EngineSpec, build_engine_setup, simulate_workload
    from burstgpt.workload import WorkloadSpec, build_workload
    from burstgpt.workload.spec import ScheduledArrivals
    from burstgpt.workload.synthetic_trace import synthetic_burstgpt_trace

    root = tmp_path_factory.mktemp("reports")
    setup = build_engine_setup(EngineSpec(gpu="A800", model="Llama-2-7B", num_gpu_blocks=300))
    runs = []
    for index, rate in enumerate((2.0, 6.0)):
        workload = build_workload(WorkloadSpec(ScheduledArrivals(alpha=0.5, rate_rps=rate), num_requests=400,
                                               seed=index))
        result = simulate_workload(workload, setup, seed=index)
        runs.append(root / f"rate{rate:g}")
        write_run_directory(runs[-1], result.records, config={"rate_rps": rate, **setup.to_dict()},
                            server_metrics=result.server_metrics, producer="simulate", window_s=5.0)
    labels, _, _ = compare_runs(runs, root / "comparison")
    summary = json.loads(write_analysis(characterise(synthetic_burstgpt_trace(days=1.5, seed=0, rate_scale=0.03)),
                                        root / "analysis").read_text())
    return {
        "run": (runs[0] / "report.html", ["timeline", "latency_distributions", "server_metrics"], []),
        "comparison": (root / "comparison" / "report.html", ["timeline", "latency_distributions"], labels),
        "analysis": (root / "analysis" / "report.html", sorted(n.removesuffix(".png") for n in summary["figures"]),
                     []),
    }


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1280, 900) as driver:
        yield driver


def _non_blank(png: bytes) -> bool:
    """More than a background: many distinct colours and a spread of brightness."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    distinct = np.unique(pixels.reshape(-1, 3)[:: max(1, pixels.size // 3 // 200_000)], axis=0).shape[0]
    return distinct > 20 and pixels.std() > 10


@pytest.mark.parametrize("kind", ["run", "comparison", "analysis"])
def test_report_opens_offline_and_shows_everything(kind, reports, browser):
    from selenium.webdriver.common.by import By

    path, figure_names, labels = reports[kind]
    page = open_page(browser, path)
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests
    assert [url for url in page.requests if url.startswith("file:")] == [path.resolve().as_uri()]
    assert page.console_errors == []
    table = browser.find_element(By.CSS_SELECTOR, "table#summary")
    assert table.is_displayed() and len(table.find_elements(By.TAG_NAME, "tr")) >= 5
    figures = browser.find_elements(By.CSS_SELECTOR, "figure.report-figure")
    assert sorted(f.get_attribute("data-name") for f in figures) == sorted(figure_names)
    for figure in figures:
        browser.execute_script("arguments[0].scrollIntoView()", figure)
        graphic = figure.find_element(By.CSS_SELECTOR, "svg, img")
        assert graphic.size["width"] > 300 and graphic.size["height"] > 150, figure.get_attribute("data-name")
        if graphic.tag_name == "img":  # decoded, not a broken image
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", graphic) > 0
        assert _non_blank(graphic.screenshot_as_png), f"{figure.get_attribute('data-name')} looks blank"
    browser.execute_script("window.scrollTo(0, 0)")
    assert _non_blank(browser.get_screenshot_as_png())
    for label in labels:  # a comparison shows every run: a column of the summary and a line in the timeline
        assert label in [th.text for th in table.find_elements(By.TAG_NAME, "th")]
        legend = browser.find_element(By.CSS_SELECTOR, 'figure[data-name="timeline"] svg').text
        assert label in legend


def test_timeline_zooms_and_resets(reports, browser):
    """Ctrl + wheel narrows the timeline's viewBox around the pointer; a double-click restores it."""
    from selenium.webdriver.common.by import By

    open_page(browser, reports["run"][0])
    svg = browser.find_element(By.CSS_SELECTOR, 'figure[data-name="timeline"] svg')
    before = browser.execute_script("return arguments[0].getAttribute('viewBox')", svg)
    browser.execute_script("""
        const svg = arguments[0], r = svg.getBoundingClientRect();
        svg.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, ctrlKey: true, bubbles: true, cancelable: true,
                                                  clientX: r.left + r.width / 2, clientY: r.top + r.height / 2}));
    """, svg)
    zoomed = [float(v) for v in browser.execute_script("return arguments[0].getAttribute('viewBox')", svg).split()]
    full = [float(v) for v in before.split()]
    assert zoomed[2] == pytest.approx(full[2] * 0.8) and zoomed[0] > full[0]
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('dblclick', {bubbles: true}))", svg)
    assert [float(v) for v in browser.execute_script("return arguments[0].getAttribute('viewBox')",
                                                     svg).split()] == pytest.approx(full)


def test_no_console_error_is_missed(tmp_path, browser):
    """The console check can fail: a page with a script error is reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    assert open_page(browser, page).console_errors


def test_a_request_is_not_missed(tmp_path, browser):
    """The network check can fail: a page loading a (refused) http resource is reported."""
    page = tmp_path / "fetching.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    assert any(url.startswith("http://127.0.0.1:9/") for url in open_page(browser, page).requests)
