"""The kernel on its own, and B member buckets against one: the same money, the same bytes.

The kernel (hmb_batch.rules.kernel.adjudicate_bucket) is what a distributed engine calls per
bucket, so it is tested here without the orchestration: frames in, frames out.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from conftest import (
    GOLDEN,
    adjudicate_args,
    golden_args,
    ledger_snapshot,
    new_ledger,
    run_cli,
    standard_extract,
)
from hmb_batch.io.extract import read_extract
from hmb_batch.io.reference import load_lists, load_roster
from hmb_batch.plan.catalog import select_plan
from hmb_batch.rules.kernel import (
    Bucket,
    LinePart,
    MemberBucket,
    adjudicate_bucket,
    adjudicate_lines,
    adjudicate_members,
    settle_audit,
)
from hmb_batch.rules.reconcile import Totals, combine
from hmb_batch.run.buckets import bucket_of

NIGHTS = ("batch_00", "batch_01", "batch_02")


def _inputs(name: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    typed = read_extract([GOLDEN / name / "settlements.parquet"], [GOLDEN / name / "fees.parquet"])
    settlements, fee_lines = pl.collect_all([typed.settlements, typed.fee_lines])
    return (
        settlements,
        fee_lines,
        load_roster(GOLDEN / "roster.parquet"),
        load_lists(GOLDEN / "lists.parquet"),
    )


def _kernel(bucket: Bucket, lists: pl.DataFrame) -> object:
    plan = select_plan("zhelibao", sorted(lists["list"].unique().to_list()))
    return adjudicate_bucket(bucket, plan=plan, lists=lists, batch_id="b", shape="two-file")


BATCH = _inputs("batch_00")
WHOLE = _kernel(Bucket(BATCH[0], BATCH[1], BATCH[2]), BATCH[3])


PLAN = select_plan("zhelibao", sorted(BATCH[3]["list"].unique().to_list()))


def _by(frame: pl.DataFrame, column: str, n: int, k: int) -> pl.DataFrame:
    return frame.filter(bucket_of(column, n) == k)


def _staged(parts: int, members: int) -> dict[str, pl.DataFrame | Totals]:
    """The batch through the kernel's three stages as a cut run makes them: ``parts`` parts
    of whole settlements (by setl_id), ``members`` member buckets of their facts (by psn_no)."""
    settlements, fee_lines, roster, lists = BATCH
    common = dict(plan=PLAN, batch_id="b")
    lined = [
        adjudicate_lines(
            LinePart(_by(settlements, "setl_id", parts, k), _by(fee_lines, "setl_id", parts, k)),
            lists=lists,
            shape="two-file",
            **common,  # type: ignore[arg-type]
        )
        for k in range(parts)
    ]
    facts = pl.concat([x.facts for x in lined], how="diagonal_relaxed")
    membered = [
        adjudicate_members(
            MemberBucket(_by(facts, "psn_no", members, m), _by(roster, "psn_no", members, m)),
            **common,  # type: ignore[arg-type]
        )
        for m in range(members)
    ]
    denied = pl.concat([x.denied for x in membered])
    removed = pl.concat([x.removed for x in membered])
    settled = [
        settle_audit(
            x.audit,
            _by(fee_lines, "setl_id", parts, k),
            denied,
            removed,
            **common,  # type: ignore[arg-type]
        )
        for k, x in enumerate(lined)
    ]
    quarantine = [x.quarantine for x in (*lined, *membered, *settled) if x.quarantine.height]
    return {
        "payout_file": pl.concat([x.payout_file for x in membered]).sort("setl_time", "setl_id"),
        "lines": pl.concat([x.lines for x in settled]).sort("setl_id", "feedetl_sn"),
        "quarantine": pl.concat(quarantine, how="diagonal_relaxed"),
        "totals": combine([x.totals for x in (*lined, *membered, *settled)]),
    }


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.integers(min_value=1, max_value=9), members=st.integers(min_value=1, max_value=9))
def test_any_cut_into_parts_and_member_buckets_gives_the_kernel_s_results_for_the_whole_batch(
    parts: int, members: int
) -> None:
    got = _staged(parts, members)
    assert_frame_equal(got["payout_file"], WHOLE.payout_file)  # type: ignore[attr-defined]
    assert_frame_equal(got["lines"], WHOLE.lines.sort("setl_id", "feedetl_sn"))  # type: ignore[attr-defined]
    key = ["record", "_file", "_row"]
    q = WHOLE.quarantine  # type: ignore[attr-defined]
    assert_frame_equal(got["quarantine"].select(q.columns).sort(key), q.sort(key))  # type: ignore[union-attr]
    whole = combine([WHOLE.totals])  # type: ignore[attr-defined]
    totals = got["totals"]
    assert isinstance(totals, Totals)
    for name in ("components", "settlement_parts", "years", "payouts", "mismatches"):
        a, b = getattr(totals, name), getattr(whole, name)
        key = [c for c, d in a.schema.items() if d in (pl.String, pl.Int64, pl.Int32)]
        assert_frame_equal(a.sort(key), b.select(a.columns).sort(key), check_dtypes=False)
    assert WHOLE.payout_file["payout_amt"].sum() > 0  # type: ignore[attr-defined]
    assert q.height > 0 and whole.mismatches.height == 0


def test_the_kernel_is_deterministic_and_leaves_its_inputs_as_they_were() -> None:
    settlements, fee_lines, roster, lists = BATCH
    before = settlements.clone(), fee_lines.clone()
    again = _kernel(Bucket(settlements, fee_lines, roster), lists)
    order = ["setl_time", "setl_id"]
    assert_frame_equal(again.payouts.sort(order), WHOLE.payouts.sort(order))  # type: ignore[attr-defined]
    assert_frame_equal(again.payout_file, WHOLE.payout_file)  # type: ignore[attr-defined]
    assert_frame_equal(again.quarantine, WHOLE.quarantine)  # type: ignore[attr-defined]
    assert_frame_equal(settlements, before[0])
    assert_frame_equal(fee_lines, before[1])


def test_a_conflicting_copy_naming_another_member_is_quarantined_whatever_the_cut() -> None:
    # two rows with one setl_id and different members: they share a part (the cut is by
    # setl_id), where validation sees the conflict, and neither reaches a member bucket
    settlements, fee_lines, _, _ = BATCH
    first = settlements.filter(pl.col("setl_id") == settlements["setl_id"][0])
    other = settlements.filter(pl.col("psn_no") != first["psn_no"][0])["psn_no"][0]
    copy = first.with_columns(pl.lit(other).alias("psn_no"))
    rows = pl.concat([settlements, copy])
    for parts in (1, 2, 7, 64):
        k = first.select(bucket_of("setl_id", parts)).item()
        lined = adjudicate_lines(
            LinePart(_by(rows, "setl_id", parts, k), _by(fee_lines, "setl_id", parts, k)),
            plan=PLAN,
            lists=BATCH[3],
            batch_id="b",
            shape="two-file",
        )
        q = lined.quarantine.filter(pl.col("setl_id") == first["setl_id"][0])
        assert q.filter(pl.col("record") == "settlement").height == 2
        assert all("CONFLICTING_DUPLICATE" in r for r in q["reasons"].to_list())
        assert first["setl_id"][0] not in lined.facts["setl_id"].to_list()


def test_b_buckets_write_byte_identical_payout_files_and_reconciliation(tmp_path: Path) -> None:
    """The golden nights on a ledger, at B = 1, 2, 7 and 64: the same bytes, the same ledger."""
    for b in (1, 2, 7, 64):
        ledger = new_ledger(tmp_path / f"l{b}.duckdb")
        for name in NIGHTS:
            r = run_cli(
                golden_args(
                    name, tmp_path / str(b) / name, "--csv", "--buckets", str(b), ledger=ledger
                )
            )
            assert r.exit_code == 0, r.output
    for name in NIGHTS:
        for file in ("payouts.parquet", "payouts.csv", "reconciliation.json"):
            contents = {(tmp_path / str(b) / name / file).read_bytes() for b in (1, 2, 7, 64)}
            assert len(contents) == 1, (name, file)
        manifest = json.loads((tmp_path / "64" / name / "manifest.json").read_text())
        assert manifest["buckets"] == 64
    snapshots = [ledger_snapshot(tmp_path / f"l{b}.duckdb") for b in (1, 2, 7, 64)]
    for table in ("settlements", "settlement_costs", "accumulators", "payout_history"):
        assert all(s[table] == snapshots[0][table] for s in snapshots), table


@pytest.mark.parametrize("buckets", [2, 64])
def test_an_empty_batch_in_any_number_of_buckets_writes_a_header_only_csv(
    tmp_path: Path, buckets: int
) -> None:
    ex = standard_extract()
    ex.member("M1")
    files = ex.write(tmp_path / "in")
    for b in (1, buckets):
        r = run_cli(
            adjudicate_args(files, tmp_path / str(b), "--csv", "--quiet", "--buckets", str(b))
        )
        assert r.exit_code == 0, r.output
    one, many = ((tmp_path / str(b) / "payouts.csv").read_bytes() for b in (1, buckets))
    assert one == many and one.startswith(b"setl_id,") and one.count(b"\n") == 1


def test_small_chunks_and_a_repeated_copy_give_what_one_bucket_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files cut into 5-row queries across 3 buckets, the facts written 3 at a time: the same
    payout file and quarantine as one bucket — including which copy of a repeated settlement
    validation keeps (the first, which here has an extra field and so a reading error)."""
    from hmb_batch.run import buckets

    ex = standard_extract()
    for i in range(24):
        ex.member(f"M{i:02d}")
        ex.claim(f"S{i:02d}", f"M{i:02d}", f"2022-03-{i + 1:02d} 10:00:00", compliant="30000")
    ex.settlements.append(dict(ex.settlements[0]))  # S00 again, identical, at the end
    files = ex.write(tmp_path / "in")
    lines = files["settlements"].read_text().splitlines()
    lines[1] += ",extra"  # the first copy of S00 has one field too many
    files["settlements"].write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(buckets, "chunk_rows", lambda limit: 5)
    monkeypatch.setattr(buckets, "FACTS_PER_WRITE", 3)  # the facts written in several goes
    for b in (1, 3):
        r = run_cli(
            adjudicate_args(files, tmp_path / str(b), "--csv", "--quiet", "--buckets", str(b))
        )
        assert r.exit_code == 0, r.output
    for file in ("payouts.parquet", "payouts.csv", "reconciliation.json"):
        assert (tmp_path / "1" / file).read_bytes() == (tmp_path / "3" / file).read_bytes(), file
    key = ["record", "_file", "_row"]
    q1, q3 = (pl.read_parquet(tmp_path / str(b) / "quarantine.parquet") for b in (1, 3))
    assert_frame_equal(q1.sort(key), q3.select(q1.columns).sort(key))
    s00 = q1.filter((pl.col("setl_id") == "S00") & (pl.col("record") == "settlement"))
    assert s00.height == 1 and "BAD_VALUE" in s00["reasons"][0].to_list()
    assert pl.read_parquet(tmp_path / "3" / "payouts.parquet").height == 23
