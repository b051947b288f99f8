"""Bounded-memory runs: a batch too big for the memory limit, adjudicated in partitions.

A partition of N fee lines needs about N × :data:`BYTES_PER_FEE_LINE` of memory on top of
:data:`RUNTIME_BYTES`. When a batch would need more than ``--memory-limit``, it is split into
partitions sized to fit, through a spill folder, and no step holds more than one partition:

1. the roster and the extract are typed :data:`SLICE_ROWS` rows at a time and each slice's rows
   appended to one Arrow IPC stream per partition: the roster by a hash of ``psn_no`` (checked
   part by part: a member's rows are all in one part, so duplicate rows are still found), the
   extract by a hash of ``setl_id``;
2. stage A: validation is settlement-local, so each settlement partition is validated on its own;
   its checked settlements and fee lines are appended to streams by a hash of the member;
3. stage B: each member partition holds every settlement of its members, so the engine
   adjudicates it exactly as an in-memory run would — reversals, the year to date and the ledger's
   prior state are all per member — and its payouts, audit, quarantine and ledger rows go to
   Parquet part files;
4. the output files are assembled from the parts (the payout file sorted by DuckDB within
   :func:`duckdb_share` of the limit, spilling to disk), the summary is aggregated from them, and
   the ledger inserts its rows from the part files inside one transaction.

The results equal an in-memory run's (tests/test_partitioned.py); the line audit comes in
member-partition order. Why not Polars' streaming sinks: see BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from hmb_batch.contracts import FEE_LINES, ROSTER, SETTLEMENTS, Contract
from hmb_batch.engine import PriorState, cost_ids, plan_years, responsibility_ids
from hmb_batch.errors import ConfigError, HmbError
from hmb_batch.extract import (
    FILE,
    ROW,
    Extract,
    detect_format,
    distinct_headers,
    extract_roles,
    raw_slices,
    type_table,
    typed_frames,
)
from hmb_batch.ledger import BATCH_TABLES, batch_rows
from hmb_batch.outputs import lines_frame, masked_personal, payouts_frame, to_text
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.reference import (
    enrolled_counts,
    roster_frame,
    roster_problems,
    stop_on_roster_problems,
)
from hmb_batch.stages import CheckedFrames, EngineFrames, check_extract, run_engine
from hmb_batch.validation import batch_within_bounds

MiB = 1 << 20
GiB = 1 << 30
# Peak resident memory per fee line while one partition is validated and adjudicated (measured:
# ~1.5-2 KB transient; an in-memory run averages 1.1 KB; 3 KB leaves room for the spikes that took
# make bench's 1 GiB runs to 1,016-1,036 MiB at 2 KB), and what a run holds besides its
# partition: interpreter, Polars, DuckDB, one slice being typed (BENCHMARKS.md).
BYTES_PER_FEE_LINE = 3_000
RUNTIME_BYTES = 512 * MiB
MIN_PARTITION_BYTES = 64 * MiB
# A CSV fee line is ~130-160 bytes; a low guess means more lines, so more (smaller) partitions.
CSV_BYTES_PER_LINE = 100
PART = "_part"
SLICE_ROWS = 50_000  # rows typed at a time when partitioning (the bound of that pass)
_SEED = 0x484D42  # any fixed seed: partitions only need to agree within one run

if pa.default_memory_pool().backend_name == "jemalloc":  # see hmb_batch/__init__.py
    pa.jemalloc_set_decay_ms(100)


def parse_size(text: str) -> int:
    """Bytes from '1GiB', '1.5G', '800MB', '800M', '512MiB' or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise ConfigError(f"memory limit {text!r} is not a size; write it like 1GiB, 800MB or 1.5G")
    scale = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def format_size(n: int) -> str:
    """Bytes as MiB or GiB for messages."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def estimated_fee_lines(files: list[Path]) -> int:
    """Fee lines in the files: exact for Parquet (from the footer), an upper guess for CSV."""
    total = 0
    for path in files:
        if detect_format(path) == "parquet":
            total += int(pl.scan_parquet(path).select(pl.len()).collect().item())
        else:
            total += path.stat().st_size // CSV_BYTES_PER_LINE + 1
    return total


def partitions_for(fee_lines: int, memory_limit: int) -> int:
    """How many partitions keep a run of ``fee_lines`` under ``memory_limit`` bytes (1: none).

    Raises ConfigError when the limit is below what any run needs.
    """
    usable = memory_limit - RUNTIME_BYTES
    if usable < MIN_PARTITION_BYTES:
        raise ConfigError(
            f"--memory-limit {format_size(memory_limit)} is too small: hmb-batch needs about "
            f"{format_size(RUNTIME_BYTES + MIN_PARTITION_BYTES)} to run at all (the runtime plus "
            "one partition of the batch); give a larger limit"
        )
    return max(1, math.ceil(fee_lines * BYTES_PER_FEE_LINE / usable))


def duckdb_share(memory_limit: int) -> int:
    """What DuckDB may use (sorting the payout file, the ledger commit): half of the limit less
    the runtime, since the Python side still holds the runtime and what it last freed (measured
    at 10M lines: with three quarters, the payout-file sort took the run 7% over the limit)."""
    return max((memory_limit - RUNTIME_BYTES) // 2, 96 * MiB)


def _allow_open_files(needed: int) -> None:
    """Partitioning keeps two files open per partition: raise the soft limit if need be."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ConfigError(
                f"{needed} open files are needed for this many partitions but the system allows "
                f"{hard}; give a larger --memory-limit (fewer partitions) or raise `ulimit -n`"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _part_of(column: str, n: int) -> pl.Expr:
    return (pl.col(column).hash(seed=_SEED) % n).cast(pl.UInt32).alias(PART)


