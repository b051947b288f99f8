"""The HTML report in a real headless browser (Debian chromium driven by Playwright).

`make test` runs scripts/ensure-browser first, which installs chromium and a CJK font where
missing (as root or with passwordless sudo). Where this user cannot install chromium, the tests
skip with the reason `scripts/ensure-browser --check` gives; where it could be installed but is
not, they fail saying to run scripts/ensure-browser. Checks: the page renders, every chart is
present and has bars, no console errors, no request other than the file itself (the report
is self-contained), and no text is clipped at a narrow (700 px) and a wide (1400 px) window.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import GOLDEN, golden_batch, new_ledger, run_cli
from hmb_batch.money import MAX_AMOUNT_FEN
from hmb_batch.report.pages import Bar, Chart, LossRatio, ReportData, render_html
from hmb_batch.rules.codes import REASON_CODES

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
WIDTHS = (700, 1400)  # a laptop's half screen and a full desktop window, in CSS pixels


ENSURE_BROWSER = Path(__file__).parent.parent / "scripts" / "ensure-browser"

# Every drawn text of the page measured against what holds it; returns one entry per problem.
# - SVG <text>: its getBBox() inside the SVG's viewBox, its screen box inside the drawn <svg>;
# - HTML text: each text node's box (a Range over it) inside its element (a cell, a heading …)
#   and inside every ancestor whose overflow is not visible; no element cut by text-overflow
#   ellipsis; no cell, heading or caption whose content is wider than its box (scrollWidth);
# - every text inside the page: no horizontal scrolling, nothing left of 0;
# - a chart's visible text holds the whole label its bar's tooltip gives (nothing cut short).
MEASURE = """() => {
  const tol = 0.5;
  const problems = [];
  const pageW = document.documentElement.clientWidth;
  const short = t => t.replace(/\\s+/g, ' ').trim().slice(0, 80);
  const edges = r => [r.left, r.top, r.right, r.bottom].map(v => Math.round(v * 10) / 10);
  const outside = (a, b) => a.left < b.left - tol || a.top < b.top - tol
    || a.right > b.right + tol || a.bottom > b.bottom + tol;
  const add = (what, text, box, container) => problems.push(
    {what, text: short(text), box: edges(box), container: edges(container)});
  const page = {left: 0, top: -Infinity, right: pageW, bottom: Infinity};
  if (document.documentElement.scrollWidth > pageW)
    add('page scrolls sideways', document.title,
        {left: 0, top: 0, right: document.documentElement.scrollWidth, bottom: 0}, page);
  for (const t of document.querySelectorAll('svg text')) {
    const svg = t.ownerSVGElement;
    const vb = svg.viewBox.baseVal;
    const b = t.getBBox();
    const inner = {left: b.x, top: b.y, right: b.x + b.width, bottom: b.y + b.height};
    if (vb && vb.width > 0) {
      const view = {left: vb.x, top: vb.y, right: vb.x + vb.width, bottom: vb.y + vb.height};
      if (outside(inner, view)) add('svg text outside its viewBox', t.textContent, inner, view);
    }
    const r = t.getBoundingClientRect();
    const s = svg.getBoundingClientRect();
    if (outside(r, s)) add('svg text outside its svg', t.textContent, r, s);
    if (outside(r, page)) add('svg text outside the page', t.textContent, r, page);
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.textContent.trim()) continue;
    const el = n.parentElement;
    if (el.closest('svg')) continue;  // <text> measured above; <title> is a tooltip, not drawn
    const range = document.createRange();
    range.selectNodeContents(n);
    const r = range.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // not drawn
    const c = el.getBoundingClientRect();
    if (outside(r, c)) add('text outside its element <' + el.localName + '>', n.textContent, r, c);
    if (outside(r, page)) add('text outside the page', n.textContent, r, page);
    for (let a = el; a && a !== document.documentElement; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.textOverflow === 'ellipsis' && a.scrollWidth > a.clientWidth)
        add('text cut by an ellipsis in <' + a.localName + '>', n.textContent, r,
            a.getBoundingClientRect());
      if (cs.overflowX !== 'visible' || cs.overflowY !== 'visible') {
        const box = a.getBoundingClientRect();
        if (outside(r, box))
          add('text cut by overflow of <' + a.localName + '>', n.textContent, r, box);
      }
    }
  }
  for (const el of document.querySelectorAll('td, th, h1, h2, p, figcaption, .note')) {
    if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1)
      add('content wider than its <' + el.localName + '>', el.textContent,
          {left: 0, top: 0, right: el.scrollWidth, bottom: el.scrollHeight},
          {left: 0, top: 0, right: el.clientWidth, bottom: el.clientHeight});
  }
  const flat = s => s.replace(/\\s+/g, '');
  for (const f of document.querySelectorAll('figure[data-chart]')) {
    const texts = [];
    const inside = document.createTreeWalker(f, NodeFilter.SHOW_TEXT);
    for (let n = inside.nextNode(); n; n = inside.nextNode())
      if (!n.parentElement.closest('title')) texts.push(n.textContent);
    const shown = flat(texts.join('|'));
    for (const rect of f.querySelectorAll('rect.bar')) {
      const tip = rect.querySelector('title');
      const label = tip ? tip.textContent.replace(/: [^:]*$/, '') : '';
      if (!shown.includes(flat(label)))
        add('label shown shorter than its tooltip', label, rect.getBoundingClientRect(),
            f.getBoundingClientRect());
    }
  }
  return problems;
}"""

# the loss ratio table's ratio cell (row 2, column 5) as drawn: its text and colours
LOSS_RATIO_CELL = """() => {
  const h = [...document.querySelectorAll('h2')].find(x => x.textContent.startsWith('赔付率'));
  const cell = h.nextElementSibling.rows[1].cells[4];
  const style = getComputedStyle(cell);
  return {text: cell.textContent, color: style.color, background: style.backgroundColor};
}"""


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


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
    """Open a report in headless chromium at each of :data:`WIDTHS`; what it rendered, logged,
    requested, and the text it clipped at each width."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    requests: list[str] = []
    clipped: dict[int, list[dict[str, Any]]] = {}
    charts: dict[int, dict[str, int]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.on("request", lambda r: requests.append(r.url))
                page.goto(page_path.resolve().as_uri(), wait_until="load")
                charts[width] = page.eval_on_selector_all(
                    "figure[data-chart]",
                    """els => Object.fromEntries(els.map(f => [f.dataset.chart,
                        [...f.querySelectorAll('rect.bar')].filter(r => r.getBBox().width > 0)
                        .length]))""",
                )
                clipped[width] = page.evaluate(MEASURE)
                ratio = page.evaluate(LOSS_RATIO_CELL)
                title = page.title()
                heading = page.inner_text("h1")
                height = page.evaluate("document.body.scrollHeight")
                if screenshot is not None:
                    page.screenshot(
                        path=str(screenshot.with_name(f"{screenshot.stem}-{width}.png")),
                        full_page=True,
                    )
                page.close()
        finally:
            browser.close()
    return {
        "charts": charts,
        "console": console,
        "requests": requests,
        "title": title,
        "heading": heading,
        "height": height,
        "clipped": clipped,
        "loss_ratio": ratio,
    }


def _assert_renders(result: dict[str, Any], page: Path, height: int = 1000) -> None:
    assert result["console"] == [], result["console"]
    assert set(result["requests"]) == {page.resolve().as_uri()}, result["requests"]
    assert result["height"] > height
    for width in WIDTHS:
        for chart in CHARTS:
            assert result["charts"][width].get(chart, 0) > 0, f"chart {chart} missing or empty"
    clipped = [
        f"{width} px: {c['what']}: {c['text']!r} at {c['box']} in {c['container']}"
        for width in WIDTHS
        for c in result["clipped"][width]
    ]
    assert clipped == [], "\n".join(clipped)


def test_the_batch_report_renders_in_a_real_browser(tmp_path: Path, chromium: str) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for name in ("batch_00", "batch_01"):
        assert golden_batch(ledger, tmp_path, name).exit_code == 0
    page = tmp_path / "batch_01" / "report.html"
    result = _browser_check(page, chromium)
    _assert_renders(result, page)
    assert "浙丽保" in result["title"] and "batch_01" in result["heading"]
    # the golden batches pay out about three times the net premium pool: the ratio is drawn
    # as an alarm, white on red
    red, green, blue = _rgb(result["loss_ratio"]["background"])
    assert red > 150 and green < 90 and blue < 90, result["loss_ratio"]
    assert _rgb(result["loss_ratio"]["color"]) == (255, 255, 255), result["loss_ratio"]


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


def test_long_labels_and_the_largest_amounts_are_not_clipped(tmp_path: Path, chromium: str) -> None:
    # what real data can hold: a hospital's full name, the longest reason code with its Chinese,
    # a district unknown to the table, the largest amount a value may hold, a year's count
    code = max(REASON_CODES, key=lambda c: len(f"{c} {REASON_CODES[c].zh}"))
    labels = [
        "H33110200001 某某大学医学院附属第二医院丽水分院（丽水市某某医院）区域医疗中心",
        f"quarantined · {code} {REASON_CODES[code].zh}",
        "zhelibao-2022: 500,000–1,000,000 @ 90%",
        "999999",
    ]
    bars = [Bar(label, MAX_AMOUNT_FEN // (i + 1), 1) for i, label in enumerate(labels)]
    data = ReportData(
        title="浙丽保 理算报告 · batch 2022-12-31-settlements-0123456789ab",
        scope="batch 2022-12-31-settlements-0123456789ab; loss ratio: year to date on the ledger",
        generated_at="2023-01-01T02:00:00",
        headline=[("total payout 赔付合计 (yuan)", "10,000,000,000.00")],
        charts=[Chart(chart, "图", "Chart", bars) for chart in CHARTS if chart != "loss_ratio"]
        + [
            Chart(
                "loss_ratio",
                "赔付率",
                "Loss ratio",
                [Bar("2022", 2_084_000, 1, "alarm")],
                unit="percent",
                target=950_000,
            )
        ],
        loss_ratios=[LossRatio(2022, 1_234_567, 10_000, 50_000, 950_000, MAX_AMOUNT_FEN)],
        reconciliation=[
            {
                "name": "settlement_level.inscp_scp_amt",
                "unit": "yuan",
                "passed": True,
                "expected": "10000000000.00",
                "found": "10000000000.00",
            },
            {
                "name": "fee_lines.count",
                "unit": "count",
                "passed": True,
                "expected": 123_456_789,
                "found": 123_456_789,
            },
        ],
    )
    page = tmp_path / "report.html"
    page.write_text(render_html(data), encoding="utf-8")
    _assert_renders(_browser_check(page, chromium, None), page, height=500)
