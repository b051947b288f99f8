"""The same kernel on Apache Spark: a batch's parts and member buckets as Spark groups.

Every member's year is independent, so the three stages of :mod:`hmb_batch.rules.kernel` run
on Spark's workers exactly as :mod:`hmb_batch.run.batch` runs them in one process; nothing
about the rules is re-implemented here:

1. the extract's raw Parquet rows get their part, a hash of ``setl_id`` as the kernel types
   it (:func:`_keyed_rows`: in the JVM for plain ASCII ids, through the kernel's
   normalisation otherwise); settlements and fee lines are cogrouped by part and each part is
   typed and put through :func:`~hmb_batch.rules.kernel.adjudicate_lines` (``applyInArrow``);
2. the facts, sent to their member bucket (a hash of ``psn_no``), are cogrouped with the
   roster's rows of that bucket and the prior state it needs (a state folder,
   :mod:`hmb_batch.ledger.parquet_state`) and put through
   :func:`~hmb_batch.rules.kernel.adjudicate_members`;
3. each part's audit, with the member stage's decisions and the fee lines of the
   settlements the engine quarantined, goes through :func:`~hmb_batch.rules.kernel.settle_audit`.

Facts and decisions travel between stages as Arrow IPC blobs (:data:`BLOB_SCHEMA`): their
columns depend on the plan's editions, and a blob keeps Polars' types (categoricals, lists)
exactly as the kernel made them. Each stage's blobs are written to the run's work folder (a
checkpoint: Spark then never computes a stage twice). A part's audit does not travel: stage 1
writes it to the work folder and stage 3 of the same part reads it. The workers write the
outputs' Parquet files themselves (:func:`_output`), and the driver gives every file of a
dataset the same columns (:func:`_conform`); the totals, counts and years of every part and
bucket are collected to the driver and combined into reconciliation.json and the report by
the same functions as the local run. The state after the batch (``OUT/state``) and the rows
``hmb-batch ledger import`` applies (``OUT/ledger_rows``) are written alongside.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import os
import pickle
import shutil
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hmb_batch import __version__
from hmb_batch.errors import ConfigError, ExitCode, HmbError
from hmb_batch.io.atomic import write_files
from hmb_batch.io.contracts import FEE_LINES, ROSTER, SETTLEMENTS, Contract
from hmb_batch.io.extract import FILE, ROW, normalised_code, source_column, type_table
from hmb_batch.io.outputs import masked_personal
from hmb_batch.io.reference import enrolled_counts, roster_frame, roster_problems
from hmb_batch.ledger.parquet_state import (
    StateInfo,
    conform,
    empty_state_info,
    read_state,
    write_state_json,
)
from hmb_batch.ledger.store import LedgerError
from hmb_batch.money import yuan_to_fen
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.report.data import (
    batch_report,
    loss_ratio_json,
    report_columns,
    year_to_date_loss_ratios,
)
from hmb_batch.report.summary import summarise
from hmb_batch.rules import kernel
from hmb_batch.rules.engine import (
    PriorState,
    cost_ids,
    cum,
    inc,
    registry_rows,
    year_to_date_after,
)
from hmb_batch.rules.reconcile import AfterExpectation, Totals, combine
from hmb_batch.rules.validation import IS_REVERSAL
from hmb_batch.run.alerts import WarningLimits, batch_warnings
from hmb_batch.run.balancing import reconciliation_json, reconciliation_of
from hmb_batch.run.batch import (
    PERSONAL_DATA,
    BatchInputs,
    check_balanced,
    check_reconciled,
    covered_years,
    editions_used,
    order_mark,
    require_roster_years,
)
from hmb_batch.run.buckets import bucket_of
from hmb_batch.run.identity import describe_batch
from hmb_batch.run.spill import remove_stale_folders

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[2]"
KIND, KEY, PAYLOAD = "kind", "key", "payload"
# a stage's results between stages: what (facts, audit, ...), for which part or member bucket,
# the frame as Arrow IPC (or, for "meta", a pickle of the totals and counts)
BLOB_SCHEMA = f"{KIND} string, {KEY} int, {PAYLOAD} binary"
PART = "_part"  # the part (a hash of setl_id) of a raw extract row
BUCKET = "_mbucket"  # the member bucket (a hash of psn_no) of a raw roster row
SOURCE = "_source"  # the number of a row's input file (rows are typed, and ordered, per file)
SETL_KEY = "_setl_key"  # setl_id as the kernel types it (fee lines found again by it)
# rows per blob: an Arrow binary value holds at most 2 GiB (a part's facts: its settlements)
ROWS_PER_BLOB = 500_000
# what the workers write themselves, as Parquet files: where (under the output folder, or the
# work folder) and the column a dataset is partitioned by (Hive style: plan_year=2022/)
OUTPUTS: dict[str, tuple[str, str, str | None]] = {
    "payouts": ("out", "payouts", "plan_year"),
    "lines": ("out", "lines", "plan_year"),
    "quarantine": ("out", "quarantine", None),
    "report": ("work", "report", None),
    "state_registry": ("work", "state_registry", None),
    "state_accumulators": ("work", "state_accumulators", None),
}
SCHEMA = "schema:"
LEDGER = "ledger:"  # a blob of one ledger table's rows (see Ledger.apply), e.g. ledger:settlements
LEDGER_ROWS = "ledger_rows"  # OUT/ledger_rows/<table>/: what `hmb-batch ledger import` applies
LEDGER_TABLES = (
    "settlements",
    "settlement_costs",
    "settlement_responsibilities",
    "accumulator_log",
    "payout_history",
)


class SparkUnavailable(HmbError):
    """pyspark or Java is missing (exit 2): the message says how to install them."""

    exit_code = ExitCode.USAGE


SPARK_WORK_PREFIX = ".hmb-spark-"


class SparkJobFailed(HmbError):
    """A Spark job failed (a worker out of memory, a lost executor): nothing was written but the
    work folder, which is removed. Exit 5, like a memory limit below what a run needs."""

    exit_code = ExitCode.CONFIG


# the folders a run writes into its output folder (the workers' files among them)
DATASETS = ("payouts", "lines", "quarantine", "ledger_rows", "state")
_CLEARED = (
    "The datasets it had begun to write (payouts/, lines/, quarantine/, ledger_rows/, state/) "
    "and its work folder were removed"
)


def _job_failure(exc: BaseException) -> str:
    """What a failed Spark job says, without its message's text (a Java error may quote the
    row being written: names, ID numbers): its kind, and what to do about the usual one."""
    text = str(exc)
    if "OutOfMemoryError" in text:
        return (
            "the Spark job failed: java.lang.OutOfMemoryError — a part or member bucket did not "
            "fit a JVM's memory. Give more --buckets (smaller parts), or more memory: "
            "HMB_SPARK_DRIVER_MEMORY and HMB_SPARK_EXECUTOR_MEMORY (default 1g), or "
            f"spark-submit's own settings. {_CLEARED}"
        )
    return (
        f"the Spark job failed ({type(exc).__name__}; its message is not shown, it may quote "
        f"the data): see the Spark driver's log above. {_CLEARED}"
    )


def spark_available() -> str | None:
    """Why a Spark run cannot start here (None: it can): pyspark or Java missing."""
    try:
        import pandas  # noqa: F401  (applyInArrow requires it)
        import pyspark  # noqa: F401
    except ImportError as exc:
        return (
            f"the Spark engine needs pyspark and pandas ({exc.name} is not installed): "
            "pip install 'hmb-batch[spark]'"
        )
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and not shutil.which("java"):
        return (
            "the Spark engine needs Java 17 (no java on PATH and no JAVA_HOME): run "
            "scripts/ensure-java (Debian's openjdk-17-jre-headless)"
        )
    return None


def spark_session(master: str = DEFAULT_MASTER, *, shuffle_partitions: int = 8) -> SparkSession:
    """A SparkSession for a run: workers run this interpreter (``PYSPARK_PYTHON``), so they
    import the same hmb-batch, Polars and plan editions as the driver.

    Raises :class:`SparkUnavailable` when pyspark or Java is missing.
    """
    why = spark_available()
    if why is not None:
        raise SparkUnavailable(why)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder: Any = SparkSession.builder
    session: SparkSession = (
        builder.master(master)
        .appName("hmb-batch")
        .config("spark.sql.shuffle.partitions", str(max(1, shuffle_partitions)))
        # timestamps as written (naive local times): no session zone may shift them
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.inferTimestampNTZ.enabled", "true")
        .config("spark.driver.memory", os.environ.get("HMB_SPARK_DRIVER_MEMORY", "1g"))
        .config("spark.executor.memory", os.environ.get("HMB_SPARK_EXECUTOR_MEMORY", "1g"))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .config("spark.python.worker.reuse", "true")
        # the raw rows Spark shuffles and spills hold psn_name and certno in full: its
        # temporary files are encrypted with a key of the application's own
        .config("spark.io.encryption.enabled", "true")
        .getOrCreate()
    )
    return session


# --- what every worker needs: broadcast once ---------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What a worker reads besides its rows: the compiled plan and lists (pickled: a
    PlanSelection pickles, its expressions are built when read), the batch's identity, and
    the cut (parts and member buckets)."""

    plan: PlanSelection
    lists: pl.DataFrame
    batch_id: str
    parts: int
    members: int
    labels: dict[str, tuple[int, str]]  # a file's Spark path -> its number and its label
    roster_label: str
    column_map: dict[str, str]
    timezone: str
    unmasked: bool
    files: tuple[Path, ...]
    out: str = ""  # the run's output folder: the workers write the outputs' files into it
    work: str = ""  # its work folder (report rows, the state's new rows)


