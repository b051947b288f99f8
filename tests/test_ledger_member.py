"""`hmb-batch ledger member`: why a member was paid what they were paid, through the CLI in a
subprocess as cron runs it (no terminal, CI=true), on the two nightly batches of sample_data/.

The members are chosen from the payout files (one paid across a bracket bound, one under the
floor and deductible, one denied for the waiting period); the expected bands, rates, floors and
benefit start are computed here by hand from 浙丽保 2022's published parameters (DOMAIN.md
section 3), not by hmb-batch's code.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import os
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

SAMPLE = Path(__file__).parent.parent / "sample_data"
# 浙丽保 2022 (丽政办发〔2020〕80号): floor on compliant cost, deductible on reasonable cost, and
# the brackets on year-to-date payable
FLOOR = DEDUCTIBLE = Decimal("18000")
BANDS = [
    (Decimal("0"), Decimal("200000"), Decimal("0.75")),
    (Decimal("200000"), Decimal("500000"), Decimal("0.85")),
    (Decimal("500000"), Decimal("1000000"), Decimal("0.90")),
    (Decimal("1000000"), None, Decimal("0.95")),
]
WAITING_MONTHS = 6


def hmb(args: list[str], cwd: Path = SAMPLE) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hmb-batch"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**env, "CI": "true"},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """A ledger with sample_data's two nights applied (as `make demo` does), then a third night
    of one large settlement, and their payouts."""
    tmp = tmp_path_factory.mktemp("member")
    ledger = tmp / "ledger.duckdb"
    assert hmb(["ledger", "init", str(ledger)]).returncode == 0
    for night in ("01", "02"):
        r = hmb(
            [
                "adjudicate",
                f"nightly/{night}/settlements.parquet",
                "--fees",
                f"nightly/{night}/fees.parquet",
                "--ledger",
                str(ledger),
                "--out",
                str(tmp / night),
                "--quiet",
            ]
        )
        assert r.returncode == 0, r.stderr
    payouts = pl.concat([pl.read_parquet(tmp / n / "payouts.parquet") for n in ("01", "02")])
    # a third night: the year's largest paid settlement again, every amount (and its fee
    # lines') times 40, so that a member's year to date crosses bracket bounds whatever the
    # generated year holds; an integer factor keeps every amount identity exact
    largest = payouts.filter(pl.col("status") == "paid").sort("payable_amt").row(-1, named=True)
    night = SAMPLE / "nightly" / ("01" if largest["batch_id"].startswith("01") else "02")
    copy = tmp / "in03"
    copy.mkdir()
    setl = pl.read_parquet(night / "settlements.parquet").filter(
        pl.col("setl_id") == largest["setl_id"]
    )
    fees = pl.read_parquet(night / "fees.parquet").filter(pl.col("setl_id") == largest["setl_id"])
    scaled = [c for c, t in setl.schema.items() if isinstance(t, pl.Decimal)]
    setl.with_columns(pl.col(scaled) * 40, pl.lit("S-TIMES-40").alias("setl_id")).write_parquet(
        copy / "settlements.parquet"
    )
    scaled = [c for c, t in fees.schema.items() if isinstance(t, pl.Decimal)]
    fees.with_columns(
        pl.col(scaled) * 40,
        pl.lit("S-TIMES-40").alias("setl_id"),
        ("X" + pl.col("feedetl_sn")).alias("feedetl_sn"),
    ).write_parquet(copy / "fees.parquet")
    r = hmb(
        [
            "adjudicate",
            str(copy),
            "--ledger",
            str(ledger),
            "--out",
            str(tmp / "03"),
            "--allow-out-of-order",
            "--quiet",
        ]
    )
    assert r.returncode == 0, r.stderr
    payouts = pl.concat([payouts, pl.read_parquet(tmp / "03" / "payouts.parquet")])
    return ledger, payouts


def member_json(ledger: Path, psn_no: str, *extra: str) -> dict[str, Any]:
    r = hmb(["ledger", "member", psn_no, "--ledger", str(ledger), "--json", *extra])
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def settlement(doc: dict[str, Any], setl_id: str) -> dict[str, Any]:
    found = [s for s in doc["settlements"] if s["setl_id"] == setl_id]
    assert len(found) == 1
    return found[0]


def by_hand_bands(before: Decimal, after: Decimal) -> list[tuple[Decimal, Decimal | None, Decimal]]:
    """(band's lower bound, rate, the part of before..after in the band), bands touched."""
    out = []
    for low, up, rate in BANDS:
        top = after if up is None else min(max(after, low), up)
        bottom = before if up is None else min(max(before, low), up)
        part = max(top, low) - max(bottom, low)
        if part:
            out.append((low, rate, part))
    return out


def b_of(p: Decimal) -> Decimal:
    """B(P) by hand, rounded half up to the fen."""
    total = Decimal(0)
    for low, up, rate in BANDS:
        total += rate * max(Decimal(0), (p if up is None else min(p, up)) - low)
    return total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def add_months(d: dt.date, months: int) -> dt.date:
    """A calendar-month offset, a month end clipped to the shorter month's end."""
    m = d.month - 1 + months
    year, month = d.year + m // 12, m % 12 + 1
    return dt.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def test_paid_across_a_bracket_bound(nights: tuple[Path, pl.DataFrame]) -> None:
    ledger, payouts = nights
    bounds = [up for _, up, _ in BANDS if up is not None]
    crossing = payouts.filter(
        (pl.col("status") == "paid")
        & pl.any_horizontal(
            [
                ((pl.col("cum_payable_amt") - pl.col("payable_amt")) < b)
                & (pl.col("cum_payable_amt") > b)
                for b in bounds
            ]
        )
    ).sort("setl_id")
    assert crossing.height, "sample data: no settlement crosses a bracket bound"
    row = crossing.row(0, named=True)
    doc = member_json(ledger, row["psn_no"], "--year", "2022")
    s = settlement(doc, row["setl_id"])
    assert (s["edition"], s["status"]) == ("zhelibao-2022", "paid")
    assert s["batch"]["id"] == row["batch_id"] and s["batch"]["started_at"]
    main = s["explanation"]["responsibilities"][0]

    after = row["cum_payable_amt"]
    before = after - row["payable_amt"]
    expected = by_hand_bands(before, after)
    assert len(expected) >= 2  # it does cross a bound
    got = [(Decimal(b["from"]), Decimal(b["rate"]), Decimal(b["payable"])) for b in main["bands"]]
    assert got == expected
    assert [Decimal(b["at_rate"]) for b in main["bands"]] == [r * p for _, r, p in expected]
    # the payout is B(after) − B(before), each rounded half up, and the split agrees
    assert Decimal(main["payout"]) == b_of(after) - b_of(before) == row["payout_amt"]
    assert Decimal(s["payout"]) == row["payout_amt"] and main["reproduced"] is True

    terms = {t["cost"]: t for t in main["terms"]}
    assert (terms["compliant"]["kind"], Decimal(terms["compliant"]["threshold"])) == (
        "floor",
        FLOOR,
    )
    assert Decimal(terms["reasonable"]["threshold"]) == DEDUCTIBLE
    for cost in ("compliant", "reasonable"):
        t = terms[cost]
        ytd_after = row[f"cum_{cost}_amt"]
        ytd_before = ytd_after - row[f"{cost}_amt"]
        assert (Decimal(t["cost_before"]), Decimal(t["cost_after"])) == (ytd_before, ytd_after)
        assert Decimal(t["counted_after"]) == max(Decimal(0), ytd_after - FLOOR)
        expected_state = (
            ("above" if ytd_before > FLOOR else "crossed") if ytd_after > FLOOR else "below"
        )
        assert t["reached"] == expected_state
    # roster facts from hmb.toml's roster, the very file both batches read
    assert doc["roster"]["available"] is True
    assert sorted(doc["roster"]["same_file_as_batches"]) == sorted(set(payouts["batch_id"]))
    totals = {t["plan_year"]: t for t in doc["totals"]}
    member_rows = payouts.filter(pl.col("psn_no") == row["psn_no"])
    assert Decimal(totals[2022]["payout"]) == member_rows["payout_amt"].sum()

    # the same in text, at no terminal: no id or amount cut
    text = hmb(["ledger", "member", row["psn_no"], "--ledger", str(ledger)])
    assert text.returncode == 0, text.stderr
    assert row["setl_id"] in text.stdout and row["batch_id"] in text.stdout
    for low, rate, part in expected:
        band = f"above {low:,.2f}" if low == BANDS[-1][0] else f"{low:,.2f}–"
        assert f"{part:,.2f} in band {band}" in text.stdout
        assert f"× {rate * 100:.0f}%" in text.stdout  # 75%, 85%, 90%, 95%
    assert f"payout {row['payout_amt']:,}" in text.stdout
    assert "…" not in text.stdout


def test_under_the_floor_and_deductible(nights: tuple[Path, pl.DataFrame]) -> None:
    ledger, payouts = nights
    year_end = payouts.group_by("psn_no").agg(
        pl.col("cum_compliant_amt").max(),
        pl.col("cum_reasonable_amt").max(),
        (pl.col("status") == "zero").all().alias("all_zero"),
    )
    small = year_end.filter(
        pl.col("all_zero")
        & (pl.col("cum_compliant_amt") > 0)
        & (pl.col("cum_compliant_amt") < FLOOR)
        & (pl.col("cum_reasonable_amt") < DEDUCTIBLE)
    ).sort("cum_compliant_amt", descending=True)
    assert small.height, "sample data: no member under the floor"
    psn_no = small["psn_no"][0]
    doc = member_json(ledger, psn_no)
    for row in payouts.filter(pl.col("psn_no") == psn_no).iter_rows(named=True):
        main = settlement(doc, row["setl_id"])["explanation"]["responsibilities"][0]
        assert main["bands"] == [] and Decimal(main["payout"]) == 0
        for t in main["terms"]:
            assert t["reached"] == "below" and Decimal(t["counted_after"]) == 0
            assert Decimal(t["threshold"]) == FLOOR
            left = FLOOR - Decimal(t["cost_after"])
            assert left > 0  # what is still to go before anything counts
        compliant = next(t for t in main["terms"] if t["cost"] == "compliant")
        assert Decimal(compliant["cost_after"]) == row["cum_compliant_amt"]
    # in text, what is still to go before the floor counts anything
    last = payouts.filter(pl.col("psn_no") == psn_no).sort("setl_time").row(-1, named=True)
    text = hmb(["ledger", "member", psn_no, "--ledger", str(ledger)])
    to_go = FLOOR - last["cum_compliant_amt"]
    assert f"compliant {last['cum_compliant_amt'] - last['compliant_amt']:,} → " in text.stdout
    assert f"below ({to_go:,} to go)" in text.stdout


def test_denied_for_the_waiting_period(nights: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    ledger, payouts = nights
    roster = pl.read_parquet(SAMPLE / "roster.parquet")
    # late payers, with no special event and no restoration: rule 4 by the rule text
    late = roster.filter(
        (pl.col("plan_year") == 2022)
        & (pl.col("pay_date") > dt.date(2021, 12, 31))
        & (pl.col("special_event").fill_null("") == "")
        & pl.col("basic_restored_date").is_null()
    )
    denied = (
        payouts.filter(pl.col("reasons").list.contains("WAITING_PERIOD"))
        .join(late.select("psn_no", "pay_date"), on="psn_no")
        .sort("setl_id")
    )
    assert denied.height, "sample data: no late payer denied for the waiting period"
    row = denied.row(0, named=True)
    start = add_months(row["pay_date"], WAITING_MONTHS)
    doc = member_json(ledger, row["psn_no"])
    s = settlement(doc, row["setl_id"])
    assert (s["status"], s["reasons"]) == ("denied", ["WAITING_PERIOD"])
    (facts,) = doc["roster"]["plan_years"]
    assert facts["rule"] == 4 and "6 months" in facts["rule_text"]
    assert facts["pay_date"] == row["pay_date"].isoformat()
    assert facts["benefit_start"] == start.isoformat()
    assert facts["waiting_period_last_day"] == (start - dt.timedelta(days=1)).isoformat()
    assert facts["set_by_restoration"] is False and facts["suspensions"] == []

    text = hmb(["ledger", "member", row["psn_no"], "--ledger", str(ledger)])
    assert text.returncode == 0, text.stderr
    assert f"before the benefit start {start} (rule 4)" in text.stdout

    # without the roster the statement still answers, and says why the facts are missing
    gone = member_json(ledger, row["psn_no"], "--roster", str(tmp_path / "none.parquet"))
    assert gone["roster"]["available"] is False and gone["roster"]["plan_years"] == []
    assert "does not exist" in gone["roster"]["unavailable_reason"]
    assert settlement(gone, row["setl_id"])["status"] == "denied"


def test_no_name_or_id_number_is_shown(nights: tuple[Path, pl.DataFrame]) -> None:
    ledger, payouts = nights
    settlements = pl.read_parquet(SAMPLE / "nightly" / "01" / "settlements.parquet")
    person = settlements.row(0, named=True)
    masked = payouts.filter(pl.col("psn_no") == person["psn_no"]).row(0, named=True)
    for args in ([], ["--json"]):
        r = hmb(["ledger", "member", person["psn_no"], "--ledger", str(ledger), *args])
        assert r.returncode == 0, r.stderr
        for secret in (person["psn_name"], person["certno"], masked["psn_name"], masked["certno"]):
            assert secret not in r.stdout and secret not in r.stderr


def test_an_unknown_member_as_json(nights: tuple[Path, pl.DataFrame]) -> None:
    ledger, _ = nights
    doc = member_json(ledger, "NOBODY")
    assert doc["settlements"] == [] and doc["totals"] == []
