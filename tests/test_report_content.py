"""What the reports say (issue 15, item 9): the loss ratio's alarm colour, thousands separators in
the reconciliation, districts by name. Runs the real command line in a subprocess, as cron does
(CI=true, stderr not a terminal); the layout in a browser is tests/test_report_html.py's.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import Extract, adjudicate_args, golden_args, standard_extract

HMB = str(Path(sys.executable).parent / "hmb-batch")
SHIPPED = Path(__file__).parent.parent / "src" / "hmb_batch" / "report" / "zhejiang_districts.toml"
# a figure with thousands separators: 1,418,907.48 or 4,050 (not 1418907.48, not 4050)
GROUPED = re.compile(r"-?\d{1,3}(,\d{3})*(\.\d\d)?")


def _hmb(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [HMB, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, "CI": "true", "NO_COLOR": "1"},
    )
    return proc


def _run(ex: Extract, tmp: Path, *extra: str) -> tuple[str, str]:
    """Adjudicate a tiny extract in a subprocess; its report.md and report.html."""
    files = ex.write(tmp / "in")
    proc = _hmb(*adjudicate_args(files, tmp / "out", "--quiet", *extra))
    assert proc.returncode == 0, proc.stderr
    out = tmp / "out"
    return (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(
        encoding="utf-8"
    )


def _loss_ratio_cells(page: str) -> list[tuple[str, str]]:
    """(class, text) of each loss-ratio cell of the HTML loss-ratio table."""
    table = page.split("<h2>赔付率 Loss ratio</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    cells = [re.findall(r'<td(?: class="([^"]*)")?[^>]*>(.*?)</td>', r) for r in rows]
    return [row[4] for row in cells]


# 7 members × 100.00 less 5% operating cost = a net pool of 665.00 (zhelibao-2022); the payout
# is 75% of the reasonable cost above the 18,000.00 deductible
@pytest.mark.parametrize(
    ("reasonable", "ratio", "tone"),
    [
        ("18100", "11.3%", ""),  # 75.00 ÷ 665.00: under the pool, no colour
        ("18906.67", "102.3%", "warn"),  # 680.00 ÷ 665.00: over the pool, amber
        ("20000", "225.6%", "alarm"),  # 1,500.00 ÷ 665.00: far over, red
    ],
)
def test_the_loss_ratio_is_coloured_when_payouts_exceed_the_premium_pool(
    tmp_path: Path, reasonable: str, ratio: str, tone: str
) -> None:
    ex = standard_extract()
    for i in range(7):
        ex.member(f"M{i}")
    ex.claim("S1", "M0", "2022-03-01 10:00:00", reasonable=reasonable)
    markdown, page = _run(ex, tmp_path)
    (cell,) = _loss_ratio_cells(page)
    assert cell[1] == ratio
    assert set(cell[0].split()) - {"n"} == ({tone} if tone else set())
    row = next(x for x in markdown.splitlines() if x.startswith("| 2022 | 7 |"))
    if tone == "alarm":
        assert f"**{ratio}** ‼ ALARM" in row
        assert 'class="bar alarm"' in page
    elif tone == "warn":
        assert f"**{ratio}** ⚠ over 100% of the pool" in row
        assert 'class="bar warn"' in page
    else:
        assert f"| {ratio} | 95% |" in row
        assert not re.search(r'class="[^"]*\b(alarm|warn)\b', page)
        assert "ALARM" not in markdown and "⚠" not in markdown


def test_reconciliation_figures_have_thousands_separators_and_stay_exact(
    tmp_path: Path,
) -> None:
    proc = _hmb(*golden_args("batch_00", tmp_path))
    assert proc.returncode == 0, proc.stderr
    identities = json.loads((tmp_path / "reconciliation.json").read_text())["identities"]
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    md_rows = {r.split(" | ")[0].lstrip("| "): r.split(" | ") for r in markdown.splitlines()}
    large = 0
    for identity in identities:
        unit = identity["unit"]
        md = md_rows[identity["name"]]
        cells = re.search(
            rf"<tr><td>{re.escape(identity['name'])}</td><td>{unit}</td>"
            r'<td class="n">([^<]*)</td><td class="n">([^<]*)</td>',
            page,
        )
        assert cells is not None, identity["name"]
        for shown in (md[2], md[3], html.unescape(cells[1]), html.unescape(cells[2])):
            assert GROUPED.fullmatch(shown), (identity["name"], shown)
        for key, shown in (("expected", md[2]), ("found", md[3])):
            # the same amount as reconciliation.json, to the fen (yuan) or the unit (count)
            assert Decimal(shown.replace(",", "")) == Decimal(str(identity[key]))
            large += Decimal(shown.replace(",", "")) >= 1000
    assert large > 0  # the batch has figures that need a separator


def test_districts_are_shown_by_name_unknown_codes_as_codes(tmp_path: Path) -> None:
    ex = standard_extract()
    for code, psn in (("331102", "M1"), ("330383", "M2"), ("999999", "M3")):
        ex.member(psn)
        ex.claim(f"S{psn}", psn, "2022-03-01 10:00:00", reasonable="20000", insu_admdvs=code)
    markdown, page = _run(ex, tmp_path)
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))["districts"]
    section = markdown.split("## 按参保地区划", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| |")]
    labels = {row.split(" | ")[0].lstrip("| ") for row in rows}
    assert labels == {f"331102 {shipped['331102']}", f"330383 {shipped['330383']}", "999999"}
    for label in labels:
        assert f'<div class="label">{html.escape(label)}</div>' in page


def test_hmb_toml_districts_add_and_rename_codes_in_both_reports(tmp_path: Path) -> None:
    ex = standard_extract()
    for code, psn in (("331102", "M1"), ("999999", "M2"), ("331121", "M3")):
        ex.member(psn)
        ex.claim(f"S{psn}", psn, "2022-03-01 10:00:00", reasonable="20000", insu_admdvs=code)
    config = tmp_path / "hmb.toml"
    config.write_text(
        '[districts]\n331102 = "丽水市莲都区"\n999999 = "测试新区"\n', encoding="utf-8"
    )
    ledger = tmp_path / "ledger.duckdb"
    assert _hmb("ledger", "init", str(ledger)).returncode == 0
    markdown, _ = _run(ex, tmp_path, "--config", str(config), "--ledger", str(ledger))
    proc = _hmb(
        "report", "--year", "2022", "--ledger", str(ledger), "--config", str(config),
        "--out", str(tmp_path / "year"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    year = (tmp_path / "year" / "report.md").read_text(encoding="utf-8")
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))["districts"]
    for report in (markdown, year):
        assert "| 331102 丽水市莲都区 |" in report  # renamed
        assert "| 999999 测试新区 |" in report  # added
        assert f"| 331121 {shipped['331121']} |" in report  # the shipped name still applies


def test_a_district_without_a_name_in_hmb_toml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "hmb.toml"
    config.write_text('[districts]\n331102 = " "\n', encoding="utf-8")
    files = standard_extract().write(tmp_path / "in")
    proc = _hmb(*adjudicate_args(files, tmp_path / "out", "--config", str(config)))
    assert proc.returncode == 5
    assert "districts" in proc.stderr and "'331102'" in proc.stderr


def test_the_shipped_district_table_is_well_formed() -> None:
    """Zhejiang's codes: six digits under 33; each county's city and the province listed; a
    name ends as a province, city, district or county does."""
    table = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))["districts"]
    assert "330000" in table and len(table) > 11
    for code, name in table.items():
        assert re.fullmatch(r"33\d{4}", code), code
        assert name.endswith(("省", "市", "区", "县")), (code, name)
        assert f"{code[:4]}00" in table, f"{code}: its city {code[:4]}00 is not listed"
        if code.endswith("00") and code != "330000":
            assert name.endswith("市"), (code, name)
    assert len(set(table.values())) == len(table)  # no name twice within the province