# --- blobs ---------------------------------------------------------------------------------


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="lz4")
    return buf.getvalue()


def _frame(payload: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(payload))


def _blobs(kind: str, key: int, frame: pl.DataFrame) -> list[tuple[str, int, bytes]]:
    """A frame as blob rows (a slice of at most :data:`ROWS_PER_BLOB` rows each; an empty
    frame is one blob, so that its columns travel). An output's blobs come with a blob of
    their columns alone (``schema:KIND``): the driver reads those, not the rows, to give the
    output's dataset its schema."""
    rows = [
        (kind, key, _ipc(frame.slice(i, ROWS_PER_BLOB)))
        for i in range(0, max(frame.height, 1), ROWS_PER_BLOB)
    ]
    return rows


def _output(
    ctx: _Context, kind: str, stage: str, key: int, frame: pl.DataFrame
) -> list[tuple[str, int, bytes]]:
    """Write one part's or bucket's rows of an output as Parquet files into its dataset (see
    :data:`OUTPUTS`; a ledger table's: ``OUT/ledger_rows/TABLE/bucket-NNNNN.parquet``, the same
    name in every table's folder, as :meth:`Ledger.apply` groups them), and return the blob of
    its columns alone (``schema:KIND``): the driver makes every file of a dataset have the
    same columns (:func:`_conform`).

    A file's name is the stage and the key: a task Spark runs again (a retry, a speculative
    copy) writes the same rows under the same name, never a second copy. Each file is written
    under a temporary name and renamed: a reader never sees half a file.
    """
    if frame.height:
        if kind.startswith(LEDGER):
            folder, partition = Path(ctx.out, LEDGER_ROWS, kind[len(LEDGER) :]), None
            name = f"bucket-{key:05d}.parquet"
        else:
            root, sub, partition = OUTPUTS[kind]
            folder = Path(ctx.out if root == "out" else ctx.work, sub)
            name = f"part-{stage}-{key:05d}.parquet"
        if partition is None or partition not in frame.columns:
            _write_parquet(frame, folder / name)
        else:
            for (value,), rows in frame.group_by(partition):
                folder_name = "__HIVE_DEFAULT_PARTITION__" if value is None else value
                _write_parquet(rows.drop(partition), folder / f"{partition}={folder_name}" / name)
    return [(f"{SCHEMA}{kind}", key, _ipc(frame.clear()))]


def _audit_path(ctx: _Context, part: int) -> Path:
    return Path(ctx.work, "audit", f"part-{part:05d}.arrow")