class _PartWriters:
    """One Arrow IPC stream per partition (``folder/K.arrows``), appended slice by slice."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        self.schema: pa.Schema | None = None

    def write(self, frame: pl.DataFrame) -> None:
        for (k,), part in frame.partition_by(PART, as_dict=True, include_key=False).items():
            table = part.to_arrow()
            writer = self.writers.get(int(k))
            if writer is None:
                writer = ipc.new_stream(
                    str(self.folder / f"{k}.arrows"),
                    table.schema,
                    options=ipc.IpcWriteOptions(compression="lz4", use_threads=False),
                )
                self.writers[int(k)] = writer
            writer.write_table(table)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _partition_files(
    roles: list[tuple[Path, str]],
    keys: dict[str, str],
    folder: Path,
    n: int,
    *,
    column_map: dict[str, str] | None,
    encoding: str,
    typed: Callable[[pl.LazyFrame, Path, str], dict[str, pl.LazyFrame]],
) -> dict[str, pl.Schema]:
    """Type each file slice by slice and append each slice's rows to their partition's stream.

    ``keys``: table name -> the column its partition is a hash of. Returns each table's schema.
    Memory: one slice (:data:`SLICE_ROWS` rows) at a time, whatever the size of the files.
    """
    writers = {name: _PartWriters(folder / name) for name in keys}
    schemas: dict[str, pl.Schema] = {}
    try:
        for path, role in roles:
            for raw in raw_slices(path, SLICE_ROWS, folder, encoding, temp_dir=folder):
                frames = typed(raw, path, role)
                names = [name for name in keys if name in frames]
                done = pl.collect_all(
                    [frames[name].with_columns(_part_of(keys[name], n)) for name in names]
                )
                for name, frame in zip(names, done, strict=True):
                    schemas.setdefault(name, frame.drop(PART).schema)
                    writers[name].write(frame)
    finally:
        for w in writers.values():
            w.close()
    for sub in folder.glob("csv-*.parquet"):
        sub.unlink()
    return schemas


def _part(folder: Path, k: int) -> pl.LazyFrame | None:
    path = folder / f"{k}.arrows"
    # one contiguous frame: the streams hold one small batch per slice or partition written
    return pl.read_ipc_stream(path).rechunk().lazy() if path.exists() else None


def _typed_schema(contract: Contract, column_map: dict[str, str] | None) -> pl.Schema:
    """The typed schema of a table no slice was read for (an empty file)."""
    empty = pl.LazyFrame(schema={ROW: pl.UInt32, FILE: pl.String})
    return type_table(empty, contract, column_map=column_map, require=False).collect_schema()


def _empty(schema: pl.Schema) -> pl.LazyFrame:
    return pl.DataFrame(schema=schema).lazy()


@dataclass
class StagedBatch:
    """A batch read, validated and split by member (stage A done), on disk in the spill folder."""

    folder: Path
    partitions: int
    shape: str
    roster_schema: pl.Schema
    settlements_in: int = 0
    fee_lines_in: int = 0
    identical_repeats: int = 0
    repeated_fee_lines: int = 0
    years: set[int] = field(default_factory=set)
    claim_years: set[int] = field(default_factory=set)  # plan years of non-reversals
    absolute_fen: int = 0  # Σ |amount| read so far (validation.batch_within_bounds)
    max_setl_time: dt.datetime | None = None
    checked_schemas: tuple[pl.Schema, pl.Schema] | None = None  # settlements, fee lines
    line_sums: list[pl.DataFrame] = field(default_factory=list)  # per settlement part (reconcile)
    enrolled_by_year: dict[int, int] = field(default_factory=dict)  # roster members per year


def stage_batch(
    batch_id: str,
    extract_files: list[Path],
    fee_files: list[Path],
    roster: Path,
    partitions: int,
    folder: Path,
    *,
    column_map: dict[str, str] | None,
    encoding: str,
    timezone: str = "Asia/Shanghai",
) -> StagedBatch:
    """Roster and extract into partitions (steps 1 and 2 of the module docstring).
    ``timezone``: of time-zone-aware Parquet timestamps (see extract.type_table)."""
    n = partitions
    _allow_open_files(2 * n + 64)
    roster_schema = _partition_files(
        [(roster, "roster")],
        {"roster": "psn_no"},
        folder,
        n,
        column_map=column_map,
        encoding=encoding,
        typed=lambda raw, path, _role: {
            "roster": type_table(
                raw, ROSTER, column_map=column_map, file_label=str(path), timezone=timezone
            )
        },
    ).get("roster")
    problems: list[str] = []
    enrolled: Counter[int] = Counter()
    for j in range(n):
        part = _part(folder / "roster", j)
        if part is not None:
            members = part.collect()
            problems += roster_problems(members, roster)
            enrolled.update(enrolled_counts(members))
    stop_on_roster_problems(problems, roster)

    shape, roles = extract_roles(extract_files, fee_files or None)
    schemas = _partition_files(
        roles,
        {"settlements": "setl_id", "fee_lines": "setl_id"},
        folder / "a",
        n,
        column_map=column_map,
        encoding=encoding,
        typed=lambda raw, path, role: typed_frames(raw, path, role, column_map, timezone=timezone),
    )
    typed_roster = pl.DataFrame(schema=roster_schema or _typed_schema(ROSTER, column_map))
    staged = StagedBatch(folder, n, shape, roster_frame(typed_roster).schema)
    staged.enrolled_by_year = dict(sorted(enrolled.items()))
    s_schema = schemas.get("settlements") or _typed_schema(SETTLEMENTS, column_map)
    l_schema = schemas.get("fee_lines") or _typed_schema(FEE_LINES, column_map)
    (folder / "quarantine").mkdir(parents=True, exist_ok=True)
    by_member = {
        "settlements": _PartWriters(folder / "b-settlements"),
        "fee_lines": _PartWriters(folder / "b-lines"),
    }
    try:
        _validate_parts(
            staged, by_member, batch_id, (*extract_files, *fee_files), s_schema, l_schema
        )
    finally:
        for w in by_member.values():
            w.close()
    return staged


def _validate_parts(
    staged: StagedBatch,
    by_member: dict[str, _PartWriters],
    batch_id: str,
    files: tuple[Path, ...],
    s_schema: pl.Schema,
    l_schema: pl.Schema,
) -> None:
    """Stage A: validate each settlement part; append its checked rows to their member parts."""
    folder, n, shape = staged.folder, staged.partitions, staged.shape
    for k in range(n):
        settlements = _part(folder / "a" / "settlements", k)
        lines = _part(folder / "a" / "fee_lines", k)
        if settlements is None and lines is None:
            continue
        settlements = settlements if settlements is not None else _empty(s_schema)
        if shape == "wide":
            settlements = distinct_headers(settlements)
        checked = check_extract(
            Extract(
                settlements,
                lines if lines is not None else _empty(l_schema),
                shape,
                files,
            ),
            batch_id,
        )
        staged.checked_schemas = (checked.settlements.schema, checked.fee_lines.schema)
        staged.settlements_in += checked.settlements_in
        staged.fee_lines_in += checked.fee_lines_in
        staged.identical_repeats += checked.identical_repeats
        staged.repeated_fee_lines += checked.repeated_fee_lines
        staged.line_sums.append(checked.line_sums)
        staged.absolute_fen += checked.absolute_fen
        batch_within_bounds(staged.absolute_fen)  # each part is within; the batch must be too
        s = checked.settlements.with_columns(_part_of("psn_no", n))
        if s.height:
            staged.years |= set(plan_years(s, None))
            staged.claim_years |= set(plan_years(s.filter(~pl.col("is_reversal")), None))
            latest = s["setl_time"].max()
            if staged.max_setl_time is None or latest > staged.max_setl_time:  # type: ignore[operator]
                staged.max_setl_time = latest  # type: ignore[assignment]
        lines_out = checked.fee_lines.join(s.select("setl_id", PART), on="setl_id", how="inner")
        if lines_out.height != checked.fee_lines.height:
            raise HmbError(  # validation passes only lines of valid settlements; guard it
                f"internal error: {checked.fee_lines.height - lines_out.height} checked fee "
                f"line(s) of partition {k} have no checked settlement; nothing was applied"
            )
        by_member["settlements"].write(s)
        by_member["fee_lines"].write(lines_out)
        checked.quarantine.with_columns(pl.lit(batch_id).alias("batch_id")).write_parquet(
            folder / "quarantine" / f"a-{k}.parquet"
        )
    if staged.checked_schemas is None:  # nothing read at all: the columns of an empty batch
        empty = check_extract(Extract(_empty(s_schema), _empty(l_schema), shape, files), batch_id)
        staged.checked_schemas = (empty.settlements.schema, empty.fee_lines.schema)
        staged.line_sums.append(empty.line_sums)
        empty.quarantine.with_columns(pl.lit(batch_id).alias("batch_id")).write_parquet(
            folder / "quarantine" / "a-0.parquet"
        )


@dataclass(frozen=True)
class MemberPartition:
    """One member partition after the engine: what the reconciliation reads."""

    checked: CheckedFrames
    roster: pl.DataFrame
    done: EngineFrames
    prior: PriorState | None
    accumulator_log: pl.DataFrame | None  # the ledger rows it would insert (with a ledger)


@dataclass(frozen=True)
class PartitionedOutcome:
    """What stage B and the assembly left in the spill folder."""

    payouts: pl.LazyFrame  # the engine's payout frame (fen), scanned from the parts
    quarantine: pl.LazyFrame
    files: dict[str, Path]  # output file name -> assembled file in the spill folder
    ledger_rows: dict[str, str]  # ledger table -> glob of its Parquet part files
    years: list[int]
    costs: list[str]


def adjudicate_partitions(
    staged: StagedBatch,
    *,
    batch_id: str,
    plan: PlanSelection,
    lists: pl.DataFrame,
    prior_for: Callable[[pl.DataFrame], PriorState | None],
    with_ledger: bool,
    csv: bool,
    memory_limit: int,
    unmasked: bool = False,
    on_partition: Callable[[MemberPartition], None] | None = None,
    lap: Callable[[str], None] = lambda stage: None,
) -> PartitionedOutcome:
    """Adjudicate each member part, then assemble the outputs (steps 3 and 4).

    ``prior_for``: the ledger's prior state for a part's settlements (None without a ledger).
    ``on_partition`` sees each member partition's frames while they are in memory (the
    reconciliation adds up its totals there). ``lap`` marks the end of the stages
    "adjudicate" (the member parts) and "payout_file_sort" for the run's timings.
    """
    folder = staged.folder
    costs = cost_ids(plan)
    responsibilities = responsibility_ids(plan)
    subs = ["payouts", "payout-file", "lines"] + [f"ledger-{t}" for t in BATCH_TABLES[:-1]]
    for sub in subs:
        (folder / sub).mkdir(exist_ok=True)
    years_seen = set(staged.years)
    no_quarantine = pl.DataFrame()
    assert staged.checked_schemas is not None
    settlement_schema, line_schema = staged.checked_schemas

    def adjudicate_part(
        j: int,
        settlements: pl.DataFrame,
        lines: pl.DataFrame,
        roster: pl.DataFrame,
        prior: PriorState | None,
        years: list[int],
    ) -> None:
        checked = CheckedFrames(settlements, lines, no_quarantine, 0, 0, 0, 0, no_quarantine)
        done = run_engine(batch_id, plan, checked, roster, lists, prior, years)
        rows = _write_member_part(
            folder,
            j,
            batch_id,
            done,
            prior,
            costs,
            responsibilities,
            with_ledger=with_ledger,
            unmasked=unmasked,
        )
        if on_partition is not None:
            log = rows["accumulator_log"] if rows is not None else None
            on_partition(MemberPartition(checked, roster, done, prior, log))

    for j in range(staged.partitions):
        settlements_part = _part(folder / "b-settlements", j)
        if settlements_part is None:
            continue  # stage A writes a part's lines only with their settlements
        settlements = settlements_part.collect()
        lines_part = _part(folder / "b-lines", j)
        lines = lines_part.collect() if lines_part is not None else pl.DataFrame(schema=line_schema)
        roster_part = _part(folder / "roster", j)
        roster = (
            roster_frame(roster_part.collect())
            if roster_part is not None
            else pl.DataFrame(schema=staged.roster_schema)
        )
        prior = prior_for(settlements)
        years = sorted(staged.years | set(plan_years(settlements, prior)))
        years_seen |= set(years)
        adjudicate_part(j, settlements, lines, roster, prior, years)
    if not any((folder / "payouts").iterdir()):  # an empty batch: parts with the right columns
        adjudicate_part(
            0,
            pl.DataFrame(schema=settlement_schema),
            pl.DataFrame(schema=line_schema),
            pl.DataFrame(schema=staged.roster_schema),
            None,
            sorted(staged.years),
        )

    lap("adjudicate")
    quarantine = pl.concat(
        [pl.scan_parquet(p) for p in sorted((folder / "quarantine").glob("*.parquet"))],
        how="diagonal_relaxed",
    )
    out = folder / "out"
    out.mkdir()
    files = {
        "payouts.parquet": out / "payouts.parquet",
        "quarantine.parquet": out / "quarantine.parquet",
        "lines.parquet": out / "lines.parquet",
    }
    _sorted_payout_file(folder / "payout-file", files["payouts.parquet"], memory_limit, folder)
    lap("payout_file_sort")
    # rejects: usually few
    masked_personal(quarantine.collect(), unmasked=unmasked).write_parquet(
        files["quarantine.parquet"]
    )
    _concat_parquet(sorted((folder / "lines").glob("*.parquet")), files["lines.parquet"])
    if csv:
        files["payouts.csv"] = out / "payouts.csv"
        _write_csv(files["payouts.parquet"], files["payouts.csv"], responsibilities)
    return PartitionedOutcome(
        payouts=pl.scan_parquet(folder / "payouts" / "*.parquet"),
        quarantine=pl.scan_parquet(files["quarantine.parquet"]),
        files=files,
        ledger_rows={t: str(folder / f"ledger-{t}" / "*.parquet") for t in BATCH_TABLES[:-1]},
        years=sorted(years_seen),
        costs=costs,
    )


def _write_member_part(
    folder: Path,
    j: int,
    batch_id: str,
    done: EngineFrames,
    prior: PriorState | None,
    costs: list[str],
    responsibilities: list[str],
    *,
    with_ledger: bool,
    unmasked: bool,
) -> dict[str, pl.DataFrame] | None:
    """One member partition's results as part files: engine payouts (fen), payout file rows,
    line audit, the engine's quarantine and, with a ledger, its ledger rows (returned)."""
    name = f"{j}.parquet"
    done.payouts.write_parquet(folder / "payouts" / name)
    payouts_frame(done.payouts, costs, responsibilities, unmasked=unmasked).write_parquet(
        folder / "payout-file" / name
    )
    lines_frame(done.lines).write_parquet(folder / "lines" / name)
    done.quarantine.write_parquet(folder / "quarantine" / f"b-{j}.parquet")
    if not with_ledger:
        return None
    before = (prior or PriorState.empty(costs)).accumulators.collect()
    ledger_rows = batch_rows(batch_id, done.payouts, before, costs)
    for table, rows in ledger_rows.items():
        rows.write_parquet(folder / f"ledger-{table}" / name)
    return ledger_rows


