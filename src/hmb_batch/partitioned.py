"""Bounded-memory runs: a batch too big for the memory limit, adjudicated in partitions.

An in-memory run holds about :data:`BYTES_PER_FEE_LINE` of memory per fee line. When a batch would
need more than ``--memory-limit``, it is split into N partitions sized to fit, in streaming passes
over temporary Parquet files (the spill folder), and no step holds more than one partition:

1. the roster is streamed into N parts by a hash of ``psn_no`` and checked part by part (a member's
   rows are all in one part, so duplicate rows are still found);
2. the extract is streamed, typed, into N parts by a hash of ``setl_id`` (stage A): validation is
   settlement-local, so each part is validated on its own; the checked settlements and their fee
   lines are written again, tagged with their member's part;
3. each member part (stage B) holds every settlement of its members, so the engine adjudicates it
   exactly as an in-memory run would — reversals, the year to date and the ledger's prior state
   are all per member — and its payouts, audit, quarantine and ledger rows go to part files;
4. the output files are assembled from the parts (the payout file sorted by DuckDB within its own
   memory limit, spilling to disk), the summary is aggregated from them, and the ledger reads its
   rows from the part files inside one transaction.

The results equal an in-memory run's (tested); the line audit comes in member-part order.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from hmb_batch.contracts import ROSTER
from hmb_batch.engine import PriorState, cost_ids, plan_years, responsibility_ids
from hmb_batch.errors import ConfigError, HmbError
from hmb_batch.extract import (
    Extract,
    detect_format,
    distinct_headers,
    read_extract,
    read_table,
)
from hmb_batch.ledger import BATCH_TABLES, batch_rows
from hmb_batch.outputs import lines_frame, payouts_frame, to_text
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.reference import roster_frame, roster_problems, stop_on_roster_problems
from hmb_batch.stages import CheckedFrames, check_extract, run_engine

MiB = 1 << 20
GiB = 1 << 30
# Peak resident memory per fee line of an in-memory run, measured (BENCHMARKS.md: 11.3 GB at
# 10M lines), and what any run holds before its first line (interpreter, Polars, DuckDB).
BYTES_PER_FEE_LINE = 1_200
RUNTIME_BYTES = 320 * MiB
MIN_PARTITION_BYTES = 64 * MiB
# A CSV fee line is ~130-160 bytes; a low guess means more lines, so more (smaller) partitions.
CSV_BYTES_PER_LINE = 100
PART = "_part"
_SEED = 0x484D42  # any fixed seed: partitions only need to agree within one run


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


def _part_of(column: str, n: int) -> pl.Expr:
    return (pl.col(column).hash(seed=_SEED) % n).cast(pl.UInt32).alias(PART)


def _sink_parts(frames: dict[Path, pl.LazyFrame]) -> None:
    """Stream each frame into hive parts ``folder/_part=K/*.parquet`` in one pass."""
    pl.collect_all(
        [
            frame.sink_parquet(
                pl.PartitionBy(folder, key=PART, include_key=False), mkdir=True, lazy=True
            )
            for folder, frame in frames.items()
        ]
    )


def _part(folder: Path, k: int) -> pl.LazyFrame | None:
    files = sorted((folder / f"{PART}={k}").glob("*.parquet"))
    return pl.scan_parquet(files) if files else None


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
    max_setl_time: dt.datetime | None = None


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
) -> StagedBatch:
    """Roster and extract into partitions (steps 1 and 2 of the module docstring)."""
    n = partitions
    typed_roster = read_table(roster, ROSTER, column_map=column_map, encoding=encoding)
    _sink_parts({folder / "roster": typed_roster.with_columns(_part_of("psn_no", n))})
    problems: list[str] = []
    for j in range(n):
        part = _part(folder / "roster", j)
        if part is not None:
            problems += roster_problems(part.collect(), roster)
    stop_on_roster_problems(problems, roster)

    extract = read_extract(
        extract_files, fee_files or None, column_map=column_map, encoding=encoding, distinct=False
    )
    _sink_parts(
        {
            folder / "a-settlements": extract.settlements.with_columns(_part_of("setl_id", n)),
            folder / "a-lines": extract.fee_lines.with_columns(_part_of("setl_id", n)),
        }
    )
    staged = StagedBatch(
        folder, n, extract.shape, roster_frame(typed_roster.limit(0).collect()).schema
    )
    s_schema = extract.settlements.collect_schema()
    l_schema = extract.fee_lines.collect_schema()
    for sub in ("b-settlements", "b-lines", "quarantine"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        settlements = _part(folder / "a-settlements", k)
        lines = _part(folder / "a-lines", k)
        if settlements is None and lines is None:
            continue
        settlements = settlements if settlements is not None else _empty(s_schema)
        if extract.shape == "wide":
            settlements = distinct_headers(settlements)
        checked = check_extract(
            Extract(
                settlements,
                lines if lines is not None else _empty(l_schema),
                extract.shape,
                extract.files,
            ),
            batch_id,
        )
        staged.settlements_in += checked.settlements_in
        staged.fee_lines_in += checked.fee_lines_in
        staged.identical_repeats += checked.identical_repeats
        staged.repeated_fee_lines += checked.repeated_fee_lines
        s = checked.settlements.with_columns(_part_of("psn_no", n))
        if s.height:
            staged.years |= set(plan_years(s, None))
            latest = s["setl_time"].max()
            if staged.max_setl_time is None or latest > staged.max_setl_time:  # type: ignore[operator]
                staged.max_setl_time = latest  # type: ignore[assignment]
        lines_out = checked.fee_lines.join(s.select("setl_id", PART), on="setl_id", how="inner")
        if lines_out.height != checked.fee_lines.height:
            raise HmbError(  # validation passes only lines of valid settlements; guard it
                f"internal error: {checked.fee_lines.height - lines_out.height} checked fee "
                f"line(s) of partition {k} have no checked settlement; nothing was applied"
            )
        _write_by_part(s, folder / "b-settlements" / f"{k}.parquet", n)
        _write_by_part(lines_out, folder / "b-lines" / f"{k}.parquet", n)
        checked.quarantine.with_columns(pl.lit(batch_id).alias("batch_id")).write_parquet(
            folder / "quarantine" / f"a-{k}.parquet"
        )
    return staged


def _write_by_part(frame: pl.DataFrame, path: Path, n: int) -> None:
    """Sorted by member part, about one row group per part: stage B's filter on the part then
    reads only its own row groups (Parquet statistics)."""
    rows = max(1, math.ceil(frame.height / n))
    frame.sort(PART).write_parquet(path, row_group_size=rows, statistics=True)


def _member_part(folder: Path, j: int) -> pl.DataFrame:
    return pl.scan_parquet(folder / "*.parquet").filter(pl.col(PART) == j).drop(PART).collect()


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
) -> PartitionedOutcome:
    """Adjudicate each member part, then assemble the outputs (steps 3 and 4).

    ``prior_for``: the ledger's prior state for a part's settlements (None without a ledger).
    """
    folder = staged.folder
    costs = cost_ids(plan)
    responsibilities = responsibility_ids(plan)
    subs = ["payouts", "payout-file", "lines"] + [f"ledger-{t}" for t in BATCH_TABLES[:-1]]
    for sub in subs:
        (folder / sub).mkdir(exist_ok=True)
    years_seen = set(staged.years)
    no_quarantine = pl.DataFrame()
    for j in range(staged.partitions):
        settlements = _member_part(folder / "b-settlements", j)
        if settlements.height == 0:
            continue  # stage A writes a part's lines only with their settlements
        lines = _member_part(folder / "b-lines", j)
        roster_part = _part(folder / "roster", j)
        roster = (
            roster_frame(roster_part.collect())
            if roster_part is not None
            else pl.DataFrame(schema=staged.roster_schema)
        )
        prior = prior_for(settlements)
        years = sorted(staged.years | set(plan_years(settlements, prior)))
        years_seen |= set(years)
        done = run_engine(
            batch_id,
            plan,
            CheckedFrames(settlements, lines, no_quarantine, 0, 0, 0, 0),
            roster,
            lists,
            prior,
            years,
        )
        name = f"{j}.parquet"
        done.payouts.write_parquet(folder / "payouts" / name)
        payouts_frame(done.payouts, costs, responsibilities).write_parquet(
            folder / "payout-file" / name
        )
        lines_frame(done.lines).write_parquet(folder / "lines" / name)
        done.quarantine.write_parquet(folder / "quarantine" / f"b-{j}.parquet")
        if with_ledger:
            before = (
                prior.accumulators.collect()
                if prior is not None
                else PriorState.empty(costs).accumulators.collect()
            )
            for table, rows in batch_rows(batch_id, done.payouts, before, costs).items():
                rows.write_parquet(folder / f"ledger-{table}" / name)
    if not any((folder / "payouts").iterdir()):  # an empty batch: parts with the right columns
        empty = run_engine(
            batch_id,
            plan,
            CheckedFrames(
                pl.DataFrame(schema=pl.read_parquet_schema(_any(folder / "b-settlements"))).drop(
                    PART
                ),
                pl.DataFrame(schema=pl.read_parquet_schema(_any(folder / "b-lines"))).drop(PART),
                no_quarantine,
                0,
                0,
                0,
                0,
            ),
            pl.DataFrame(schema=staged.roster_schema),
            lists,
            None,
            sorted(staged.years),
        )
        empty.payouts.write_parquet(folder / "payouts" / "0.parquet")
        payouts_frame(empty.payouts, costs, responsibilities).write_parquet(
            folder / "payout-file" / "0.parquet"
        )
        lines_frame(empty.lines).write_parquet(folder / "lines" / "0.parquet")
        if with_ledger:
            before = PriorState.empty(costs).accumulators.collect()
            for table, rows in batch_rows(batch_id, empty.payouts, before, costs).items():
                rows.write_parquet(folder / f"ledger-{table}" / "0.parquet")

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
    quarantine.sink_parquet(files["quarantine.parquet"])
    pl.scan_parquet(folder / "lines" / "*.parquet").sink_parquet(files["lines.parquet"])
    if csv:
        files["payouts.csv"] = out / "payouts.csv"
        to_text(pl.scan_parquet(files["payouts.parquet"]), responsibilities).sink_csv(
            files["payouts.csv"]
        )
    return PartitionedOutcome(
        payouts=pl.scan_parquet(folder / "payouts" / "*.parquet"),
        quarantine=pl.scan_parquet(files["quarantine.parquet"]),
        files=files,
        ledger_rows={t: str(folder / f"ledger-{t}" / "*.parquet") for t in BATCH_TABLES[:-1]},
        years=sorted(years_seen),
        costs=costs,
    )


def _any(folder: Path) -> Path:
    return next(iter(sorted(folder.glob("*.parquet"))))


def _sorted_payout_file(parts: Path, target: Path, memory_limit: int, folder: Path) -> None:
    """The payout file in processing order, as an in-memory run writes it: DuckDB sorts the
    parts within half the memory limit, spilling to the spill folder."""
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{max(memory_limit // 2 // MiB, 64)}MiB'")
        con.execute(f"SET temp_directory = '{folder / 'duckdb-spill'}'")
        con.execute("SET preserve_insertion_order = true")
        src = str(parts / "*.parquet").replace("'", "''")
        dst = str(target).replace("'", "''")
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{src}') ORDER BY setl_time, setl_id) "
            f"TO '{dst}' (FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        con.close()
