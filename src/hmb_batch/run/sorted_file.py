"""The payout file in processing order (setl_time, then setl_id), sorted within the memory budget.

The member stage leaves one part per member bucket. When the batch's payout rows fit the
budget (every nightly run), they are read and sorted in memory. Otherwise they are sorted in
two passes, each reading every row once:

1. **Cut by range.** The hours of the batch are counted (a streaming group-by of one column)
   and cut into consecutive ranges of setl_time of at most :func:`rows_per_range` rows.
   Consecutive parts are read together, a chunk of the budget at a time, and each chunk's rows
   are written into one piece per range (so each write carries a chunk's share of a range, not
   one bucket's few rows).
2. **Sort each range.** A range's pieces are read, sorted in memory and appended to the file.

In both passes a worker thread reads the next chunk or range while this one writes. Why not a
range read straight from the parts: a bucket's rows spread over the whole year, so each range
read a row group of every part, dozens of times the range's rows at 200M lines (BENCHMARKS.md).

Row groups are a fixed number of rows counted from the file's first row (the rows left at the
end of a range wait for the next), and each write hands the writer one contiguous chunk; the
order is total (a batch's payout rows have distinct setl_ids: a repeated one is quarantined).
So the same rows give the same bytes however the batch was cut into buckets, chunks and ranges.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from hmb_batch.io.outputs import output_writer
from hmb_batch.run.worker import one_ahead

ORDER = ["setl_time", "setl_id"]
# rows of a row group of the payout file (a reader's unit: some 20 MB of payout rows)
ROW_GROUP_ROWS = 65_536
# peak bytes per payout row while parts are cut by range: the chunk read, its range column and
# the pieces it is cut into (two chunks are in flight: one cut, one written)
BYTES_PER_CUT_ROW = 1_200
# peak bytes per payout row while rows are sorted in memory and written: the rows as read, their
# sorted copy, the carry joined to it, its Arrow copy and the writer's buffers, for the range
# written and the next one sorted (a payout row is about 330 bytes in Polars)
BYTES_PER_PAYOUT_ROW = 2_400
_HOUR = "_hour"
_RANGE = "_range"


def write_part(frame: pl.DataFrame, path: Path) -> None:
    """Write a member bucket's payout rows, in any order, as a part :func:`write_sorted`
    sorts."""
    frame.write_parquet(path, compression="lz4")


def rows_per_range(budget_bytes: int) -> int:
    """How many payout rows one range may hold within ``budget_bytes``."""
    return max(ROW_GROUP_ROWS, budget_bytes // BYTES_PER_PAYOUT_ROW)


def _ranges(parts: pl.LazyFrame, rows: int) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    """Consecutive [start, end) ranges of setl_time of at most ``rows`` rows each (an hour with
    more rows is a range of its own); the last range is open and also holds null times."""
    hours = (
        parts.group_by(pl.col("setl_time").dt.truncate("1h").alias(_HOUR))
        .len()
        .drop_nulls(_HOUR)
        .sort(_HOUR)
        .collect(engine="streaming")
    )
    starts: list[dt.datetime | None] = [None]
    held = 0
    # one row per hour of the batch (8,784 in a leap year), not per settlement
    for hour, n in hours.iter_rows():
        if held and held + n > rows:
            starts.append(hour)
            held = 0
        held += n
    ends = [*starts[1:], None]
    return list(zip(starts, ends, strict=True))


def _in_range(start: dt.datetime | None, end: dt.datetime | None) -> pl.Expr:
    """Rows of the range [start, end); the last range (no end) also holds null times, which
    sort last."""
    time = pl.col("setl_time")
    after = pl.lit(True) if start is None else time >= start
    if end is None:
        return after | time.is_null()
    return after & (time < end)


class _FixedGroups:
    """A Parquet file written in row groups of exactly ``ROW_GROUP_ROWS`` rows (the last one
    may be shorter), whatever the sizes of the frames added."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.writer: pq.ParquetWriter | None = None
        self.carry: pl.DataFrame | None = None

    def add(self, frame: pl.DataFrame, *, last: bool = False) -> None:
        frame = frame if self.carry is None else pl.concat([self.carry, frame], how="vertical")
        full = frame.height if last else frame.height // ROW_GROUP_ROWS * ROW_GROUP_ROWS
        self.carry = frame.slice(full)
        if full or (last and self.writer is None):
            self._write(frame.head(full))

    def _write(self, frame: pl.DataFrame) -> None:
        table = frame.rechunk().to_arrow()
        if self.writer is None:
            self.writer = output_writer(self.target, table.schema)
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _parts_by_range(
    parts: Sequence[Path],
    sizes: Sequence[int],
    schema: pl.Schema,
    ranges: list[tuple[dt.datetime | None, dt.datetime | None]],
    chunk_rows: int,
    scratch: Path,
) -> list[Path]:
    """Cut the rows of ``parts`` (of ``sizes`` rows) by range of setl_time into one folder per
    range (the folders, in range order). Consecutive parts are read together, up to
    ``chunk_rows`` rows at a time, so that each write carries many rows of a range, not a
    bucket's few."""
    starts = pl.Series([start for start, _ in ranges[1:]], dtype=schema["setl_time"])
    folders = [scratch / f"{r:06d}" for r in range(len(ranges))]
    for folder in folders:
        folder.mkdir(parents=True)

    def chunks() -> Iterator[list[Path]]:
        chunk: list[Path] = []
        held = 0
        for part, size in zip(parts, sizes, strict=True):
            chunk.append(part)
            held += size
            if held >= chunk_rows:
                yield chunk
                chunk, held = [], 0
        if chunk:
            yield chunk

    def cut(chunk: list[Path]) -> dict[Any, pl.DataFrame]:
        rows = pl.concat([pl.read_parquet(p) for p in chunk], how="diagonal_relaxed").select(
            [pl.col(c).cast(t) for c, t in schema.items()]
        )
        which = pl.lit(starts).search_sorted(pl.col("setl_time"), side="right").cast(pl.UInt32)
        # null times belong to the last range (they sort last)
        rows = rows.with_columns(
            pl.when(pl.col("setl_time").is_null())
            .then(pl.lit(len(ranges) - 1, pl.UInt32))
            .otherwise(which)
            .alias(_RANGE)
        )
        return rows.partition_by(_RANGE, as_dict=True, include_key=False)

    # the worker reads and cuts the next chunk while this thread writes the pieces
    for i, pieces in enumerate(one_ahead(chunks(), cut)):
        for (r,), piece in pieces.items():
            piece.write_parquet(
                folders[int(r)] / f"{i:06d}.parquet", compression="lz4", statistics=False
            )
    return folders


