"""The HTML report in a real headless browser (Debian chromium driven by Playwright).

`make test` runs scripts/ensure-browser first, which installs chromium and a CJK font where
missing (as root or with passwordless sudo). Where this user cannot install chromium, the tests
skip with the reason `scripts/ensure-browser --check` gives; where it could be installed but is
not, they fail saying to run scripts/ensure-browser. Checks: the page renders, every chart is
present and has bars, no console errors, and no request other than the file itself (the report
is self-contained).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import GOLDEN, golden_batch, new_ledger, run_cli

CHARTS = [
    "responsibilities",
    "bands",
    "months",
    "districts",
    "hospitals",
    "distribution",
    "reasons",
    "loss_ratio",
]


ENSURE_BROWSER = Path(__file__).parent.parent / "scripts" / "ensure-browser"


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium executable, looked up before any batch runs. Where it is missing: skip with
    ensure-browser's reason when this user cannot install it, else fail (run the script)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is not None:
        return executable
    check = subprocess.run(
        ["bash", str(ENSURE_BROWSER), "--check"], capture_output=True, text=True, timeout=60
    )
    said = check.stderr.strip().splitlines()
    reason = said[-1] if said else f"scripts/ensure-browser --check exited {check.returncode}"
    if check.returncode == 2:  # this user cannot install it
        pytest.skip(f"chromium is not installed: {reason}")
    pytest.fail(f"chromium is not installed: {reason} (make test does)")


def _browser_check(
    page_path: Path, executable: str, screenshot: Path | None = None
) -> dict[str, Any]:
    """Open a report in headless chromium; what it rendered, logged and requested."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            charts = page.eval_on_selector_all(
                "figure[data-chart]",
                """els => Object.fromEntries(els.map(f => [f.dataset.chart,
                    [...f.querySelectorAll('rect.bar')].filter(r => r.getBBox().width > 0)
                    .length]))""",
            )
            title = page.title()
            heading = page.inner_text("h1")
            height = page.evaluate("document.body.scrollHeight")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {
        "charts": charts,
        "console": console,
        "requests": requests,
        "title": title,
        "heading": heading,
        "height": height,
    }


def _assert_renders(result: dict[str, Any], page: Path) -> None:
    assert result["console"] == [], result["console"]
    assert result["requests"] == [page.resolve().as_uri()], result["requests"]
    assert result["height"] > 1000
    for chart in CHARTS:
        assert result["charts"].get(chart, 0) > 0, f"chart {chart} missing or empty"


def test_the_batch_report_renders_in_a_real_browser(tmp_path: Path, chromium: str) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for name in ("batch_00", "batch_01"):
        assert golden_batch(ledger, tmp_path, name).exit_code == 0
    page = tmp_path / "batch_01" / "report.html"
    result = _browser_check(page, chromium)
    _assert_renders(result, page)
    assert "浙丽保" in result["title"] and "batch_01" in result["heading"]


def test_the_year_report_from_the_ledger_renders_in_a_real_browser(
    tmp_path: Path, chromium: str
) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for name in ("batch_00", "batch_01", "batch_02"):
        assert golden_batch(ledger, tmp_path, name).exit_code == 0
    r = run_cli(["report", "--ledger", str(ledger), "--year", "2022", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    page = tmp_path / "report.html"
    result = _browser_check(page, chromium)
    _assert_renders(result, page)
    assert "2022" in result["heading"]
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## 赔付率 Loss ratio" in markdown and "| 2022 |" in markdown
    # the year's total is the golden year's total payout, to the fen
    year_total = pl.read_parquet(GOLDEN / "expected_payouts.parquet")["payout_amt"].sum()
    assert f"| total payout 赔付合计 (yuan) | {year_total:,} |" in markdown
