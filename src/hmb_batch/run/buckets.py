"""Member buckets: a batch cut by a hash of the member so that each bucket fits the memory budget.

Every batch runs as B buckets (:func:`bucket_count`); each bucket goes through the kernel
(:func:`hmb_batch.rules.kernel.adjudicate_bucket`) on its own and its results are written as part
files, which :class:`BucketParts` assembles into the output files. B = 1 when the batch fits the
budget (every nightly run): the bucket is the whole extract, read straight from the input files.

For B > 1 the inputs are cut once, by Polars streaming sinks into the run's spill folder (no
Python loop over rows or slices):

1. the roster by a hash of ``psn_no`` (each part is checked on its own: a member's rows are all
   in one part, so duplicate rows are still found);
2. the settlements' members: one row per ``setl_id`` with its (smallest) ``psn_no``, the map
   that sends a settlement, every copy of it and every fee line of it to one bucket (a copy
   naming another member still meets the first one in validation: CONFLICTING_DUPLICATE);
3. settlement rows and fee lines, typed once, joined to that map and written by bucket.

The map is made in parts (:func:`owner_parts`) when the batch has more settlements than one
query types: the typed rows are then first written by a hash of ``setl_id``, and each part's
map sends that part's rows to their buckets, so no query holds more than a chunk's worth of map
whatever the batch's size.

The payout file is sorted across buckets by DuckDB within :func:`duckdb_share` of the limit
(spilling to the spill folder) for every B, so B buckets write the same bytes as one.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
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
    scan_raw,
    type_table,
    type_table_apart,
    typed_frames_apart,
    with_errors,
)
from hmb_batch.io.outputs import PERSONAL, to_text
from hmb_batch.io.reference import (
    enrolled_counts,
    roster_frame,
    roster_problems,
    stop_on_roster_problems,
)
from hmb_batch.ledger.store import BATCH_TABLES
from hmb_batch.rules.kernel import BucketResult
from hmb_batch.rules.reconcile import AfterExpectation, Totals

MiB = 1 << 20
GiB = 1 << 30
# Peak resident memory per fee line while one bucket is validated and adjudicated, and what a run
# holds besides its bucket: interpreter, Polars, DuckDB (BENCHMARKS.md has the measurements).
BYTES_PER_FEE_LINE = 2_400
RUNTIME_BYTES = 512 * MiB
MIN_BUCKET_BYTES = 64 * MiB
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


def owner_parts(settlement_rows: int, memory_limit: int) -> int:
    """In how many parts (by a hash of setl_id) the map from settlement to bucket is made
    (see :func:`cut_into_buckets`): parts of at most :func:`chunk_rows` settlements. Each
    query that sends a chunk of rows to their buckets joins them with a map, building its
    hash table from the whole map: a map no bigger than the chunk keeps the query's memory
    that of the chunk, whatever the batch's size (BENCHMARKS.md has the measurements)."""
    return max(1, math.ceil(settlement_rows / chunk_rows(memory_limit)))


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


