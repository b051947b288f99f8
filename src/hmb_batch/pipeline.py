"""One batch end to end: read, validate, adjudicate, write. The CLI calls this and renders.

This is the orchestration edge: it does I/O and calls the pure core (validation, engine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from hmb_batch.engine import Adjudication, adjudicate, plan_years
from hmb_batch.errors import ConfigError
from hmb_batch.extract import read_extract
from hmb_batch.outputs import lines_frame, payouts_frame, write_csv, write_parquet
from hmb_batch.plan.catalog import select_plan
from hmb_batch.reference import load_lists, load_roster
from hmb_batch.summary import BatchSummary, summarise
from hmb_batch.validation import DETAIL, REASONS, quarantine_frame, validate


@dataclass(frozen=True)
class BatchInputs:
    """Everything a batch reads."""

    extract: Path
    fees: Path | None
    roster: Path
    lists: Path
    plan: str
    encoding: str = "utf-8"
    column_map: Mapping[str, str] | None = None
    batch_id: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """What a batch wrote and its summary."""

    summary: BatchSummary
    files: dict[str, Path]
    payouts: pl.DataFrame
    quarantine: pl.DataFrame


def content_hash(paths: list[Path]) -> str:
    """SHA-256 over the files' bytes, in order (identifies a batch's inputs)."""
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def default_batch_id(inputs: BatchInputs) -> str:
    """``<extract stem>-<first 12 hex of the inputs' content hash>``: same inputs, same id."""
    files = [inputs.extract] + ([inputs.fees] if inputs.fees else [])
    return f"{inputs.extract.stem}-{content_hash(files)[:12]}"


@dataclass(frozen=True)
class AdjudicatedBatch:
    """A batch read, validated and adjudicated (lazy), with its input counts."""

    result: Adjudication
    fee_lines: pl.LazyFrame
    validation_quarantine: pl.DataFrame
    batch_id: str
    shape: str
    editions: list[str]
    settlements_in: int
    fee_lines_in: int
    identical_repeats: int
    repeated_fee_lines: int


def adjudicate_batch(inputs: BatchInputs) -> AdjudicatedBatch:
    """Read, validate and adjudicate one batch; nothing is written."""
    cmap = inputs.column_map
    roster = load_roster(inputs.roster, cmap, inputs.encoding)
    lists = load_lists(inputs.lists, cmap, inputs.encoding)
    list_names = sorted(lists["list"].unique().to_list())
    plan = select_plan(inputs.plan, list_names)
    extract = read_extract(inputs.extract, inputs.fees, column_map=cmap, encoding=inputs.encoding)
    # Parse the files once; validation and the engine then work on the typed frames in memory.
    # (Bounded-memory streaming for province-scale extracts is issue 5.)
    typed_settlements, typed_lines = pl.collect_all([extract.settlements, extract.fee_lines])
    extract = replace(extract, settlements=typed_settlements.lazy(), fee_lines=typed_lines.lazy())
    checked = validate(extract)
    batch_id = inputs.batch_id or default_batch_id(inputs)
    # One pass over the inputs computes every validated table together (shared sub-plans);
    # the engine then reads them from memory instead of re-running validation per output.
    settlements, fee_lines_df, quarantine, counts = pl.collect_all(
        [
            checked.settlements.with_columns(
                pl.lit(0, pl.Int64).alias("batch_seq"), pl.lit(batch_id).alias("batch_id")
            ),
            checked.fee_lines.with_columns(pl.lit(0, pl.Int64).alias("batch_seq")),
            checked.quarantine,
            pl.concat(
                [
                    extract.settlements.select(pl.len().cast(pl.Int64).alias("n")),
                    extract.fee_lines.select(pl.len().cast(pl.Int64).alias("n")),
                    checked.repeats.select(pl.col("dropped").sum().cast(pl.Int64).alias("n")),
                    checked.repeated_lines.select(
                        pl.col("dropped").sum().cast(pl.Int64).alias("n")
                    ),
                ]
            ),
        ]
    )
    fee_lines = fee_lines_df.lazy()
    n_settlements, n_lines, n_repeats, n_repeated_lines = (
        int(x or 0) for x in counts["n"].to_list()
    )
    years = plan_years(settlements, None)
    uncovered = [y for y in years if plan.for_year(y) is None]
    if uncovered and len(uncovered) == len(years):
        raise ConfigError(
            f"plan {plan.label} has no edition for plan year(s) {uncovered} "
            f"(it covers {plan.years}); give --plan with an edition id or file to apply one "
            "edition to every year"
        )
    result = adjudicate(
        settlements.lazy(), fee_lines, roster.lazy(), lists.lazy(), plan, years=years
    )
    return AdjudicatedBatch(
        result=result,
        fee_lines=fee_lines,
        validation_quarantine=quarantine,
        batch_id=batch_id,
        shape=extract.shape,
        editions=sorted({e.id for y in years if (e := plan.for_year(y)) is not None}),
        settlements_in=n_settlements,
        fee_lines_in=n_lines,
        identical_repeats=n_repeats,
        repeated_fee_lines=n_repeated_lines,
    )


def run_batch(inputs: BatchInputs, out_dir: Path, *, csv: bool = False) -> BatchResult:
    """Adjudicate one batch and write its files into ``out_dir``."""
    batch = adjudicate_batch(inputs)
    result = batch.result
    payouts, engine_q_df, lines_audit = pl.collect_all(
        [result.payouts, result.quarantine, result.lines]
    )
    engine_q = engine_q_df.lazy()
    quarantine = pl.concat(
        [
            batch.validation_quarantine,
            quarantine_frame(
                engine_q,
                batch.fee_lines.join(
                    engine_q.select("setl_id", REASONS, DETAIL), on="setl_id", how="inner"
                ),
            ).collect(),
        ],
        how="diagonal_relaxed",
    ).with_columns(pl.lit(batch.batch_id).alias("batch_id"))
    summary = summarise(
        batch_id=batch.batch_id,
        editions=batch.editions,
        shape=batch.shape,
        settlements_in=batch.settlements_in,
        fee_lines_in=batch.fee_lines_in,
        identical_repeats=batch.identical_repeats,
        repeated_fee_lines=batch.repeated_fee_lines,
        payouts=payouts,
        quarantine=quarantine,
    )
    payout_file = payouts_frame(payouts, result.costs, result.responsibilities)
    files = {
        "payouts": out_dir / "payouts.parquet",
        "quarantine": out_dir / "quarantine.parquet",
        "lines": out_dir / "lines.parquet",
    }
    write_parquet(payout_file, files["payouts"])
    write_parquet(quarantine, files["quarantine"])
    write_parquet(lines_frame(lines_audit), files["lines"])
    if csv:
        files["payouts_csv"] = out_dir / "payouts.csv"
        write_csv(payout_file, files["payouts_csv"])
    return BatchResult(summary, files, payout_file, quarantine)
