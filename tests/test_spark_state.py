"""Spark runs carry the year to date as Parquet (a state folder) and equal nights on a ledger.

Marked ``spark`` (make test-spark). Three generated nights, with a night-1 settlement repeated
in night 3 as it was (an identical repeat) and another repeated under another member (a
duplicate the registry must catch though the member differs), go through a DuckDB ledger
locally and through Spark: night 1 from nothing, night 2 from ``hmb-batch ledger export
--as-of`` night 1, night 3 from Spark's own state after night 2. Every night's payouts equal
the ledger's per settlement, and the state after night 3 equals the ledger exported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import run_cli

pytestmark = pytest.mark.spark
NIGHTS = ("01", "02", "03")


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    pytest.importorskip("pyspark")
    from hmb_batch.run.spark import spark_available, spark_session

    why = spark_available()
    if why is not None:
        pytest.skip(why)
    spark = spark_session("local[2]", shuffle_partitions=4)
    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three nights of a generated year; night 3 repeats two night-1 settlements."""
    folder = tmp_path_factory.mktemp("nights")
    r = run_cli(
        ["generate", "--members", "1500", "--nights", "3", "--seed", "23", "--out", str(folder)]
    )
    assert r.exit_code == 0, r.output
    first = folder / "nightly" / "01"
    third = folder / "nightly" / "03"
    s1 = pl.read_parquet(first / "settlements.parquet")
    f1 = pl.read_parquet(first / "fees.parquet")
    claims = s1.filter(pl.col("refd_setl_flag") == "0")
    same, moved = claims.row(5, named=True), claims.row(9, named=True)
    other = s1.filter(pl.col("psn_no") != moved["psn_no"])["psn_no"][0]
    planted = pl.DataFrame(
        [same, moved | {"psn_no": other}], schema=s1.schema
    )  # the second under another member
    s3 = pl.read_parquet(third / "settlements.parquet")
    f3 = pl.read_parquet(third / "fees.parquet")
    pl.concat([s3, planted]).write_parquet(third / "settlements.parquet")
    lines = f1.filter(pl.col("setl_id").is_in([same["setl_id"], moved["setl_id"]]))
    pl.concat([f3, lines]).write_parquet(third / "fees.parquet")
    return folder


