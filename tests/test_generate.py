"""The generator: deterministic for a seed, realistic shape, identities exact."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from conftest import run_cli
from hmb_batch.io.contracts import COMPONENT_PAIRS, LINE_COMPONENTS, SETTLEMENT_COMPONENTS
from hmb_batch.io.extract import read_extract
from hmb_batch.rules.validation import validate


def _generate(out: Path, seed: int, **extra: str) -> None:
    args = [
        "generate",
        "--members",
        "1500",
        "--year",
        "2022",
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    r = run_cli(args)
    assert r.exit_code == 0, r.output


def test_same_seed_same_data_whatever_the_chunk_size(tmp_path: Path) -> None:
    _generate(tmp_path / "a", 7)
    _generate(tmp_path / "b", 7, chunk_members="10000")
    _generate(tmp_path / "c", 8)
    for name in ("settlements", "fees", "roster", "lists"):
        a = pl.read_parquet(tmp_path / "a" / f"{name}.parquet")
        assert a.equals(pl.read_parquet(tmp_path / "b" / f"{name}.parquet")), name
    assert not pl.read_parquet(tmp_path / "a" / "fees.parquet").equals(
        pl.read_parquet(tmp_path / "c" / "fees.parquet")
    )


def test_identities_hold_and_everything_validates(tmp_path: Path) -> None:
    _generate(tmp_path, 11)
    e = read_extract(tmp_path / "settlements.parquet", tmp_path / "fees.parquet")
    s = e.settlements.collect()
    lines = e.fee_lines.collect()
    assert s.select(
        (pl.col("medfee_sumamt") == pl.sum_horizontal(SETTLEMENT_COMPONENTS)).all()
    ).item()
    assert lines.select(
        (pl.col("det_item_fee_sumamt") == pl.sum_horizontal(LINE_COMPONENTS)).all()
    ).item()
    sums = lines.group_by("setl_id").agg([pl.col(c).sum() for c in LINE_COMPONENTS])
    joined = s.filter(pl.col("refd_setl_flag") == "0").join(sums, on="setl_id", suffix="_l")
    for sc, lc in COMPONENT_PAIRS.items():
        other = lc if lc != sc else f"{lc}_l"
        assert (joined[sc] == joined[other]).all(), sc
    v = validate(e)
    assert v.quarantine.collect().height == 0


def test_realistic_shape(tmp_path: Path) -> None:
    _generate(tmp_path, 3)
    s = pl.read_parquet(tmp_path / "settlements.parquet")
    roster = pl.read_parquet(tmp_path / "roster.parquet")
    lists = pl.read_parquet(tmp_path / "lists.parquet")
    lines = pl.read_parquet(tmp_path / "fees.parquet")
    claimants = s["psn_no"].n_unique()
    assert claimants < 0.6 * 1500  # most members never claim
    inpatient = s.filter(pl.col("med_type") == "21")
    outpatient = s.filter(pl.col("med_type") != "21")
    assert outpatient.height > 3 * inpatient.height
    assert inpatient["medfee_sumamt"].median() > 10 * outpatient["medfee_sumamt"].median()
    assert (s["refd_setl_flag"] == "1").sum() > 0  # some reversals
    assert set(roster["special_event"].unique()) >= {"", "newborn"}
    assert roster["basic_suspended_from"].is_not_null().sum() > 0
    assert roster.height < 1500  # some claimants are not enrolled
    assert set(lists["list"].unique()) == {"negative", "admission", "special_drug"}
    assert lists["valid_to"].is_not_null().any()  # a mid-year removal
    assert set(lines["chrgitm_lv"].unique()) == {"01", "02", "03"}
    assert {t[0] for t in lines["list_type"].unique().to_list()} == {"1", "2", "3"}
    assert (s["refl_selfpay_amt"] > 0).sum() > 0
