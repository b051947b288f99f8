"""Issue 13: batches that used to pay wrong money with exit 0 (items 1, 4, 5, 7).

Each test names the item it covers; the arithmetic of expected amounts is in the comments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from conftest import Extract, adjudicate_args, ledger_snapshot, row, run_cli, standard_extract, yuan

MAX_YUAN = "10000000000.00"  # README: the largest amount a value may hold (10^10 yuan)


def _init(ledger: Path) -> None:
    """Create a ledger the way an operator does (`hmb-batch ledger init`)."""
    result = run_cli(["ledger", "init", str(ledger)])
    assert result.exit_code == 0, result.output


def _reversing(ex: Extract, setl_id: str, original: str, scale: int | None) -> None:
    """A reversal of ``original`` carrying its amounts times ``scale`` (None: all zero), with
    every other column as the platform sends it."""
    orig = next(s for s in ex.settlements if s["setl_id"] == original)
    rev: dict[str, Any] = {
        k: orig[k] for k in ("psn_no", "med_type", "insutype", "insu_admdvs") if k in orig
    }
    money = [
        "medfee_sumamt",
        "fulamt_ownpay_amt",
        "overlmt_selfpay",
        "preselfpay_amt",
        "inscp_amt",
        "hifp_pay",
        "refl_selfpay_amt",
    ]
    for k in money:
        if k in orig:
            rev[k] = "0" if scale is None else str(yuan(orig[k]) * scale)
    rev |= {
        "setl_id": setl_id,
        "init_setl_id": original,
        "refd_setl_flag": "1",
        "setl_time": "2022-05-01 10:00:00",
    }
    ex.settlements.append(rev)


# --- item 1: rate × year to date is exact up to the maximum amount --------------------------


def test_item01_ten_settlements_at_the_maximum_pay_exactly(tmp_path: Path) -> None:
    """Ten settlements of one member, each a drug line of 10^10 yuan fully self-paid: the year
    to date reaches 10^11 yuan, where Int64 rate products (ppm) used to wrap (the first
    settlement paid right, later ones negative or absurd, status `zero`)."""
    ex = standard_extract()
    ex.member("P1")
    for i in range(10):
        ex.claim(f"S{i}", "P1", f"2022-03-{i + 1:02d} 10:00:00", reasonable=MAX_YUAN)
    files = ex.write(tmp_path / "in")
    result = run_cli(adjudicate_args(files, tmp_path / "out", "--quiet"))
    assert result.exit_code == 0, result.output
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    # P = 10 × 10^10 − 18,000 = 99,999,982,000.00; B(P) = 200,000 × 75% + 300,000 × 85%
    #   + 500,000 × 90% + (P − 1,000,000) × 95% = 855,000 + 94,999,032,900 = 94,999,887,900.00
    assert row(p, "S9")["cum_payout_amt"] == yuan("94999887900.00")
    assert p["payout_amt"].sum() == yuan("94999887900.00")
    # the first: P = 9,999,982,000.00 -> 855,000 + 9,998,982,000 × 95% = 9,499,887,900.00;
    # each later one adds 10^10 × 95% = 9,500,000,000.00
    assert row(p, "S0")["payout_amt"] == yuan("9499887900.00")
    assert set(p.filter(pl.col("setl_id") != "S0")["payout_amt"]) == {yuan("9500000000.00")}
    assert set(p["status"]) == {"paid"}


def test_item01_a_batch_beyond_exact_sums_is_refused(tmp_path: Path) -> None:
    """A batch whose amounts add up past 10^14 yuan (where Int64 sums of fen could wrap) is
    refused before anything is applied, with the reason."""
    ex = standard_extract()
    ex.member("P1")
    # each settlement reads 4 × 10^10 yuan (medfee and fulamt on the header, the line's total
    # and fulamt): 2,600 of them are 1.04 × 10^14
    for i in range(2600):
        ex.claim(f"S{i:04d}", "P1", "2022-03-01 10:00:00", reasonable=MAX_YUAN)
    files = ex.write(tmp_path / "in")
    ledger = tmp_path / "ledger.duckdb"
    _init(ledger)
    before = ledger_snapshot(ledger)
    result = run_cli(adjudicate_args(files, tmp_path / "out", "--ledger", str(ledger)))
    assert result.exit_code == 3, result.output
    assert "more than the 100,000,000,000,000.00 yuan one batch may hold" in result.output
    assert ledger_snapshot(ledger) == before


# --- item 4: a roster with nobody for the batch's plan year ---------------------------------


def _one_claim(ex: Extract) -> None:
    ex.member("P1")
    ex.claim("S1", "P1", "2022-03-01 10:00:00", reasonable="20000")


def test_item04_header_only_roster_stops_before_anything_is_applied(tmp_path: Path) -> None:
    ex = standard_extract()
    _one_claim(ex)
    ex.roster.clear()  # the roster file is a header and nothing else
    files = ex.write(tmp_path / "in")
    ledger = tmp_path / "ledger.duckdb"
    _init(ledger)
    before = ledger_snapshot(ledger)
    result = run_cli(adjudicate_args(files, tmp_path / "out", "--ledger", str(ledger)))
    assert result.exit_code == 8, result.output
    assert "no member for plan year(s) 2022" in result.output
    assert ledger_snapshot(ledger) == before
    assert not (tmp_path / "out" / "payouts.parquet").exists()
    # with the right roster the same settlement is adjudicated, not a duplicate
    ex.member("P1")
    files = ex.write(tmp_path / "in")
    result = run_cli(adjudicate_args(files, tmp_path / "out", "--ledger", str(ledger), "--quiet"))
    assert result.exit_code == 0, result.output
    assert row(pl.read_parquet(tmp_path / "out" / "payouts.parquet"), "S1")["status"] == "paid"


def test_item04_roster_of_another_year_stops(tmp_path: Path) -> None:
    ex = standard_extract()
    ex.member("P1", plan_year=2021)
    ex.claim("S1", "P1", "2022-03-01 10:00:00", reasonable="20000")
    files = ex.write(tmp_path / "in")
    result = run_cli(adjudicate_args(files, tmp_path / "out"))
    assert result.exit_code == 8, result.output
    assert "2022" in result.output


# --- item 5: a reversal must reverse its original's amounts exactly --------------------------


def _paid_then_reversed(tmp_path: Path, scale: int | None) -> pl.DataFrame:
    """Night 1: S1 paid (reasonable 38,000, compliant 500 after hifp 1,000: pays 15,000).
    Night 2: R1 reverses S1 carrying S1's amounts × ``scale`` (None: all zero). Returns night
    2's payouts (its quarantine is in ``out2``)."""
    ex = standard_extract()
    ex.member("P1")
    ex.claim("S1", "P1", "2022-03-01 10:00:00", reasonable="38000", hifp="1000", compliant="500")
    ledger = tmp_path / "ledger.duckdb"
    _init(ledger)
    files = ex.write(tmp_path / "night1")
    args = adjudicate_args(files, tmp_path / "out1", "--ledger", str(ledger), "--quiet")
    assert run_cli(args).exit_code == 0
    night2 = Extract(roster=ex.roster, lists=ex.lists, settlements=list(ex.settlements))
    _reversing(night2, "R1", "S1", scale)
    night2.settlements.pop(0)  # S1 itself is not sent again
    files = night2.write(tmp_path / "night2")
    args = adjudicate_args(files, tmp_path / "out2", "--ledger", str(ledger), "--quiet")
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    return pl.read_parquet(tmp_path / "out2" / "payouts.parquet")


