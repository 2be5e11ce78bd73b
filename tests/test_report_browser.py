"""The HTML report in a real browser, by interaction: Playwright drives Debian's headless Chromium.

Two reports: a pytester run of faked workloads (hostile test ids), and a realistic one, the stored H200
baselines replayed as eight commits with a drift, a drop and an improvement (benchmarks/replay_baselines.py).
Needs `playwright` (the test extra) and /usr/bin/chromium (CI installs it); the test installs nothing and
skips without them, except under LOWPREC_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest
from test_report import CONFTEST, FAKES, WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
WIDTH = 1280


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = "playwright (pip install -e '.[test]')" if sync_playwright is None else (
        "Debian's chromium (apt-get install chromium)" if CHROMIUM is None else None)
    if missing:
        if os.environ.get("LOWPREC_REQUIRE_BROWSER"):
            pytest.fail(f"LOWPREC_REQUIRE_BROWSER=1 but {missing} is missing")
        pytest.skip(f"no browser test without {missing}")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> Path:
    pytest.importorskip("sqlalchemy")
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        replay = importlib.import_module("replay_baselines")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return replay.build(ROOT / "baselines" / "h200.json", tmp_path_factory.mktemp("replay"))


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    pg = context.new_page()
    pg.requests = requests
    yield pg
    context.close()


@pytest.fixture
def hostile(pytester) -> Path:
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_workloads=WORKLOADS)
    pytester.runpytest("--lowprec-report", "report.html")
    return pytester.path / "report.html"


def visible_rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#tests tr.test", "rows => rows.filter(r => !r.hidden).map(r => ({...r.dataset, id: r.id}))")


def test_the_regressions_and_their_size_are_on_the_first_screen(page, realistic):
    page.goto(realistic.as_uri())
    table = page.locator('table.changed[data-section="fail"]')
    box = table.bounding_box()
    assert box is not None and box["y"] + box["height"] < 900
    delta = table.locator("tbody tr td b").first.inner_text()  # the size: the delta against the baseline
    assert delta.startswith("-") and delta.endswith("%") and float(delta[:-1]) < -3


def test_the_report_is_readable_at_1280_px_without_sideways_scrolling(page, realistic):
    page.goto(realistic.as_uri())
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH


def test_an_expanded_test_still_fits_1280_px(page, realistic):
    page.goto(realistic.as_uri())
    for button in page.locator("#tests tr.test.fail button.expand").all():
        button.click()
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH


def test_clicking_the_fail_filter_leaves_only_failing_tests(page, realistic):
    page.goto(realistic.as_uri())
    before = len(visible_rows(page))
    page.click('.chip[data-filter="status"][data-value="fail"]')
    rows = visible_rows(page)
    assert 0 < len(rows) < before and {r["status"] for r in rows} == {"fail"}
    assert page.inner_text("#shown") == f"{len(rows)} of {before} tests with lowprec verdicts"


def test_a_second_click_on_a_filter_brings_every_test_back(page, realistic):
    page.goto(realistic.as_uri())
    before = len(visible_rows(page))
    chip = page.locator('.chip[data-filter="status"][data-value="fail"]')
    chip.click()
    chip.click()
    assert len(visible_rows(page)) == before


def test_precision_and_suite_filters_combine(page, realistic):
    page.goto(realistic.as_uri())
    page.click('.chip[data-filter="precision"][data-value="fp8"]')
    page.select_option("#filter-suite", "suites/test_fp8_gemm.py")
    rows = visible_rows(page)
    assert rows and all(r["precision"] == "fp8" and r["suite"] == "suites/test_fp8_gemm.py" for r in rows)


def test_search_narrows_the_rows_to_matching_test_ids(page, realistic):
    page.goto(realistic.as_uri())
    page.fill("#search", "quantizer_speed nvfp4")
    rows = visible_rows(page)
    assert rows and all("quantizer_speed" in r["search"] and "nvfp4" in r["search"] for r in rows)


def test_expanding_a_test_shows_every_metric_it_recorded(page, realistic):
    page.goto(realistic.as_uri())
    row = page.locator("#tests tr.test").first
    detail = page.locator("#tests tr.detail").first
    assert detail.is_hidden()
    row.locator("button.expand").click()
    assert detail.is_visible()
    metrics = detail.locator("table.inner tbody tr").count()
    assert metrics == int(row.inner_text().split(" metrics")[0].split()[-1])
    assert detail.locator("svg.spark").count() >= 1  # its trend over the replayed commits


def test_sorting_by_delta_puts_the_largest_drop_first(page, realistic):
    page.goto(realistic.as_uri())
    page.click('#tests th[data-sort="delta"]')
    deltas = [float(r["delta"]) for r in visible_rows(page) if r["delta"]]
    assert deltas == sorted(deltas) and deltas[0] < -5


def test_a_regressed_test_named_in_what_changed_opens_its_row(page, realistic):
    page.goto(realistic.as_uri())
    link = page.locator('table.changed[data-section="fail"] a[data-goto]').first
    target = link.get_attribute("data-goto")
    link.click()
    assert page.locator(f"#{target} + tr.detail").is_visible()


def test_a_trend_link_leads_to_a_chart_with_its_change_point(page, realistic):
    page.goto(realistic.as_uri())
    page.locator('table.changed[data-section="fail"] a[title="trend over commits"]').first.click()
    target = page.locator(".trend:target")
    assert target.count() == 1 and target.locator("line.changepoint").count() >= 1


def test_a_script_in_a_test_id_stays_text_in_the_browser(page, hostile):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(hostile.as_uri())
    page.locator("#tests button.expand").first.click()
    assert not dialogs
    assert "<script>alert(1)</script>" in page.inner_text("#tests")
    assert page.locator("script").count() == 1


def test_the_report_asks_the_network_for_nothing(page, realistic):
    page.goto(realistic.as_uri())
    assert all(url.startswith("file://") for url in page.requests), page.requests
