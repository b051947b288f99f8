"""The in-memory stages of a batch: check an extract, run the engine on checked frames.

An in-memory run applies them to the whole batch; a bounded-memory run
(:mod:`hmb_batch.partitioned`) to one partition at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from hmb_batch.contracts import FEE_LINES, SETTLEMENTS
from hmb_batch.engine import PriorState, adjudicate
from hmb_batch.extract import Extract
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.reconcile import IDENTICAL_REPEAT, INPUT, component_sums
from hmb_batch.validation import (
    DETAIL,
    REASONS,
    absolute_total,
    batch_within_bounds,
    quarantine_frame,
    validate,
)


def collected(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    return [f.lazy() for f in pl.collect_all(frames)]


@dataclass(frozen=True)
class CheckedFrames:
    """An extract (or one partition of it) validated, in memory: what the engine reads."""

    settlements: pl.DataFrame  # with batch_seq and batch_id
    fee_lines: pl.DataFrame  # with batch_seq
    quarantine: pl.DataFrame
    settlements_in: int
    fee_lines_in: int
    identical_repeats: int
    repeated_fee_lines: int
    line_sums: pl.DataFrame  # input and identical-repeat totals per component (reconcile)
    absolute_fen: int = 0  # Σ |amount| over every money value read (see batch_within_bounds)


def check_extract(extract: Extract, batch_id: str) -> CheckedFrames:
    """Parse an extract once and validate it; validation and the engine then share the frames."""
    typed_settlements, typed_lines = pl.collect_all([extract.settlements, extract.fee_lines])
    absolute = absolute_total(typed_settlements, SETTLEMENTS) + absolute_total(
        typed_lines, FEE_LINES
    )
    batch_within_bounds(absolute)
    extract = replace(extract, settlements=typed_settlements.lazy(), fee_lines=typed_lines.lazy())
    checked = validate(extract, materialize=collected)
    settlements, fee_lines, quarantine, repeats, line_sums = pl.collect_all(
        [
            checked.settlements.with_columns(
                pl.lit(0, pl.Int64).alias("batch_seq"), pl.lit(batch_id).alias("batch_id")
            ),
            checked.fee_lines.with_columns(pl.lit(0, pl.Int64).alias("batch_seq")),
            checked.quarantine,
            checked.repeats.select(pl.col("dropped").sum().cast(pl.Int64).alias("n")),
            pl.concat(
                [
                    component_sums(typed_lines.lazy(), INPUT),
                    component_sums(checked.repeated_lines, IDENTICAL_REPEAT),
                ]
            ),
        ]
    )
    repeated = line_sums.filter(pl.col("disposition") == IDENTICAL_REPEAT)["lines"]
    return CheckedFrames(
        settlements,
        fee_lines,
        quarantine,
        typed_settlements.height,
        typed_lines.height,
        int(repeats["n"][0] or 0),
        int(repeated[0]) if len(repeated) else 0,
        line_sums,
        absolute,
    )


@dataclass(frozen=True)
class EngineFrames:
    """The engine's results for settlements of one batch (or one member partition), collected."""

    payouts: pl.DataFrame  # engine frame, fen
    quarantine: pl.DataFrame  # validation's and the engine's, with batch_id
    lines: pl.DataFrame  # fee-line audit (fen)
    costs: list[str]
    responsibilities: list[str]


def run_engine(
    batch_id: str,
    plan: PlanSelection,
    checked: CheckedFrames,
    roster: pl.DataFrame,
    lists: pl.DataFrame,
    prior: PriorState | None,
    years: list[int],
) -> EngineFrames:
    """Adjudicate checked settlements and put the engine's quarantine with validation's."""
    result = adjudicate(
        checked.settlements.lazy(),
        checked.fee_lines.lazy(),
        roster.lazy(),
        lists.lazy(),
        plan,
        prior,
        years=years,
        materialize=collected,
    )
    payouts, engine_q, lines_audit = pl.collect_all(
        [result.payouts, result.quarantine, result.lines]
    )
    quarantine = pl.concat(
        [
            checked.quarantine,
            quarantine_frame(
                engine_q.lazy(),
                checked.fee_lines.lazy().join(
                    engine_q.lazy().select("setl_id", REASONS, DETAIL), on="setl_id", how="inner"
                ),
            ).collect(),
        ],
        how="diagonal_relaxed",
    ).with_columns(pl.lit(batch_id).alias("batch_id"))
    return EngineFrames(payouts, quarantine, lines_audit, result.costs, result.responsibilities)
