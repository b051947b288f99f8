"""The other plans of the seeds as editions: 舟惠保 2024 (shipped), 咸惠保 and 金惠保 (examples).

Each case is computed by hand in its comment, from the edition file's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    adjudicate,
    adjudicate_args,
    extract_with_special_drugs,
    new_ledger,
    responsibility_payouts,
    row,
    run_cli,
    special_drug_line,
    yuan,
)
from hmb_batch.plan.catalog import select_plan
from hmb_batch.plan.check import load_edition
from test_properties import SETTINGS, Year, amounts

EXAMPLES = Path(__file__).parent.parent / "examples" / "plans"
XIANHUIBAO = str(EXAMPLES / "xianhuibao-2024.toml")
JINHUIBAO = str(EXAMPLES / "jinhuibao-2024.toml")


# --- 舟惠保 2024 -------------------------------------------------------------------------------


def test_zhouhuibao_cap_reached_inside_one_settlement_and_the_consecutive_years_cap(
    tmp_path: Path,
) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    ex.member("M3", plan_year=2024, consecutive_years="3")
    # 2,000,000 left after basic and catastrophic insurance, in one settlement:
    # B = 0% × 15,000 + 10% × 10,000 + 30% × 1,975,000 = 1,000 + 592,500 = 593,500
    # M1: cap 500,000 → 500,000.00; M3 (3 consecutive years): cap 750,000 → 593,500.00
    ex.claim("S1", "M1", "2024-03-01 10:00:00", compliant="2000000")
    ex.claim("S3", "M3", "2024-03-01 10:00:00", compliant="2000000")
    p = adjudicate(ex, tmp_path, plan="zhouhuibao")
    assert row(p, "S1")["payout_amt"] == yuan("500000")
    assert row(p, "S3")["payout_amt"] == yuan("593500")
    assert responsibility_payouts(row(p, "S1"))["catastrophic_supplement"] == yuan("500000")


def test_zhouhuibao_subtracts_union_mutual_aid_and_has_no_waiting_period(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024, pay_date="2024-02-20")  # enrolled late: no waiting period
    # in-scope 30,000 less trade-union mutual aid 5,000 = 25,000: 10% × (25,000 − 15,000) = 1,000
    ex.claim("S1", "M1", "2024-02-21 10:00:00", compliant="30000", union_aid_pay="5000.00")
    r = row(adjudicate(ex, tmp_path, plan="zhouhuibao-2024"), "S1")
    assert r["status"] == "paid" and r["payout_amt"] == yuan("1000")
    assert r["catastrophic_left_amt"] == yuan("25000")


def test_zhouhuibao_self_pay_drugs_after_the_3000_deductible_inpatient_only(
    tmp_path: Path,
) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    # inpatient self-pay drugs 10,000: 60% (assumed rate) × (10,000 − 3,000) = 4,200
    ex.claim("S1", "M1", "2024-04-01 10:00:00", reasonable="10000")
    # general outpatient (med_type 11) self-pay drugs: not covered by responsibility 2
    ex.claim("S2", "M1", "2024-04-02 10:00:00", reasonable="10000", med_type="11")
    p = adjudicate(ex, tmp_path, plan="zhouhuibao-2024")
    assert responsibility_payouts(row(p, "S1"))["selfpay_drugs"] == yuan("4200")
    assert row(p, "S2")["payout_amt"] == yuan(0) and row(p, "S2")["selfpay_drugs_amt"] == yuan(0)


def test_zhouhuibao_pharmacy_special_drug_from_the_first_yuan(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    # 5,000 of a listed drug bought at a designated pharmacy (med_type 41): 60% × 5,000 = 3,000
    ex.claim(
        "S1", "M1", "2024-05-01 10:00:00", med_type="41", extra_lines=[special_drug_line("5000.00")]
    )
    r = row(adjudicate(ex, tmp_path, plan="zhouhuibao-2024"), "S1")
    assert responsibility_payouts(r) == {
        "catastrophic_supplement": yuan(0),
        "selfpay_drugs": yuan(0),
        "pharmacy_drugs": yuan("3000"),
    }


def test_zhouhuibao_shows_its_assumptions() -> None:
    r = run_cli(["plan", "show", "zhouhuibao-2024"])
    assert r.exit_code == 0
    assert "assumptions 假设" in r.output and "selfpay_drugs: rate, cap" in r.output


# --- 咸惠保 example ----------------------------------------------------------------------------


def test_xianhuibao_shared_deductible_consumed_by_two_responsibilities(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    ex.member("M2", plan_year=2024, pre_existing="1")
    # in-list 15,000 takes 15,000 of the shared 20,000; out-of-list 10,000 meets the other
    # 5,000 → in-list 0, out-of-list 70% × 5,000 = 3,500; pre-existing: 35% × 5,000 = 1,750
    ex.claim("S1", "M1", "2024-03-01 10:00:00", compliant="15000", reasonable="10000")
    ex.claim("S2", "M2", "2024-03-01 10:00:00", compliant="15000", reasonable="10000")
    p = adjudicate(ex, tmp_path, plan=XIANHUIBAO)
    assert responsibility_payouts(row(p, "S1")) == {
        "in_list": yuan(0),
        "out_list": yuan("3500"),
        "special_drugs": yuan(0),
    }
    assert row(p, "S2")["payout_amt"] == yuan("1750")


def test_xianhuibao_special_drug_zero_deductible_chronic_outpatient_and_plan_cap(
    tmp_path: Path,
) -> None:
    ex = extract_with_special_drugs()
    for m in ("M1", "M2", "M3"):
        ex.member(m, plan_year=2024)
    # special drugs 10,000 from the first yuan: 60% = 6,000 (and not out-of-list cost)
    ex.claim("S1", "M1", "2024-03-01 10:00:00", extra_lines=[special_drug_line("10000.00")])
    # chronic/special-disease outpatient (14) counts: in-list 30,000 − 20,000 → 80% = 8,000
    ex.claim("S2", "M2", "2024-03-01 10:00:00", compliant="30000", med_type="14")
    # plan-wide cap 2,000,000: in-list 1,500,000 → 80% × 1,480,000 = 1,184,000 → cap 1,000,000;
    # out-of-list 1,500,000 (pool used up) → 70% = 1,050,000 → cap 1,000,000; special
    # 1,000,000 → 60% = 600,000 → cap 500,000; 2,500,000 > 2,000,000: special gets no room
    ex.claim(
        "S3",
        "M3",
        "2024-03-01 10:00:00",
        compliant="1500000",
        reasonable="1500000",
        extra_lines=[special_drug_line("1000000.00")],
    )
    p = adjudicate(ex, tmp_path, plan=XIANHUIBAO)
    assert responsibility_payouts(row(p, "S1"))["special_drugs"] == yuan("6000")
    assert row(p, "S1")["out_list_amt"] == yuan(0)
    assert row(p, "S2")["payout_amt"] == yuan("8000")
    r3 = row(p, "S3")
    assert r3["payout_amt"] == yuan("2000000")
    assert responsibility_payouts(r3) == {
        "in_list": yuan("1000000"),
        "out_list": yuan("1000000"),
        "special_drugs": yuan(0),
    }


# --- 金惠保 example ----------------------------------------------------------------------------


def test_jinhuibao_brackets_pre_existing_and_shared_deductible(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    ex.member("M2", plan_year=2024, pre_existing="1")
    ex.member("M3", plan_year=2024)
    # in-list 215,000 − 15,000 = 200,000: 70% × 100,000 + 80% × 100,000 = 150,000
    ex.claim("S1", "M1", "2024-03-01 10:00:00", compliant="215000")
    # pre-existing: 35% × 100,000 + 40% × 100,000 = 75,000
    ex.claim("S2", "M2", "2024-03-01 10:00:00", compliant="215000")
    # shared 15,000: in-list 10,000 uses 10,000, out-of-list 10,000 − 5,000 → 60% × 5,000 = 3,000
    ex.claim("S3", "M3", "2024-03-01 10:00:00", compliant="10000", reasonable="10000")
    p = adjudicate(ex, tmp_path, plan=JINHUIBAO)
    assert row(p, "S1")["payout_amt"] == yuan("150000")
    assert row(p, "S2")["payout_amt"] == yuan("75000")
    assert responsibility_payouts(row(p, "S3")) == {
        "in_list": yuan(0),
        "out_list": yuan("3000"),
        "special_drugs": yuan(0),
    }


def test_jinhuibao_special_drug_caps_and_the_plan_cap(tmp_path: Path) -> None:
    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    ex.member("M3", plan_year=2024, consecutive_years="3")
    ex.member("M9", plan_year=2024)
    # special drugs 1,000,000: 50% = 500,000 → cap 300,000; after 3 consecutive years 400,000
    ex.claim("S1", "M1", "2024-03-01 10:00:00", extra_lines=[special_drug_line("1000000.00")])
    ex.claim("S3", "M3", "2024-03-01 10:00:00", extra_lines=[special_drug_line("1000000.00")])
    # two settlements reach the plan cap 1,500,000: the first, in-list 2,000,000 → payable
    # 1,985,000 → 70,000 + 80% × 1,885,000 = 1,578,000 → cap 1,000,000; the second, out-of-list
    # 2,000,000 → 60% = 1,200,000 → cap 500,000 (total 1,500,000) and special drugs get no room
    ex.claim("S9a", "M9", "2024-03-01 10:00:00", compliant="2000000")
    ex.claim(
        "S9b",
        "M9",
        "2024-03-02 10:00:00",
        reasonable="2000000",
        extra_lines=[special_drug_line("1000000.00")],
    )
    p = adjudicate(ex, tmp_path, plan=JINHUIBAO)
    assert row(p, "S1")["payout_amt"] == yuan("300000")
    assert row(p, "S3")["payout_amt"] == yuan("400000")
    assert row(p, "S9a")["payout_amt"] == yuan("1000000")
    assert row(p, "S9b")["payout_amt"] == yuan("500000")
    assert row(p, "S9b")["cum_payout_amt"] == yuan("1500000")


# --- every edition: written back by `plan new`, batch splits, reversals, caps ------------------

EDITIONS = [
    "zhelibao-2021",
    "zhelibao-2022",
    "zhelibao-2023",
    "zhouhuibao-2024",
    XIANHUIBAO,
    JINHUIBAO,
]


@pytest.mark.parametrize("source", EDITIONS)
def test_plan_new_writes_an_edition_that_checks_and_keeps_every_parameter(
    tmp_path: Path, source: str
) -> None:
    target = tmp_path / "mycity-2030.toml"
    r = run_cli(["plan", "new", "--from", source, str(target), "--year", "2030"])
    assert r.exit_code == 0, r.output
    assert run_cli(["plan", "check", str(target)]).exit_code == 0
    text = target.read_text(encoding="utf-8")
    assert text.count("#") > 20  # every parameter carries a comment
    written = load_edition(target).model_dump()
    origin = select_plan(source).editions[-1].edition.model_dump()
    assert written["plan"] == "mycity" and written["edition"] == 2030
    assert written["official"] is False
    keep = {"plan", "plan_name", "edition", "official", "source"}
    assert {k: v for k, v in written.items() if k not in keep} == {
        k: v for k, v in origin.items() if k not in keep
    }
    again = run_cli(["plan", "new", "--from", source, str(target)])
    assert again.exit_code == 2 and "--force" in again.output


def _edition_year(source: str) -> tuple[Any, int]:
    plan = select_plan(source)
    return plan, plan.editions[-1].edition.edition


specials = st.lists(st.one_of(st.just(0), st.integers(0, 80_000_000)), max_size=6)


# six editions × a whole engine run per example: fewer examples each than test_properties
# (HMB_PROPERTY_EXAMPLES raises both for a deeper search)
EDITION_SETTINGS = settings(SETTINGS, max_examples=max(4, SETTINGS.max_examples // 4))


@pytest.mark.parametrize("source", EDITIONS)
@EDITION_SETTINGS
@given(claims=st.lists(amounts, min_size=1, max_size=6), special=specials, data=st.data())
def test_every_edition_splits_reverses_and_caps_exactly(
    source: str, claims: list[tuple[int, int]], special: list[int], data: Any
) -> None:
    plan, year = _edition_year(source)
    flags = data.draw(
        st.fixed_dictionaries(
            {
                "pre_existing": st.sampled_from(["0", "1"]),
                "consecutive_years": st.sampled_from(["1", "3"]),
            }
        )
    )
    reversals = data.draw(st.lists(st.integers(0, len(claims) - 1), max_size=1))
    y = Year(claims, reversals, plan=plan, year=year, special=special, **flags)
    whole = y.run([])
    n = len(y.settlements)
    cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=2)) if n > 1 else []
    cols = ["setl_id", "status", "payout", "payable", "cum_payout", "cum_payable"]
    assert whole.select(cols).equals(y.run(cuts).select(cols))
    # caps telescope: each responsibility's year total stays within its cap, the sum within
    # the plan-wide cap, and the payouts add up to the year's benefit
    edition = plan.editions[-1].edition
    total = 0
    for r in edition.responsibilities:
        paid = int(whole[f"resp__{r.id}__payout"].sum())
        total += paid
        cap = r.cap
        if (
            r.consecutive_cap is not None
            and int(flags["consecutive_years"]) >= r.consecutive_cap.years
        ):
            cap = r.consecutive_cap.cap
        assert 0 <= paid <= (cap if cap is not None else paid)
    assert total == int(whole["payout"].sum()) == whole["cum_payout"].to_list()[-1]
    if edition.plan_cap is not None:
        assert total <= edition.plan_cap
    # a reversal restores the year to date: later settlements see what they would have seen
    # had the reversed claim been nothing
    if reversals:
        t = reversals[0]
        zeroed = Year(
            [c if i != t else (0, 0) for i, c in enumerate(claims)],
            [],
            plan=plan,
            year=year,
            special=[x if i != t else 0 for i, x in enumerate(special)],
            **flags,
        ).run([])
        later = [f"S{i:03d}" for i in range(t + 1, len(claims))]
        keep = ["setl_id", "cum_payable", "cum_payout"]
        assert (
            whole.filter(pl.col("setl_id").is_in(later))
            .select(keep)
            .sort("setl_id")
            .equals(zeroed.filter(pl.col("setl_id").is_in(later)).select(keep).sort("setl_id"))
        )


def test_the_ledger_keeps_each_responsibility_per_settlement_and_reports_break_it_down(
    tmp_path: Path,
) -> None:
    import duckdb

    ex = extract_with_special_drugs()
    ex.member("M1", plan_year=2024)
    ex.claim("S1", "M1", "2024-03-01 10:00:00", compliant="40000", reasonable="10000")
    ex.claim(
        "S2", "M1", "2024-03-05 10:00:00", med_type="41", extra_lines=[special_drug_line("5000.00")]
    )
    files = ex.write(tmp_path / "in")
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    args = adjudicate_args(files, tmp_path / "out", "--plan", "zhouhuibao", "--ledger", str(ledger))
    assert run_cli([*args, "--quiet"]).exit_code == 0
    con = duckdb.connect(str(ledger), read_only=True)
    rows = con.execute(
        "SELECT setl_id, responsibility, payout_fen, cum_payout_fen "
        "FROM settlement_responsibilities ORDER BY setl_id, responsibility"
    ).fetchall()
    con.close()
    # S1: 10% × 10,000 + 30% × 15,000 = 5,500 (catastrophic); 60% × 7,000 = 4,200 (drugs)
    # S2: 60% × 5,000 = 3,000 at the pharmacy; the year to date per responsibility carries on
    assert rows == [
        ("S1", "catastrophic_supplement", 550_000, 550_000),
        ("S1", "pharmacy_drugs", 0, 0),
        ("S1", "selfpay_drugs", 420_000, 420_000),
        ("S2", "catastrophic_supplement", 0, 550_000),
        ("S2", "pharmacy_drugs", 300_000, 300_000),
        ("S2", "selfpay_drugs", 0, 420_000),
    ]
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## 按责任 Payouts by responsibility" in report
    assert "| catastrophic_supplement | 5,500.00 |" in report
    assert "| selfpay_drugs | 4,200.00 |" in report and "| pharmacy_drugs | 3,000.00 |" in report