def write_sorted(parts: pl.DataFrame | Sequence[Path], target: Path, budget_bytes: int) -> None:
    """Write ``target``, the payout file: the rows of ``parts`` (a frame, or the part files of
    :func:`write_part`) in (setl_time, setl_id) order, within ``budget_bytes`` (module
    docstring)."""
    rows = rows_per_range(budget_bytes)
    out = _FixedGroups(target)
    try:
        if isinstance(parts, pl.DataFrame):
            ranges = [(None, None)] if parts.height <= rows else _ranges(parts.lazy(), rows)
            for i, (start, end) in enumerate(ranges):
                chunk = parts.filter(_in_range(start, end)) if len(ranges) > 1 else parts
                out.add(_sort(chunk), last=i == len(ranges) - 1)
            return
        scanned = pl.concat([pl.scan_parquet(p) for p in parts], how="diagonal_relaxed")
        sizes = [pq.read_metadata(p).num_rows for p in parts]
        if sum(sizes) <= rows:
            out.add(_sort(scanned.collect()), last=True)
            return
        schema = scanned.collect_schema()
        scratch = target.parent / f".{target.stem}-ranges"
        try:
            ranges = _ranges(scanned, rows)
            chunk_rows = budget_bytes // BYTES_PER_CUT_ROW
            folders = _parts_by_range(parts, sizes, schema, ranges, chunk_rows, scratch)

            def read(folder: Path) -> pl.DataFrame:
                pieces = sorted(folder.glob("*.parquet"))
                return _sort(pl.read_parquet(pieces)) if pieces else pl.DataFrame(schema=schema)

            # the worker reads and sorts the next range while this thread writes
            for folder, rows_of_range in zip(folders, one_ahead(folders, read), strict=True):
                out.add(rows_of_range)
                shutil.rmtree(folder)
            out.add(pl.DataFrame(schema=schema), last=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        out.close()


def _sort(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(ORDER, nulls_last=True, maintain_order=True)
