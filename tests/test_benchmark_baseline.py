"""The DuckDB SQL baseline of the benchmarks computes the same payouts as hmb-batch.

The benchmark compares speed; this keeps the comparison honest (same rules, same money).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

from conftest import run_cli

BASELINE = Path(__file__).parent.parent / "benchmarks" / "baseline.py"


@pytest.mark.parametrize("buckets", [1, 7, 64])
def test_baseline_sql_equals_hmb_batch_to_the_fen(tmp_path: Path, buckets: int) -> None:
    """At any number of member buckets."""
    spec = importlib.util.spec_from_file_location("baseline", BASELINE)
    assert spec is not None and spec.loader is not None
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    data = tmp_path / "data"
    r = run_cli(
        ["generate", "--members", "3000", "--year", "2022", "--seed", "9", "--out", str(data)]
    )
    assert r.exit_code == 0
    r = run_cli(
        [
            "adjudicate",
            str(data / "settlements.parquet"),
            "--fees",
            str(data / "fees.parquet"),
            "--roster",
            str(data / "roster.parquet"),
            "--lists",
            str(data / "lists.parquet"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--buckets",
            str(buckets),
        ]
    )
    assert r.exit_code == 0, r.output
    total = baseline.run(data, tmp_path / "sql.parquet")
    ours = pl.read_parquet(tmp_path / "out" / "payouts.parquet").select(
        "setl_id", "status", (pl.col("payout_amt") * 100).cast(pl.Int64).alias("payout_fen")
    )
    theirs = pl.read_parquet(tmp_path / "sql.parquet").select("setl_id", "status", "payout_fen")
    assert ours.sort("setl_id").equals(theirs.sort("setl_id"))
    assert total == ours["payout_fen"].sum() > 0
