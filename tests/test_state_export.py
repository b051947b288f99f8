"""``hmb-batch ledger export``: a ledger's year to date as Parquet, what a Spark run starts from.

Runs without Spark: the golden year's nights on a ledger, exported whole and as of a batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import GOLDEN, golden_batch, new_ledger, run_cli

NIGHTS = sorted(p.name for p in GOLDEN.iterdir() if (p / "settlements.parquet").exists())


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The golden nights on one ledger, and the first night alone on another."""
    folder = tmp_path_factory.mktemp("ledgers")
    whole = new_ledger(folder / "whole.duckdb")
    first = new_ledger(folder / "first.duckdb")
    for name in NIGHTS:
        assert golden_batch(whole, folder / "whole", name).exit_code == 0
    assert golden_batch(first, folder / "first", NIGHTS[0]).exit_code == 0
    return {"whole": whole, "first": first, "folder": folder}


def _export(ledger: Path, out: Path, *extra: str) -> dict[str, object]:
    r = run_cli(["ledger", "export", "--ledger", str(ledger), "--out", str(out), "--json", *extra])
    assert r.exit_code == 0, r.output
    return dict(json.loads(r.stdout))


def test_the_exported_year_to_date_adds_up_to_the_registry(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    ledger = ledgers["whole"]
    before = ledger.read_bytes()
    doc = _export(ledger, tmp_path / "state")
    registry = pl.read_parquet(tmp_path / "state" / "registry" / "*.parquet")
    accumulators = pl.read_parquet(tmp_path / "state" / "accumulators" / "*.parquet")
    costs = doc["costs"]
    assert isinstance(costs, list) and costs
    # every member-year's year to date is the sum of what its settlements added (reversals
    # take theirs back): the ledger's two tables agree in the export
    sums = registry.group_by("psn_no", "plan_year").agg(
        pl.col(f"inc__{c}").sum().alias(f"cum__{c}") for c in costs
    )
    assert_frame_equal(
        accumulators.sort("psn_no", "plan_year"),
        sums.select(accumulators.columns).sort("psn_no", "plan_year"),
        check_row_order=True,
    )
    # every original marked reversed is named by a reversal in the registry, and only those
    named = set(registry.filter(pl.col("is_reversal"))["init_setl_id"].to_list())
    assert set(registry.filter(pl.col("reversed"))["setl_id"].to_list()) == named and named
    # the year to date's payout and enrolment as the ledger reports them
    status = json.loads(run_cli(["ledger", "status", "--ledger", str(ledger), "--json"]).stdout)
    assert doc["payout_by_plan_year"] == {
        str(y["plan_year"]): y["payout"] for y in status["plan_years"]
    }
    assert len(doc["batches"]) == len(NIGHTS)  # type: ignore[arg-type]
    # no personal data: ids and amounts only
    for frame in (registry, accumulators):
        assert not {"psn_name", "certno"} & set(frame.columns)
    assert ledger.read_bytes() == before


def test_as_of_a_batch_is_the_ledger_that_stopped_there(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    first_batch = json.loads(
        run_cli(["ledger", "batches", "--ledger", str(ledgers["whole"]), "--json"]).stdout
    )[0]["batch_id"]
    as_of = _export(ledgers["whole"], tmp_path / "as-of", "--as-of", first_batch)
    alone = _export(ledgers["first"], tmp_path / "alone")
    for name, key in (("registry", ["setl_id"]), ("accumulators", ["psn_no", "plan_year"])):
        a = pl.read_parquet(tmp_path / "as-of" / name / "*.parquet").sort(key)
        b = pl.read_parquet(tmp_path / "alone" / name / "*.parquet").sort(key)
        assert_frame_equal(a, b)
    for doc in (as_of, alone):
        doc.pop("source")
        doc.pop("out")
    assert as_of == alone
    assert not list((tmp_path / "as-of").glob(".hmb-export-*"))  # the copy is gone


def test_a_folder_holding_a_state_is_refused_unless_forced(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    _export(ledgers["first"], tmp_path / "s")
    args = ["ledger", "export", "--ledger", str(ledgers["whole"]), "--out", str(tmp_path / "s")]
    refused = run_cli([*args, "--json"])
    assert refused.exit_code == 2 and "--force" in refused.stdout
    assert run_cli([*args, "--force"]).exit_code == 0
    doc = json.loads((tmp_path / "s" / "state.json").read_text())
    assert len(doc["batches"]) == len(NIGHTS)


def test_a_folder_that_is_not_a_state_is_named(tmp_path: Path) -> None:
    from hmb_batch.errors import ConfigError
    from hmb_batch.ledger.parquet_state import read_state

    with pytest.raises(ConfigError, match="not a state folder"):
        read_state(tmp_path)
    (tmp_path / "state.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="is not a state folder's description"):
        read_state(tmp_path)
