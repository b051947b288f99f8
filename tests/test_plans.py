"""Plan editions: shipped editions load, bad editions report every problem at once, CLI commands."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import Extract, adjudicate, row, run_cli, yuan
from hmb_batch.errors import ConfigError
from hmb_batch.plan.catalog import select_plan, shipped_edition_files
from hmb_batch.plan.check import check_data, load_edition

ZHELIBAO_2022 = shipped_edition_files()["zhelibao-2022"]


def test_shipped_zhelibao_editions_are_valid_and_cite_their_source() -> None:
    ids = set(shipped_edition_files())
    assert {"zhelibao-2021", "zhelibao-2022", "zhelibao-2023"} <= ids
    for eid in ("zhelibao-2021", "zhelibao-2022", "zhelibao-2023"):
        e = load_edition(shipped_edition_files()[eid])
        assert "丽政办发〔2020〕80号" in e.source
        assert e.responsibilities[0].terms[1].deductible == 1_800_000
    floors = {
        eid: load_edition(shipped_edition_files()[eid]).responsibilities[0].terms[0].floor
        for eid in ("zhelibao-2021", "zhelibao-2022", "zhelibao-2023")
    }
    assert floors == {
        "zhelibao-2021": 1_800_000,
        "zhelibao-2022": 1_800_000,
        "zhelibao-2023": 1_300_000,
    }


def _broken() -> dict[str, object]:
    data = tomllib.loads(ZHELIBAO_2022.read_text(encoding="utf-8"))
    resp = data["responsibilities"][0]  # type: ignore[index]
    resp["brackets"][0]["up_to"] = "600000.00"  # now out of order
    resp["brackets"][1]["rate"] = "1.5"  # above 100%
    data["costs"]["reasonable"]["parts"][0]["components"] = ["preselfpay_amt", "overlimit"]  # type: ignore[index]
    data["costs"]["reasonable"]["parts"][2]["on_list"] = "admissions"  # type: ignore[index]
    return data


def test_every_problem_is_reported_at_once_with_path_and_hint() -> None:
    _, problems = check_data(_broken(), ["negative", "admission"])
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {
        "responsibilities.0.brackets.1.rate",
        "costs.reasonable.parts[0].components[1]",
        "costs.reasonable.parts[2].on_list",
        "responsibilities[0].brackets[1].up_to",
    }
    assert (
        "unknown fee component 'overlimit'"
        in by_path["costs.reasonable.parts[0].components[1]"].message
    )
    assert "admissions" in by_path["costs.reasonable.parts[2].on_list"].message
    assert "outside 0..1" in by_path["responsibilities.0.brackets.1.rate"].message
    assert all(p.hint for p in problems)


def test_plan_check_cli(tmp_path: Path) -> None:
    good = run_cli(["plan", "check", str(ZHELIBAO_2022)])
    assert good.exit_code == 0 and "ok" in good.output
    bad = tmp_path / "bad.toml"
    bad.write_text(
        ZHELIBAO_2022.read_text(encoding="utf-8")
        .replace('rate = "0.90"', 'rate = "0.90"\nratio = 1')
        .replace("waiting_months = 6", "waiting_months = -1"),
        encoding="utf-8",
    )
    r = run_cli(["plan", "check", str(bad)])
    assert r.exit_code == 5
    assert "ratio" in r.output and "waiting_months" in r.output  # both at once


def test_plan_list_and_show_cli() -> None:
    listed = run_cli(["plan", "list"])
    assert listed.exit_code == 0 and "zhelibao-2023" in listed.output
    shown = run_cli(["plan", "show", "zhelibao-2023"])
    assert shown.exit_code == 0
    for text in ("浙丽保", "13,000.00", "18,000.00", "75%", "95%", "waiting period", "admission"):
        assert text in shown.output


def test_unknown_plan_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown plan 'lishui'"):
        select_plan("lishui")


def test_family_picks_the_edition_of_each_plan_year(ex: Extract, tmp_path: Path) -> None:
    # a batch spanning late December and early January: each year its own edition
    ex.member("M1", plan_year=2022)
    ex.member("M1", plan_year=2023)
    ex.claim("DEC", "M1", "2022-12-31 10:00:00", compliant="30000")
    ex.claim("JAN", "M1", "2023-01-01 10:00:00", compliant="30000")
    p = adjudicate(ex, tmp_path)
    assert (row(p, "DEC")["edition"], row(p, "DEC")["payout_amt"]) == (
        "zhelibao-2022",
        yuan("9000"),
    )
    assert (row(p, "JAN")["edition"], row(p, "JAN")["payout_amt"]) == (
        "zhelibao-2023",
        yuan("12750"),
    )


def test_january_reversal_of_a_december_settlement_counts_in_the_old_year(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1", plan_year=2022)
    ex.member("M1", plan_year=2023)
    ex.claim("DEC", "M1", "2022-12-30 10:00:00", reasonable="28000")
    ex.claim("JAN", "M1", "2023-01-02 10:00:00", reasonable="28000")
    ex.reversal("RDEC", "DEC", "M1", "2023-01-03 10:00:00")
    p = adjudicate(ex, tmp_path)
    r = row(p, "RDEC")
    assert (r["plan_year"], r["edition"], r["payout_amt"]) == (2022, "zhelibao-2022", yuan("-7500"))
    assert row(p, "JAN")["cum_payout_amt"] == yuan("7500")  # 2023 untouched


def test_one_edition_applied_to_another_year(ex: Extract, tmp_path: Path) -> None:
    # an analyst tries the 2023 rules on 2022 data
    ex.member("M1", plan_year=2022)
    ex.claim("S1", "M1", "2022-05-01 10:00:00", compliant="30000")
    p = adjudicate(ex, tmp_path, plan="zhelibao-2023")
    assert row(p, "S1")["payout_amt"] == yuan("12750")
    assert row(p, "S1")["edition"] == "zhelibao-2023"


def test_edition_file_from_disk(ex: Extract, tmp_path: Path) -> None:
    custom = tmp_path / "city-2022.toml"
    custom.write_text(
        ZHELIBAO_2022.read_text(encoding="utf-8").replace(
            'deductible = "18000.00"', 'deductible = "10000.00"'
        ),
        encoding="utf-8",
    )
    ex.member("M1")
    ex.claim("S1", "M1", "2022-05-01 10:00:00", reasonable="20000")
    p = adjudicate(ex, tmp_path, plan=str(custom))
    assert row(p, "S1")["payable_amt"] == yuan("10000")
