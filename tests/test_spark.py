"""The Spark engine gives what the single-machine run gives, to the fen, for any bucket count.

Marked ``spark`` (make test-spark installs pyspark and Java 17): a generated two-year extract
with planted edge cases (an exact duplicate, a conflicting duplicate; the generator's reversals
and denials) adjudicated without a ledger locally and on ``local[2]`` in 1, 8 and 64 buckets.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import run_cli

pytestmark = pytest.mark.spark

SPY_ENV = "HMB_KERNEL_SPY"
# imported by every Python process started while PYTHONPATH names its folder (Spark's workers
# among them): wraps the kernel's three stage functions to append their names to a file. The
# Spark path passes only if its workers called the kernel's own functions.
SITECUSTOMIZE = textwrap.dedent(
    """
    import functools, os
    if os.environ.get("HMB_KERNEL_SPY"):
        from hmb_batch.rules import kernel

        def _spied(name, f):
            @functools.wraps(f)
            def inner(*args, **kwargs):
                with open(os.environ["HMB_KERNEL_SPY"], "a", encoding="utf-8") as out:
                    out.write(name + "\\n")
                return f(*args, **kwargs)
            return inner

        for _name in ("adjudicate_lines", "adjudicate_members", "settle_audit"):
            setattr(kernel, _name, _spied(_name, getattr(kernel, _name)))
    """
)


def _spark_or_skip() -> None:
    pytest.importorskip("pyspark")
    from hmb_batch.run.spark import spark_available

    why = spark_available()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="module")
def spy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The file the workers' spied kernel functions write to (see :data:`SITECUSTOMIZE`)."""
    folder = tmp_path_factory.mktemp("spy")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    calls = folder / "calls.txt"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", SPY_ENV)}
    src = Path(__file__).parent.parent / "src"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(folder), str(src), *filter(None, [saved["PYTHONPATH"]])]
    )
    os.environ[SPY_ENV] = str(calls)
    yield calls
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def session(spy: Path) -> Iterator[Any]:
    """One local[2] SparkSession for the module (its JVM and workers start with the spy)."""
    _spark_or_skip()
    from hmb_batch.run.spark import spark_session

    spark = spark_session("local[2]", shuffle_partitions=8)
    # also when this process's JVM was started before the spy's PYTHONPATH was set (another
    # module's session ran first): the workers' environment is the context's, given here
    for name in ("PYTHONPATH", SPY_ENV):
        spark.sparkContext.environment[name] = os.environ[name]
    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two generated plan years, with an exact and a conflicting duplicate planted."""
    folder = tmp_path_factory.mktemp("year")
    r = run_cli(
        ["generate", "--members", "3000", "--years", "2", "--seed", "17", "--out", str(folder)]
    )
    assert r.exit_code == 0, r.output
    settlements = pl.read_parquet(folder / "settlements.parquet")
    fees = pl.read_parquet(folder / "fees.parquet")
    claims = settlements.filter(pl.col("refd_setl_flag") == "0")
    twin, rival = claims.row(10, named=True), claims.row(20, named=True)
    # an exact copy of a settlement and its fee lines (an identical repeat: counted once), and
    # a second row of another setl_id with another total (a conflicting duplicate: quarantined)
    twin_lines = fees.filter(pl.col("setl_id") == twin["setl_id"])
    conflicting = pl.DataFrame([rival], schema=settlements.schema).with_columns(
        pl.col("medfee_sumamt") + pl.lit(1).cast(settlements.schema["medfee_sumamt"])
    )
    settlements = pl.concat(
        [settlements, pl.DataFrame([twin], schema=settlements.schema), conflicting]
    )
    fees = pl.concat([fees, twin_lines])
    # a settlement whose id ends in a carriage return (a CRLF file converted): Java's $ would
    # take "S1\r" for plain ASCII; the kernel strips it to S1, as its fee lines say
    crlf = claims.row(40, named=True)["setl_id"]
    settlements = settlements.with_columns(
        pl.when(pl.col("setl_id") == crlf)
        .then(pl.lit(crlf + "\r"))
        .otherwise(pl.col("setl_id"))
        .alias("setl_id")
    )
    # a settlement's fee lines under its id written another way: a full-width first letter
    # and a trailing space (the same id once NFKC-normalised and stripped); the JVM's fast
    # path keys the plain id, Python the other: they must meet in one part
    odd = claims.row(30, named=True)["setl_id"]
    fees = fees.with_columns(
        pl.when(pl.col("setl_id") == odd)
        .then(pl.lit(chr(ord(odd[0]) + 0xFEE0) + odd[1:] + " "))
        .otherwise(pl.col("setl_id"))
        .alias("setl_id")
    )
    settlements.write_parquet(folder / "settlements.parquet")
    fees.write_parquet(folder / "fees.parquet")
    return {name: folder / f"{name}.parquet" for name in ("settlements", "fees", "roster", "lists")}


@pytest.fixture(scope="module")
def local_run(year: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    args = [
        "adjudicate",
        str(year["settlements"]),
        "--fees",
        str(year["fees"]),
        "--roster",
        str(year["roster"]),
        "--lists",
        str(year["lists"]),
        "--plan",
        "zhelibao",
        "--no-ledger",
        "--quiet",
        "--out",
        str(out),
    ]
    r = run_cli(args)
    assert r.exit_code == 0, r.output
    return out


def _dataset(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "**" / "*.parquet", hive_partitioning=True)


def test_the_local_run_has_the_edge_cases(local_run: Path) -> None:
    payouts = pl.read_parquet(local_run / "payouts.parquet")
    assert sorted(payouts["plan_year"].unique().to_list()) == [2022, 2023]
    statuses = Counter(payouts["status"].to_list())
    assert statuses["reversal"] > 0 and statuses["denied"] > 0 and statuses["paid"] > 0
    quarantine = pl.read_parquet(local_run / "quarantine.parquet")
    assert "CONFLICTING_DUPLICATE" in set(quarantine["reasons"].explode().to_list())
    counts = json.loads((local_run / "manifest.json").read_text())["counts"]
    assert counts["identical_repeats"] == 1
    # the fee lines written with a full-width letter were read as their settlement's
    assert counts["orphan_fee_lines"] == 0


@pytest.mark.parametrize("buckets", [1, 8, 64])
def test_spark_gives_the_single_machine_run_to_the_fen(
    buckets: int,
    year: dict[str, Path],
    local_run: Path,
    session: Any,
    spy: Path,
    tmp_path: Path,
) -> None:
    from hmb_batch.run.batch import BatchInputs
    from hmb_batch.run.spark import run_spark_batch

    spy.write_text("", encoding="utf-8")
    inputs = BatchInputs(
        extract=year["settlements"],
        fees=year["fees"],
        roster=year["roster"],
        lists=year["lists"],
        plan="zhelibao",
    )
    result = run_spark_batch(inputs, tmp_path / "spark", buckets=buckets, session=session)
    out = result.out_dir
    assert sorted(p.name for p in (out / "payouts").glob("plan_year=*")) == [
        "plan_year=2022",
        "plan_year=2023",
    ]
    want = pl.read_parquet(local_run / "payouts.parquet").sort("setl_id")
    got = _dataset(out / "payouts").select(want.columns).sort("setl_id")
    # every settlement, every column: money to the fen, status, reasons, year to date
    assert_frame_equal(got, want)
    lines_key = ["setl_id", "feedetl_sn"]
    want_lines = pl.read_parquet(local_run / "lines.parquet").sort(lines_key)
    got_lines = _dataset(out / "lines").select(want_lines.columns).sort(lines_key)
    # Spark has no enum type: the dispositions are the same text
    assert_frame_equal(got_lines, want_lines, check_dtypes=False)
    # the lines' dataset is partitioned by their settlement's plan year, as the payouts' is
    assert sorted(p.name for p in (out / "lines").glob("plan_year=*")) == [
        "plan_year=2022",
        "plan_year=2023",
    ]
    years = _dataset(out / "lines").select("setl_id", "plan_year").unique()
    paid = want.select("setl_id", pl.col("plan_year").alias("paid_year"))
    assert (
        years.join(paid, on="setl_id").filter(pl.col("plan_year") != pl.col("paid_year")).is_empty()
    )
    assert years.join(paid, on="setl_id", how="anti").is_empty()
    q_key = ["record", "_file", "_row"]
    want_q = pl.read_parquet(local_run / "quarantine.parquet").sort(q_key)
    got_q = _dataset(out / "quarantine").select(want_q.columns).sort(q_key)
    assert_frame_equal(got_q, want_q, check_dtypes=False)
    # the same identities and totals, from the buckets' totals
    recon = [json.loads((d / "reconciliation.json").read_text()) for d in (local_run, out)]
    assert recon[1]["passed"] and recon[1] == recon[0]
    counts = [json.loads((d / "manifest.json").read_text())["counts"] for d in (local_run, out)]
    assert counts[1] == counts[0]
    # the workers ran the kernel's own functions: a part at a time, a member bucket at a time
    calls = Counter(spy.read_text(encoding="utf-8").split())
    parts = want.select(pl.col("setl_id")).height and calls["adjudicate_lines"]
    assert 1 <= parts <= buckets and calls["adjudicate_members"] <= buckets
    assert calls["adjudicate_members"] >= (1 if buckets == 1 else buckets // 2)
    assert calls["settle_audit"] >= 1
    if buckets == 1:
        assert calls == Counter(adjudicate_lines=1, adjudicate_members=1, settle_audit=1)


def test_the_engine_says_how_to_install_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hmb_batch.run import spark

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    why = spark.spark_available()
    assert why is not None and "scripts/ensure-java" in why


def test_a_refused_batch_leaves_no_dataset(
    year: dict[str, Path], session: Any, tmp_path: Path
) -> None:
    """The workers write the datasets as they go: a batch refused after that (here: claims in
    a plan year its roster does not hold) leaves none of them, and says why."""
    from hmb_batch.errors import HmbError
    from hmb_batch.run.batch import BatchInputs
    from hmb_batch.run.spark import DATASETS, run_spark_batch

    roster = tmp_path / "roster-2022.parquet"
    pl.read_parquet(year["roster"]).filter(pl.col("plan_year") == 2022).write_parquet(roster)
    inputs = BatchInputs(
        extract=year["settlements"],
        fees=year["fees"],
        roster=roster,
        lists=year["lists"],
        plan="zhelibao",
    )
    out = tmp_path / "spark"
    with pytest.raises(HmbError, match="2023"):
        run_spark_batch(inputs, out, buckets=4, session=session)
    assert not [name for name in DATASETS if (out / name).exists()]
    assert not list(out.glob(".hmb-spark-*"))
