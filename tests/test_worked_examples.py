"""DOMAIN.md section 3's worked examples, each computed through the CLI on a tiny extract."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Extract, adjudicate, row, yuan


@pytest.mark.parametrize(
    ("reasonable", "compliant", "payable", "payout"),
    [
        # reasonable 100,000, compliant 0 → P 82,000 → B 61,500.00
        ("100000", "0", "82000", "61500.00"),
        # reasonable 318,000 → P 300,000 → 150,000 + 85,000
        ("318000", "0", "300000", "235000.00"),
        # P = 1,321,800 → 150,000 + 255,000 + 450,000 + 305,710
        ("1339800", "0", "1321800", "1160710.00"),
    ],
)
def test_brackets_on_year_to_date_payable(
    ex: Extract, tmp_path: Path, reasonable: str, compliant: str, payable: str, payout: str
) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable=reasonable, compliant=compliant)
    r = row(adjudicate(ex, tmp_path), "S1")
    assert r["payable_amt"] == yuan(payable)
    assert r["payout_amt"] == yuan(payout)
    assert r["cum_payout_amt"] == yuan(payout)
    assert r["status"] == "paid"


@pytest.mark.parametrize(
    ("year", "payable", "payout"),
    [
        (2021, "12000", "9000.00"),  # floor 18,000
        (2023, "17000", "12750.00"),  # floor 13,000 from 2023
    ],
)
def test_compliant_floor_by_edition(
    ex: Extract, tmp_path: Path, year: int, payable: str, payout: str
) -> None:
    ex.member("M1", plan_year=year)
    ex.claim("S1", "M1", f"{year}-05-01 10:00:00", compliant="30000")
    r = row(adjudicate(ex, tmp_path), "S1")
    assert r["plan_year"] == year
    assert r["compliant_amt"] == yuan("30000")
    assert r["payable_amt"] == yuan(payable)
    assert r["payout_amt"] == yuan(payout)
    assert r["edition"] == f"zhelibao-{year}"


def test_deductible_then_payout_across_two_claims(ex: Extract, tmp_path: Path) -> None:
    # claims of reasonable 15,000 then 10,000: payable 0 then 7,000; payouts 0.00 then 5,250.00
    ex.member("M1")
    ex.claim("S1", "M1", "2022-02-01 10:00:00", reasonable="15000")
    ex.claim("S2", "M1", "2022-06-01 10:00:00", reasonable="10000")
    p = adjudicate(ex, tmp_path)
    first, second = row(p, "S1"), row(p, "S2")
    assert (first["payable_amt"], first["payout_amt"], first["status"]) == (
        yuan(0),
        yuan(0),
        "zero",
    )
    assert (second["payable_amt"], second["payout_amt"]) == (yuan("7000"), yuan("5250.00"))
    assert second["cum_payout_amt"] == yuan("5250.00")


def test_claims_in_one_batch_are_taken_in_settlement_time_order(
    ex: Extract, tmp_path: Path
) -> None:
    # written in reverse order: the earlier settlement still consumes the deductible
    ex.member("M1")
    ex.claim("S2", "M1", "2022-06-01 10:00:00", reasonable="10000")
    ex.claim("S1", "M1", "2022-02-01 10:00:00", reasonable="15000")
    p = adjudicate(ex, tmp_path)
    assert row(p, "S1")["payout_amt"] == yuan(0)
    assert row(p, "S2")["payout_amt"] == yuan("5250.00")
    assert p["setl_id"].to_list() == ["S1", "S2"]
