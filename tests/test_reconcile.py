"""Reconciliation: every fen of a batch accounted for, or the batch is refused."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from conftest import GOLDEN, golden_batch, ledger_snapshot
from hmb_batch import pipeline
from hmb_batch.contracts import LINE_COMPONENTS
from hmb_batch.errors import ReconciliationError
from hmb_batch.ledger import open_ledger
from hmb_batch.pipeline import BatchInputs, run_batch


def _inputs(name: str) -> BatchInputs:
    b = GOLDEN / name
    return BatchInputs(
        b / "settlements.parquet",
        b / "fees.parquet",
        GOLDEN / "roster.parquet",
        GOLDEN / "lists.parquet",
        "zhelibao",
    )


def test_every_golden_night_reconciles_to_the_fen(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    for name in ("batch_00", "batch_01", "batch_02"):
        assert golden_batch(ledger, tmp_path, name).exit_code == 0
        report = json.loads((tmp_path / name / "reconciliation.json").read_text(encoding="utf-8"))
        assert report["passed"] is True and report["batch_id"].startswith(name)
        names = {i["name"] for i in report["identities"]}
        assert {f"fee_lines.{c}" for c in LINE_COMPONENTS} <= names
        assert {
            "fee_lines.count",
            "cost_counted.reasonable",
            "cost_split.compliant",
            "settlements.count",
            "payouts.telescope",
            "ledger.accumulator_log",
            "ledger.before",
        } <= names
        # line level, recomputed here: each component's input = the sum of its dispositions
        fees = pl.read_parquet(GOLDEN / name / "fees.parquet")
        for comp in report["fee_line_components"]:
            parts = sum(Decimal(d["amount"]) for d in comp["by_disposition"].values())
            assert parts == Decimal(comp["input"]) == Decimal(str(fees[comp["component"]].sum()))
        # what the lines counted is what the payout file says each settlement added (reversals
        # take back their originals' increments and have no counted lines of their own)
        payouts = pl.read_parquet(tmp_path / name / "payouts.parquet")
        counted = report["costs"]["reasonable"]["COUNTED_REASONABLE"]
        originals = payouts.filter(pl.col("status") != "reversal")
        assert Decimal(counted) == originals["reasonable_amt"].sum()
        # the payout file's total is the telescoped total
        telescope = next(i for i in report["identities"] if i["name"] == "payouts.telescope")
        assert Decimal(telescope["found"]) == payouts["payout_amt"].sum()


def _refused(tmp_path: Path, ledger: Path, name: str, match: str) -> ReconciliationError:
    with open_ledger(ledger):  # an empty ledger, to compare with
        pass
    before = ledger_snapshot(ledger)
    with pytest.raises(ReconciliationError, match=match) as caught:
        run_batch(_inputs(name), tmp_path / "out", ledger_path=ledger)
    assert ledger_snapshot(ledger) == before, "the ledger must be untouched"
    assert not (tmp_path / "out" / "payouts.parquet").exists()
    report = json.loads((tmp_path / "out" / "reconciliation.json").read_text(encoding="utf-8"))
    assert report["passed"] is False
    return caught.value


def test_a_corrupted_increment_is_refused_naming_the_settlement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger.duckdb"
    real = pipeline.adjudicate_prepared
    victim: list[str] = []

    def corrupt(*args: Any, **kw: Any) -> Any:
        done = real(*args, **kw)
        paid = done.payouts.filter(pl.col("status") == "paid").sort("setl_id")
        victim.append(paid["setl_id"][0])
        bumped = pl.when(pl.col("setl_id") == victim[0])
        payouts = done.payouts.with_columns(
            bumped.then(pl.col("inc__reasonable") + 1).otherwise(pl.col("inc__reasonable"))
        )
        return dataclasses.replace(done, payouts=payouts)

    monkeypatch.setattr(pipeline, "adjudicate_prepared", corrupt)
    error = _refused(tmp_path, ledger, "batch_00", "cost_counted.reasonable")
    assert victim[0] in str(error) and "expected" in str(error) and error.exit_code == 6


def test_a_lost_fee_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "ledger.duckdb"
    real = pipeline.prepare_batch

    def lose_a_line(*args: Any, **kw: Any) -> Any:
        batch = real(*args, **kw)
        lines = batch.checked.fee_lines
        checked = dataclasses.replace(batch.checked, fee_lines=lines.slice(1))
        return dataclasses.replace(batch, checked=checked)

    monkeypatch.setattr(pipeline, "prepare_batch", lose_a_line)
    error = str(_refused(tmp_path, ledger, "batch_00", "fee_lines.count"))
    assert "expected 4,050, found 4,049" in error


def test_a_ledger_tampered_between_batches_is_refused(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    tonight = pl.read_parquet(GOLDEN / "batch_01" / "settlements.parquet")["psn_no"]
    con = duckdb.connect(str(ledger))
    con.register("tonight", tonight.to_frame().to_arrow())
    member = con.execute(
        "SELECT psn_no FROM accumulator_log JOIN tonight USING (psn_no) "
        "WHERE cost = 'reasonable' AND after_fen > 0 ORDER BY psn_no LIMIT 1"
    ).fetchall()[0][0]
    con.execute(  # someone adds 1.00 yuan to a member's year to date by hand
        "UPDATE accumulator_log SET after_fen = after_fen + 100 "
        "WHERE psn_no = ? AND cost = 'reasonable'",
        [member],
    )
    con.close()
    before = ledger_snapshot(ledger)
    r = golden_batch(ledger, tmp_path, "batch_01")
    assert r.exit_code == 6, r.output
    assert "ledger.before" in r.output and member in r.output
    assert ledger_snapshot(ledger) == before


def test_the_commit_itself_checks_ledger_after_equals_before_plus_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger.duckdb"
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    real_rows = pipeline.batch_rows

    def bad_log(*args: Any, **kw: Any) -> Any:  # one accumulator written 0.01 too high
        rows = real_rows(*args, **kw)
        log = rows["accumulator_log"]
        first = pl.int_range(pl.len()) == 0
        rows["accumulator_log"] = log.with_columns(
            pl.when(first).then(pl.col("after_fen") + 1).otherwise(pl.col("after_fen"))
        )
        return rows

    # the pre-commit identities would see it too; switch them off to test the last line
    monkeypatch.setattr(pipeline, "batch_rows", bad_log)
    monkeypatch.setattr(pipeline, "_check_reconciled", lambda recon, out: None)
    before = ledger_snapshot(ledger)
    with pytest.raises(ReconciliationError, match=r"ledger\.after\.2022\.(compliant|reasonable)"):
        run_batch(_inputs("batch_01"), tmp_path / "out", ledger_path=ledger)
    assert ledger_snapshot(ledger) == before