def _concat_parquet(parts: list[Path], target: Path) -> None:
    """Part files (one partition each, same schema) into one file, one part in memory at a time.

    (A Polars streaming sink of a large scan buffers more than one partition here.)
    """
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            table = pq.read_table(part)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _write_csv(payouts: Path, target: Path, responsibilities: list[str]) -> None:
    """payouts.csv from the payout file, a slice at a time."""
    with target.open("wb") as fh:
        reader = pq.ParquetFile(payouts, pre_buffer=False)
        for i, batch in enumerate(reader.iter_batches(batch_size=SLICE_ROWS)):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            to_text(frame.lazy(), responsibilities).collect().write_csv(fh, include_header=i == 0)


def _sorted_payout_file(parts: Path, target: Path, memory_limit: int, folder: Path) -> None:
    """The payout file in processing order, as an in-memory run writes it: DuckDB sorts the
    parts within :func:`duckdb_share` of the limit, spilling to the spill folder."""
    con = duckdb.connect()
    share = duckdb_share(memory_limit)
    try:
        con.execute(f"SET memory_limit = '{share // MiB}MiB'")
        # DuckDB's Parquet writer holds a whole row group: at 64 MiB, 122,880 payout rows (and
        # even 8,192) failed to pin a block; 2,048 fitted. So row groups scale with the share,
        # and the sort runs on one thread (two threads pin two sets of blocks: 10M payout rows
        # failed to pin one in a 256 MiB share)
        row_group = min(122_880, max(2_048, share // (32 * 1024)))
        con.execute("SET threads = 1")
        con.execute(f"SET temp_directory = '{folder / 'duckdb-spill'}'")
        con.execute("SET preserve_insertion_order = true")
        src = str(parts / "*.parquet").replace("'", "''")
        dst = str(target).replace("'", "''")
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{src}') ORDER BY setl_time, setl_id) "
            f"TO '{dst}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {row_group})"
        )
    finally:
        con.close()
