"""The payout file in processing order (setl_time, then setl_id), sorted within the memory budget.

The member stage leaves one part per member bucket, written in small row groups in the order
the kernel gives a bucket's payout rows (batch, setl_time, setl_id: one batch's rows in time
order, so a range touches few of a part's row groups). The payout file is then made range by
range of setl_time: the hours of the batch are counted (a streaming group-by of one column),
cut into consecutive ranges of at most :func:`rows_per_range` rows, and each range is read from
every part (the parts' row-group statistics skip the groups outside it), sorted in memory and
appended to the file. No sort ever holds more than one range, whatever the size of the batch.

Row groups are a fixed number of rows counted from the file's first row (the rows left at the
end of a range wait for the next), and each write hands the writer one contiguous chunk: so the
same rows give the same bytes however the batch was cut into buckets and however many ranges
the limit made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from hmb_batch.io.outputs import output_writer

ORDER = ["setl_time", "setl_id"]
# rows of a row group of the payout file (a reader's unit: some 20 MB of payout rows)
ROW_GROUP_ROWS = 65_536
# rows of a row group of a member bucket's part: small, so that a range reads little beyond it
PART_ROW_GROUP_ROWS = 8_192
# peak bytes per payout row while a range is sorted and written: the range as read (with the
# row groups around it), its sorted copy, the carry joined to it, its Arrow copy and the
# writer's buffers (a payout row is about 330 bytes in Polars); with what the run holds by
# then, half this let a 50M-line run pass 1 GiB (BENCHMARKS.md)
BYTES_PER_PAYOUT_ROW = 2_400
_HOUR = "_hour"


def write_part(frame: pl.DataFrame, path: Path) -> None:
    """Write a member bucket's payout rows as a part :func:`write_sorted` reads by range (in
    any order: each range is sorted when it is read; in time order it reads the least)."""
    frame.write_parquet(path, compression="lz4", row_group_size=PART_ROW_GROUP_ROWS)


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


def write_sorted(parts: pl.DataFrame | Sequence[Path], target: Path, budget_bytes: int) -> None:
    """Write ``target``, the payout file: the rows of ``parts`` (a frame, or the part files of
    :func:`write_part`) in (setl_time, setl_id) order, within ``budget_bytes`` (module
    docstring)."""
    rows = rows_per_range(budget_bytes)
    if isinstance(parts, pl.DataFrame):
        scanned = parts.lazy()
        ranges = [(None, None)] if parts.height <= rows else _ranges(scanned, rows)
    else:
        scanned = pl.concat([pl.scan_parquet(p) for p in parts], how="diagonal_relaxed")
        ranges = _ranges(scanned, rows)
    out = _FixedGroups(target)
    try:
        for i, (start, end) in enumerate(ranges):
            chunk = scanned.filter(_in_range(start, end)) if len(ranges) > 1 else scanned
            rows_of_range = chunk.sort(ORDER, nulls_last=True, maintain_order=True).collect()
            out.add(rows_of_range, last=i == len(ranges) - 1)
    finally:
        out.close()
