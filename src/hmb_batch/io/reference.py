"""Reference data: the roster (参保名单) and the lists (负面清单, 准入清单, 特药清单).

Unlike a settlement, a bad roster or list row cannot be quarantined on its own: it would silently
deny or pay other people's claims. So any bad row stops the run before anything is written, with a
message naming the file, the rows and the columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from hmb_batch.errors import ReferenceDataError
from hmb_batch.io.contracts import LISTS, ROSTER
from hmb_batch.io.extract import (
    DEFAULT_TIMEZONE,
    ERRORS,
    FILE,
    ROW,
    normalised_code,
    read_table,
    rows_with,
    scan_raw,
    source_column,
    type_table,
)

_SHOW = 10
_TRUE = ["1", "y", "yes", "true", "是"]


def _messages(frame: pl.DataFrame) -> list[str]:
    messages = frame.select(pl.col(ERRORS).list.explode(keep_nulls=False, empty_as_null=False))
    found: list[str] = messages.to_series().to_list()
    return found


def _stop_on_errors(found: list[str], what: str) -> None:
    if found:
        shown = "\n".join(f"  - {m}" for m in found[:_SHOW])
        more = f"\n  (+{len(found) - _SHOW} more)" if len(found) > _SHOW else ""
        raise ReferenceDataError(f"the {what} has {len(found)} problem(s):\n{shown}{more}")


def roster_problems(df: pl.DataFrame, path: Path) -> list[str]:
    """What is wrong with typed roster rows (a whole roster, or all rows of some members)."""
    dups = (
        df.filter(pl.len().over("psn_no", "plan_year") > 1)
        .group_by("psn_no", "plan_year")
        .agg(pl.col(ROW).sort())
        .sort("psn_no")
    )
    extra = [
        f"{path} rows {', '.join(map(str, r[ROW]))}: member {r['psn_no']} has more than one "
        f"roster row for plan year {r['plan_year']} (expected one)"
        for r in dups.head(_SHOW).iter_rows(named=True)
    ]
    return _messages(df) + extra


def stop_on_roster_problems(found: list[str], path: Path) -> None:
    """Stop the run (exit 8) naming the first problems, if there are any."""
    _stop_on_errors(found, f"roster {path}")


def roster_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Checked typed roster rows as the engine reads them (``pre_existing`` a boolean)."""
    return df.with_columns(
        pl.col("pre_existing").str.to_lowercase().is_in(_TRUE).fill_null(False)
    ).drop(ERRORS, FILE, ROW)


def load_roster(
    path: Path,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    *,
    members: pl.Series | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    temp_dir: Path | None = None,
) -> pl.DataFrame:
    """Read and check the roster: one row per member and plan year, every value readable.

    ``members``: read and check only these members' rows — for a roster file that was checked
    whole before (the ledger knows its SHA-256), a night needs only the members it touches.
    A ``psn_no`` holding an invisible character, or a row with too few or too many fields,
    stops the run like any other bad roster row. ``timezone``: see
    :func:`hmb_batch.io.extract.type_table`; ``temp_dir``: see
    :func:`hmb_batch.io.extract.scan_raw`.
    """
    raw = scan_raw(path, encoding, temp_dir=temp_dir)
    if members is not None:
        raw = rows_with(raw, ROSTER, "psn_no", members, column_map)
    df = type_table(
        raw, ROSTER, column_map=column_map, file_label=str(path), timezone=timezone
    ).collect()
    stop_on_roster_problems(roster_problems(df, path), path)
    return roster_frame(df)


def enrolled_by_year(
    path: Path,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    *,
    temp_dir: Path | None = None,
) -> dict[int, int]:
    """Members with a roster row, per plan year (reads two columns; the roster is checked
    where it is loaded; ids compared as they are typed)."""
    raw = scan_raw(path, encoding, temp_dir=temp_dir)
    member = source_column(raw, ROSTER, "psn_no", column_map)
    year = source_column(raw, ROSTER, "plan_year", column_map)
    if member is None or year is None:
        return {}
    return enrolled_counts(
        raw.select(
            pl.col(year).cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False),
            normalised_code(pl.col(member)),
        ).rename({year: "plan_year", member: "psn_no"})
    )


def enrolled_counts(roster: pl.DataFrame | pl.LazyFrame) -> dict[int, int]:
    """Distinct members per plan year of roster rows (psn_no, plan_year). Counts of rosters
    split by member add up (a run in buckets counts each roster part)."""
    counts = (
        roster.lazy()
        .select("plan_year", "psn_no")
        .drop_nulls()
        .group_by("plan_year")
        .agg(pl.col("psn_no").n_unique())
        .collect()
    )
    return {int(y): int(n) for y, n in counts.sort("plan_year").iter_rows()}


def load_lists(
    path: Path,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    *,
    timezone: str = DEFAULT_TIMEZONE,
    temp_dir: Path | None = None,
) -> pl.DataFrame:
    """Read and check the lists file: every entry with a readable validity window and codes
    without invisible characters (``timezone``, ``temp_dir``: see :func:`load_roster`)."""
    df = read_table(
        path, LISTS, column_map=column_map, encoding=encoding, timezone=timezone, temp_dir=temp_dir
    ).collect()
    backwards = df.filter(pl.col("valid_to") < pl.col("valid_from"))
    extra = [
        f"{path} row {r[ROW]}: list {r['list']} code {r['code']}: valid_to {r['valid_to']} is "
        f"before valid_from {r['valid_from']}"
        for r in backwards.head(_SHOW).iter_rows(named=True)
    ]
    _stop_on_errors(_messages(df) + extra, f"lists file {path}")
    return df.drop(ERRORS, FILE, ROW)