def _write_ipc(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    frame.write_ipc(partial, compression="lz4")
    os.replace(partial, path)


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(_plain(frame), partial)
    os.replace(partial, path)


def _by(kind: str, frame: pl.DataFrame, key: pl.Expr) -> list[tuple[str, int, bytes]]:
    """A frame's rows as blobs per key (a part or member bucket of each row)."""
    out: list[tuple[str, int, bytes]] = []
    if not frame.height:
        return out
    keyed = frame.with_columns(key.alias("__key"))
    for (k,), rows in keyed.group_by("__key", maintain_order=True):
        out += _blobs(kind, int(k), rows.drop("__key"))
    return out


def _by_column(kind: str, frame: pl.DataFrame, column: str) -> list[tuple[str, int, bytes]]:
    """A frame's rows as blobs per value of ``column`` (a part), without that column."""
    out: list[tuple[str, int, bytes]] = []
    for (k,), rows in frame.group_by(column, maintain_order=True):
        out += _blobs(kind, int(k), rows.drop(column))
    return out


def _table(rows: list[tuple[str, int, bytes]]) -> pa.Table:
    return pa.table(
        {
            KIND: pa.array([r[0] for r in rows], pa.string()),
            KEY: pa.array([r[1] for r in rows], pa.int32()),
            PAYLOAD: pa.array([r[2] for r in rows], pa.binary()),
        }
    )


def _of(table: pa.Table, kind: str) -> list[pl.DataFrame]:
    """The frames of one kind among a group's blobs."""
    kinds = table.column(KIND).to_pylist()
    payloads = table.column(PAYLOAD).to_pylist()
    return [_frame(p) for k, p in zip(kinds, payloads, strict=True) if k == kind]


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


# --- typing raw rows as the local run types them ------------------------------------------


def _typed(
    raw: pa.Table, contract: Contract, ctx: _Context, *, label: str | None = None
) -> pl.DataFrame:
    """Raw rows (with :data:`SOURCE` and :data:`ROW`) typed per input file, as
    :func:`hmb_batch.io.extract.read_extract` types them, in input order (file, then row:
    which copy of a repeated key validation keeps must not depend on the cut)."""
    frame = pl.from_arrow(raw)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.drop([c for c in (PART, BUCKET, SETL_KEY) if c in frame.columns])
    numbers = {n: lab for n, lab in ctx.labels.values()}
    out = []
    for (source,), rows in frame.sort(SOURCE, ROW).group_by(SOURCE, maintain_order=True):
        file_label = label or numbers[int(source)]
        lf = rows.drop(SOURCE).lazy().with_columns(pl.lit(file_label, pl.Categorical).alias(FILE))
        out.append(
            type_table(
                lf,
                contract,
                column_map=ctx.column_map,
                file_label=file_label,
                timezone=ctx.timezone,
            ).collect()
        )
    if not out:
        empty = frame.drop(SOURCE).lazy().with_columns(pl.lit(None, pl.Categorical).alias(FILE))
        return type_table(
            empty, contract, column_map=ctx.column_map, require=False, timezone=ctx.timezone
        ).collect()
    return pl.concat(out, how="vertical_relaxed")


def _path_key(path: str) -> str:
    """A file as the driver names it and as Spark's ``_metadata.file_path`` does (a URI)."""
    parsed = urllib.parse.urlparse(path)
    if parsed.scheme in ("", "file"):
        return str(Path(urllib.parse.unquote(parsed.path)).resolve())
    return path


def _setl_keys(
    ctx: _Context, contract: Contract, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Raw extract rows with their setl_id as the kernel types it (``mapInArrow``): for the
    ids that are not plain printable ASCII, whose NFKC form and stripping only Python's
    :func:`~hmb_batch.io.extract.normalised_code` gives (see :func:`_keyed_rows`)."""
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        src = source_column(frame.lazy(), contract, "setl_id", ctx.column_map)
        key = normalised_code(pl.col(src).cast(pl.String)) if src else pl.lit(None, pl.String)
        yield from _plain(frame.with_columns(key.alias(SETL_KEY))).to_batches()


def _keyed_rows(
    spark: SparkSession, raw: DataFrame, contract: Contract, ctx: _Context
) -> DataFrame:
    """Raw extract rows with their file's number (:data:`SOURCE`), their row in it (1-based,
    as the local run numbers them), their setl_id as typed (:data:`SETL_KEY`) and their part
    (:data:`PART`, a hash of that id: a settlement and its fee lines meet in one part).

    In the JVM, without a Python pass, for a text id of printable ASCII alone (U+0021 to
    U+007E): NFKC leaves it as it is and there is nothing to strip, so it is its typed form.
    Any other id (spaces, full-width digits, invisible characters, a number-typed column)
    goes through :func:`_setl_keys`, the kernel's own normalisation, before the same hash.
    The pattern ends in ``\\z``, not ``$``: Java's ``$`` also matches before a final line
    break, and ``S1\\r`` is not its typed form ``S1``.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StringType

    columns = raw.drop("_path", "_row_index")
    probe = pl.from_arrow(to_arrow_schema(columns.schema).empty_table())
    assert isinstance(probe, pl.DataFrame)
    src = source_column(probe.lazy(), contract, "setl_id", ctx.column_map)
    plain = F.lit(False)
    if src is not None and isinstance(columns.schema[src].dataType, StringType):
        plain = F.coalesce(F.col(f"`{src}`").rlike(r"^[\x21-\x7E]+\z"), F.lit(False))
    fast = raw.filter(plain).withColumn(SETL_KEY, F.col(f"`{src}`") if src else F.lit(None))
    schema = raw.schema.simpleString()[len("struct<") : -1]
    slow = raw.filter(~plain).mapInArrow(
        functools.partial(_setl_keys, ctx, contract), f"{_ddl(schema)}, {SETL_KEY} string"
    )

    # each file's number, by the URI Spark gives its rows; the relation's file list (no scan)
    # writes a local file file:///a where the rows say file:/a, so both are put one way
    def uri(path: Any) -> Any:
        return F.regexp_replace(path, "^file:/+", "file:/")

    numbers = F.create_map(
        *[x for p in raw.inputFiles() for x in (uri(F.lit(p)), F.lit(ctx.labels[_path_key(p)][0]))]
    )
    return (
        fast.unionByName(slow)
        .withColumn(SOURCE, numbers[uri(F.col("_path"))].cast("int"))
        .withColumn(ROW, (F.col("_row_index") + 1).cast("int"))
        .withColumn(PART, F.pmod(F.xxhash64(F.col(SETL_KEY)), F.lit(ctx.parts)).cast("int"))
        .drop("_path", "_row_index")
    )


def _roster_keyed(ctx: _Context, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Raw roster rows with their row number and member bucket (psn_no as typed)."""
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        src = source_column(frame.lazy(), ROSTER, "psn_no", ctx.column_map)
        key = normalised_code(pl.col(src).cast(pl.String)) if src else pl.lit(None, pl.String)
        frame = frame.drop("_path").with_columns(
            pl.lit(0, pl.Int32).alias(SOURCE),
            (pl.col("_row_index") + 1).cast(pl.Int32).alias(ROW),
            key.alias("__psn"),
        )
        frame = frame.with_columns(bucket_of("__psn", ctx.members).cast(pl.Int32).alias(BUCKET))
        yield from _plain(frame.drop("_row_index", "__psn")).to_batches()


# --- the three stages on the workers -------------------------------------------------------


def _meta(**values: Any) -> bytes:
    return pickle.dumps(values)


def _lines(
    ctx_b: Any, key: tuple[Any, ...], settlements: pa.Table, fee_lines: pa.Table
) -> pa.Table:
    """Stage 1 for one part: :func:`kernel.adjudicate_lines` on its whole settlements."""
    ctx: _Context = ctx_b.value
    part = int(key[0])
    lined = kernel.adjudicate_lines(
        kernel.LinePart(_typed(settlements, SETTLEMENTS, ctx), _typed(fee_lines, FEE_LINES, ctx)),
        plan=ctx.plan,
        lists=ctx.lists,
        batch_id=ctx.batch_id,
        shape="two-file",
        files=ctx.files,
        unmasked=ctx.unmasked,
    )
    member_bucket = bucket_of("psn_no", ctx.members)
    # masked before they are checkpointed (the member stage's outputs mask them again, which
    # changes nothing): the work folder holds no name or ID number unless --unmasked
    facts = masked_personal(lined.facts, unmasked=ctx.unmasked)
    rows = _by("facts", facts, member_bucket)
    # which part each settlement is in, for the member stage to send its decisions back
    rows += _by(
        "parts",
        lined.facts.select("setl_id", "psn_no").with_columns(pl.lit(part, pl.Int32).alias(PART)),
        member_bucket,
    )
    # the audit stays with its part: stage 3 of the same part reads it from the work folder
    # (it never travels through Spark's shuffle); a marker row says the part has one
    _write_ipc(lined.audit, _audit_path(ctx, part))
    rows.append(("audit", part, b""))
    rows += _output(ctx, "quarantine", "lines", part, lined.quarantine)
    rows.append(
        (
            "meta",
            part,
            _meta(
                totals=lined.totals,
                settlements_in=lined.settlements_in,
                fee_lines_in=lined.fee_lines_in,
                identical_repeats=lined.identical_repeats,
                repeated_fee_lines=lined.repeated_fee_lines,
                absolute_fen=lined.absolute_fen,
                no_facts=lined.facts.clear(),
            ),
        )
    )
    return _table(rows)


def _members(ctx_b: Any, key: tuple[Any, ...], facts: pa.Table, roster: pa.Table) -> pa.Table:
    """Stage 2 for one member bucket: :func:`kernel.adjudicate_members` on its facts and its
    roster rows (a bucket with roster rows and no facts only counts its enrolled members)."""
    ctx: _Context = ctx_b.value
    bucket = int(key[0])
    typed_roster = _typed(roster, ROSTER, ctx, label=ctx.roster_label)
    problems = roster_problems(typed_roster, Path(ctx.roster_label))
    rows: list[tuple[str, int, bytes]] = []
    found = _concat(_of(facts, "facts"))
    meta: dict[str, Any] = {
        "problems": problems,
        "enrolled": enrolled_counts(typed_roster),
    }
    if found is not None and not problems:
        costs = cost_ids(ctx.plan)
        empty = PriorState.empty(costs)
        # the registry rows its settlements name and its members' year to date (none without
        # a prior state), as Ledger.prior_for reads them for a local run
        registry = _concat([empty.registry.collect(), *_of(facts, "registry")])
        accumulators = _concat([empty.accumulators.collect(), *_of(facts, "accumulators")])
        assert registry is not None and accumulators is not None
        prior = conform(PriorState(registry.lazy(), accumulators.lazy()), costs)
        result = kernel.adjudicate_members(
            kernel.MemberBucket(found, roster_frame(typed_roster), prior),
            plan=ctx.plan,
            batch_id=ctx.batch_id,
            unmasked=ctx.unmasked,
        )
        assert result.ledger_rows is not None
        for table in LEDGER_TABLES:
            rows += _output(ctx, f"{LEDGER}{table}", "", bucket, result.ledger_rows[table])
        # the state after the batch, as carry_forward moves it on: the bucket's settlements
        # and the year to date of the member-years they touched
        rows += _output(
            ctx, "state_registry", "members", bucket, registry_rows(result.payouts, costs)
        )
        rows += _output(
            ctx,
            "state_accumulators",
            "members",
            bucket,
            year_to_date_after(result.payouts, costs),
        )
        rows += _output(ctx, "payouts", "members", bucket, result.payout_file)
        rows += _output(ctx, "report", "members", bucket, report_columns(result.payouts))
        rows += _output(ctx, "quarantine", "members", bucket, result.quarantine)
        # the decisions go to the parts whose audit they settle
        parts = _concat(_of(facts, "parts"))
        assert parts is not None
        where = parts.select("setl_id", PART).unique("setl_id")
        rows += _by_column("denied", result.denied.join(where, on="setl_id", how="left"), PART)
        rows += _by_column("removed", result.removed.join(where, on="setl_id", how="left"), PART)
        # and each settlement's plan year, by which its lines' dataset is partitioned
        years = result.payouts.select("setl_id", "plan_year").unique("setl_id")
        rows += _by_column("years", years.join(where, on="setl_id", how="inner"), PART)
        meta |= {
            "totals": result.totals,
            "years": result.years,
            "claim_years": result.claim_years,
            "latest": result.latest,
            "after": result.after,
            "no_denied": result.denied.clear(),
            "no_removed": result.removed.clear(),
        }
    rows.append(("meta", bucket, _meta(**meta)))
    return _table(rows)


def _settle(
    ctx_b: Any, empty_b: Any, key: tuple[Any, ...], decided: pa.Table, fee_lines: pa.Table
) -> pa.Table:
    """Stage 3 for one part: :func:`kernel.settle_audit` on its audit, the member stage's
    decisions about its settlements, and the fee lines of those the engine quarantined."""
    ctx: _Context = ctx_b.value
    part = int(key[0])
    kinds = decided.column(KIND).to_pylist()
    if "audit" not in kinds:  # fee lines of a part with no audit: nothing to settle
        return _table([])
    audit = pl.read_ipc(_audit_path(ctx, part))
    no_denied, no_removed = empty_b.value
    denied = _concat([no_denied, *_of(decided, "denied")])
    removed = _concat([no_removed, *_of(decided, "removed")])
    assert denied is not None and removed is not None
    settled = kernel.settle_audit(
        audit,
        _typed(fee_lines, FEE_LINES, ctx),
        denied,
        removed,
        plan=ctx.plan,
        batch_id=ctx.batch_id,
        unmasked=ctx.unmasked,
    )
    years = _concat(_of(decided, "years"))
    lines = settled.lines
    if "plan_year" not in lines.columns:  # the audit has none: the member stage's years
        lines = (
            lines.join(years, on="setl_id", how="left")
            if years is not None
            else lines.with_columns(pl.lit(None, pl.Int32).alias("plan_year"))
        )
    rows = _output(ctx, "lines", "settle", part, lines)
    if settled.quarantine.height:
        rows += _output(ctx, "quarantine", "settle", part, settled.quarantine)
    rows.append(("meta", part, _meta(totals=settled.totals)))
    return _table(rows)


def _fact_ids(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The settlement ids (its own and the one a reversal names) and the member of every fact,
    with the member bucket it went to (``mapInArrow`` over the facts' blobs)."""
    for batch in batches:
        for key, payload in zip(
            batch.column(KEY).to_pylist(), batch.column(PAYLOAD).to_pylist(), strict=True
        ):
            facts = _frame(payload)
            ids = (
                pl.concat(
                    [
                        facts.select("setl_id", "psn_no"),
                        facts.select(pl.col("init_setl_id").alias("setl_id"), "psn_no"),
                    ]
                )
                .drop_nulls("setl_id")
                .unique()
                .select(pl.lit(key, pl.Int32).alias(KEY), "setl_id", "psn_no")
            )
            yield from _plain(ids).to_batches()


def _to_blobs(kind: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Rows with their member bucket (:data:`KEY`) as blobs of ``kind`` (``mapInArrow``)."""
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        rows: list[tuple[str, int, bytes]] = []
        for (k,), part in frame.group_by(KEY, maintain_order=True):
            rows += _blobs(kind, int(k), part.drop(KEY))
        if rows:
            yield from _table(rows).to_batches()


# --- decoding blobs into datasets ----------------------------------------------------------


def _plain(frame: pl.DataFrame) -> pa.Table:
    """A frame as Arrow types Spark reads: categoricals as text, no large or view types."""
    cats = [c for c, t in frame.schema.items() if isinstance(t, (pl.Categorical, pl.Enum))]
    table = frame.with_columns(pl.col(cats).cast(pl.String)).to_arrow(
        compat_level=pl.CompatLevel.oldest()
    )
    return table.cast(_small(table.schema))


def _small(schema: pa.Schema) -> pa.Schema:
    def small(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_large_binary(t):
            return pa.binary()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(small(t.value_type))
        return t

    return pa.schema([pa.field(f.name, small(f.type)) for f in schema])


def _union(schemas: list[pa.Schema]) -> pa.Schema:
    """Every column of the blobs of one output, in the order first met (one edition's costs
    are not another's); a column null in one blob takes its type from another."""
    fields: dict[str, pa.DataType] = {}
    for schema in schemas:
        for f in schema:
            if f.name not in fields or pa.types.is_null(fields[f.name]):
                fields[f.name] = f.type
    return pa.schema(
        [pa.field(n, pa.string() if pa.types.is_null(t) else t) for n, t in fields.items()]
    )


# --- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkResult:
    """What a Spark run wrote: its folder, its files and datasets, the reconciliation and the
    summary (as the local run's manifest.json holds them)."""

    out_dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any] = field(default_factory=dict)


def run_spark_batch(
    inputs: BatchInputs,
    out_dir: Path,
    *,
    master: str = DEFAULT_MASTER,
    buckets: int = 8,
    unmasked: bool = False,
    warning_limits: WarningLimits | None = None,
    prior: Path | None = None,
    scenario: bool = False,
    session: SparkSession | None = None,
    progress: Callable[[str], None] | None = None,
) -> SparkResult:
    """Adjudicate one batch (no ledger) on Spark into ``out_dir``: ``payouts/`` and ``lines/``
    (Parquet datasets partitioned by plan year), ``quarantine/``, reconciliation.json,
    report.html, report.md and manifest.json.

    ``inputs``: Parquet files, folders (Hive-partitioned ones too) or globs; a two-file extract
    (``fees`` given). ``buckets``: parts of whole settlements and member buckets (both).
    ``prior``: a state folder (:mod:`hmb_batch.ledger.parquet_state`) the batch starts from
    (default: every member's year at zero); the state after the batch goes to ``OUT/state``.
    ``scenario``: a batch of ``simulate`` (its manifest says so: ``ledger import`` refuses it).
    Raises :class:`SparkUnavailable` when pyspark or Java is missing, and what the local run
    raises for the same inputs (a batch that does not reconcile, a roster with problems ...).
    """
    started = dt.datetime.now()
    clock = time.monotonic()
    if inputs.fees is None:
        raise ConfigError("the Spark engine reads two-file extracts: give --fees")
    if buckets < 1:
        raise ConfigError("--buckets must be at least 1")
    say = progress or (lambda _: None)
    why = spark_available() if session is None else None
    if why is not None:  # before any input is read or hashed
        raise SparkUnavailable(why)
    header = describe_batch(inputs)
    info = read_state(prior) if prior is not None else empty_state_info(out_dir / "state")
    held = [b["batch_id"] for b in info.batches if b["batch_key"] == header.batch_key]
    if not held and header.batch_id in {b["batch_id"] for b in info.batches}:
        raise LedgerError(
            f"the prior state {prior} holds another batch with id {header.batch_id}: give "
            "another --batch-id"
        )
    if held:
        raise LedgerError(
            f"the prior state {prior} holds this extract already, as batch {held[0]} (the same "
            "inputs and plan editions): adjudicating it again would count its settlements twice"
        )
    files = [*header.extract_files, *header.fee_files, inputs.roster]
    not_parquet = [str(p) for p in files if p.suffix.lower() not in (".parquet", ".pq")]
    if not_parquet:
        raise ConfigError(
            f"the Spark engine reads Parquet only: {', '.join(not_parquet[:3])} is not"
        )
    spark = session or spark_session(master, shuffle_partitions=min(buckets, 4096))
    from pyspark.sql import functions as F

    out_dir.mkdir(parents=True, exist_ok=True)
    # named by the driver's pid: a killed run's work folder (its blobs hold input rows) is
    # removed by the next run in this folder, as the local run's spill folders are
    remove_stale_folders(out_dir, SPARK_WORK_PREFIX)
    if prior is not None and (out_dir / "state").resolve() == prior.resolve():
        raise ConfigError(
            f"--prior {prior} is the state this run would replace: give another --out"
        )
    # what an earlier run left in this folder is replaced, as Spark's own writers would
    for name in DATASETS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    work = out_dir / f"{SPARK_WORK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        numbered = [*header.extract_files, *header.fee_files]
        ctx = _Context(
            plan=header.plan,
            lists=header.lists,
            batch_id=header.batch_id,
            parts=buckets,
            members=buckets,
            labels={_path_key(str(p)): (i, str(p)) for i, p in enumerate(numbered)},
            roster_label=str(inputs.roster),
            column_map=dict(inputs.column_map or {}),
            timezone=inputs.timezone,
            unmasked=unmasked,
            files=tuple(numbered),
            out=str(out_dir.resolve()),
            work=str(work.resolve()),
        )
        ctx_b = spark.sparkContext.broadcast(ctx)

        def raw(paths: Sequence[Path]) -> DataFrame:
            return _read_raw(spark, paths)

        settlements = _keyed_rows(spark, raw(header.extract_files), SETTLEMENTS, ctx)
        fee_lines = _keyed_rows(spark, raw(header.fee_files), FEE_LINES, ctx)
        roster = _roster_rows(spark, ctx, inputs.roster)

        say("adjudicate_lines")
        stage1 = _checkpoint(
            settlements.groupBy(PART)
            .cogroup(fee_lines.groupBy(PART))
            .applyInArrow(functools.partial(_lines, ctx_b), BLOB_SCHEMA),
            work / "lines",
            spark,
        )
        lines_meta = _metas(stage1)
        say("adjudicate_members")
        facts = stage1.filter(F.col(KIND) == "facts")
        bucketed = stage1.filter(F.col(KIND).isin("facts", "parts"))
        if prior is not None:
            bucketed = bucketed.unionByName(_prior_blobs(spark, facts, info))
        stage2 = _checkpoint(
            bucketed.groupBy(KEY)
            .cogroup(roster.withColumnRenamed(BUCKET, KEY).groupBy(KEY))
            .applyInArrow(functools.partial(_members, ctx_b), BLOB_SCHEMA),
            work / "members",
            spark,
        )
        member_meta = _metas(stage2)
        problems = [p for m in member_meta for p in m["problems"]]
        if problems:
            from hmb_batch.io.reference import stop_on_roster_problems

            stop_on_roster_problems(problems, inputs.roster)
        adjudicated = [m for m in member_meta if "totals" in m]
        say("settle_audit")
        spark.catalog.clearCache()  # the prior state's ids, read by stage 2 only
        # the decisions' columns, for the parts without any
        first = adjudicated[0] if adjudicated else {}
        no_denied = first.get("no_denied")
        no_removed = first.get("no_removed")
        if no_denied is None or no_removed is None:  # no member bucket adjudicated anything
            no_denied = pl.DataFrame(schema={"setl_id": pl.String, "batch_seq": pl.Int64})
            no_removed = no_denied.with_columns(
                pl.lit(None, pl.List(pl.String)).alias("reasons"),
                pl.lit(None, pl.String).alias("detail"),
            )
        empty_b = spark.sparkContext.broadcast((no_denied, no_removed))
        decided = stage1.filter(F.col(KIND) == "audit").unionByName(
            stage2.filter(F.col(KIND).isin("denied", "removed", "years"))
        )
        # the fee lines of the settlements the engine quarantined go to quarantine too: a
        # join in Spark (a re-sent extract quarantines every settlement: millions of ids)
        wanted = (
            stage2.filter(F.col(KIND) == "removed")
            .mapInArrow(_removed_ids, f"{SETL_KEY} string")
            .distinct()
        )
        quarantined_lines = fee_lines.join(wanted, SETL_KEY, "left_semi")
        stage3 = _checkpoint(
            decided.groupBy(KEY)
            .cogroup(quarantined_lines.withColumnRenamed(PART, KEY).groupBy(KEY))
            .applyInArrow(functools.partial(_settle, ctx_b, empty_b), BLOB_SCHEMA),
            work / "settle",
            spark,
        )
        settle_meta = _metas(stage3)

        say("outputs")
        # the workers wrote the outputs' files; every file of a dataset gets its columns
        schemas = _schemas(stage1, stage2, stage3)
        written = {
            "payouts": _conform(out_dir / "payouts", schemas.get("payouts"), "plan_year"),
            "lines": _conform(out_dir / "lines", schemas.get("lines"), "plan_year"),
            "quarantine": _conform(out_dir / "quarantine", schemas.get("quarantine"), None),
        }
        report_rows = _conform(work / "report", schemas.get("report"), None)
        for table in LEDGER_TABLES:
            kind = f"{LEDGER}{table}"
            _conform(out_dir / LEDGER_ROWS / table, schemas.get(kind), None)
        for kind in ("state_registry", "state_accumulators"):
            _conform(work / kind, schemas.get(kind), None)
        state_dir = out_dir / "state"
        costs = [*cost_ids(header.plan), *(c for c in info.costs if c not in cost_ids(header.plan))]
        _state_after(spark, work, info, prior, costs, state_dir)

        enrolled: Counter[int] = Counter()
        for m in member_meta:
            enrolled.update(m["enrolled"])
        years = {y for m in adjudicated for y in m["years"]}
        claim_years = {y for m in adjudicated for y in m["claim_years"]}
        require_roster_years(header.plan, claim_years, enrolled, inputs.roster)
        covered_years(header.plan, sorted(years))
        payouts = pl.scan_parquet(report_rows / "**/*.parquet", hive_partitioning=False)
        quarantine = pl.scan_parquet(written["quarantine"] / "**/*.parquet")
        summary = summarise(
            batch_id=header.batch_id,
            editions=editions_used(header.plan, sorted(years)),
            shape="two-file",
            settlements_in=sum(m["settlements_in"] for m in lines_meta),
            fee_lines_in=sum(m["fee_lines_in"] for m in lines_meta),
            identical_repeats=sum(m["identical_repeats"] for m in lines_meta),
            repeated_fee_lines=sum(m["repeated_fee_lines"] for m in lines_meta),
            payouts=payouts,
            quarantine=quarantine,
        )
        summary = replace(summary, enrolled_by_plan_year=dict(sorted(enrolled.items())))
        found = batch_warnings(summary, [], warning_limits or WarningLimits())
        summary = replace(summary, warnings=[{"code": w.code, "message": w.message} for w in found])
        check_balanced(summary)
        totals: list[Totals] = [m["totals"] for m in (*lines_meta, *adjudicated, *settle_meta)]
        recon = reconciliation_of(header.batch_id, combine(totals), summary, False)
        before = info.before() if prior is not None else None
        ratios = loss_ratio_json(year_to_date_loss_ratios(header.plan, summary, before))
        docs: dict[str, bytes] = {"reconciliation.json": reconciliation_json(recon, ratios)}
        check_reconciled(recon, out_dir)
        docs.update(
            batch_report(
                header.plan,
                header.batch_id,
                payouts,
                summary,
                recon,
                None,
                districts=inputs.districts,
            )
        )
        afters = [m["after"] for m in adjudicated if m.get("after") is not None]
        expected = AfterExpectation.combine(afters) if afters else None
        # as the local run records it: adjudicated settlements only, never a quarantined one's
        latest = order_mark(payouts)
        manifest = {
            "batch_id": header.batch_id,
            "batch_key": header.batch_key,
            "status": "no_ledger",
            "engine": "spark",
            "spark_master": spark.sparkContext.master,
            "buckets": buckets,
            "prior_state": str(prior) if prior is not None else None,
            "state": str(out_dir / "state"),
            "hmb_version": __version__,
            "inputs": header.inputs,
            "editions": {
                k: v for k, v in header.edition_hashes.items() if k in set(summary.editions)
            },
            "counts": summary.to_json(),
            "loss_ratios": ratios,
            "started_at": started.isoformat(timespec="seconds"),
            "elapsed_seconds": round(time.monotonic() - clock, 3),
            # what `hmb-batch ledger import` records and checks (see run/ledger_import.py)
            "ledger_import": {
                "rows": LEDGER_ROWS,
                "scenario": scenario,
                "hmb_version": __version__,
                "inputs": header.inputs,
                "editions": header.edition_hashes,
                "started_at": started.isoformat(),
                "finished_at": dt.datetime.now().isoformat(),
                "max_setl_time": latest.isoformat() if latest is not None else None,
                "summary": summary.to_json()
                | {PERSONAL_DATA: "unmasked" if unmasked else "masked"},
                "expected_after": expected.by_year.to_dicts() if expected is not None else [],
                "expected_payout_fen": expected.payout_fen if expected is not None else 0,
            },
        }
        docs["manifest.json"] = json.dumps(
            manifest, ensure_ascii=False, indent=2, default=str
        ).encode()
        paths = write_files(docs, out_dir)
        payout_ytd = dict(info.payout_by_plan_year_fen)
        for year, fen in summary.payout_by_plan_year_fen.items():
            payout_ytd[year] = payout_ytd.get(year, 0) + fen
        write_state_json(
            StateInfo(
                state_dir,
                costs,
                [*info.batches, {"batch_id": header.batch_id, "batch_key": header.batch_key}],
                payout_ytd,
                # as the ledger counts a year's premium pool: the roster of the latest batch
                # with settlements in that year
                info.enrolled_by_plan_year
                | {
                    y: n
                    for y, n in summary.enrolled_by_plan_year.items()
                    if y in summary.payout_by_plan_year_fen
                },
                {
                    "kind": "spark batch",
                    "batch_id": header.batch_id,
                    "prior": str(prior) if prior is not None else None,
                },
            )
        )
        written["state"] = state_dir
        return SparkResult(out_dir, {**paths, **written}, manifest)
    except BaseException as exc:
        # half-written datasets must not be read as a run's: the workers wrote them directly
        for name in DATASETS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        if isinstance(exc, HmbError) or not isinstance(exc, Exception):
            raise
        # a failed Spark job: an answer, not an internal error
        raise SparkJobFailed(_job_failure(exc)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if session is None:
            # a JVM that died with the job cannot be asked to stop: the failure is said above
            with contextlib.suppress(Exception):
                spark.stop()


def _read_raw(spark: SparkSession, paths: Sequence[Path]) -> DataFrame:
    """Parquet rows with their file (``_path``) and their row in it (``_row_index``)."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(*[str(p) for p in paths])
    return frame.select(
        "*",
        F.col("_metadata.file_path").alias("_path"),
        F.col("_metadata.row_index").alias("_row_index"),
    )


def _roster_rows(spark: SparkSession, ctx: _Context, roster: Path) -> DataFrame:
    """The roster's raw rows with their row number and member bucket (:data:`BUCKET`)."""
    raw = _read_raw(spark, [roster])
    schema = raw.drop("_path", "_row_index").schema.simpleString()
    return raw.mapInArrow(
        functools.partial(_roster_keyed, ctx),
        f"{_ddl(schema[len('struct<') : -1])}, {SOURCE} int, {ROW} int, {BUCKET} int",
    )


# --- a sweep: each value of a parameter on the member-years' year to date ------------------


@dataclass(frozen=True)
class SweepTotals:
    """One value's payout per plan year and members paid, over every member bucket."""

    payout_by_plan_year_fen: dict[int, int]
    members_paid: int


def _member_bucket(members: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Member-year rows with their member bucket, psn_no as typed (``mapInArrow``)."""
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield from _plain(
            frame.with_columns(bucket_of("psn_no", members).cast(pl.Int32).alias(BUCKET))
        ).to_batches()


def _sweep_bucket(
    ctx_b: Any, variants_b: Any, key: tuple[Any, ...], states: pa.Table, roster: pa.Table
) -> pa.Table:
    """Each variant's payout per plan year, and members paid, for one member bucket:
    :func:`kernel.payout_between` on its member-years' start and end, with their roster flags."""
    ctx: _Context = ctx_b.value
    variants: list[PlanSelection] = variants_b.value
    found = pl.from_arrow(states)
    assert isinstance(found, pl.DataFrame)
    out: dict[str, list[int]] = {"variant": [], "plan_year": [], "payout": [], "paid": []}
    if found.height:
        flags = roster_frame(_typed(roster, ROSTER, ctx, label=ctx.roster_label)).select(
            "psn_no", pl.col("plan_year").cast(pl.Int64), "pre_existing", "consecutive_years"
        )
        member_years = found.drop(BUCKET).join(flags, on=["psn_no", "plan_year"], how="left")
        costs = cost_ids(variants[0])
        for i, plan in enumerate(variants):
            paid = kernel.payout_between(member_years, plan, costs)
            by_year = paid.group_by("plan_year").agg(
                pl.col("payout").sum(), (pl.col("payout") > 0).sum().alias("paid")
            )
            for year, payout, members in by_year.iter_rows():
                out["variant"].append(i)
                out["plan_year"].append(int(year))
                out["payout"].append(int(payout))
                out["paid"].append(int(members))
    return pa.table({k: pa.array(v, pa.int64()) for k, v in out.items()})


def sweep_on_spark(
    spark: SparkSession,
    variants: Sequence[PlanSelection],
    *,
    start: Path | None,
    end: Path,
    payouts: Sequence[Path],
    roster: Path,
    column_map: dict[str, str],
    timezone: str,
    buckets: int,
) -> list[SweepTotals]:
    """Each variant's totals on the member-years a scenario's batches touched (their
    ``payouts`` datasets), from each one's year to date in the state it started from
    (``start``, None: zero) and in the state after its last batch (``end``): the fee lines
    are not read again. See :func:`hmb_batch.analysis.simulate.sweep_values`, the local
    counterpart, for why this equals re-running the scenario under each value."""
    from pyspark.sql import functions as F

    keys = ["psn_no", "plan_year"]
    costs = cost_ids(variants[0])
    touched = _payout_rows(spark, payouts)
    if touched is None:
        return [SweepTotals({}, 0) for _ in variants]
    touched = touched.select(*keys)
    states = touched.distinct()
    sides: list[tuple[str, Path | None]] = [("end", end), ("start", start)]
    for side, folder in sides:
        held: list[str] = []
        if folder is not None:
            acc = spark.read.parquet(str(folder / "accumulators"))
            held = [c for c in costs if cum(c) in acc.columns]
            acc = acc.select(*keys, *[F.col(cum(c)).alias(f"{side}__{c}") for c in held])
            states = states.join(acc, keys, "left").fillna(0, [f"{side}__{c}" for c in held])
        # a cost the state has no column for, or a member-year it does not hold, is zero
        states = states.select(
            "*", *[F.lit(0).cast("bigint").alias(f"{side}__{c}") for c in costs if c not in held]
        )
    ctx = _Context(
        plan=variants[0],
        lists=pl.DataFrame(),
        batch_id="sweep",
        parts=buckets,
        members=buckets,
        labels={},
        roster_label=str(roster),
        column_map=column_map,
        timezone=timezone,
        unmasked=False,
        files=(),
    )
    ctx_b = spark.sparkContext.broadcast(ctx)
    variants_b = spark.sparkContext.broadcast(list(variants))
    schema = states.schema.simpleString()[len("struct<") : -1]
    bucketed = states.mapInArrow(
        functools.partial(_member_bucket, buckets), f"{_ddl(schema)}, {BUCKET} int"
    )
    found = (
        bucketed.groupBy(BUCKET)
        .cogroup(_roster_rows(spark, ctx, roster).groupBy(BUCKET))
        .applyInArrow(
            functools.partial(_sweep_bucket, ctx_b, variants_b),
            "variant long, plan_year long, payout long, paid long",
        )
        .groupBy("variant", "plan_year")
        .agg(F.sum("payout").alias("payout"), F.sum("paid").alias("paid"))
        .collect()
    )
    out = []
    for i in range(len(variants)):
        mine = [r for r in found if r["variant"] == i]
        out.append(
            SweepTotals(
                {int(r["plan_year"]): int(r["payout"]) for r in mine},
                sum(int(r["paid"]) for r in mine),
            )
        )
    return out


def _payout_rows(spark: SparkSession, payouts: Sequence[Path]) -> DataFrame | None:
    """The rows of batches' payouts datasets (None: no batch adjudicated a settlement)."""
    from pyspark.sql import functions as F

    rows = None
    for dataset in payouts:
        if not any(dataset.rglob("*.parquet")):
            continue
        frame = spark.read.parquet(str(dataset)).select(
            "psn_no", F.col("plan_year").cast("bigint").alias("plan_year"), "payout_amt"
        )
        rows = frame if rows is None else rows.unionByName(frame)
    return rows


def scenario_year_totals(
    spark: SparkSession, payouts: Sequence[Path]
) -> list[tuple[int, int, int, int]]:
    """Per plan year over a scenario's batches (their ``payouts`` datasets): settlements,
    member-years paid above zero, and the payout in fen (summed as Decimal(18,2), exact)."""
    from pyspark.sql import functions as F

    rows = _payout_rows(spark, payouts)
    if rows is None:
        return []
    per_member = rows.groupBy("plan_year", "psn_no").agg(
        F.count(F.lit(1)).alias("n"), F.sum("payout_amt").alias("payout")
    )
    found = (
        per_member.groupBy("plan_year")
        .agg(
            F.sum("n").alias("settlements"),
            F.sum(F.when(F.col("payout") > 0, 1).otherwise(0)).alias("paid"),
            F.sum("payout").alias("payout"),
        )
        .orderBy("plan_year")
        .collect()
    )
    return [
        (int(r["plan_year"]), int(r["settlements"]), int(r["paid"]), yuan_to_fen(r["payout"]))
        for r in found
    ]


def _ddl(struct_fields: str) -> str:
    """Spark's ``a:int,b:string`` field list as a DDL schema string (``a int, b string``),
    names quoted."""
    from pyspark.sql.types import _parse_datatype_string

    parsed: Any = _parse_datatype_string(f"struct<{struct_fields}>")
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in parsed.fields)


def _checkpoint(frame: DataFrame, path: Path, spark: SparkSession) -> DataFrame:
    """A stage's blobs written once and read back: each later read costs a scan, not the stage
    again."""
    frame.write.mode("overwrite").partitionBy(KIND).parquet(str(path))
    return spark.read.parquet(str(path)).select(KIND, KEY, PAYLOAD)


def _metas(stage: DataFrame) -> list[dict[str, Any]]:
    """Every part's or bucket's totals and counts, on the driver (a few KB each)."""
    from pyspark.sql import functions as F

    rows = stage.filter(F.col(KIND) == "meta").select(KEY, PAYLOAD).collect()
    return [pickle.loads(r[PAYLOAD]) for r in sorted(rows, key=lambda r: r[KEY])]


def _removed_ids(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The ids of the settlements the engine quarantined, from the member stage's "removed"
    blobs (``mapInArrow``); an id as typed is its part's key (:data:`SETL_KEY`)."""
    for batch in batches:
        for payload in batch.column(PAYLOAD).to_pylist():
            ids = _frame(payload).select(pl.col("setl_id").alias(SETL_KEY)).drop_nulls()
            yield from _plain(ids).to_batches()


def _schemas(*stages: DataFrame) -> dict[str, list[pa.Schema]]:
    """The columns of every output frame the stages' workers wrote, by output (one small
    collect a stage: a blob of columns alone is a few hundred bytes)."""
    from pyspark.sql import functions as F

    out: dict[str, list[pa.Schema]] = {}
    for stage in stages:
        for r in stage.filter(F.col(KIND).startswith(SCHEMA)).select(KIND, PAYLOAD).collect():
            kind = str(r[KIND])[len(SCHEMA) :]
            out.setdefault(kind, []).append(_plain(_frame(r[PAYLOAD])).schema)
    return out


def _conform(folder: Path, schemas: list[pa.Schema] | None, partition: str | None) -> Path:
    """Give every Parquet file of a dataset the dataset's columns (:func:`_union` of what
    the workers wrote, ``partition`` left to the folder names): a file that lacks a column
    (a bucket of one edition) or holds it as null only is rewritten with it; a dataset with
    no row gets one empty file with the columns. Usually no file is rewritten."""
    folder.mkdir(parents=True, exist_ok=True)
    if not schemas:
        return folder
    whole = _union(schemas)
    union = whole
    if partition is not None and partition in union.names:
        union = union.remove(union.get_field_index(partition))
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        # no row, so no partition folder: the one empty file holds every column
        pq.write_table(whole.empty_table(), folder / "part-empty.parquet")
        return folder
    for path in files:
        if pq.read_schema(path).equals(union, check_metadata=False):
            continue
        table = pq.read_table(path, partitioning=None)
        columns = [
            table.column(f.name).cast(f.type)
            if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type)
            for f in union
        ]
        partial = path.with_name(f".{path.name}.conform.tmp")
        pq.write_table(pa.Table.from_arrays(columns, schema=union), partial)
        os.replace(partial, path)
    return folder


def _prior_blobs(spark: SparkSession, facts: DataFrame, info: StateInfo) -> DataFrame:
    """The prior state each member bucket needs, as blobs keyed by bucket: the registry rows
    its settlements name (their own id, or the original a reversal names) and the year to date
    of its members and of those rows' members — what ``Ledger.prior_for`` reads for a local
    bucket. Found by id, not by member: a settlement repeated under another member must still
    meet the registry row it repeats."""
    ids = facts.mapInArrow(_fact_ids, f"{KEY} int, setl_id string, psn_no string").cache()
    registry = spark.read.parquet(str(info.registry))
    routed = registry.join(ids.select(KEY, "setl_id").distinct(), "setl_id")
    members = ids.select(KEY, "psn_no").unionByName(routed.select(KEY, "psn_no")).distinct()
    accumulators = spark.read.parquet(str(info.accumulators)).join(members, "psn_no")
    return routed.mapInArrow(functools.partial(_to_blobs, "registry"), BLOB_SCHEMA).unionByName(
        accumulators.mapInArrow(functools.partial(_to_blobs, "accumulators"), BLOB_SCHEMA)
    )


def _with_costs(frame: DataFrame, name: Callable[[str], str], costs: list[str]) -> DataFrame:
    """A state dataset with a column for each of ``costs`` (zero where it had none)."""
    from pyspark.sql import functions as F

    for c in costs:
        if name(c) not in frame.columns:
            frame = frame.withColumn(name(c), F.lit(0).cast("bigint"))
    return frame


def _state_after(
    spark: SparkSession,
    work: Path,
    info: StateInfo,
    prior: Path | None,
    costs: list[str],
    target: Path,
) -> None:
    """The state after the batch (see :mod:`hmb_batch.ledger.parquet_state`) into ``target``:
    the prior registry and the batch's settlements, with ``reversed`` set on every original a
    reversal names; the prior accumulators, those the batch moved replaced. Its state.json is
    written by the caller."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    empty = PriorState.empty(costs)

    def base(dataset: Path | None, frame: pl.LazyFrame) -> DataFrame:
        if dataset is not None:
            return spark.read.parquet(str(dataset))
        return spark.createDataFrame([], from_arrow_schema(_plain(frame.collect()).schema))

    old_registry = base(info.registry if prior else None, empty.registry)
    old_acc = base(info.accumulators if prior else None, empty.accumulators)

    def written(kind: str) -> DataFrame | None:  # the buckets' files (see _output)
        folder = work / kind
        return spark.read.parquet(str(folder)) if any(folder.glob("*.parquet")) else None

    new_registry = written("state_registry")
    new_acc = written("state_accumulators")
    registry = _with_costs(old_registry, inc, costs)
    if new_registry is not None:
        registry = registry.unionByName(
            _with_costs(new_registry, inc, costs), allowMissingColumns=True
        )
    named = (
        registry.filter(F.col(IS_REVERSAL))
        .select(F.col("init_setl_id").alias("setl_id"))
        .distinct()
        .withColumn("_named", F.lit(True))
    )
    registry = (
        registry.join(named, "setl_id", "left")
        .withColumn("reversed", F.col("reversed") | F.coalesce(F.col("_named"), F.lit(False)))
        .drop("_named")
        .fillna(0, [inc(c) for c in costs])
    )
    accumulators = _with_costs(old_acc, cum, costs)
    if new_acc is not None:
        keys = ["psn_no", "plan_year"]
        accumulators = accumulators.join(new_acc.select(*keys), keys, "left_anti").unionByName(
            _with_costs(new_acc, cum, costs), allowMissingColumns=True
        )
    accumulators = accumulators.fillna(0, [cum(c) for c in costs])
    registry.write.mode("overwrite").parquet(str(target / "registry"))
    accumulators.write.mode("overwrite").parquet(str(target / "accumulators"))