def _adjudicate_args(folder: Path, night: str) -> list[str]:
    n = folder / "nightly" / night
    return [
        "adjudicate",
        str(n / "settlements.parquet"),
        "--fees",
        str(n / "fees.parquet"),
        "--roster",
        str(folder / "roster.parquet"),
        "--lists",
        str(folder / "lists.parquet"),
        "--plan",
        "zhelibao",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def on_ledger(nights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three nights on a DuckDB ledger (the local engine)."""
    out = tmp_path_factory.mktemp("ledger")
    assert run_cli(["ledger", "init", str(out / "ledger.duckdb")]).exit_code == 0
    for night in NIGHTS:
        args = [*_adjudicate_args(nights, night), "--ledger", str(out / "ledger.duckdb")]
        r = run_cli([*args, "--out", str(out / night)])
        assert r.exit_code == 0, r.output
    return out


def _inputs(folder: Path, night: str) -> Any:
    from hmb_batch.run.batch import BatchInputs

    n = folder / "nightly" / night
    return BatchInputs(
        extract=n / "settlements.parquet",
        fees=n / "fees.parquet",
        roster=folder / "roster.parquet",
        lists=folder / "lists.parquet",
        plan="zhelibao",
    )


def _batch_id(folder: Path) -> str:
    return str(json.loads((folder / "manifest.json").read_text())["batch_id"])


def _sorted(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    return frame.sort(key)


def test_nights_on_spark_with_a_parquet_state_equal_the_ledger(
    nights: Path, on_ledger: Path, session: Any, tmp_path: Path
) -> None:
    from hmb_batch.run.spark import run_spark_batch

    ledger = on_ledger / "ledger.duckdb"
    before = ledger.read_bytes()
    # night 2 starts from the ledger's state just after night 1, exported
    night1 = _batch_id(on_ledger / "01")
    exported = tmp_path / "after-01"
    r = run_cli(
        ["ledger", "export", "--ledger", str(ledger), "--as-of", night1, "--out", str(exported)]
    )
    assert r.exit_code == 0, r.output
    priors = {"01": None, "02": exported, "03": tmp_path / "02" / "state"}
    for night in NIGHTS:
        run_spark_batch(
            _inputs(nights, night),
            tmp_path / night,
            buckets=4,
            session=session,
            prior=priors[night],
        )
        want = pl.read_parquet(on_ledger / night / "payouts.parquet")
        got = pl.read_parquet(
            tmp_path / night / "payouts" / "**" / "*.parquet", hive_partitioning=True
        )
        assert_frame_equal(
            _sorted(got.select(want.columns), ["setl_id"]), _sorted(want, ["setl_id"])
        )
        q_want = pl.read_parquet(on_ledger / night / "quarantine.parquet")
        q_got = pl.read_parquet(tmp_path / night / "quarantine" / "**" / "*.parquet")
        key = ["record", "_file", "_row"]
        assert_frame_equal(
            _sorted(q_got.select(q_want.columns), key), _sorted(q_want, key), check_dtypes=False
        )
        ratios = [
            json.loads((d / night / "manifest.json").read_text())["loss_ratios"]
            for d in (on_ledger, tmp_path)
        ]
        assert ratios[1] == ratios[0]  # the year to date's, not the night's alone
    # the planted repeats of night-1 settlements, the one under another member too, were found
    # in the prior state (not paid twice): quarantined as duplicates
    q3 = pl.read_parquet(tmp_path / "03" / "quarantine" / "**" / "*.parquet").filter(
        pl.col("record") == "settlement"
    )
    duplicates = q3.filter(pl.col("reasons").list.contains("DUPLICATE_SETTLEMENT"))
    assert duplicates.height == 2 and duplicates["psn_no"].n_unique() == 2
    # Spark's state after night 3 is the ledger's, exported
    now = tmp_path / "now"
    assert run_cli(["ledger", "export", "--ledger", str(ledger), "--out", str(now)]).exit_code == 0
    for name, key in (("registry", ["setl_id"]), ("accumulators", ["psn_no", "plan_year"])):
        want = pl.read_parquet(now / name / "*.parquet")
        got = pl.read_parquet(tmp_path / "03" / "state" / name / "*.parquet")
        assert_frame_equal(_sorted(got.select(want.columns), key), _sorted(want, key))
    docs = [json.loads((d / "state.json").read_text()) for d in (now, tmp_path / "03" / "state")]
    assert {k: v for k, v in docs[1].items() if k != "source"} == {
        k: v for k, v in docs[0].items() if k != "source"
    }
    assert ledger.read_bytes() == before  # exporting only read the ledger


def test_an_extract_the_state_holds_is_refused(nights: Path, session: Any, tmp_path: Path) -> None:
    from hmb_batch.ledger.store import LedgerError
    from hmb_batch.run.spark import run_spark_batch

    run_spark_batch(_inputs(nights, "01"), tmp_path / "a", buckets=2, session=session)
    with pytest.raises(LedgerError, match="holds this extract already"):
        run_spark_batch(
            _inputs(nights, "01"),
            tmp_path / "b",
            buckets=2,
            session=session,
            prior=tmp_path / "a" / "state",
        )


def test_adjudicate_on_spark_from_a_state_through_the_cli(
    nights: Path, on_ledger: Path, tmp_path: Path
) -> None:
    """The command line: --prior names the state; a folder that is not one is exit 5."""
    state = tmp_path / "after-02"
    ledger = on_ledger / "ledger.duckdb"
    night2 = _batch_id(on_ledger / "02")
    r = run_cli(
        ["ledger", "export", "--ledger", str(ledger), "--as-of", night2, "--out", str(state)]
    )
    assert r.exit_code == 0, r.output
    hmb = Path(sys.executable).parent / "hmb-batch"
    base = [str(hmb), *_adjudicate_args(nights, "03")]
    spark = ["--no-ledger", "--engine", "spark", "--buckets", "2", "--json"]
    env = os.environ | {"PYSPARK_PYTHON": sys.executable}
    bad = subprocess.run(
        [*base, *spark, "--prior", str(tmp_path), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 5 and "not a state folder" in bad.stdout
    done = subprocess.run(
        [*base, *spark, "--prior", str(state), "--out", str(tmp_path / "03")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert answer["prior"] == str(state) and answer["reconciled"]["passed"]
    want = json.loads((on_ledger / "03" / "manifest.json").read_text())
    got = json.loads((tmp_path / "03" / "manifest.json").read_text())
    assert got["loss_ratios"] == want["loss_ratios"]
    assert got["counts"]["payout_by_plan_year"] == want["counts"]["payout_by_plan_year"]


def test_simulate_and_sweep_on_spark_equal_the_local_scenario(
    nights: Path, on_ledger: Path, tmp_path: Path
) -> None:
    """A what-if from the production ledger's state after night 1 (nights 2 and 3 under the
    2023 floor of 13,000), swept over three floors: on Spark, the year to date carried as
    Parquet, the totals, loss ratios and every value of the sweep equal the local scenario's."""
    ledger = on_ledger / "ledger.duckdb"
    before = ledger.read_bytes()
    night1 = _batch_id(on_ledger / "01")
    args = [
        "simulate",
        str(nights / "nightly" / "02"),
        str(nights / "nightly" / "03"),
        "--roster",
        str(nights / "roster.parquet"),
        "--lists",
        str(nights / "lists.parquet"),
        "--plan",
        "zhelibao-2022",
        "--from-ledger",
        str(ledger),
        "--as-of",
        night1,
        "--sweep",
        "responsibilities.main.terms.0.floor=13000,18000,25000",
        "--json",
    ]
    local = run_cli([*args, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    hmb = Path(sys.executable).parent / "hmb-batch"
    done = subprocess.run(
        [
            str(hmb),
            *args,
            "--out",
            str(tmp_path / "spark"),
            "--engine",
            "spark",
            "--buckets",
            "3",
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"PYSPARK_PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    want, got = json.loads(local.stdout), json.loads(done.stdout)
    assert got["engine"] == "spark" and len(got["batches"]) == 2
    assert got["plan_years"] == want["plan_years"]
    assert got["sweep"] == want["sweep"]
    payouts = [Decimal(v["payout"]) for v in got["sweep"]["values"]]
    assert payouts[0] > payouts[1] > payouts[2]  # a lower floor pays more
    # the batches' payouts per settlement, too
    for n in ("01", "02"):
        w = pl.read_parquet(tmp_path / "local" / "batches" / n / "payouts.parquet")
        g = pl.read_parquet(
            tmp_path / "spark" / "batches" / n / "payouts" / "**" / "*.parquet",
            hive_partitioning=True,
        )
        assert_frame_equal(_sorted(g.select(w.columns), ["setl_id"]), _sorted(w, ["setl_id"]))
    assert (tmp_path / "spark" / "simulation.md").read_text().count("On Spark") == 1
    assert ledger.read_bytes() == before  # the production ledger was only read


def _tables(ledger: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The ledger's rows that a batch writes (its record: the columns a run on another engine
    and another folder leaves alike)."""
    import duckdb

    con = duckdb.connect(str(ledger), read_only=True)
    try:
        out = {
            "batches": con.execute(
                "SELECT batch_id, seq, batch_key, status, settlements_in, adjudicated, "
                "quarantined, total_payout_fen, max_setl_time, editions FROM batches ORDER BY seq"
            ).fetchall()
        }
        for table in (
            "settlements",
            "settlement_costs",
            "settlement_responsibilities",
            "accumulators",
            "accumulator_log",
            "payout_history",
            "member_state",
        ):
            out[table] = sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=str)
        return out
    finally:
        con.close()


def test_a_spark_batch_imported_into_the_ledger_is_the_local_night(
    nights: Path, on_ledger: Path, session: Any, tmp_path: Path
) -> None:
    """Night 1 locally, night 2 on Spark from the exported ledger and imported, night 3
    locally again: the ledger equals the one that ran all three nights locally, row for row."""
    from hmb_batch.run.spark import run_spark_batch

    ledger = tmp_path / "ledger.duckdb"
    assert run_cli(["ledger", "init", str(ledger)]).exit_code == 0
    r = run_cli(
        [*_adjudicate_args(nights, "01"), "--ledger", str(ledger), "--out", str(tmp_path / "01")]
    )
    assert r.exit_code == 0, r.output
    state = tmp_path / "state-01"
    assert (
        run_cli(["ledger", "export", "--ledger", str(ledger), "--out", str(state)]).exit_code == 0
    )
    run_spark_batch(_inputs(nights, "02"), tmp_path / "02", buckets=3, session=session, prior=state)
    # a stale state: computed from nothing, while the ledger holds night 1
    run_spark_batch(_inputs(nights, "02"), tmp_path / "stale", buckets=3, session=session)
    stale = run_cli(
        ["ledger", "import", str(tmp_path / "stale"), "--ledger", str(ledger), "--json"]
    )
    assert stale.exit_code == 9 and "ledger export" in stale.stdout, stale.output
    # a state that is not the ledger's year to date (here: one member-year edited) gives a
    # batch the import refuses, naming what differs
    edited = tmp_path / "state-edited"
    shutil.copytree(state, edited)
    acc_file = next((edited / "accumulators").glob("*.parquet"))
    acc = pl.read_parquet(acc_file)
    first_cost = next(c for c in acc.columns if c.startswith("cum__"))
    acc.with_columns(pl.col(first_cost) + 100).write_parquet(acc_file)
    run_spark_batch(
        _inputs(nights, "02"), tmp_path / "edited", buckets=3, session=session, prior=edited
    )
    wrong = run_cli(
        ["ledger", "import", str(tmp_path / "edited"), "--ledger", str(ledger), "--json"]
    )
    assert wrong.exit_code == 9 and "another year to date" in wrong.stdout, wrong.output
    # a scenario's batch is never applied to a ledger
    scenario = tmp_path / "scenario"
    shutil.copytree(tmp_path / "02", scenario)
    manifest = json.loads((scenario / "manifest.json").read_text())
    manifest["ledger_import"]["scenario"] = True
    (scenario / "manifest.json").write_text(json.dumps(manifest))
    refused = run_cli(["ledger", "import", str(scenario), "--ledger", str(ledger), "--json"])
    assert refused.exit_code == 9 and "scenario" in refused.stdout
    snapshot = _tables(ledger)
    done = run_cli(["ledger", "import", str(tmp_path / "02"), "--ledger", str(ledger), "--json"])
    assert done.exit_code == 0, done.output
    assert snapshot != _tables(ledger)  # the refusals applied nothing; this did
    again = run_cli(["ledger", "import", str(tmp_path / "02"), "--ledger", str(ledger), "--json"])
    assert again.exit_code == 9 and "already" in again.stdout
    # its inputs run locally again: not replayed from files the ledger never archived
    rerun = run_cli(
        [*_adjudicate_args(nights, "02"), "--ledger", str(ledger), "--out", str(tmp_path / "x")]
    )
    assert rerun.exit_code == 9 and "adjudicated on Spark and imported" in rerun.output
    r = run_cli(
        [*_adjudicate_args(nights, "03"), "--ledger", str(ledger), "--out", str(tmp_path / "03")]
    )
    assert r.exit_code == 0, r.output
    got, want = _tables(ledger), _tables(on_ledger / "ledger.duckdb")
    for table in want:
        assert got[table] == want[table], table
    # night 3, run on the ledger that imported night 2, paid what the all-local night 3 paid
    w = pl.read_parquet(on_ledger / "03" / "payouts.parquet").sort("setl_id")
    assert_frame_equal(pl.read_parquet(tmp_path / "03" / "payouts.parquet").sort("setl_id"), w)
    batches = json.loads(run_cli(["ledger", "batches", "--ledger", str(ledger), "--json"]).stdout)
    assert batches[1]["out"] == str((tmp_path / "02").resolve())
