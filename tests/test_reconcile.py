"""Reconciliation: every fen of a batch accounted for, or the batch is refused."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import hmb_batch
from conftest import GOLDEN, golden_batch, ledger_snapshot, new_ledger
from hmb_batch.errors import ReconciliationError
from hmb_batch.io.contracts import LINE_COMPONENTS
from hmb_batch.rules import kernel
from hmb_batch.rules.reconcile import COUNTED_FROM_LINES
from hmb_batch.run import batch as pipeline
from hmb_batch.run.batch import BatchInputs, run_batch


def _inputs(name: str) -> BatchInputs:
    b = GOLDEN / name
    return BatchInputs(
        b / "settlements.parquet",
        b / "fees.parquet",
        GOLDEN / "roster.parquet",
        GOLDEN / "lists.parquet",
        "zhelibao",
    )


# The edition's own numbers, read from its file (not through hmb_batch's compiled benefit): what
# the identities' expected figures are checked against, so a wrong bracket or fund list in the
# engine (which the identities share with it) is caught here.
EDITION_2022 = tomllib.loads(
    (Path(hmb_batch.__file__).parent / "editions" / "zhelibao-2022.toml").read_text("utf-8")
)
CENT = Decimal("0.01")


def brackets_benefit(payable: Decimal) -> Decimal:
    """B(P) from the 2022 edition's brackets: Σ rate × the part of P in each band, rounded half
    up to the fen (75% to 200,000; 85% to 500,000; 90% to 1,000,000; 95% above)."""
    total, low = Decimal(0), Decimal(0)
    for band in EDITION_2022["responsibilities"][0]["brackets"]:
        high = Decimal(band["up_to"]) if "up_to" in band else None
        top = payable if high is None else min(payable, high)
        total += max(top - low, Decimal(0)) * Decimal(band["rate"])
        if high is not None:
            low = high
    return total.quantize(CENT, rounding=ROUND_HALF_UP)


def test_item19_brackets_benefit_is_the_rule_text() -> None:
    # DOMAIN.md's worked examples, so the helper the identities are checked with is right
    assert brackets_benefit(Decimal("82000")) == Decimal("61500.00")
    assert brackets_benefit(Decimal("300000")) == Decimal("235000.00")  # 150,000 + 85,000
    # 150,000 + 255,000 + 450,000 + 321,800 × 95% = 305,710
    assert brackets_benefit(Decimal("1321800")) == Decimal("1160710.00")
    assert brackets_benefit(Decimal("0.02")) == Decimal("0.02")  # 0.015 → 0.02 (half up)


def _golden_year() -> pl.DataFrame:
    """The golden outcomes with each settlement's setl_time and header amounts (fen-exact
    Decimals), in processing order (batch, setl_time, setl_id)."""
    headers = pl.concat(
        [
            pl.read_parquet(GOLDEN / b / "settlements.parquet").with_columns(
                pl.lit(b).alias("batch")
            )
            for b in ("batch_00", "batch_01", "batch_02")
        ]
    )
    return (
        pl.read_parquet(GOLDEN / "expected_payouts.parquet")
        .join(headers.drop("psn_no"), on=["batch", "setl_id"], how="left")
        .sort("batch", "setl_time", "setl_id")
    )


def _d(report: dict[str, Any], *path: str) -> Decimal:
    v: Any = report
    for k in path:
        v = v[k]
    return Decimal(v)


def _identity(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(i for i in report["identities"] if i["name"] == name)


def test_every_golden_night_reconciles_to_the_fen(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    year = _golden_year()
    funds = EDITION_2022["costs"]["compliant"]["less_funds"]  # hifp_pay … maf_pay (six)
    assert "othfund_pay" not in funds
    p_before: dict[str, Decimal] = {}  # member → year-to-date payable before tonight
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
            "settlement_level.inscp_scp_amt",
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
        tonight = year.filter(pl.col("batch") == name)
        originals = tonight.filter(pl.col("status") != "reversal")
        # cost_counted.reasonable: both sides equal the independently computed increments
        golden_reasonable = Decimal(str(originals["reasonable_amt"].sum()))
        counted = _identity(report, "cost_counted.reasonable")
        assert Decimal(counted["expected"]) == Decimal(counted["found"]) == golden_reasonable
        assert _d(report, "costs", "reasonable", COUNTED_FROM_LINES) == golden_reasonable
        # cost_split.compliant, from the settlement headers of the settlements not denied:
        # start inscp_amt = min(inscp, Σ six funds) + min(rest, refl) + compliant counted
        live = originals.filter(pl.col("status") != "denied")
        inscp = [Decimal(str(v)) for v in live["inscp_amt"]]
        paid = [sum(Decimal(str(v or 0)) for v in r) for r in live.select(funds).rows()]
        refl = [Decimal(str(v or 0)) for v in live["refl_selfpay_amt"]]
        by_funds = sum((min(i, f) for i, f in zip(inscp, paid, strict=True)), Decimal(0))
        moved = sum(
            (min(max(i - f, Decimal(0)), r) for i, f, r in zip(inscp, paid, refl, strict=True)),
            Decimal(0),
        )
        compliant = report["costs"]["compliant"]
        assert Decimal(compliant["START"]) == sum(inscp, Decimal(0))
        assert Decimal(compliant["PAID_BY_FUNDS"]) == by_funds
        assert Decimal(compliant["MOVED_REFL_SELFPAY_AMT"]) == moved
        assert Decimal(compliant["COUNTED_COMPLIANT"]) == Decimal(
            str(originals["compliant_amt"].sum())
        )
        split = _identity(report, "cost_split.compliant")
        assert Decimal(split["expected"]) == Decimal(split["found"]) == sum(inscp, Decimal(0))
        # settlements.count: rows in the file = golden adjudicated + golden quarantined
        quarantined = pl.read_parquet(GOLDEN / "expected_quarantine.parquet").filter(
            pl.col("batch") == name
        )
        rows_in = pl.read_parquet(GOLDEN / name / "settlements.parquet").height
        count = _identity(report, "settlements.count")
        assert count["expected"] == count["found"] == rows_in
        assert (
            rows_in
            == tonight.height + quarantined.height + report["settlements"]["identical_repeats"]
        )
        # payouts.telescope: Σ over tonight's members of B(P_after) − B(P_before), B from the
        # edition's brackets, P_after the member's last year-to-date payable tonight
        p_after = dict(
            tonight.group_by("psn_no", maintain_order=True)
            .agg(pl.col("cum_payable_amt").last())
            .iter_rows()
        )
        telescoped = sum(
            (
                brackets_benefit(Decimal(str(p))) - brackets_benefit(p_before.get(m, Decimal(0)))
                for m, p in p_after.items()
            ),
            Decimal(0),
        )
        p_before.update({m: Decimal(str(p)) for m, p in p_after.items()})
        telescope = _identity(report, "payouts.telescope")
        payouts = pl.read_parquet(tmp_path / name / "payouts.parquet")
        assert Decimal(telescope["expected"]) == telescoped
        assert Decimal(telescope["found"]) == telescoped == payouts["payout_amt"].sum()
        assert telescoped == Decimal(str(tonight["payout_amt"].sum()))


def _refused(tmp_path: Path, ledger: Path, name: str, match: str) -> ReconciliationError:
    if not ledger.exists():
        new_ledger(ledger)  # an empty ledger, to compare with
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
    real = kernel.adjudicate_settlements
    victim: list[str] = []

    def corrupt(*args: Any, **kw: Any) -> Any:
        done = real(*args, **kw)
        paid = done.payouts.filter(pl.col("status") == "paid").sort("setl_id").collect()
        victim.append(paid["setl_id"][0])
        bumped = pl.when(pl.col("setl_id") == victim[0])
        payouts = done.payouts.with_columns(
            bumped.then(pl.col("inc__reasonable") + 1).otherwise(pl.col("inc__reasonable"))
        )
        return dataclasses.replace(done, payouts=payouts)

    monkeypatch.setattr(kernel, "adjudicate_settlements", corrupt)
    error = _refused(tmp_path, ledger, "batch_00", "cost_counted.reasonable")
    assert victim[0] in str(error) and "expected" in str(error) and error.exit_code == 6


def test_a_lost_fee_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "ledger.duckdb"
    real = kernel.check_extract

    def lose_a_line(*args: Any, **kw: Any) -> Any:
        checked = real(*args, **kw)
        return dataclasses.replace(checked, fee_lines=checked.fee_lines.slice(1))

    monkeypatch.setattr(kernel, "check_extract", lose_a_line)
    error = str(_refused(tmp_path, ledger, "batch_00", "fee_lines.count"))
    assert "expected 4,050, found 4,049" in error


def test_a_ledger_tampered_between_batches_is_refused(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    tonight = pl.read_parquet(GOLDEN / "batch_01" / "settlements.parquet")["psn_no"]
    con = duckdb.connect(str(ledger))
    con.register("tonight", tonight.to_frame().to_arrow())
    member = con.execute(
        "SELECT psn_no FROM accumulator_log JOIN tonight USING (psn_no) "
        "WHERE cost = 'reasonable' AND after_fen > 0 ORDER BY psn_no LIMIT 1"
    ).fetchall()[0][0]
    con.execute(  # someone adds 1.00 yuan to a member's year to date by hand
        "UPDATE member_state SET amount_fen = amount_fen + 100 "
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
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    real_rows = kernel.batch_rows

    def bad_log(*args: Any, **kw: Any) -> Any:  # one accumulator written 0.01 too high
        rows = real_rows(*args, **kw)
        log = rows["accumulator_log"]
        first = pl.int_range(pl.len()) == 0
        rows["accumulator_log"] = log.with_columns(
            pl.when(first).then(pl.col("after_fen") + 1).otherwise(pl.col("after_fen"))
        )
        return rows

    # the pre-commit identities would see it too; switch them off to test the last line
    monkeypatch.setattr(kernel, "batch_rows", bad_log)
    monkeypatch.setattr(pipeline, "check_reconciled", lambda recon, out: None)
    before = ledger_snapshot(ledger)
    with pytest.raises(ReconciliationError, match=r"ledger\.after\.2022\.(compliant|reasonable)"):
        run_batch(_inputs("batch_01"), tmp_path / "out", ledger_path=ledger)
    assert ledger_snapshot(ledger) == before


@dataclasses.dataclass(frozen=True)
class _Frames:
    """What the engine's stages give, for a fault to alter: the payouts and the engine's
    quarantine (the member stage), or the settled fee-line audit (``lines``)."""

    payouts: pl.DataFrame
    quarantine: pl.DataFrame
    lines: pl.DataFrame


def _engine_fault(
    monkeypatch: pytest.MonkeyPatch, fault: Any, victim: list[str], stage: str = "members"
) -> None:
    """Wrap one of the engine's stages in the kernel: ``fault(frames, victim)`` returns altered
    frames: the payouts and quarantine of the member stage, or the settled line audit."""
    empty = pl.DataFrame()
    if stage == "members":
        real_settlements = kernel.adjudicate_settlements

        def faulty_settlements(*args: Any, **kw: Any) -> Any:
            done = real_settlements(*args, **kw)
            payouts, quarantine = pl.collect_all([done.payouts, done.quarantine])
            frames = fault(_Frames(payouts, quarantine, empty), victim)
            return dataclasses.replace(
                done, payouts=frames.payouts.lazy(), quarantine=frames.quarantine.lazy()
            )

        monkeypatch.setattr(kernel, "adjudicate_settlements", faulty_settlements)
        return
    real_audit = kernel.settled_audit

    def faulty_audit(*args: Any, **kw: Any) -> Any:
        lines = real_audit(*args, **kw).collect()
        return fault(_Frames(empty, empty, lines), victim).lines.lazy()

    monkeypatch.setattr(kernel, "settled_audit", faulty_audit)


def _bump(frame: pl.DataFrame, setl_id: str, col: str, by: int = 1) -> pl.DataFrame:
    hit = pl.col("setl_id") == setl_id
    return frame.with_columns(pl.when(hit).then(pl.col(col) + by).otherwise(pl.col(col)))


def _first_paid(frames: Any) -> str:
    paid = frames.payouts.filter(pl.col("status") == "paid").sort("setl_id")
    return str(paid["setl_id"][0])


def test_item19_a_payout_off_by_one_fen_fails_the_telescope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fault(frames: Any, victim: list[str]) -> Any:
        victim.append(_first_paid(frames))
        return dataclasses.replace(frames, payouts=_bump(frames.payouts, victim[0], "payout"))

    victim: list[str] = []
    _engine_fault(monkeypatch, fault, victim)
    error = _refused(tmp_path, tmp_path / "ledger.duckdb", "batch_00", r"payouts\.telescope")
    assert error.exit_code == 6
    member = pl.read_parquet(GOLDEN / "batch_00" / "settlements.parquet").filter(
        pl.col("setl_id") == victim[0]
    )["psn_no"][0]
    assert f"{member} 2022" in str(error)  # the member-year involved is named
    failed = {i["name"] for i in _failed(tmp_path)}
    assert failed == {"payouts.telescope"}


def test_item19_a_compliant_increment_off_by_one_fen_fails_the_cost_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fault(frames: Any, victim: list[str]) -> Any:
        # a settlement well below the 18,000 floor: its payout does not move, only the split
        live = frames.payouts.filter(
            (pl.col("status") == "zero") & (pl.col("inc__compliant") > 0)
        ).sort("setl_id")
        victim.append(str(live["setl_id"][0]))
        return dataclasses.replace(
            frames, payouts=_bump(frames.payouts, victim[0], "inc__compliant")
        )

    victim: list[str] = []
    _engine_fault(monkeypatch, fault, victim)
    error = _refused(tmp_path, tmp_path / "ledger.duckdb", "batch_00", r"cost_split\.compliant")
    assert error.exit_code == 6 and victim[0] in str(error)
    # the accumulator log carries the year to date the engine computed, not the bumped increment
    assert {i["name"] for i in _failed(tmp_path)} == {
        "cost_split.compliant",
        "ledger.accumulator_log",
    }


def test_item19_a_header_changed_after_validation_fails_the_settlement_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a settlement's inscp_amt grows by 1.00 after validation compared it with its lines: the
    # compliant split is consistent with the new header, but the lines left less to the
    # settlement level than the settlements split
    real = kernel.check_extract
    victim: list[str] = []

    def grow_a_header(*args: Any, **kw: Any) -> Any:
        checked = real(*args, **kw)
        s = checked.settlements
        live = s.filter(~pl.col("is_reversal") & (pl.col("inscp_amt") > 0)).sort("setl_id")
        victim.append(str(live["setl_id"][0]))
        return dataclasses.replace(checked, settlements=_bump(s, victim[0], "inscp_amt", 100))

    monkeypatch.setattr(kernel, "check_extract", grow_a_header)
    error = _refused(
        tmp_path, tmp_path / "ledger.duckdb", "batch_00", r"settlement_level\.inscp_scp_amt"
    )
    assert error.exit_code == 6 and victim[0] in str(error)
    level = next(i for i in _failed(tmp_path) if i["name"] == "settlement_level.inscp_scp_amt")
    assert Decimal(level["difference"]) == Decimal("1.00")


def test_item19_a_settlement_lost_by_the_engine_fails_the_settlement_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fault(frames: Any, victim: list[str]) -> Any:
        # a denied settlement: no payout, no increment, its lines disposed of as denied
        denied = frames.payouts.filter(pl.col("status") == "denied").sort("setl_id")
        victim.append(str(denied["setl_id"][0]))
        kept = frames.payouts.filter(pl.col("setl_id") != victim[0])
        return dataclasses.replace(frames, payouts=kept)

    victim: list[str] = []
    _engine_fault(monkeypatch, fault, victim)
    ledger = tmp_path / "ledger.duckdb"
    error = _refused_early(tmp_path, ledger, "batch_00", "does not balance")
    # golden batch_00: 747 rows = 744 adjudicated + 3 quarantined; one lost leaves 743
    assert "747 settlement rows in, but 743 adjudicated" in str(error) and error.exit_code == 6
    # the identity itself, with the early check switched off
    monkeypatch.setattr(pipeline, "check_balanced", lambda summary: None)
    error = _refused(tmp_path, ledger, "batch_00", r"settlements\.count")
    assert "expected 747, found 746" in str(error) and error.exit_code == 6
    # the lost settlement's lines are no longer denied: they are left at settlement level,
    # where no settlement splits them
    assert {i["name"] for i in _failed(tmp_path)} == {
        "settlements.count",
        "settlement_level.inscp_scp_amt",
    }


def test_item19_a_line_amount_changed_in_the_audit_fails_its_component(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fault(frames: Any, victim: list[str]) -> Any:
        # a line on the negative list: its self-paid amount counts nowhere, so only the line
        # level can see that 0.01 appeared from nowhere
        lines = frames.lines
        neg = lines.filter(pl.col("fulamt_ownpay_amt__disposition") == "NEGATIVE_LIST")
        neg = neg.sort("setl_id", "feedetl_sn")
        victim.append(str(neg["setl_id"][0]))
        hit = (pl.col("setl_id") == neg["setl_id"][0]) & (
            pl.col("feedetl_sn") == neg["feedetl_sn"][0]
        )
        col = pl.col("fulamt_ownpay_amt")
        return dataclasses.replace(
            frames, lines=lines.with_columns(pl.when(hit).then(col + 1).otherwise(col))
        )

    victim: list[str] = []
    _engine_fault(monkeypatch, fault, victim, stage="lines")
    error = _refused(
        tmp_path, tmp_path / "ledger.duckdb", "batch_00", r"fee_lines\.fulamt_ownpay_amt"
    )
    assert error.exit_code == 6
    failed = {i["name"]: i for i in _failed(tmp_path)}
    assert set(failed) == {"fee_lines.fulamt_ownpay_amt"}
    assert Decimal(failed["fee_lines.fulamt_ownpay_amt"]["difference"]) == Decimal("0.01")


def test_item19_a_reasonable_increment_off_by_one_fen_fails_cost_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fault(frames: Any, victim: list[str]) -> Any:
        low = frames.payouts.filter(
            (pl.col("status") == "zero") & (pl.col("inc__reasonable") > 0)
        ).sort("setl_id")
        victim.append(str(low["setl_id"][0]))
        return dataclasses.replace(
            frames, payouts=_bump(frames.payouts, victim[0], "inc__reasonable")
        )

    victim: list[str] = []
    _engine_fault(monkeypatch, fault, victim)
    error = _refused(tmp_path, tmp_path / "ledger.duckdb", "batch_00", r"cost_counted\.reasonable")
    assert error.exit_code == 6 and victim[0] in str(error)
    # the accumulator log carries the year to date the engine computed, not the bumped increment
    assert {i["name"] for i in _failed(tmp_path)} == {
        "cost_counted.reasonable",
        "ledger.accumulator_log",
    }


def test_item19_an_accumulator_row_off_by_one_fen_is_refused_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    real_rows = kernel.batch_rows

    def bad_log(*args: Any, **kw: Any) -> Any:
        rows = real_rows(*args, **kw)
        log = rows["accumulator_log"]
        first = pl.int_range(pl.len()) == 0
        rows["accumulator_log"] = log.with_columns(
            pl.when(first).then(pl.col("after_fen") + 1).otherwise(pl.col("after_fen"))
        )
        return rows

    monkeypatch.setattr(kernel, "batch_rows", bad_log)
    before = ledger_snapshot(ledger)
    with pytest.raises(ReconciliationError, match=r"ledger\.accumulator_log") as caught:
        run_batch(_inputs("batch_01"), tmp_path / "out", ledger_path=ledger)
    assert caught.value.exit_code == 6
    assert ledger_snapshot(ledger) == before
    assert {i["name"] for i in _failed(tmp_path)} == {"ledger.accumulator_log"}


def _failed(tmp_path: Path) -> list[dict[str, Any]]:
    """The failed identities of the refused batch's reconciliation.json."""
    report = json.loads((tmp_path / "out" / "reconciliation.json").read_text(encoding="utf-8"))
    return [i for i in report["identities"] if not i["passed"]]


def _refused_early(tmp_path: Path, ledger: Path, name: str, match: str) -> ReconciliationError:
    """Refused before the identities are computed (no reconciliation.json), ledger untouched."""
    if not ledger.exists():
        new_ledger(ledger)
    before = ledger_snapshot(ledger)
    with pytest.raises(ReconciliationError, match=match) as caught:
        run_batch(_inputs(name), tmp_path / "out", ledger_path=ledger)
    assert ledger_snapshot(ledger) == before
    assert not (tmp_path / "out" / "payouts.parquet").exists()
    return caught.value
