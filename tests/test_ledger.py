"""The ledger: nightly batches that are atomic, idempotent, and equal to a full-year rerun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import (
    GOLDEN,
    MONEY_COLS,
    Extract,
    adjudicate_args,
    golden_batch,
    kernel_result,
    ledger_snapshot,
    new_ledger,
    run_cli,
    yuan,
)
from hmb_batch.crash import CRASH_ENV
from hmb_batch.ledger.store import batch_rows, file_rows, open_ledger
from hmb_batch.run.batch import BatchInputs, run_batch

KEY = ["setl_id", "psn_no", "plan_year", "status", "reasons", *MONEY_COLS]


def test_golden_year_night_by_night_on_one_ledger(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    got, quarantined = [], []
    for name in ("batch_00", "batch_01", "batch_02"):
        r = golden_batch(ledger, tmp_path, name)
        assert r.exit_code == 0, r.output
        got.append(pl.read_parquet(tmp_path / name / "payouts.parquet").select(KEY))
        q = pl.read_parquet(tmp_path / name / "quarantine.parquet")
        quarantined.append(
            q.filter(pl.col("record") == "settlement").select(
                pl.lit(name).alias("batch"), "setl_id", "reasons"
            )
        )
    expected = pl.read_parquet(GOLDEN / "expected_payouts.parquet").select(KEY).sort("setl_id")
    assert_frame_equal(pl.concat(got).sort("setl_id"), expected)
    expected_q = pl.read_parquet(GOLDEN / "expected_quarantine.parquet").sort("batch", "setl_id")
    assert_frame_equal(pl.concat(quarantined).sort("batch", "setl_id"), expected_q)
    # the ledger holds the year: per member, the last cumulative payout is the year's payout
    with open_ledger(ledger) as lg:
        state = lg.state()
    assert state["payout_fen"].sum() == int(expected["payout_amt"].sum() * 100)


def test_rerunning_a_batch_changes_nothing_and_rewrites_identical_files(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path / "first", "batch_00").exit_code == 0
    before = ledger_snapshot(ledger)
    r = golden_batch(ledger, tmp_path / "again", "batch_00", "--json")
    assert r.exit_code == 0
    assert '"replayed": true' in r.output
    assert ledger_snapshot(ledger) == before
    for name in ("payouts.parquet", "quarantine.parquet", "lines.parquet"):
        first = (tmp_path / "first" / "batch_00" / name).read_bytes()
        assert (tmp_path / "again" / "batch_00" / name).read_bytes() == first


def test_out_of_order_batch_is_refused_unless_allowed(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path, "batch_02").exit_code == 0
    r = golden_batch(ledger, tmp_path, "batch_00")
    assert r.exit_code == 9
    assert "out of order" in r.output and "--allow-out-of-order" in r.output
    assert golden_batch(ledger, tmp_path, "batch_00", "--allow-out-of-order").exit_code == 0


# --- a generated year split into nightly extracts ------------------------------------------


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated plan year, and the same year split into 36 nightly extracts by date."""
    root = tmp_path_factory.mktemp("year")
    r = run_cli(
        ["generate", "--members", "1200", "--year", "2022", "--seed", "31", "--out", str(root)]
    )
    assert r.exit_code == 0, r.output
    s = pl.read_parquet(root / "settlements.parquet")
    f = pl.read_parquet(root / "fees.parquet")
    # nights of about ten days; settlements are taken in setl_time order either way
    night = (pl.col("setl_time").dt.ordinal_day() - 1) // 10
    s = s.with_columns(night.alias("_night"))
    for n in s["_night"].unique().sort().to_list():
        part = s.filter(pl.col("_night") == n).drop("_night")
        folder = root / "nightly" / f"{n:02d}"
        folder.mkdir(parents=True)
        part.write_parquet(folder / "settlements.parquet")
        f.join(part.select("setl_id"), on="setl_id", how="semi").write_parquet(
            folder / "fees.parquet"
        )
    return root


def _inputs(root: Path, settlements: Path | str, fees: Path | str) -> BatchInputs:
    return BatchInputs(
        extract=settlements,
        fees=fees,
        roster=root / "roster.parquet",
        lists=root / "lists.parquet",
        plan="zhelibao",
    )


