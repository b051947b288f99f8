"""Parts and buckets: a batch cut so that each piece of its work fits the memory budget.

A batch runs through the kernel (:mod:`hmb_batch.rules.kernel`) in three stages:

1. **lines**, per part of whole settlements (a hash of ``setl_id``: every row and fee line of a
   settlement in one part): validation and the line rules give each settlement's facts and the
   fee-line audit;
2. **members**, per bucket of members (a hash of ``psn_no``) of those facts: eligibility, costs,
   year to date and benefits, on a sixth of the rows, and narrow;
3. **the audit settled**, per part again: the denials and the engine's quarantine applied to
   the part's audit.

P parts (:func:`bucket_count`, from the fee lines) and M member buckets
(:func:`member_bucket_count`, from the settlements) are 1 when the batch fits the budget
(every nightly run): then nothing is cut and every frame stays in memory. Otherwise the inputs
are cut once, by Polars streaming sinks into the run's spill folder (no Python loop over rows
or slices): the roster by member bucket, the extract's rows, typed once, by part. The facts go
from the parts to their member buckets as part files; the fee lines are read once.

The payout file is sorted across buckets in ranges of setl_time within :func:`duckdb_share`
of the limit (:mod:`hmb_batch.run.sorted_file`) for every P and M, so any cut writes the same
bytes as none.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from hmb_batch.errors import ConfigError
from hmb_batch.io.contracts import FEE_LINES, ROSTER, SETTLEMENTS, Contract
from hmb_batch.io.extract import (
    ERRORS,
    FILE,
    ROW,
    detect_format,
    distinct_headers,
    extract_roles,
    raw_chunks,
    type_table,
    type_table_apart,
    typed_frames_apart,
    with_errors,
)
from hmb_batch.io.outputs import output_writer, to_text, write_csv
from hmb_batch.io.reference import (
    enrolled_counts,
    roster_frame,
    roster_problems,
    stop_on_roster_problems,
)
from hmb_batch.ledger.store import BATCH_TABLES
from hmb_batch.report.data import report_columns
from hmb_batch.rules.kernel import LinePart, LineResult, MemberResult, SettledLines
from hmb_batch.rules.reconcile import AfterExpectation, Totals
from hmb_batch.run import sorted_file

MiB = 1 << 20
GiB = 1 << 30
# Peak resident memory per fee line while one bucket is validated and adjudicated, and what a run
# holds besides its bucket: interpreter, Polars, DuckDB (BENCHMARKS.md has the measurements).
# The line stage's marginal peak is about 1.1 KB a line; the margin keeps a part's peak under
# the limit when its lines are wider than the generator's. Every part costs files in the cut
# (one per chunk of input), so fewer, larger parts matter most for the largest batches.
BYTES_PER_FEE_LINE = 1_600
# the same for a settlement's facts in the member stage (a settlement row, its line facts, the
# engine's columns; the ledger's prior state of its member)
BYTES_PER_SETTLEMENT = 3_600
RUNTIME_BYTES = 512 * MiB
# Member buckets whose work is in memory at once: the stages run one item ahead (run/batch.py,
# one_ahead), so a member bucket's budget is the usable memory over this. Parts are sized as if
# alone: at 10M and 50M fee lines the line stage's peak with two parts in flight stayed well
# under a 1 GiB limit, while two member buckets sized for one passed it at 50M (BENCHMARKS.md,
# session 11); and every part costs files in the cut.
IN_FLIGHT = 2
MIN_BUCKET_BYTES = 64 * MiB
# settlement facts kept from the line stage's parts before they are written by member bucket
# (at about 300 bytes a settlement's facts, some 90 MB)
FACTS_PER_WRITE = 300_000
# denied and engine-quarantined settlements kept from the member buckets before they are written
# by part (a city-year denies millions: held whole until the audit is settled, they were some
# hundreds of MB)
DECISIONS_PER_WRITE = 1_000_000
# A CSV fee line is ~130-160 bytes; a low guess means more lines, so more (smaller) buckets.
CSV_BYTES_PER_LINE = 100
CSV_BYTES_PER_SETTLEMENT = 200  # a generated settlement row is ~230 bytes
BUCKET = "_bucket"
SOURCE = "_source"  # which input file a row came from (its number in the batch's file list)
_SEED = 0x484D42  # any fixed seed: buckets only need to agree within one run


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


def default_memory_limit() -> int:
    """A quarter of the machine's memory (the default ``--memory-limit``), at least 1 GiB.

    A quarter leaves the rest to the operating system's file cache (the inputs and the spill
    folder are read back from it) and to whatever else runs on the machine at night.
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * GiB
    return max(total // 4, GiB)


def _estimated_rows(files: list[Path], csv_bytes_per_row: int) -> int:
    total = 0
    for path in files:
        if detect_format(path) == "parquet":
            total += int(pl.scan_parquet(path).select(pl.len()).collect().item())
        else:
            total += path.stat().st_size // csv_bytes_per_row + 1
    return total


def estimated_fee_lines(files: list[Path]) -> int:
    """Fee lines in the files: exact for Parquet (from the footer), an upper guess for CSV."""
    return _estimated_rows(files, CSV_BYTES_PER_LINE)


def estimated_settlement_rows(files: list[Path]) -> int:
    """Settlement rows in the extract files: exact for Parquet, an upper guess for CSV (a wide
    file's rows are its fee lines: more than its settlements, so the guess stays high)."""
    return _estimated_rows(files, CSV_BYTES_PER_SETTLEMENT)


def bucket_count(fee_lines: int, memory_limit: int) -> int:
    """How many buckets keep a run of ``fee_lines`` under ``memory_limit`` bytes.

    Raises ConfigError when the limit is below what any run needs.
    """
    usable = memory_limit - RUNTIME_BYTES
    if usable < MIN_BUCKET_BYTES:
        raise ConfigError(
            f"--memory-limit {format_size(memory_limit)} is too small: hmb-batch needs about "
            f"{format_size(RUNTIME_BYTES + MIN_BUCKET_BYTES)} to run at all (the runtime plus "
            "one bucket of the batch); give a larger limit"
        )
    return max(1, math.ceil(fee_lines * BYTES_PER_FEE_LINE / usable))


def member_bucket_count(settlements: int, memory_limit: int) -> int:
    """How many member buckets keep the member stage of ``settlements`` settlement facts under
    ``memory_limit`` bytes (see :func:`bucket_count`)."""
    usable = max(memory_limit - RUNTIME_BYTES, MIN_BUCKET_BYTES)
    return max(1, math.ceil(settlements * BYTES_PER_SETTLEMENT * IN_FLIGHT / usable))


def duckdb_share(memory_limit: int) -> int:
    """What DuckDB may use (the ledger's reads and commit), and what the payout file's sort may
    hold: half of the limit less the runtime, since the Python side still holds the runtime and
    what it last freed."""
    return max((memory_limit - RUNTIME_BYTES) // 2, 96 * MiB)


def bucket_of(column: str, n: int) -> pl.Expr:
    """The bucket (0 .. n-1) of a member id (or of a setl_id with no member)."""
    return (pl.col(column).hash(seed=_SEED) % n).cast(pl.UInt32)


@dataclass
class CutBatch:
    """A batch cut into ``parts`` parts of whole settlements and its roster into ``members``
    member buckets, in ``folder`` (see the module docstring)."""

    folder: Path
    parts: int
    members: int
    shape: str
    enrolled_by_year: dict[int, int]
    roster_schema: pl.Schema

    def line_parts(self) -> Iterator[tuple[int, LinePart]]:
        """Each part's typed rows, one part in memory at a time (empty parts skipped)."""
        for k in range(self.parts):
            wide = self.shape == "wide"
            settlements = _with_errors(self.folder, "settlements", k, ordered=wide)
            lines = _with_errors(self.folder, "fee_lines", k, ordered=False)
            if settlements is None and lines is None:
                continue
            yield (
                k,
                LinePart(
                    self._settlements(settlements),
                    _in_input_order(lines.collect(), ["setl_id", "feedetl_sn"])
                    if lines is not None
                    else _empty_typed(FEE_LINES),
                ),
            )

    def fee_lines(self, k: int, setl_ids: pl.DataFrame) -> pl.DataFrame:
        """Part ``k``'s typed fee lines of these settlements (in input order)."""
        mine = setl_ids.filter(bucket_of("setl_id", self.parts) == k)
        lines = _with_errors(self.folder, "fee_lines", k) if mine.height else None
        if lines is None:
            return _empty_typed(FEE_LINES)
        return lines.join(mine.lazy().select("setl_id"), on="setl_id", how="semi").collect()

    def roster(self, m: int) -> pl.DataFrame:
        """Member bucket ``m``'s checked roster rows."""
        roster = _with_errors(self.folder, "roster", m)
        if roster is None:
            return pl.DataFrame(schema=self.roster_schema)
        return roster_frame(roster.collect())

    def _settlements(self, frame: pl.LazyFrame | None) -> pl.DataFrame:
        if frame is None:
            return _empty_typed(SETTLEMENTS)
        if self.shape == "wide":  # every line repeats its header; all of them are in this part
            return distinct_headers(frame).collect()
        return _in_input_order(frame.collect(), ["setl_id"])


_ERRORS = "-errors"  # the folder of a table's reading errors (see type_table_apart)


def _with_errors(folder: Path, table: str, k: int, *, ordered: bool = True) -> pl.LazyFrame | None:
    """Bucket ``k`` of a table with its reading errors joined back (as type_table gives it);
    ``ordered``: see :func:`_scan_part`."""
    rows = _scan_part(folder / table, k, ordered=ordered)
    if rows is None:
        return None
    errors = _scan_part(folder / f"{table}{_ERRORS}", k)
    if errors is None:
        return rows.with_columns(pl.lit(None, pl.List(pl.String)).alias(ERRORS))
    return with_errors(rows, errors)


def _scan_part(folder: Path, k: int, *, ordered: bool = True) -> pl.LazyFrame | None:
    """Bucket ``k`` of a table: its rows in input order (file, then row), as one bucket reads
    them from the files: which copy of a repeated settlement validation keeps first must not
    depend on B (the streaming sinks keep no row order). Every row carries its input file's
    number (:data:`SOURCE`) and its row in that file (ROW). ``ordered=False``: in no order,
    with :data:`SOURCE` (see :func:`_in_input_order`)."""
    files = sorted(folder.glob(f"*/{BUCKET}={k}/*.parquet"))
    if not files:
        return None
    rows = pl.concat([pl.scan_parquet(f) for f in files], how="vertical_relaxed")
    return rows.sort(SOURCE, ROW).drop(SOURCE) if ordered else rows


def _in_input_order(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """A part's rows in input order when the order matters: only for the copies of a repeated
    key (which one validation keeps). Distinct hashes prove every key distinct, and then the
    rows' order decides nothing (sorting every wide row of a part cost several times the
    count)."""
    hashed = pl.sum_horizontal(pl.col(c).hash(i + 1) for i, c in enumerate(key))
    if frame.select(hashed.n_unique()).item() == frame.height:
        return frame.drop(SOURCE)
    return frame.sort(SOURCE, ROW).drop(SOURCE)


def _empty_typed(contract: Contract) -> pl.DataFrame:
    """A contract's typed table with no rows (a bucket that has none of it)."""
    empty = pl.LazyFrame(schema={ROW: pl.UInt32, FILE: pl.Categorical})
    return type_table(empty, contract, require=False).collect()


# A one-level cut writes a file per chunk of input and part: past this many, the chunks are cut
# into groups of parts first, and each group then into its parts (see cut_groups).
MAX_CUT_FILES = 20_000
# parts one group is cut into by one streaming query: Polars' partitioned sink holds a buffer
# per open part (about 15 MB each when cutting typed fee lines), so a group's fan-out is bounded
PARTS_PER_GROUP = 16


def cut_groups(parts: int, fee_lines: int, settlement_rows: int, memory_limit: int) -> int:
    """In how many groups of parts a batch is cut first (1: straight into its ``parts``).

    A cut writes a file per chunk of input (:func:`chunk_rows`) and part, and a part is then
    read from a file per chunk: a city-year in hundreds of parts made hundreds of thousands of
    small files. Cut in two levels, every chunk writes a file per group, and each group is then
    cut into its parts by one streaming query over the group's small files, so each part is one
    file (at the cost of writing the typed rows twice).
    """
    rows = chunk_rows(memory_limit)
    chunks = math.ceil(fee_lines / rows) + math.ceil(settlement_rows / max(rows // 3, 1))
    if parts <= PARTS_PER_GROUP or chunks * parts <= MAX_CUT_FILES:
        return 1
    return math.ceil(parts / PARTS_PER_GROUP)


def chunk_rows(memory_limit: int) -> int:
    """Rows typed and written by one streaming query when cutting (see
    :func:`hmb_batch.io.extract.raw_chunks`): a query's peak grows by a few hundred bytes per
    row it types into dozens of open bucket files, so about 1 KB per row within the limit less
    the runtime (BENCHMARKS.md)."""
    return int(min(4_000_000, max(100_000, (memory_limit - RUNTIME_BYTES) // 1_000)))


def cut_into_buckets(
    extract_files: list[Path],
    fee_files: list[Path],
    roster: Path,
    parts: int,
    members: int,
    folder: Path,
    *,
    column_map: dict[str, str] | None,
    encoding: str,
    timezone: str,
    rows_per_query: int = 2_000_000,
    groups: int = 1,
) -> CutBatch:
    """Write the roster by member bucket and the extract by part into ``folder`` (module
    docstring).

    Each input file is read in chunks of ``rows_per_query`` rows, each chunk one streaming
    query (see :func:`chunk_rows`); with ``groups`` > 1 the chunks go to groups of parts first
    (:func:`cut_groups`). Stops the run (exit 8) on a bad roster row, as reading the roster
    whole does.
    """
    folder.mkdir(parents=True, exist_ok=True)

    def write(frames: dict[str, pl.LazyFrame], part: str, bucket: pl.Expr) -> None:
        pl.collect_all(
            [_partitioned(frame, bucket, folder / table / part) for table, frame in frames.items()]
        )

    by_member = bucket_of("psn_no", members)
    by_settlement = bucket_of("setl_id", parts)
    by_group = by_settlement % groups  # part k is in group k % groups: whole in one group

    empty_roster: pl.LazyFrame | None = None
    for j, raw in enumerate(raw_chunks(roster, rows_per_query, encoding, temp_dir=folder)):
        rows, errors = type_table_apart(
            raw, ROSTER, column_map=column_map, file_label=str(roster), timezone=timezone
        )
        empty_roster = with_errors(rows, errors).clear()
        write(
            {"roster": _from(rows, 0), f"roster{_ERRORS}": _from(errors, 0)},
            f"{j:06d}",
            by_member,
        )
    problems: list[str] = []
    enrolled: Counter[int] = Counter()
    for m in range(members):
        part = _with_errors(folder, "roster", m)
        if part is not None:
            rows_m = part.collect()
            problems += roster_problems(rows_m, roster)
            enrolled.update(enrolled_counts(rows_m))
    stop_on_roster_problems(problems, roster)
    assert empty_roster is not None  # raw_chunks yields at least once
    roster_schema = roster_frame(empty_roster.collect()).schema

    shape, roles = extract_roles(extract_files, fee_files or None)
    for i, (path, role) in enumerate(roles):
        # a settlement row (or a wide row, which holds one) types about three fee lines'
        # worth of columns: a third of the rows per query keeps the query's peak the same
        rows_n = rows_per_query if role == "fee_lines" else max(rows_per_query // 3, 1)
        for j, raw in enumerate(raw_chunks(path, rows_n, encoding, temp_dir=folder)):
            frames = typed_frames_apart(raw, path, role, column_map, timezone=timezone)
            tables = {name: _from(rows, i) for name, (rows, _) in frames.items()}
            tables |= {f"{name}{_ERRORS}": _from(errors, i) for name, (_, errors) in frames.items()}
            if groups == 1:
                write(tables, f"{i:06d}-{j:06d}", by_settlement)
            else:
                tables = {f"{_GROUPS}/{name}": frame for name, frame in tables.items()}
                write(tables, f"{i:06d}-{j:06d}", by_group)
    if groups > 1:
        _cut_groups(folder, groups, parts)
    return CutBatch(folder, parts, members, shape, dict(sorted(enrolled.items())), roster_schema)


_GROUPS = "groups"  # the first level of a two-level cut (see cut_groups)


def _partitioned(frame: pl.LazyFrame, bucket: pl.Expr, target: Path) -> pl.LazyFrame:
    """The (lazy) streaming write of ``frame`` into ``target``, one folder per bucket
    (``_bucket=k``, as :func:`_scan_part` reads them)."""
    return frame.with_columns(bucket.alias(BUCKET)).sink_parquet(
        pl.PartitionBy(target, key=BUCKET, include_key=False), compression="lz4", lazy=True
    )


def _cut_groups(folder: Path, groups: int, parts: int) -> None:
    """Each group of the first level cut into its parts: one streaming query per group and
    table, reading the group's small files (the chunks'), writing one file per part; then the
    first level goes."""
    first = folder / _GROUPS
    for table in sorted(p.name for p in first.iterdir() if p.is_dir()):
        for g in range(groups):
            files = sorted((first / table).glob(f"*/{BUCKET}={g}/*.parquet"))
            if not files:
                continue
            rows = pl.concat([pl.scan_parquet(f) for f in files], how="vertical_relaxed")
            _partitioned(rows, bucket_of("setl_id", parts), folder / table / f"g{g:06d}").collect()
    shutil.rmtree(first)


def _from(frame: pl.LazyFrame, source: int) -> pl.LazyFrame:
    """Rows with the number of the input file they came from (see :func:`_scan_part`)."""
    return frame.with_columns(pl.lit(source, pl.UInt32).alias(SOURCE))


# outputs whose buckets' rows are written straight into the output file as they come (a set
# of rows, in no fixed order): no part file written, read back and written again
_STREAMED = ("lines", "quarantine")


@dataclass
class _Streamed:
    """One output file written bucket by bucket; rows whose columns differ from the first
    bucket's (another edition's costs) go to part files, added when the file is finished."""

    path: Path
    parts: Path
    writer: pq.ParquetWriter | None = None
    others: int = 0

    def add(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self.writer is None and frame.height:
            self.writer = output_writer(self.path, table.schema)
        if self.writer is not None and table.schema.equals(self.writer.schema):
            self.writer.write_table(table)
        elif frame.height or self.writer is None:  # an empty bucket with another shape adds nothing
            frame.write_parquet(self.parts / f"{self.others:06d}.parquet", compression="lz4")
            self.others += 1

    def finish(self) -> None:
        """Close the file; add the part files' rows to it (all columns of both kept)."""
        if self.writer is not None:
            self.writer.close()
        if not self.others:
            return
        frames = [pl.scan_parquet(f) for f in sorted(self.parts.glob("*.parquet"))]
        if self.writer is not None:
            written = self.path.with_suffix(".first.parquet")
            self.path.rename(written)
            frames.insert(0, pl.scan_parquet(written))
        pl.concat(frames, how="diagonal_relaxed").sink_parquet(self.path, compression="zstd")


@dataclass
class BucketParts:
    """The stages' results as part files in ``folder``, and their totals, added up as they come.

    Member bucket ``m``'s part of each output lives in ``folder/<output>/m.parquet``, the
    parts' facts in ``folder/facts/<write>/`` (a few parts' per write, cut by member bucket)
    and a part's audit in ``folder/audit/<k>.arrow``; :meth:`assemble` makes the output
    files. ``in_memory`` (one part and one member bucket, every night): the parts stay frames
    in memory, since writing and reading back a part that is the whole output costs as much as
    the output itself; the output files are made by the same writers either way.
    """

    folder: Path
    with_ledger: bool
    members: int = 1
    in_memory: bool = False
    frames: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    streamed: dict[str, _Streamed] = field(default_factory=dict)
    totals: list[Totals] = field(default_factory=list)
    after: list[AfterExpectation] = field(default_factory=list)
    settlements_in: int = 0
    fee_lines_in: int = 0
    identical_repeats: int = 0
    repeated_fee_lines: int = 0
    absolute_fen: int = 0
    years: set[int] = field(default_factory=set)
    claim_years: set[int] = field(default_factory=set)
    latest: dt.datetime | None = None  # of the latest valid settlement
    audited: list[int] = field(default_factory=list)  # the parts with an audit, in order
    no_facts: pl.DataFrame | None = None  # the facts' columns, for a batch without any
    parts: int = 1  # parts of whole settlements (the decisions are written by part)
    denied: list[pl.DataFrame] = field(default_factory=list)
    removed: list[pl.DataFrame] = field(default_factory=list)
    _no_decisions: list[pl.DataFrame] = field(default_factory=list)  # their columns, no rows
    _decision_writes: int = 0
    _pending: list[pl.DataFrame] = field(default_factory=list)  # facts not yet written
    _facts_writes: int = 0

    def __post_init__(self) -> None:
        for sub in self._subs():
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def _subs(self) -> list[str]:
        ledger = [f"ledger-{t}" for t in BATCH_TABLES[:-1]] if self.with_ledger else []
        subs = ["payouts", "payout-file", "lines", "quarantine", "facts", "audit"]
        return [*subs, "denied", "removed", *ledger]

    def _keep(self, sub: str, frame: pl.DataFrame, k: int) -> None:
        if sub in _STREAMED:
            self._streamed(sub).add(frame)
        elif self.in_memory:
            self.frames.setdefault(sub, []).append(frame)
        elif sub == "payout-file":  # sorted, read range by range (see run/sorted_file.py)
            sorted_file.write_part(frame, self.folder / sub / f"{k:06d}.parquet")
        else:  # spill files, read once: lz4 writes faster than zstd
            frame.write_parquet(self.folder / sub / f"{k:06d}.parquet", compression="lz4")

    # --- stage 1 ---------------------------------------------------------------------------
    def add_lines(self, k: int, result: LineResult) -> None:
        """Keep part ``k``'s facts (by member bucket) and audit; write its quarantine."""
        self._streamed("quarantine").add(result.quarantine)
        if self.no_facts is None:
            self.no_facts = result.facts.clear()
        if self.in_memory:
            self.frames.setdefault("facts", []).append(result.facts)
            self.frames.setdefault("audit", []).append(result.audit)
        else:
            if result.facts.height:
                self._pending.append(result.facts)
                if sum(f.height for f in self._pending) >= FACTS_PER_WRITE:
                    self._write_facts()
            # read back once, whole, by this process: Arrow IPC writes and reads it in about
            # half the time Parquet takes (BENCHMARKS.md)
            audit = self.folder / "audit" / f"{k:06d}.arrow"
            result.audit.write_ipc(audit, compression="lz4")
        self.audited.append(k)
        self.totals.append(result.totals)
        self.settlements_in += result.settlements_in
        self.fee_lines_in += result.fee_lines_in
        self.identical_repeats += result.identical_repeats
        self.repeated_fee_lines += result.repeated_fee_lines
        self.absolute_fen += result.absolute_fen

    def _write_facts(self) -> None:
        """The facts kept since the last write, by member bucket: a few parts' facts per
        write, so that a member bucket reads a few files, not one per part (a city-year's
        hundreds of parts times its dozens of buckets made tens of thousands of small files)."""
        if not self._pending:
            return
        pending = pl.concat(self._pending, how="diagonal_relaxed")
        self._pending.clear()
        target = self.folder / "facts" / f"{self._facts_writes:06d}"
        _partitioned(pending.lazy(), bucket_of("psn_no", self.members), target).collect()
        self._facts_writes += 1

    def facts_of(self, m: int) -> pl.DataFrame | None:
        """Member bucket ``m``'s settlement facts from every part (None: it has none)."""
        self._write_facts()
        if self.in_memory:
            found = self.frames.get("facts", [])
            return pl.concat(found, how="diagonal_relaxed") if found else None
        files = sorted((self.folder / "facts").glob(f"*/{BUCKET}={m}/*.parquet"))
        if not files:
            return None
        return pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed").collect()

    # --- stage 2 ---------------------------------------------------------------------------
    def add_members(self, m: int, result: MemberResult) -> None:
        """Write member bucket ``m``'s results and add up its totals."""
        # the summary and the report read the payouts parts: only the columns they need
        outputs = {
            "payouts": report_columns(result.payouts),
            "payout-file": result.payout_file,
            "quarantine": result.quarantine,
        }
        if result.ledger_rows is not None:
            outputs |= {f"ledger-{t}": rows for t, rows in result.ledger_rows.items()}
        for sub, frame in outputs.items():
            self._keep(sub, frame, m)
        self.totals.append(result.totals)
        if result.after is not None:
            self.after.append(result.after)
        self.denied.append(result.denied)
        self.removed.append(result.removed)
        if not self._no_decisions:
            self._no_decisions = [result.denied.clear(), result.removed.clear()]
        if not self.in_memory and sum(f.height for f in self.denied) >= DECISIONS_PER_WRITE:
            self._write_decisions()
        self.years |= set(result.years)
        self.claim_years |= set(result.claim_years)
        if result.latest is not None and (self.latest is None or result.latest > self.latest):
            self.latest = result.latest

    def _write_decisions(self) -> None:
        """The decisions kept since the last write, by part (a few writes per batch, so that a
        part reads a few files)."""
        for name, frames in (("denied", self.denied), ("removed", self.removed)):
            if frames:
                _partitioned(
                    pl.concat(frames, how="diagonal_relaxed").lazy(),
                    bucket_of("setl_id", self.parts),
                    self.folder / name / f"{self._decision_writes:06d}",
                ).collect()
            frames.clear()
        self._decision_writes += 1

    def decided(self, k: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The denied and the engine-quarantined settlements of part ``k``, from every member
        bucket: each part's audit is matched with its own few, not with the whole batch's."""
        if self.in_memory:
            return (
                pl.concat([self._no_decisions[0], *self.denied]),
                pl.concat([self._no_decisions[1], *self.removed], how="diagonal_relaxed"),
            )
        if self.denied or self.removed:
            self._write_decisions()
        found = []
        for name, empty in zip(("denied", "removed"), self._no_decisions, strict=True):
            files = sorted((self.folder / name).glob(f"*/{BUCKET}={k}/*.parquet"))
            frames = [pl.read_parquet(f) for f in files]
            found.append(pl.concat([empty, *frames], how="diagonal_relaxed"))
        return found[0], found[1]

    def forget_decisions(self) -> None:
        """Drop the member stage's denied and quarantined ids once every part is settled."""
        self.denied.clear()
        self.removed.clear()

    # --- stage 3 ---------------------------------------------------------------------------
    def audit_of(self, k: int) -> pl.DataFrame:
        """Part ``k``'s audit as the line stage left it."""
        if self.in_memory:
            return self.frames["audit"][self.audited.index(k)]
        return pl.read_ipc(self.folder / "audit" / f"{k:06d}.arrow")

    def add_settled(self, k: int, settled: SettledLines) -> None:
        """Write part ``k``'s settled audit and the fee lines quarantined with it."""
        self._streamed("lines").add(settled.lines)
        if settled.quarantine.height:
            self._streamed("quarantine").add(settled.quarantine)
        self.totals.append(settled.totals)

    def _streamed(self, output: str) -> _Streamed:
        if output not in self.streamed:
            out = self.folder / "out"
            out.mkdir(exist_ok=True)
            self.streamed[output] = _Streamed(out / f"{output}.parquet", self.folder / output)
        return self.streamed[output]

    def scan(self, output: str) -> pl.LazyFrame:
        """All buckets' parts of one output (bucket order)."""
        if self.in_memory:
            frames = [f.lazy() for f in self.frames[output]]
        else:
            frames = [pl.scan_parquet(f) for f in sorted((self.folder / output).glob("*.parquet"))]
        return pl.concat(frames, how="diagonal_relaxed")

    def ledger_rows(self) -> dict[str, str | pl.DataFrame]:
        """Ledger table -> its rows, or the glob of their part files (see :meth:`Ledger.apply`)."""
        if self.in_memory:
            return {t: self.scan(f"ledger-{t}").collect() for t in BATCH_TABLES[:-1]}
        return {t: str(self.folder / f"ledger-{t}" / "*.parquet") for t in BATCH_TABLES[:-1]}

    def assemble(
        self,
        *,
        csv: bool,
        responsibilities: list[str],
        memory_limit: int,
        csv_encoding: str = "utf-8",
    ) -> dict[str, Path]:
        """The output files, in ``folder/out``: output name -> path. ``csv``: also the payout
        file and the quarantine as CSV in ``csv_encoding``."""
        out = self.folder / "out"
        out.mkdir(exist_ok=True)
        files = {
            "payouts.parquet": out / "payouts.parquet",
            "quarantine.parquet": out / "quarantine.parquet",
            "lines.parquet": out / "lines.parquet",
        }
        parts: pl.DataFrame | list[Path] = (
            self.scan("payout-file").collect()
            if self.in_memory
            else sorted((self.folder / "payout-file").glob("*.parquet"))
        )
        # the stages are done: the sort may use what DuckDB may (the ledger holds the rest)
        sorted_file.write_sorted(parts, files["payouts.parquet"], duckdb_share(memory_limit))
        for output in _STREAMED:
            self._streamed(output).finish()
        if csv:
            files["payouts.csv"] = write_csv(
                to_text(pl.scan_parquet(files["payouts.parquet"]), responsibilities),
                out / "payouts.csv",
                csv_encoding,
            )
            files["quarantine.csv"] = write_csv(
                to_text(pl.scan_parquet(files["quarantine.parquet"]), []),
                out / "quarantine.csv",
                csv_encoding,
            )
        return files
