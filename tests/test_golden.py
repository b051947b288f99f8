"""The golden plan year (tests/golden/zhelibao-2022): every settlement's outcome, to the fen.

The expected outcomes were computed independently of hmb-batch from DOMAIN.md. Three nightly
batches run in order; settlements seen in an earlier batch are duplicates, reversals reach back
into earlier batches. Until the ledger carries the year to date from run to run, the three batches
run as one sequence of batches in the engine; the first batch alone also runs through the CLI.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import GOLDEN, MONEY_COLS, golden_args, run_cli
from hmb_batch.io.extract import read_extract
from hmb_batch.io.reference import load_lists, load_roster
from hmb_batch.money import to_decimal
from hmb_batch.plan.catalog import select_plan
from hmb_batch.rules.engine import adjudicate, plan_years
from hmb_batch.rules.validation import validate

KEY = ["setl_id", "psn_no", "plan_year", "status", "reasons", *MONEY_COLS]


def _expected(batches: list[str]) -> pl.DataFrame:
    return (
        pl.read_parquet(GOLDEN / "expected_payouts.parquet")
        .filter(pl.col("batch").is_in(batches))
        .select(KEY)
        .sort("setl_id")
    )


def _run_engine(ext: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    settlements, lines, quarantine = [], [], []
    for seq in range(3):
        name = f"batch_{seq:02d}"
        checked = validate(
            read_extract(GOLDEN / name / f"settlements.{ext}", GOLDEN / name / f"fees.{ext}")
        )
        settlements.append(
            checked.settlements.with_columns(
                pl.lit(seq, pl.Int64).alias("batch_seq"), pl.lit(name).alias("batch_id")
            )
        )
        lines.append(checked.fee_lines.with_columns(pl.lit(seq, pl.Int64).alias("batch_seq")))
        quarantine.append(checked.quarantine.with_columns(pl.lit(name).alias("batch")))
    s = pl.concat(settlements).collect()
    lists = load_lists(GOLDEN / f"lists.{ext}")
    roster = load_roster(GOLDEN / f"roster.{ext}")
    plan = select_plan("zhelibao", lists["list"].unique().to_list())
    result = adjudicate(
        s.lazy(), pl.concat(lines), roster.lazy(), lists.lazy(), plan, years=plan_years(s, None)
    )
    p = result.payouts.collect()
    payouts = p.select(
        "setl_id",
        "psn_no",
        "plan_year",
        "status",
        "reasons",
        to_decimal(pl.col("inc__compliant")).alias("compliant_amt"),
        to_decimal(pl.col("inc__reasonable")).alias("reasonable_amt"),
        to_decimal(pl.col("payable")).alias("payable_amt"),
        to_decimal(pl.col("payout")).alias("payout_amt"),
        to_decimal(pl.col("cum_payable")).alias("cum_payable_amt"),
        to_decimal(pl.col("cum_payout")).alias("cum_payout_amt"),
    ).sort("setl_id")
    engine_q = (
        result.quarantine.collect()
        .join(s.select("setl_id", "batch_seq"), on=["setl_id", "batch_seq"], how="left")
        .with_columns(
            pl.format("batch_{}", pl.col("batch_seq").cast(pl.String).str.zfill(2)).alias("batch")
        )
    )
    q = pl.concat(
        [
            pl.concat(quarantine)
            .filter(pl.col("record") == "settlement")
            .collect()
            .select("batch", "setl_id", "reasons"),
            engine_q.select("batch", "setl_id", "reasons"),
        ]
    ).sort("batch", "setl_id")
    return payouts, q


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_golden_year_every_settlement_to_the_fen(ext: str) -> None:
    payouts, quarantine = _run_engine(ext)
    assert_frame_equal(payouts, _expected(["batch_00", "batch_01", "batch_02"]))
    expected_q = pl.read_parquet(GOLDEN / "expected_quarantine.parquet").sort("batch", "setl_id")
    assert_frame_equal(quarantine, expected_q)


def test_golden_first_batch_through_the_cli(tmp_path: Path) -> None:
    result = run_cli(golden_args("batch_00", tmp_path))
    assert result.exit_code == 0, result.output
    got = pl.read_parquet(tmp_path / "payouts.parquet").select(KEY).sort("setl_id")
    assert_frame_equal(got, _expected(["batch_00"]))
    q = pl.read_parquet(tmp_path / "quarantine.parquet").filter(pl.col("record") == "settlement")
    expected_q = pl.read_parquet(GOLDEN / "expected_quarantine.parquet").filter(
        pl.col("batch") == "batch_00"
    )
    assert sorted(q["setl_id"]) == sorted(expected_q["setl_id"])
    # a quarantined settlement's fee lines are quarantined with it
    lines_q = pl.read_parquet(tmp_path / "quarantine.parquet").filter(
        pl.col("record") == "fee_line"
    )
    assert set(lines_q["setl_id"]) <= set(q["setl_id"])
    assert "S202200000703" in set(lines_q["setl_id"])  # HEADER_LINE_MISMATCH keeps its lines