def test_nightly_batches_equal_one_run_of_the_whole_year(year: Path, tmp_path: Path) -> None:
    nights = sorted((year / "nightly").iterdir())
    assert len(nights) >= 30
    ledger = new_ledger(tmp_path / "nightly.duckdb")
    nightly = []
    for folder in nights:
        res = run_batch(
            _inputs(year, folder / "settlements.parquet", folder / "fees.parquet"),
            tmp_path / "out" / folder.name,
            ledger_path=ledger,
        )
        nightly.append(res.payouts.collect())
    whole = run_batch(
        _inputs(year, year / "settlements.parquet", year / "fees.parquet"),
        tmp_path / "whole",
        ledger_path=new_ledger(tmp_path / "whole.duckdb"),
    ).payouts.collect()
    cols = [
        "setl_id",
        "psn_no",
        "plan_year",
        "status",
        "reasons",
        "compliant_amt",
        "reasonable_amt",
        "payable_amt",
        "payout_amt",
        "cum_payable_amt",
        "cum_payout_amt",
    ]
    split = pl.concat(nightly).select(cols).sort("setl_id")
    assert_frame_equal(split, whole.select(cols).sort("setl_id"))
    assert split.filter(pl.col("status") == "paid").height > 10
    assert split.filter(pl.col("status") == "reversal").height > 0
    # the nightly ledger and the whole-year ledger agree on every accumulator
    assert (
        ledger_snapshot(ledger)["accumulators"]
        == ledger_snapshot(tmp_path / "whole.duckdb")["accumulators"]
    )


def test_a_folder_or_glob_of_extracts_is_one_batch(year: Path, tmp_path: Path) -> None:
    whole = run_batch(
        _inputs(year, year / "settlements.parquet", year / "fees.parquet"), tmp_path / "whole"
    ).payouts.collect()
    globbed = run_batch(
        _inputs(
            year,
            str(year / "nightly" / "*" / "settlements.parquet"),
            str(year / "nightly" / "*" / "fees.parquet"),
        ),
        tmp_path / "glob",
    ).payouts.collect()
    cols = ["setl_id", "status", "payout_amt", "cum_payout_amt"]
    assert_frame_equal(globbed.select(cols).sort("setl_id"), whole.select(cols).sort("setl_id"))


# --- crash safety -----------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hmb-batch"
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _night_args(year: Path, night: str, ledger: Path, out: Path) -> list[str]:
    folder = year / "nightly" / night
    return [
        "adjudicate",
        str(folder / "settlements.parquet"),
        "--fees",
        str(folder / "fees.parquet"),
        "--roster",
        str(year / "roster.parquet"),
        "--lists",
        str(year / "lists.parquet"),
        "--ledger",
        str(ledger),
        "--out",
        str(out),
        "--quiet",
    ]


@pytest.mark.parametrize("stage", ["read", "compute", "commit", "outputs"])
def test_killed_at_any_stage_leaves_the_ledger_before_or_after(
    year: Path, tmp_path: Path, stage: str
) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert _cli(_night_args(year, "00", ledger, tmp_path / "n00")).returncode == 0
    before = ledger_snapshot(ledger)
    killed = _cli(_night_args(year, "01", ledger, tmp_path / "n01"), {CRASH_ENV: stage})
    assert killed.returncode == -9  # SIGKILL
    state = ledger_snapshot(ledger)
    if stage == "outputs":  # killed after the commit, while writing files
        assert len(state["batches"]) == 2
        assert not (tmp_path / "n01" / "payouts.parquet").exists()
    else:
        assert state == before
    # no half-written file is ever in place; the retry completes the night exactly once
    assert not list((tmp_path / "n01").glob("payouts.parquet")) or stage == "outputs"
    retry = _cli(_night_args(year, "01", ledger, tmp_path / "n01"))
    assert retry.returncode == 0, retry.stderr
    reference = new_ledger(tmp_path / "reference.duckdb")
    for night in ("00", "01"):
        assert _cli(_night_args(year, night, reference, tmp_path / "ref" / night)).returncode == 0
    assert ledger_snapshot(ledger)["accumulators"] == ledger_snapshot(reference)["accumulators"]
    assert ledger_snapshot(ledger)["settlements"] == ledger_snapshot(reference)["settlements"]
    assert (tmp_path / "n01" / "payouts.parquet").read_bytes() == (
        tmp_path / "ref" / "01" / "payouts.parquet"
    ).read_bytes()


