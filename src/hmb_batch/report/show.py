"""``hmb-batch show``: the rows of an output file, for an operator who has no Python at hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from hmb_batch.errors import InputUnreadable, UsageError
from hmb_batch.io.outputs import to_text_frame


@dataclass(frozen=True)
class Shown:
    """The rows chosen from a file, and how many there were to choose from."""

    frame: pl.DataFrame
    matched: int  # rows meeting the condition
    total: int  # rows in the file

    def text(self) -> pl.DataFrame:
        """Every value as text (lists joined by '|', money as plain decimals), as in the CSV
        copies of the payout file."""
        return to_text_frame(self.frame).select(pl.all().cast(pl.String))

    def csv(self) -> str:
        """The rows as CSV text."""
        return self.text().write_csv()

    def json_rows(self) -> list[dict[str, Any]]:
        """The rows as JSON-ready dicts (money as decimal strings, times ISO)."""
        return [{k: _plain(v) for k, v in row.items()} for row in self.frame.iter_rows(named=True)]


def _plain(v: Any) -> Any:
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | str):
        return v
    return str(v)  # Decimal, date, datetime: exact text, never a float


def read_rows(
    file: Path, *, where: str | None = None, columns: str | None = None, limit: int = 20
) -> Shown:
    """The first ``limit`` rows (0: all) of a Parquet file meeting the SQL condition ``where``,
    with only ``columns`` (comma-separated) if given. A condition or column the file does not
    have is a usage error naming it."""
    try:
        total = pq.read_metadata(file).num_rows
    except FileNotFoundError:
        raise InputUnreadable(f"{file}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputUnreadable(f"{file}: not a Parquet file hmb-batch can read ({exc})") from None
    frame = pl.scan_parquet(file)
    names = frame.collect_schema().names()
    try:
        if where:
            frame = frame.sql(f"SELECT * FROM self WHERE {where}")
        if columns:
            wanted = [c.strip() for c in columns.split(",") if c.strip()]
            unknown = [c for c in wanted if c not in names]
            if unknown:
                raise UsageError(
                    f"--columns: {file.name} has no column {', '.join(unknown)}; it has "
                    f"{', '.join(names)}"
                )
            frame = frame.select(wanted)
        matched = int(frame.select(pl.len()).collect().item()) if where else total
        rows = (frame.head(limit) if limit else frame).collect()
    except (pl.exceptions.PolarsError, pl.exceptions.SQLInterfaceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        listed = "" if "valid columns" in first else f". Columns: {', '.join(names)}"
        raise UsageError(
            f"--where {where!r} cannot be applied to {file.name}: {first}{listed}"
        ) from None
    return Shown(rows, matched, total)