def _quarantine(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out2" / "quarantine.parquet")


def test_item05_reversal_must_be_zero_or_the_exact_negation(tmp_path: Path) -> None:
    """Across nights: an all-zero reversal and the exact negation reverse S1 in full; the same
    amounts positive (or a tenth of them) used to be applied as a full reversal too, and are
    now quarantined REVERSAL_MISMATCH naming the amount, what was expected and what was found."""
    # S1: medfee = 38,000 (self-paid drug) + 1,500 in-policy (500 + hifp 1,000) = 39,500.00
    for name, scale in (("zero", None), ("negated", -1)):
        p = _paid_then_reversed(tmp_path / name, scale)
        assert row(p, "R1")["status"] == "reversal"
        assert row(p, "R1")["payout_amt"] == yuan("-15000.00")
    p = _paid_then_reversed(tmp_path / "positive", 1)
    assert "R1" not in p["setl_id"].to_list()
    q = _quarantine(tmp_path / "positive").filter(pl.col("setl_id") == "R1")
    assert q["reasons"].to_list() == [["REVERSAL_MISMATCH"]]
    assert "medfee_sumamt expected -39500.00" in q["detail"][0]
    assert "found 39500.00" in q["detail"][0]


def test_item05_partial_reversal_in_the_same_batch_is_quarantined(tmp_path: Path) -> None:
    ex = standard_extract()
    ex.member("P1")
    ex.claim("S1", "P1", "2022-03-01 10:00:00", reasonable="38000")
    _reversing(ex, "R1", "S1", None)
    rev = ex.settlements[-1]
    # a tenth of the original's amounts, negated: medfee 38,000 -> -3,800
    rev |= {"medfee_sumamt": "-3800.00", "fulamt_ownpay_amt": "-3800.00"}
    files = ex.write(tmp_path / "in")
    result = run_cli(adjudicate_args(files, tmp_path / "out", "--quiet"))
    assert result.exit_code == 0, result.output
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    assert row(p, "S1")["payout_amt"] == yuan("15000.00")  # (38,000 − 18,000) × 75%
    assert "R1" not in p["setl_id"].to_list()
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    detail = q.filter(pl.col("setl_id") == "R1")["detail"][0]
    assert "medfee_sumamt expected -38000.00 (the negation of the original's) or 0" in detail
    assert "found -3800.00" in detail


# --- item 7: only applied settlements move the ledger's order mark ---------------------------


def test_item07_quarantined_far_future_row_does_not_block_later_nights(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    _init(ledger)
    ex = standard_extract()
    ex.member("P1")
    ex.claim("S1", "P1", "2022-03-01 10:00:00", reasonable="20000")
    ex.claim("S2099", "P1", "2099-03-01 10:00:00", reasonable="20000")  # NO_PLAN_EDITION
    files = ex.write(tmp_path / "night1")
    result = run_cli(adjudicate_args(files, tmp_path / "o1", "--ledger", str(ledger), "--quiet"))
    assert result.exit_code == 0, result.output
    q = pl.read_parquet(tmp_path / "o1" / "quarantine.parquet")
    assert q.filter((pl.col("setl_id") == "S2099") & (pl.col("record") == "settlement"))[
        "reasons"
    ].to_list() == [["NO_PLAN_EDITION"]]
    con = duckdb.connect(str(ledger), read_only=True)
    mark = con.execute("SELECT max(max_setl_time) FROM batches").fetchone()
    con.close()
    assert mark is not None and str(mark[0]) == "2022-03-01 10:00:00"
    night2 = standard_extract()
    night2.member("P1")
    night2.claim("S3", "P1", "2022-03-02 10:00:00", reasonable="20000")
    files = night2.write(tmp_path / "night2")
    result = run_cli(adjudicate_args(files, tmp_path / "o2", "--ledger", str(ledger), "--quiet"))
    assert result.exit_code == 0, result.output  # exit 9 (out of order) before the fix


def test_a_member_with_last_year_to_date_claims_in_the_new_year(tmp_path: Path) -> None:
    """January: a member whose 2022 year to date is in the ledger claims in 2023 only. The check
    inside the commit compares the member-years the night touches (it refused such a night)."""
    ledger = tmp_path / "ledger.duckdb"
    _init(ledger)
    nights = []
    for i, (when, setl_id) in enumerate(
        (("2022-12-20 10:00:00", "S22"), ("2023-01-05 10:00:00", "S23"))
    ):
        e = standard_extract()
        e.member("M1", plan_year=2022)
        e.member("M1", plan_year=2023)
        e.claim(setl_id, "M1", when, compliant="30000", reasonable="2000")
        files = e.write(tmp_path / f"in{i}")
        r = run_cli(adjudicate_args(files, tmp_path / f"out{i}", "--ledger", str(ledger)))
        assert r.exit_code == 0, r.output
        nights.append(pl.read_parquet(tmp_path / f"out{i}" / "payouts.parquet"))
    second = row(nights[1], "S23")
    assert second["plan_year"] == 2023 and second["payout_amt"] > 0
    # the new year starts at zero: the 2023 payout equals what the same claim alone pays
    alone = standard_extract()
    alone.member("M1", plan_year=2023)
    alone.claim("S23", "M1", "2023-01-05 10:00:00", compliant="30000", reasonable="2000")
    r = run_cli(adjudicate_args(alone.write(tmp_path / "alone"), tmp_path / "alone-out"))
    assert r.exit_code == 0, r.output
    single = row(pl.read_parquet(tmp_path / "alone-out" / "payouts.parquet"), "S23")
    for column in ("payout_amt", "cum_payout_amt", "compliant_amt", "reasonable_amt"):
        assert second[column] == single[column], column