def test_a_second_writer_waits_then_fails_naming_the_holder(year: Path, tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    with open_ledger(ledger, holder="batch night-42 (pid 4242)"):
        r = _cli([*_night_args(year, "00", ledger, tmp_path / "out"), "--wait", "0.5"])
    assert r.returncode == 7
    assert "night-42" in r.stderr and "--wait" in r.stderr
    assert _cli(_night_args(year, "00", ledger, tmp_path / "out")).returncode == 0


# --- revert and inspection -------------------------------------------------------------------


def test_revert_the_last_batch_exactly_and_refuse_an_earlier_one(
    year: Path, tmp_path: Path
) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for night in ("00", "01"):
        assert _cli(_night_args(year, night, ledger, tmp_path / night)).returncode == 0
    after_first = None
    with open_ledger(ledger) as lg:
        first, second = (b.batch_id for b in lg.batches())
    reference = new_ledger(tmp_path / "one.duckdb")
    assert _cli(_night_args(year, "00", reference, tmp_path / "ref")).returncode == 0
    after_first = ledger_snapshot(reference)

    refused = run_cli(["ledger", "revert", first, "--ledger", str(ledger)])
    assert refused.exit_code == 9 and "later batches" in refused.output and second in refused.output
    done = run_cli(["ledger", "revert", second, "--ledger", str(ledger)])
    assert done.exit_code == 0, done.output
    state = ledger_snapshot(ledger)
    for table in ("settlements", "settlement_costs", "accumulators"):
        assert state[table] == after_first[table], table
    history = duckdb.connect(str(ledger), read_only=True)
    reverted = history.execute(
        "SELECT count(*) FROM payout_history WHERE batch_id = ? AND reverted", [second]
    ).fetchall()
    history.close()
    assert reverted[0][0] > 0
    # the night can be applied again after the revert
    again = _cli(_night_args(year, "01", ledger, tmp_path / "again"))
    assert again.returncode == 0, again.stderr


def test_status_batches_and_member_statement(year: Path, tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for night in ("00", "01", "02"):
        assert _cli(_night_args(year, night, ledger, tmp_path / night)).returncode == 0
    status = run_cli(["ledger", "status", "--ledger", str(ledger)])
    assert (
        status.exit_code == 0 and "3 batch(es) applied" in status.output and "2022" in status.output
    )
    batches = run_cli(["ledger", "batches", "--ledger", str(ledger)])
    assert batches.exit_code == 0 and batches.output.count("applied") == 3
    con = duckdb.connect(str(ledger), read_only=True)
    psn_no, setl_id = con.execute(
        "SELECT psn_no, max(setl_id) FROM settlements WHERE NOT is_reversal "
        "GROUP BY psn_no ORDER BY count(*) DESC, psn_no LIMIT 1"
    ).fetchall()[0]
    con.close()
    statement = run_cli(["ledger", "member", psn_no, "--year", "2022", "--ledger", str(ledger)])
    assert statement.exit_code == 0, statement.output
    assert psn_no in statement.output and setl_id in statement.output
    assert "reasonable" in statement.output
    unknown = run_cli(["ledger", "member", "NOBODY", "--ledger", str(ledger)])
    assert unknown.exit_code == 0 and "no settlements for member NOBODY" in unknown.output


# --- reversals and duplicates across batches -------------------------------------------------


def test_reversals_and_duplicates_across_batches(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")

    def night(ex: Extract, name: str) -> pl.DataFrame:
        files = ex.write(tmp_path / name)
        r = run_cli(
            adjudicate_args(files, str(tmp_path / name / "out"), "--ledger", str(ledger), "--quiet")
        )
        assert r.exit_code == 0, r.output
        return pl.read_parquet(tmp_path / name / "out" / "quarantine.parquet")

    def base() -> Extract:
        ex = Extract()
        ex.on_list("negative", "NEG1", "2021-01-01")
        ex.on_list("admission", "SV1", "2021-01-01")
        ex.member("M1", plan_year=2022)
        ex.member("M1", plan_year=2023)
        return ex

    first = base()
    first.claim("DEC", "M1", "2022-12-30 10:00:00", reasonable="28000")
    first.claim("Q1", "M1", "2022-12-30 11:00:00", reasonable="100", hifp_pay="x")  # bad input
    night(first, "n1")

    second = base()
    second.claim("DEC", "M1", "2022-12-30 10:00:00", reasonable="28000")  # seen before
    second.claim("Q1", "M1", "2022-12-31 11:00:00", reasonable="100")  # corrected copy: accepted
    second.claim("JAN", "M1", "2023-01-02 10:00:00", reasonable="28000")
    second.reversal("RDEC", "DEC", "M1", "2023-01-03 10:00:00")  # reverses last year's claim
    second.reversal("RX", "NOPE", "M1", "2023-01-03 11:00:00")
    q = night(second, "n2")
    reasons = {
        r["setl_id"]: r["reasons"]
        for r in q.filter(pl.col("record") == "settlement").iter_rows(named=True)
    }
    assert reasons == {"DEC": ["DUPLICATE_SETTLEMENT"], "RX": ["ORPHAN_REVERSAL"]}
    p = pl.read_parquet(tmp_path / "n2" / "out" / "payouts.parquet")
    rdec = p.filter(pl.col("setl_id") == "RDEC").to_dicts()[0]
    # 2022 to date before RDEC: DEC 28,000 + the corrected Q1 100 → payable 10,100 → 7,575 paid
    assert (rdec["plan_year"], rdec["payout_amt"], rdec["cum_payout_amt"]) == (
        2022,
        yuan("-7575"),
        yuan(0),
    )
    assert p.filter(pl.col("setl_id") == "Q1")["status"].to_list() == ["paid"]

    third = base()
    third.reversal("RDEC2", "DEC", "M1", "2023-01-05 10:00:00")  # already reversed
    q = night(third, "n3")
    assert q.filter(pl.col("record") == "settlement")["reasons"].to_list() == [
        ["DUPLICATE_REVERSAL"]
    ]
    with open_ledger(ledger) as lg:
        statement = lg.member_statement("M1", 2022)
    assert statement["setl_id"].to_list() == ["DEC", "Q1", "RDEC"]
    assert statement["cum_payout_fen"].to_list()[-1] == 0


def test_manifest_records_inputs_editions_and_ledger_state(tmp_path: Path) -> None:
    import json

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    m = json.loads((tmp_path / "batch_00" / "manifest.json").read_text(encoding="utf-8"))
    assert m["inputs"]["extract"][0]["sha256"] and m["editions"]["zhelibao-2022"]
    assert m["ledger_before"] == [] and m["ledger_after"][0]["plan_year"] == 2022
    assert m["counts"]["adjudicated"] == 744 and m["hmb_version"]
    # each stage's time and peak memory, to tell an operator which stage to look at
    assert (
        set(m["peak_rss_mib"])
        == set(m["timings_seconds"])
        >= {
            "adjudicate_lines",
            "adjudicate_members",
            "settle_audit",
            "ledger_commit",
        }
    )
    assert all(isinstance(v, int) and v > 0 for v in m["peak_rss_mib"].values())


def test_a_batch_that_does_not_balance_is_not_applied(
    year: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import hmb_batch.run.batch as pipeline
    from hmb_batch.errors import ReconciliationError

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    night = year / "nightly" / "00"
    inputs = _inputs(year, night / "settlements.parquet", night / "fees.parquet")
    real = pipeline.summarise

    def lose_one(**kw: Any) -> Any:  # a settlement lost between input and output
        s = real(**kw)
        return dataclasses.replace(s, adjudicated=s.adjudicated - 1)

    monkeypatch.setattr(pipeline, "summarise", lose_one)
    with pytest.raises(ReconciliationError, match="does not balance"):
        run_batch(inputs, tmp_path / "out", ledger_path=ledger)
    assert ledger_snapshot(ledger)["batches"] == []
    assert not (tmp_path / "out" / "payouts.parquet").exists()


# the guard reads the registry itself, or answers from the setl_ids prior_for looked up in it
# (all of the batch's, or only some, or more than it keeps: then it reads the registry too)
@pytest.mark.parametrize("looked_up", ["none", "all", "some", "let go"])
def test_the_ledger_itself_refuses_a_settlement_recorded_twice(
    year: Path, tmp_path: Path, looked_up: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hmb_batch.ledger import store
    from hmb_batch.ledger.store import LedgerError
    from hmb_batch.rules.engine import PriorState

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    night = year / "nightly" / "00"
    inputs = _inputs(year, night / "settlements.parquet", night / "fees.parquet")
    run_batch(inputs, tmp_path / "out", ledger_path=ledger)
    before = ledger_snapshot(ledger)
    # bypass the engine's duplicate check: apply the same adjudication again under a new id
    done = kernel_result(
        inputs.extract, night / "fees.parquet", inputs.roster, inputs.lists, inputs.plan
    )
    costs = ["compliant", "reasonable"]
    record = {
        "batch_id": "again",
        "seq": 2,
        "batch_key": "k",
        "inputs": "{}",
        "editions": "{}",
        "hmb_version": "t",
        "started_at": None,
        "finished_at": None,
        "settlements_in": 0,
        "adjudicated": 0,
        "quarantined": 0,
        "total_payout_fen": 0,
        "max_setl_time": None,
        "summary": "{}",
    }
    extract = pl.read_parquet(inputs.extract, columns=["setl_id", "init_setl_id", "psn_no"])
    with open_ledger(ledger) as lg, pytest.raises(LedgerError, match="already in the ledger"):
        if looked_up == "let go":
            monkeypatch.setattr(store, "_LOOKUPS_KEPT", 0)
        if looked_up != "none":
            lg.prior_for(extract.tail(1) if looked_up == "some" else extract, costs)
        assert (lg._looked_up is None) == (looked_up in ("none", "let go"))
        lg.apply(
            record,
            {
                **batch_rows(
                    "again",
                    done.payouts,
                    PriorState.empty(costs).accumulators.collect(),
                    costs,
                ),
                "batch_files": file_rows("again", {"payouts.parquet": "0" * 64}),
            },
        )
    assert ledger_snapshot(ledger) == before


def test_a_known_roster_is_not_counted_again(
    year: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmb_batch.run.batch as pipeline

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    first, second = sorted((year / "nightly").iterdir())[:2]
    one = run_batch(
        _inputs(year, first / "settlements.parquet", first / "fees.parquet"),
        tmp_path / "one",
        ledger_path=ledger,
    )
    enrolled = one.summary.enrolled_by_plan_year
    assert set(enrolled) == {2022} and enrolled[2022] > 1000

    def counted_again(*args: Any, **kwargs: Any) -> dict[int, int]:
        raise AssertionError("the roster was counted again")

    # the same roster file: the second night takes its member count from the ledger
    monkeypatch.setattr(pipeline, "enrolled_by_year", counted_again)
    two = run_batch(
        _inputs(year, second / "settlements.parquet", second / "fees.parquet"),
        tmp_path / "two",
        ledger_path=ledger,
    )
    assert two.summary.enrolled_by_plan_year == enrolled


def test_ledger_rows_keep_a_responsibility_whose_id_has_double_underscores(year: Path) -> None:
    # edition ids allow "__" inside (pattern ^[a-z][a-z0-9_]*$); the engine's columns are
    # resp__<id>__<value>, so the id must not be cut at its first "__"
    from hmb_batch.rules.engine import PriorState

    costs = ["compliant", "reasonable"]
    done = kernel_result(
        year / "settlements.parquet",
        year / "fees.parquet",
        year / "roster.parquet",
        year / "lists.parquet",
    )
    first = next(c for c in done.payouts.columns if c.startswith("resp__")).split("__")[1]
    renamed = done.payouts.rename(
        {
            c: c.replace(f"resp__{first}__", "resp__in__list__")
            for c in done.payouts.columns
            if c.startswith(f"resp__{first}__")
        }
    )
    rows = batch_rows("b", renamed, PriorState.empty(costs).accumulators.collect(), costs)
    kept = rows["settlement_responsibilities"].filter(pl.col("responsibility") == "in__list")
    assert kept.height == done.payouts.height
    assert kept["payout_fen"].sum() == done.payouts[f"resp__{first}__payout"].sum() > 0
