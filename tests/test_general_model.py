"""The edition model beyond 浙丽保: several responsibilities, a shared deductible, pre-existing
condition brackets, caps that telescope and a plan-wide cap — hand-computed, through the CLI.

The edition is tests/data/plans/multi-2022.toml (a test edition, not a real plan).
"""

from __future__ import annotations

from pathlib import Path

from conftest import (
    adjudicate,
    extract_with_special_drugs,
    responsibility_payouts,
    row,
    special_drug_line,
    yuan,
)

PLAN = str(Path(__file__).parent / "data" / "plans" / "multi-2022.toml")


def test_shared_deductible_consumed_by_two_responsibilities_in_one_settlement(
    tmp_path: Path,
) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1")
    # in-list 15,000 uses 15,000 of the shared 20,000; out-of-list 10,000 meets the other 5,000
    # → in-list pays 0, out-of-list pays 70% × 5,000 = 3,500
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="15000", reasonable="10000")
    r = row(adjudicate(ex, tmp_path, plan=PLAN), "S1")
    assert responsibility_payouts(r) == {
        "in_list": yuan(0),
        "out_list": yuan("3500"),
        "special": yuan(0),
    }
    assert r["payout_amt"] == yuan("3500") and r["payable_amt"] == yuan("5000")
    assert r["in_list_amt"] == yuan("15000") and r["out_list_amt"] == yuan("10000")


def test_pre_existing_condition_at_the_reduced_rate(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", pre_existing="1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="15000", reasonable="10000")
    r = row(adjudicate(ex, tmp_path, plan=PLAN), "S1")
    assert r["payout_amt"] == yuan("1750")  # 35% × 5,000


def test_special_drug_with_zero_deductible_and_own_cap(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1")
    ex.member("M3", consecutive_years="3")
    # 10,000 of special drugs: 60% from the first yuan; not counted as out-of-list cost
    ex.claim("S1", "M1", "2022-03-01 10:00:00", extra_lines=[special_drug_line("10000.00")])
    # 1,000,000 of special drugs: 600,000 capped at 500,000 (750,000 after 3 consecutive years)
    ex.claim("S2", "M1", "2022-04-01 10:00:00", extra_lines=[special_drug_line("1000000.00")])
    ex.claim("S3", "M3", "2022-04-01 10:00:00", extra_lines=[special_drug_line("1010000.00")])
    p = adjudicate(ex, tmp_path, plan=PLAN)
    assert responsibility_payouts(row(p, "S1")) == {
        "in_list": yuan(0),
        "out_list": yuan(0),
        "special": yuan("6000"),
    }
    assert row(p, "S1")["out_list_amt"] == yuan(0)
    # the cap is reached inside S2: it pays what is left under the cap
    assert row(p, "S2")["payout_amt"] == yuan("494000")
    assert row(p, "S2")["cum_payout_amt"] == yuan("500000")
    assert row(p, "S3")["payout_amt"] == yuan("606000")  # 60% × 1,010,000, under 750,000


def test_responsibility_cap_and_plan_wide_cap(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1")
    # in-list 1,320,000: (1,320,000 − 20,000) × 80% = 1,040,000 → capped at 1,000,000
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="1320000")
    # out-of-list 1,000,000 more: 700,000, but the plan-wide cap 1,500,000 leaves 500,000
    ex.claim("S2", "M1", "2022-05-01 10:00:00", reasonable="1000000")
    ex.claim("S3", "M1", "2022-06-01 10:00:00", reasonable="1000")  # nothing left
    p = adjudicate(ex, tmp_path, plan=PLAN)
    assert row(p, "S1")["payout_amt"] == yuan("1000000")
    assert responsibility_payouts(row(p, "S2")) == {
        "in_list": yuan(0),
        "out_list": yuan("500000"),
        "special": yuan(0),
    }
    assert row(p, "S2")["cum_payout_amt"] == yuan("1500000")
    assert row(p, "S3")["payout_amt"] == yuan(0)
    assert row(p, "S3")["status"] == "zero"


def test_cost_scope_by_medical_category(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1")
    # out-of-list cost counts for inpatient (21) and special outpatient (14) only
    ex.claim("OUT", "M1", "2022-03-01 10:00:00", reasonable="30000", med_type="11")
    ex.claim("IN", "M1", "2022-03-02 10:00:00", reasonable="30000", med_type="21")
    p = adjudicate(ex, tmp_path, plan=PLAN)
    assert row(p, "OUT")["out_list_amt"] == yuan(0)
    assert row(p, "IN")["out_list_amt"] == yuan("30000")
    assert row(p, "IN")["payout_amt"] == yuan("7000")  # 70% × (30,000 − 20,000)
