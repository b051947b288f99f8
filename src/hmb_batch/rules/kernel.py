"""The kernel: one bucket of a batch's members through every rule, frames in, frames out.

A batch is cut into buckets by a hash of the member (one bucket when it fits the memory budget:
every nightly run); each bucket goes through :func:`adjudicate_bucket`:

    validate -> sequence -> eligibility -> costs -> year to date -> benefits

giving the bucket's payouts, payout-file rows, fee-line audit, quarantine, ledger rows and
reconciliation totals. It is pure: no I/O, no global state, the same frames in give the same
frames out, so a bucket can run in this process, another process, or on a cluster's worker. The
orchestration (:mod:`hmb_batch.run.batch`) reads the buckets, the ledger's prior state for each,
and writes the results.

Why a bucket is a set of members: every rule after validation is per member and plan year (the
year to date, reversals against the member's own settlements), and validation is per settlement,
whose rows and fee lines all go to its member's bucket.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import polars as pl

from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS
from hmb_batch.io.extract import FILE, ROW, Extract
from hmb_batch.io.outputs import lines_frame, masked_personal, payouts_frame
from hmb_batch.ledger.store import batch_rows
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.rules.engine import PriorState, adjudicate, cost_ids, plan_years, responsibility_ids
from hmb_batch.rules.reconcile import (
    IDENTICAL_REPEAT,
    INPUT,
    AfterExpectation,
    Totals,
    batch_totals,
    component_sums,
)
from hmb_batch.rules.validation import (
    DETAIL,
    IS_REVERSAL,
    REASONS,
    RECORD,
    absolute_total,
    batch_within_bounds,
    keys_unique,
    quarantine_frame,
    validate,
)

# A bucket is in memory already (its frames come in collected, sized by the run's memory
# budget), so the streaming engine's bounded memory buys nothing here, and its start-up per
# query (dozens per bucket) and its morsel pipelines cost more than the in-memory engine's
# plans (BENCHMARKS.md: the kernel on one bucket, engine against engine).
ENGINE: Final = "in-memory"


def collected(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    return [f.lazy() for f in pl.collect_all(frames)]


@dataclass(frozen=True)
class CheckedFrames:
    """An extract (or one bucket of it) validated, in memory: what the engine reads."""

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
    checked = validate(
        extract, materialize=collected, unique=keys_unique(typed_settlements, typed_lines)
    )
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
    """The engine's results for one bucket, collected (money in fen)."""

    payouts: pl.DataFrame  # one row per adjudicated settlement (in no particular order)
    quarantine: pl.DataFrame  # validation's and the engine's, with batch_id
    lines: pl.DataFrame  # the fee-line audit


def run_engine(
    batch_id: str,
    plan: PlanSelection,
    checked: CheckedFrames,
    roster: pl.DataFrame,
    lists: pl.DataFrame,
    prior: PriorState | None,
    years: list[int],
) -> EngineFrames:
    """Adjudicate checked settlements (sequence, eligibility, costs, year to date, benefits) and
    put the engine's quarantine, with the fee lines of the settlements it rejected, after
    validation's."""
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
    # the streaming engine keeps no row order through joins and group-bys: the payout file is
    # sorted where it is assembled, the (small) quarantine below; the line audit is a set
    # (sorting 10M lines by their string keys cost more than writing them)
    payouts, engine_q, audit = pl.collect_all([result.payouts, result.quarantine, result.lines])
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
    order = [c for c in (RECORD, FILE, ROW, "setl_id", "feedetl_sn") if c in quarantine.columns]
    quarantine = quarantine.sort(order, nulls_last=True, maintain_order=True)
    return EngineFrames(payouts, quarantine, audit)


def _touched(prior: PriorState, settlements: pl.DataFrame) -> PriorState:
    """The prior state of the valid settlements only: the caller reads it for every row of the
    bucket, and a quarantined row naming an old settlement must not add its plan year."""
    ids = pl.concat(
        [settlements.select("setl_id"), settlements.select(pl.col("init_setl_id").alias("setl_id"))]
    ).drop_nulls()
    registry = prior.registry.join(ids.lazy(), on="setl_id", how="semi")
    members = pl.concat([settlements.lazy().select("psn_no"), registry.select("psn_no")])
    return PriorState(registry, prior.accumulators.join(members, on="psn_no", how="semi"))


