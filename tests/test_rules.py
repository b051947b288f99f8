"""浙丽保 rules at their boundaries (DOMAIN.md section 3), each case through the CLI.

Each table row is one member with one claim; all rows of a table run in one batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import Extract, adjudicate, row, yuan

# (case, plan year, roster fields or None for no roster row, claim time, begndate, reasons)
ELIGIBILITY: list[tuple[str, int, dict[str, Any] | None, str, str | None, list[str]]] = [
    (
        "paid on the deadline, claim on 1 Jan",
        2022,
        {"pay_date": "2021-12-31"},
        "2022-01-01 08:00:00",
        None,
        [],
    ),
    (
        "late payer: day before benefit start",
        2022,
        {"pay_date": "2022-01-15"},
        "2022-07-14 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "late payer: day of benefit start",
        2022,
        {"pay_date": "2022-01-15"},
        "2022-07-15 08:00:00",
        None,
        [],
    ),
    (
        "31 May + 6 months clips to 30 Nov: 29 Nov",
        2022,
        {"pay_date": "2022-05-31"},
        "2022-11-29 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "31 May + 6 months clips to 30 Nov: 30 Nov",
        2022,
        {"pay_date": "2022-05-31"},
        "2022-11-30 08:00:00",
        None,
        [],
    ),
    (
        "paid 31 Aug: + 6 months = 28 Feb of next year",
        2022,
        {"pay_date": "2022-08-31"},
        "2022-12-31 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "paid in Jan of a year that is not the launch year",
        2022,
        {"pay_date": "2022-01-01"},
        "2022-01-02 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "service date is the admission date",
        2022,
        {"pay_date": "2022-01-15"},
        "2022-07-20 08:00:00",
        "2022-07-14",
        ["WAITING_PERIOD"],
    ),
    (
        "newborn paid on day 90 of the window",
        2022,
        {
            "pay_date": "2022-05-30",
            "special_event": "newborn",
            "event_date": "2022-03-01",
            "basic_start_date": "2022-03-01",
        },
        "2022-03-01 08:00:00",
        None,
        [],
    ),
    (
        "newborn paid on day 91: late enrolment",
        2022,
        {
            "pay_date": "2022-05-31",
            "special_event": "newborn",
            "event_date": "2022-03-01",
            "basic_start_date": "2022-03-01",
        },
        "2022-06-01 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "veteran paid on day 30, benefits from basic start",
        2022,
        {
            "pay_date": "2022-05-01",
            "special_event": "veteran",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-04-01 08:00:00",
        None,
        [],
    ),
    (
        "veteran: claim before basic start",
        2022,
        {
            "pay_date": "2022-05-01",
            "special_event": "veteran",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-03-31 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "released paid on day 31: late enrolment",
        2022,
        {
            "pay_date": "2022-05-02",
            "special_event": "released",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-05-03 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "suspension: day before",
        2022,
        {"basic_suspended_from": "2022-04-10", "basic_suspended_to": "2022-04-20"},
        "2022-04-09 08:00:00",
        None,
        [],
    ),
    (
        "suspension: first day",
        2022,
        {"basic_suspended_from": "2022-04-10", "basic_suspended_to": "2022-04-20"},
        "2022-04-10 08:00:00",
        None,
        ["BASIC_SUSPENDED"],
    ),
    (
        "suspension: last day",
        2022,
        {"basic_suspended_from": "2022-04-10", "basic_suspended_to": "2022-04-20"},
        "2022-04-20 23:00:00",
        None,
        ["BASIC_SUSPENDED"],
    ),
    (
        "suspension: open-ended",
        2022,
        {"basic_suspended_from": "2022-04-10"},
        "2022-12-20 08:00:00",
        None,
        ["BASIC_SUSPENDED"],
    ),
    (
        "restored 31 Aug: + 6 months = 28 Feb, day before",
        2022,
        {"basic_restored_date": "2021-08-31"},
        "2022-02-27 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "restored 31 Aug: + 6 months = 28 Feb",
        2022,
        {"basic_restored_date": "2021-08-31"},
        "2022-02-28 08:00:00",
        None,
        [],
    ),
    (
        "suspended and restored: both reasons",
        2022,
        {
            "basic_suspended_from": "2022-03-01",
            "basic_suspended_to": "2022-03-31",
            "basic_restored_date": "2022-04-01",
        },
        "2022-03-15 08:00:00",
        None,
        ["BASIC_SUSPENDED", "WAITING_PERIOD"],
    ),
    ("no roster row", 2022, None, "2022-05-01 08:00:00", None, ["NOT_ENROLLED"]),
    (
        "launch year grace: paid 31 Mar, claim that day",
        2021,
        {"pay_date": "2021-03-31"},
        "2021-03-31 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "launch year grace: paid 31 Mar, claim the day after",
        2021,
        {"pay_date": "2021-03-31"},
        "2021-04-01 08:00:00",
        None,
        [],
    ),
    (
        "launch year: paid 1 Apr waits 6 months",
        2021,
        {"pay_date": "2021-04-01"},
        "2021-09-30 08:00:00",
        None,
        ["WAITING_PERIOD"],
    ),
    (
        "launch year: paid 1 Apr, day of benefit start",
        2021,
        {"pay_date": "2021-04-01"},
        "2021-10-01 08:00:00",
        None,
        [],
    ),
]


def test_eligibility_boundaries(ex: Extract, tmp_path: Path) -> None:
    for i, (_case, year, roster, when, begn, _reasons) in enumerate(ELIGIBILITY):
        if roster is not None:
            ex.member(f"M{i}", plan_year=year, **roster)
        ex.claim(f"S{i}", f"M{i}", when, reasonable="20000", begndate=begn)
    p = adjudicate(ex, tmp_path)
    wrong = []
    for i, (case, _year, _roster, _when, _begn, reasons) in enumerate(ELIGIBILITY):
        r = row(p, f"S{i}")
        expected_status = "denied" if reasons else "paid"
        if r["reasons"] != reasons or r["status"] != expected_status:
            wrong.append(f"{case}: got {r['status']} {r['reasons']}, expected {reasons}")
        if reasons:
            assert r["reasonable_amt"] == yuan(0) and r["payout_amt"] == yuan(0)
    assert not wrong, "\n".join(wrong)


def test_denied_settlement_leaves_year_to_date_unchanged(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1", basic_suspended_from="2022-04-01", basic_suspended_to="2022-04-30")
    ex.claim("S1", "M1", "2022-03-01 08:00:00", reasonable="28000")  # payable 10,000
    ex.claim("S2", "M1", "2022-04-15 08:00:00", reasonable="50000")  # suspended
    ex.claim("S3", "M1", "2022-05-01 08:00:00", reasonable="1000")
    p = adjudicate(ex, tmp_path)
    denied = row(p, "S2")
    assert denied["status"] == "denied"
    assert denied["cum_payable_amt"] == yuan("10000") and denied["cum_payout_amt"] == yuan("7500")
    assert row(p, "S3")["cum_payable_amt"] == yuan("11000")


@pytest.mark.parametrize("buckets", ["1", "3"])
def test_a_denied_settlement_s_lines_count_nothing_and_say_why(
    ex: Extract, tmp_path: Path, buckets: str
) -> None:
    # the lines are judged before the member's eligibility is known (as if paid), then the
    # denial rewrites them: every component DENIED_SETTLEMENT, nothing counted, the reasons
    # DENIED_SETTLEMENT and the list that excluded a line (in one part or cut in three)
    ex.on_list("negative", "NEG-1", "2022-01-01")
    ex.member("M1", basic_suspended_from="2022-04-01", basic_suspended_to="2022-04-30")
    negative = {"list_type": "101", "chrgitm_lv": "03", "fulamt_ownpay_amt": "70", "code": "NEG-1"}
    ex.claim("S1", "M1", "2022-03-01 08:00:00", reasonable="100", extra_lines=[negative])
    ex.claim("S2", "M1", "2022-04-15 08:00:00", reasonable="100", extra_lines=[negative])
    p = adjudicate(ex, tmp_path, "--buckets", buckets)
    assert row(p, "S2")["status"] == "denied" and row(p, "S1")["status"] == "zero"
    audit = pl.read_parquet(tmp_path / "out" / "lines.parquet").sort("setl_id", "feedetl_sn")
    denied = audit.filter(pl.col("setl_id") == "S2")
    assert denied["reasons"].to_list() == [
        ["DENIED_SETTLEMENT"],
        ["DENIED_SETTLEMENT"],
        ["DENIED_SETTLEMENT", "NEGATIVE_LIST"],
    ]
    assert (denied["reasonable_counted"] == 0).all()
    dispositions = [c for c in audit.columns if c.endswith("__disposition")]
    assert set(denied.select(dispositions).unpivot()["value"].cast(pl.String)) == {
        "DENIED_SETTLEMENT"
    }
    paid = audit.filter(pl.col("setl_id") == "S1")
    assert paid["reasons"].to_list() == [[], ["COUNTED_REASONABLE"], ["NEGATIVE_LIST"]]
    assert paid["reasonable_counted"].to_list() == [yuan(0), yuan(100), yuan(0)]


def test_list_validity_first_and_last_day(ex: Extract, tmp_path: Path) -> None:
    ex.on_list("negative", "NEG-WINDOW", "2022-03-10", "2022-03-20")
    ex.on_list("admission", "SV-WINDOW", "2022-03-10", "2022-03-20")
    ex.member("M1")
    days = {
        "before": "2022-03-09",
        "first": "2022-03-10",
        "last": "2022-03-20",
        "after": "2022-03-21",
    }
    for name, day in days.items():
        ex.claim(
            f"N-{name}",
            "M1",
            f"{day} 10:00:00",
            extra_lines=[
                {
                    "list_type": "101",
                    "chrgitm_lv": "03",
                    "fulamt_ownpay_amt": "100.00",
                    "code": "NEG-WINDOW",
                    "fee_ocur_time": f"{day} 09:00:00",
                }
            ],
        )
        ex.claim(
            f"A-{name}",
            "M1",
            f"{day} 11:00:00",
            extra_lines=[
                {
                    "list_type": "201",
                    "chrgitm_lv": "03",
                    "fulamt_ownpay_amt": "100.00",
                    "code": "SV-WINDOW",
                    "fee_ocur_time": f"{day} 09:00:00",
                }
            ],
        )
    p = adjudicate(ex, tmp_path)
    negative = {k: row(p, f"N-{k}")["reasonable_amt"] for k in days}
    admitted = {k: row(p, f"A-{k}")["reasonable_amt"] for k in days}
    assert negative == {"before": yuan(100), "first": yuan(0), "last": yuan(0), "after": yuan(100)}
    assert admitted == {"before": yuan(0), "first": yuan(100), "last": yuan(100), "after": yuan(0)}
    audit = pl.read_parquet(tmp_path / "out" / "lines.parquet")
    reasons = {
        (r["setl_id"], r["med_list_codg"]): r["reasons"]
        for r in audit.filter(pl.col("feedetl_sn") == "0003").iter_rows(named=True)
    }
    assert reasons[("N-first", "NEG-WINDOW")] == ["NEGATIVE_LIST"]
    assert reasons[("A-after", "SV-WINDOW")] == ["NOT_ADMITTED"]
    assert reasons[("A-first", "SV-WINDOW")] == ["COUNTED_REASONABLE"]


def test_reasonable_cost_components(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim(
        "S1",
        "M1",
        "2022-03-01 10:00:00",
        extra_lines=[
            # Class-B first self-pay and over-limit count for any line not on the negative list
            {
                "list_type": "101",
                "chrgitm_lv": "02",
                "preselfpay_amt": "10.00",
                "overlmt_amt": "5.00",
                "inscp_scp_amt": "40.00",
                "code": "D-B",
            },
            # self-paid material counts; self-paid service off the admission list does not
            {"list_type": "301", "chrgitm_lv": "03", "fulamt_ownpay_amt": "7.00", "code": "MAT"},
            {"list_type": "201", "chrgitm_lv": "03", "fulamt_ownpay_amt": "9.00", "code": "SV-X"},
            {
                "list_type": "201",
                "chrgitm_lv": "03",
                "fulamt_ownpay_amt": "11.00",
                "code": "SV-ADM",
            },
            # on the negative list: nothing counts, not even first self-pay
            {
                "list_type": "101",
                "chrgitm_lv": "02",
                "preselfpay_amt": "13.00",
                "inscp_scp_amt": "13.00",
                "code": "NEG1",
            },
        ],
    )
    r = row(adjudicate(ex, tmp_path), "S1")
    assert r["reasonable_amt"] == yuan("33.00")  # 10 + 5 + 7 + 11
    assert r["compliant_amt"] == yuan("53.00")  # in-policy amount, no fund paid anything


def test_referral_self_pay_moves_to_reasonable_at_half_rounded_half_up(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    # in-policy 1,000.01 of which 200.01 is referral self-pay: compliant 800.00,
    # reasonable gains 200.01 × 50% = 100.005 → 100.01 (half up)
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="1000.01", refl="200.01")
    r = row(adjudicate(ex, tmp_path), "S1")
    assert r["compliant_amt"] == yuan("800.00")
    assert r["reasonable_amt"] == yuan("100.01")


def test_fund_payments_reduce_compliant_cost_floored_at_zero(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    # in-policy 1,000.00 (the helper adds the fund's 700.00), basic fund 700.00 → 300.00
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="300", hifp="700")
    # in-policy 50.00, funds 80.00 (more than in-policy) → max(0, 50 − 80) = 0, not −30.00
    ex.claim("S2", "M1", "2022-03-02 10:00:00", compliant="50")
    ex.settlements[-1].update(hifp_pay="60.00", hifmi_pay="20.00")
    # in-policy 500.00, fund 200.00 leaves 300.00, referral self-pay 400.00
    # → max(0, 300 − 400) = 0, not −100.00; reasonable gains 400.00 × 50% = 200.00
    ex.claim("S3", "M1", "2022-03-03 10:00:00", compliant="300", hifp="200", refl="400")
    p = adjudicate(ex, tmp_path)
    assert row(p, "S1")["compliant_amt"] == yuan("300")
    assert row(p, "S2")["compliant_amt"] == yuan("0")
    assert (row(p, "S3")["compliant_amt"], row(p, "S3")["reasonable_amt"]) == (
        yuan("0"),
        yuan("200.00"),
    )
    # the year to date is what the settlements added: 300.00 + 0 + 0
    assert row(p, "S3")["cum_compliant_amt"] == yuan("300.00")


def test_bracket_boundary_crossed_inside_one_settlement(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="118000")  # P 100,000
    ex.claim("S2", "M1", "2022-04-01 10:00:00", reasonable="150000")  # P 250,000
    p = adjudicate(ex, tmp_path)
    assert row(p, "S1")["payout_amt"] == yuan("75000.00")
    # 100,000 more at 75% up to 200,000, then 50,000 at 85%
    assert row(p, "S2")["payout_amt"] == yuan("117500.00")
    assert row(p, "S2")["cum_payout_amt"] == yuan("192500.00")


def test_compliant_floor_crossed_inside_one_settlement(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="12000")
    ex.claim("S2", "M1", "2022-04-01 10:00:00", compliant="8000.01")  # YTD 20,000.01
    p = adjudicate(ex, tmp_path)
    assert row(p, "S1")["payout_amt"] == yuan(0)
    assert row(p, "S2")["payable_amt"] == yuan("2000.01")
    assert row(p, "S2")["payout_amt"] == yuan("1500.01")  # 1500.0075 → 1500.01


def test_half_up_rounding_of_each_year_to_date_benefit(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="18000.02")  # P 0.02 → B 0.015 → 0.02
    ex.claim("S2", "M1", "2022-03-02 10:00:00", reasonable="0.02")  # P 0.04 → B 0.03
    p = adjudicate(ex, tmp_path)
    assert row(p, "S1")["payout_amt"] == yuan("0.02")
    assert row(p, "S2")["payout_amt"] == yuan("0.01")
    assert row(p, "S2")["cum_payout_amt"] == yuan("0.03")


def test_reversals_in_the_same_run(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="28000")  # P 10,000 → 7,500
    ex.claim("S2", "M1", "2022-04-01 10:00:00", reasonable="10000")  # P 20,000 → 15,000
    ex.reversal("R1", "S1", "M1", "2022-05-01 10:00:00")
    ex.reversal("R1B", "S1", "M1", "2022-05-02 10:00:00")  # second reversal of S1
    ex.reversal("R9", "NOPE", "M1", "2022-05-03 10:00:00")  # unknown original
    ex.reversal("R2", "S3", "M1", "2022-05-04 10:00:00")  # original comes later
    ex.reversal("R3", "S2", "M2", "2022-05-05 10:00:00")  # another member's settlement
    ex.claim("S3", "M1", "2022-06-01 10:00:00", reasonable="1000")
    files_out = adjudicate(ex, tmp_path)
    r1 = row(files_out, "R1")
    assert r1["status"] == "reversal"
    # year to date before R1: reasonable 38,000, payable 20,000, paid 15,000; S1 undone leaves
    # reasonable 10,000 — under the deductible — so everything paid so far is taken back
    assert (r1["reasonable_amt"], r1["payable_amt"]) == (yuan("-28000"), yuan("-20000"))
    assert r1["payout_amt"] == yuan("-15000.00")
    # accumulators restored: what S2 alone would give
    assert (r1["cum_payable_amt"], r1["cum_payout_amt"]) == (yuan("0"), yuan("0"))
    assert row(files_out, "S3")["cum_payable_amt"] == yuan("0")
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    reasons = dict(zip(q["setl_id"].to_list(), q["reasons"].to_list(), strict=True))
    assert reasons == {
        "R1B": ["DUPLICATE_REVERSAL"],
        "R9": ["ORPHAN_REVERSAL"],
        "R2": ["ORPHAN_REVERSAL"],
        "R3": ["ORPHAN_REVERSAL"],
    }
    detail = q.filter(pl.col("setl_id") == "R3")["detail"][0]
    assert "belongs to member M1" in detail
    assert files_out.filter(pl.col("status") == "reversal")["setl_id"].to_list() == ["R1"]