def duckdb_share(memory_limit: int) -> int:
    """What DuckDB may use (sorting the payout file, the ledger commit): half of the limit less
    the runtime, since the Python side still holds the runtime and what it last freed."""
    return max((memory_limit - RUNTIME_BYTES) // 2, 96 * MiB)


def bucket_of(column: str, n: int) -> pl.Expr:
    """The bucket (0 .. n-1) of a member id (or of a setl_id with no member)."""
    return (pl.col(column).hash(seed=_SEED) % n).cast(pl.UInt32)


def settlement_owners(settlements: pl.LazyFrame, n: int) -> pl.LazyFrame:
    """Each setl_id's bucket (``_owner``): its smallest member's, so that every copy of a
    settlement and every fee line of it go where that member goes (rows with no member: a
    bucket from the setl_id). ``settlements``: setl_id and psn_no of every settlement row."""
    return (
        settlements.filter(pl.col("setl_id").is_not_null())
        .group_by("setl_id")
        .agg(pl.col("psn_no").min())
        .select(
            "setl_id",
            pl.when(pl.col("psn_no").is_not_null())
            .then(bucket_of("psn_no", n))
            .otherwise(bucket_of("setl_id", n))
            .alias("_owner"),
        )
    )


def with_bucket(frame: pl.LazyFrame, owners: pl.LazyFrame, n: int) -> pl.LazyFrame:
    """``frame`` (settlement rows or fee lines) with its :data:`BUCKET` column from
    :func:`settlement_owners`; a fee line of no settlement gets one from its setl_id (it is
    quarantined as an orphan in that bucket)."""
    return (
        frame.join(owners, on="setl_id", how="left")
        .with_columns(pl.coalesce("_owner", bucket_of("setl_id", n)).alias(BUCKET))
        .drop("_owner")
    )


@dataclass(frozen=True)
class BucketInput:
    """One bucket's typed rows, as read from the inputs or the spill folder."""

    settlements: pl.DataFrame
    fee_lines: pl.DataFrame
    roster: pl.DataFrame  # the checked roster rows of the bucket's members


@dataclass
class CutBatch:
    """A batch cut into ``n`` buckets in ``folder`` (see the module docstring)."""

    folder: Path
    n: int
    shape: str
    enrolled_by_year: dict[int, int]
    roster_schema: pl.Schema

    def buckets(self) -> Iterator[BucketInput]:
        """Each bucket's rows, one bucket in memory at a time (empty buckets skipped)."""
        for k in range(self.n):
            settlements = _with_errors(self.folder, "settlements", k)
            lines = _with_errors(self.folder, "fee_lines", k)
            if settlements is None and lines is None:
                continue
            roster = _with_errors(self.folder, "roster", k)
            yield BucketInput(
                self._settlements(settlements),
                lines.collect() if lines is not None else _empty_typed(FEE_LINES),
                roster_frame(roster.collect())
                if roster is not None
                else pl.DataFrame(schema=self.roster_schema),
            )

    def _settlements(self, frame: pl.LazyFrame | None) -> pl.DataFrame:
        if frame is None:
            return _empty_typed(SETTLEMENTS)
        if self.shape == "wide":  # every line repeats its header; all of them are in this bucket
            return distinct_headers(frame).collect()
        return frame.collect()


_ERRORS = "-errors"  # the folder of a table's reading errors (see type_table_apart)


def _with_errors(folder: Path, table: str, k: int) -> pl.LazyFrame | None:
    """Bucket ``k`` of a table with its reading errors joined back (as type_table gives it)."""
    rows = _scan_part(folder / table, k)
    if rows is None:
        return None
    errors = _scan_part(folder / f"{table}{_ERRORS}", k)
    if errors is None:
        return rows.with_columns(pl.lit(None, pl.List(pl.String)).alias(ERRORS))
    return with_errors(rows, errors)


def _scan_part(folder: Path, k: int) -> pl.LazyFrame | None:
    """Bucket ``k`` of a table: its rows in input order (file, then row), as one bucket reads
    them from the files: which copy of a repeated settlement validation keeps first must not
    depend on B (the streaming sinks keep no row order). Every row carries its input file's
    number (:data:`SOURCE`) and its row in that file (ROW)."""
    files = sorted(folder.glob(f"*/{BUCKET}={k}/*.parquet"))
    if not files:
        return None
    parts = [pl.scan_parquet(f) for f in files]
    return pl.concat(parts, how="vertical_relaxed").sort(SOURCE, ROW).drop(SOURCE)


def _empty_typed(contract: Contract) -> pl.DataFrame:
    """A contract's typed table with no rows (a bucket that has none of it)."""
    empty = pl.LazyFrame(schema={ROW: pl.UInt32, FILE: pl.Categorical})
    return type_table(empty, contract, require=False).collect()


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
    n: int,
    folder: Path,
    *,
    column_map: dict[str, str] | None,
    encoding: str,
    timezone: str,
    rows_per_query: int = 2_000_000,
    map_parts: int = 1,
) -> CutBatch:
    """Write the roster and the extract by member bucket into ``folder`` (module docstring).

    Each input file is read in chunks of ``rows_per_query`` rows, each chunk one streaming
    query (see :func:`chunk_rows`). Stops the run (exit 8) on a bad roster row, as reading the
    roster whole does.

    ``map_parts`` (see :func:`owner_parts`): with more than one, the map from settlement to
    bucket would not fit in memory at once. The typed rows are then first written by a hash
    of setl_id into that many parts, and each part's map is made and its rows sent to their
    buckets in turn: one more write and read of the rows, memory bounded at any size.
    """
    folder.mkdir(parents=True, exist_ok=True)

    def write(
        frames: dict[str, pl.LazyFrame],
        part: str,
        bucket: Callable[[pl.LazyFrame], pl.LazyFrame],
        root: Path = folder,
    ) -> None:
        pl.collect_all(
            [
                bucket(frame).sink_parquet(
                    pl.PartitionBy(root / table / part, key=BUCKET, include_key=False),
                    compression="lz4",
                    lazy=True,
                )
                for table, frame in frames.items()
            ]
        )

    def by_member(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(bucket_of("psn_no", n).alias(BUCKET))

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
    for k in range(n):
        part = _with_errors(folder, "roster", k)
        if part is not None:
            members = part.collect()
            problems += roster_problems(members, roster)
            enrolled.update(enrolled_counts(members))
    stop_on_roster_problems(problems, roster)
    assert empty_roster is not None  # raw_chunks yields at least once
    roster_schema = roster_frame(empty_roster.collect()).schema

    shape, roles = extract_roles(extract_files, fee_files or None)

    def chunks() -> Iterator[tuple[str, dict[str, pl.LazyFrame]]]:
        """Each chunk of each input file, typed: its part name and its tables."""
        for i, (path, role) in enumerate(roles):
            # a settlement row (or a wide row, which holds one) types about three fee lines'
            # worth of columns: a third of the rows per query keeps the query's peak the same
            rows = rows_per_query if role == "fee_lines" else max(rows_per_query // 3, 1)
            for j, raw in enumerate(raw_chunks(path, rows, encoding, temp_dir=folder)):
                frames = typed_frames_apart(raw, path, role, column_map, timezone=timezone)
                tables = {name: _from(rows, i) for name, (rows, _) in frames.items()}
                tables |= {
                    f"{name}{_ERRORS}": _from(errors, i) for name, (_, errors) in frames.items()
                }
                yield f"{i:06d}-{j:06d}", tables

    if map_parts <= 1:
        claimed = pl.concat(
            [
                typed_frames_apart(
                    scan_raw(path, encoding, temp_dir=folder),
                    path,
                    role,
                    column_map,
                    timezone=timezone,
                )["settlements"][0].select("setl_id", "psn_no")
                for path, role in roles
                if role in ("settlements", "wide")
            ],
            how="vertical_relaxed",
        )
        owner = settlement_owners(claimed, n).collect()

        def by_owner(frame: pl.LazyFrame) -> pl.LazyFrame:
            return with_bucket(frame, owner.lazy(), n)

        for name, tables in chunks():
            write(tables, name, by_owner)
    else:
        _cut_by_map_parts(chunks(), folder, n, map_parts, rows_per_query, write)
    return CutBatch(folder, n, shape, dict(sorted(enrolled.items())), roster_schema)


def _from(frame: pl.LazyFrame, source: int) -> pl.LazyFrame:
    """Rows with the number of the input file they came from (see :func:`_scan_part`)."""
    return frame.with_columns(pl.lit(source, pl.UInt32).alias(SOURCE))


def _cut_by_map_parts(
    chunks: Iterator[tuple[str, dict[str, pl.LazyFrame]]],
    folder: Path,
    n: int,
    parts: int,
    rows_per_query: int,
    write: Callable[
        [dict[str, pl.LazyFrame], str, Callable[[pl.LazyFrame], pl.LazyFrame], Path], None
    ],
) -> None:
    """The extract's rows to their buckets when the settlement map is made in ``parts``.

    First every typed chunk is written by a hash of setl_id (``folder/by-setl``); then, part
    by part, the map of that part's settlements is made and the part's rows, in slices of
    ``rows_per_query``, are written to their buckets. A settlement, its copies and its fee
    lines share a setl_id, so they are in one part, and the map of that part places them as
    the whole map would.
    """
    staged = folder / "by-setl"

    def by_setl(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(bucket_of("setl_id", parts).alias(BUCKET))

    tables: set[str] = set()
    for part, frames in chunks:
        write(frames, part, by_setl, staged)
        tables |= set(frames)
    for k in range(parts):
        files = {t: sorted((staged / t).glob(f"*/{BUCKET}={k}/*.parquet")) for t in tables}
        if not any(files.values()):
            continue
        settlement_files = files.get("settlements", [])
        claimed = (
            pl.scan_parquet(settlement_files).select("setl_id", "psn_no")
            if settlement_files
            else pl.LazyFrame(schema={"setl_id": pl.String, "psn_no": pl.String})
        )
        owner = settlement_owners(claimed, n).collect()

        def by_owner(frame: pl.LazyFrame, owner: pl.DataFrame = owner) -> pl.LazyFrame:
            return with_bucket(frame, owner.lazy(), n)

        for table, found in files.items():
            if not found:
                continue
            rows = pl.scan_parquet(found)
            total = int(rows.select(pl.len()).collect().item())
            for s, offset in enumerate(range(0, max(total, 1), rows_per_query)):
                write(
                    {table: rows.slice(offset, rows_per_query)},
                    f"m{k:06d}-{s:06d}",
                    by_owner,
                    folder,
                )
    shutil.rmtree(staged, ignore_errors=True)


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

    def add(self, frame: pl.DataFrame, k: int) -> None:
        table = frame.to_arrow()
        if self.writer is None and frame.height:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        if self.writer is not None and table.schema.equals(self.writer.schema):
            self.writer.write_table(table)
        elif frame.height or self.writer is None:  # an empty bucket with another shape adds nothing
            frame.write_parquet(self.parts / f"{k:06d}.parquet", compression="lz4")
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
    """The buckets' results as part files in ``folder``, and their totals, added up as they come.

    Part ``k`` of each output lives in ``folder/<output>/k.parquet``; :meth:`assemble` makes the
    output files from them. ``in_memory`` (a batch of one bucket, every night): the parts stay
    frames in memory, since writing and reading back a part that is the whole output costs
    as much as the output itself; the output files are made by the same writers either way.
    """

    folder: Path
    with_ledger: bool
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

    def __post_init__(self) -> None:
        for sub in self._subs():
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def _subs(self) -> list[str]:
        ledger = [f"ledger-{t}" for t in BATCH_TABLES[:-1]] if self.with_ledger else []
        return ["payouts", "payout-file", "lines", "quarantine", *ledger]

    def add(self, k: int, result: BucketResult) -> None:
        """Write bucket ``k``'s results and add up its totals."""
        # the summary and the report read these parts: they need no name or ID number
        outputs = {
            "payouts": result.payouts.drop(PERSONAL, strict=False),
            "payout-file": result.payout_file,
            "lines": result.lines,
            "quarantine": result.quarantine,
        }
        if result.ledger_rows is not None:
            outputs |= {f"ledger-{t}": rows for t, rows in result.ledger_rows.items()}
        for sub, frame in outputs.items():
            if sub in _STREAMED:
                self._streamed(sub).add(frame, k)
            elif self.in_memory:
                self.frames.setdefault(sub, []).append(frame)
            else:  # spill files, read once: lz4 writes faster than zstd
                frame.write_parquet(self.folder / sub / f"{k:06d}.parquet", compression="lz4")
        self.totals.append(result.totals)
        if result.after is not None:
            self.after.append(result.after)
        self.settlements_in += result.settlements_in
        self.fee_lines_in += result.fee_lines_in
        self.identical_repeats += result.identical_repeats
        self.repeated_fee_lines += result.repeated_fee_lines
        self.absolute_fen += result.absolute_fen
        self.years |= set(result.years)
        self.claim_years |= set(result.claim_years)
        if result.latest is not None and (self.latest is None or result.latest > self.latest):
            self.latest = result.latest

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
        self, *, csv: bool, responsibilities: list[str], memory_limit: int
    ) -> dict[str, Path]:
        """The output files, in ``folder/out``: output name -> path."""
        out = self.folder / "out"
        out.mkdir(exist_ok=True)
        files = {
            "payouts.parquet": out / "payouts.parquet",
            "quarantine.parquet": out / "quarantine.parquet",
            "lines.parquet": out / "lines.parquet",
        }
        parts = self.folder / "payout-file"
        if self.in_memory:
            source: Path | pl.DataFrame = self.scan("payout-file").collect()
        else:
            # DuckDB marks a column NOT NULL in its output when it reads one file without nulls
            # there, never when it reads several: an empty part makes every B write the same
            # schema (a frame's columns are all nullable)
            pl.scan_parquet(parts / "*.parquet").clear().collect().write_parquet(
                parts / "empty.parquet"
            )
            source = parts
        _sorted_payout_file(source, files["payouts.parquet"], memory_limit, self.folder)
        for output in _STREAMED:
            self._streamed(output).finish()
        if csv:
            files["payouts.csv"] = out / "payouts.csv"
            to_text(pl.scan_parquet(files["payouts.parquet"]), responsibilities).sink_csv(
                files["payouts.csv"]
            )
        return files


def _sorted_payout_file(
    parts: Path | pl.DataFrame, target: Path, memory_limit: int, folder: Path
) -> None:
    """The payout file in processing order (setl_time, setl_id): DuckDB sorts the parts (a
    folder of part files, or one frame) within :func:`duckdb_share` of the limit, spilling to
    the spill folder, and writes the same bytes whatever the number of parts (one thread, row
    groups that depend on the limit only)."""
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
        con.execute(f"SET temp_directory = '{_sql_text(str(folder / 'duckdb-spill'))}'")
        con.execute("SET preserve_insertion_order = true")
        if isinstance(parts, pl.DataFrame):
            con.register("payout_rows", parts.to_arrow())
            src = "payout_rows"
        else:
            src = f"read_parquet('{_sql_text(str(parts / '*.parquet'))}')"
        dst = _sql_text(str(target))
        con.execute(
            f"COPY (SELECT * FROM {src} ORDER BY setl_time, setl_id) "
            f"TO '{dst}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {row_group})"
        )
    finally:
        con.close()


def _sql_text(text: str) -> str:
    return text.replace("'", "''")