@dataclass(frozen=True)
class Bucket:
    """One bucket's inputs: its members' typed settlement rows and fee lines (not yet validated),
    their checked roster rows, the ledger's prior state for them (None: no ledger)."""

    settlements: pl.DataFrame
    fee_lines: pl.DataFrame
    roster: pl.DataFrame
    prior: PriorState | None = None


@dataclass(frozen=True)
class BucketResult:
    """What one bucket gives: frames for the output files and the ledger, and its totals.

    ``payouts``: the engine's frame (fen), in no particular order;
    ``payout_file``, ``lines``, ``quarantine``: the rows of payouts.parquet, lines.parquet and
    quarantine.parquet (personal data masked unless asked); ``ledger_rows``: what the ledger
    inserts (None without a ledger); ``totals``: the reconciliation's sums; ``after``: what the
    ledger must hold after the commit for these members.
    """

    payouts: pl.DataFrame
    payout_file: pl.DataFrame
    lines: pl.DataFrame
    quarantine: pl.DataFrame
    ledger_rows: dict[str, pl.DataFrame] | None
    totals: Totals
    after: AfterExpectation | None
    settlements_in: int
    fee_lines_in: int
    identical_repeats: int
    repeated_fee_lines: int
    absolute_fen: int
    years: list[int]  # plan years of the bucket (and of its prior registry)
    claim_years: list[int]  # plan years of its valid non-reversals
    latest: dt.datetime | None  # its latest valid setl_time


def adjudicate_bucket(
    bucket: Bucket,
    *,
    plan: PlanSelection,
    lists: pl.DataFrame,
    batch_id: str,
    shape: str,
    files: tuple[Path, ...] = (),
    unmasked: bool = False,
) -> BucketResult:
    """Validate and adjudicate one bucket of members (see the module docstring).

    ``shape``: the extract's shape ('two-file' or 'wide'); ``files``: the input files (named in
    messages). Raises :class:`hmb_batch.errors.InputError` when the bucket's amounts are beyond
    what the engine can add up (see :func:`hmb_batch.rules.validation.batch_within_bounds`).

    The bucket's queries run on Polars' in-memory engine (:data:`ENGINE`), set for the call
    and restored after it.
    """
    with pl.Config(set_engine_affinity=ENGINE):
        checked = check_extract(
            Extract(
                bucket.settlements.lazy(),
                bucket.fee_lines.lazy(),
                shape,
                files,
            ),
            batch_id,
        )
        prior = _touched(bucket.prior, checked.settlements) if bucket.prior is not None else None
        costs = cost_ids(plan)
        responsibilities = responsibility_ids(plan)
        years = plan_years(checked.settlements, prior)
        done = run_engine(batch_id, plan, checked, bucket.roster, lists, prior, years)
        payouts, audit, quarantine = done.payouts, done.lines, done.quarantine
        rows = None
        if prior is not None:
            rows = batch_rows(batch_id, payouts, prior.accumulators.collect(), costs)
        totals = batch_totals(
            plan=plan,
            line_sums=checked.line_sums,
            fee_lines=checked.fee_lines.lazy(),
            settlements=checked.settlements.lazy(),
            roster=bucket.roster.lazy(),
            payouts=payouts.lazy(),
            audit=audit.lazy(),
            quarantine=quarantine.lazy(),
            prior=prior,
            accumulator_log=rows["accumulator_log"].lazy() if rows is not None else None,
            costs=costs,
        )
        valid = checked.settlements
        claims = valid.filter(~pl.col(IS_REVERSAL))
        latest = valid["setl_time"].max() if valid.height else None
        return BucketResult(
            payouts=payouts,
            payout_file=payouts_frame(payouts, costs, responsibilities, unmasked=unmasked),
            lines=lines_frame(audit),
            quarantine=masked_personal(quarantine, unmasked=unmasked),
            ledger_rows=rows,
            totals=totals,
            after=AfterExpectation.of(payouts, prior, costs) if prior is not None else None,
            settlements_in=checked.settlements_in,
            fee_lines_in=checked.fee_lines_in,
            identical_repeats=checked.identical_repeats,
            repeated_fee_lines=checked.repeated_fee_lines,
            absolute_fen=checked.absolute_fen,
            years=years,
            claim_years=plan_years(claims, None),
            latest=latest,  # type: ignore[arg-type]
        )
