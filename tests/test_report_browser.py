"""The HTML report in a real browser: headless Chromium renders it, screenshots it, and shows its DOM.

Needs Debian's `chromium` (CI installs it); the test installs nothing and skips without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import CONFTEST, FAKES, WORKLOADS

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
# CI sets LOWPREC_REQUIRE_BROWSER=1 after installing Chromium, so there a missing browser fails instead of skipping.
pytestmark = pytest.mark.skipif(BROWSER is None and not os.environ.get("LOWPREC_REQUIRE_BROWSER"),
                                reason="no headless Chromium on this machine (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,2400"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def report(pytester) -> Path:
    pytester.makepyfile(fakes=FAKES)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_workloads=WORKLOADS)
    pytester.runpytest("--lowprec-report", "report.html")
    return pytester.path / "report.html"


def test_the_browser_draws_the_table_the_plots_and_the_failing_row(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert '<table id="verdicts">' in dom
    assert dom.count("<svg") == 2 and "<rect" in dom and "<circle" in dom
    assert '<tr class="fail">' in dom and "test_workloads.py::test_regressed" in dom


def test_a_script_in_a_test_id_stays_text_in_the_browser(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script" not in dom


def test_the_report_screenshots_as_a_page_with_content(report, tmp_path):
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000  # a blank page compresses to a few KB
