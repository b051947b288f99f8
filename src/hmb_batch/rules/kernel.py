"""The kernel: a batch's settlements through every rule, frames in, frames out.

Three stages, each a pure function (no I/O, no global state: the same frames in give the same
frames out), so that each can run in this process, another process, or on a cluster's worker:

1. :func:`adjudicate_lines`, per part of whole settlements (every row and fee line of each
   setl_id): validate, then the line rules (lists at the fee date, what each cost counts of
   each line), giving each accepted settlement's facts and the fee-line audit as if no
   settlement were denied;
2. :func:`adjudicate_members`, per bucket of members, on the facts alone:
   sequence -> eligibility -> costs -> year to date -> benefits, giving the payouts, the
   payout-file rows, the ledger rows and the reconciliation's settlement and batch totals;
3. :func:`settle_audit`, per part again: the member stage's denials and quarantine applied to
   the part's audit (a denied settlement's lines count nothing; a quarantined one's go to
   quarantine with it).

Why these cuts: validation is per settlement, and so is every line rule (a line and its
settlement's header); every rule after them is per member and plan year (the year to date,
reversals against the member's own settlements), and reads a settlement's facts, not its
lines. :func:`adjudicate_bucket` runs the three on one bucket held whole. The orchestration
(:mod:`hmb_batch.run.batch`) reads the parts and buckets, the ledger's prior state for each
bucket, and writes the results.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS, Contract
from hmb_batch.io.extract import FILE, ROW, Extract, type_table
from hmb_batch.io.outputs import lines_frame, masked_personal, payouts_frame
from hmb_batch.ledger.store import batch_rows
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.rules.engine import (
    ENGINE,
    PriorState,
    adjudicate_settlements,
    cost_ids,
    line_facts,
    plan_years,
    responsibility_ids,
    settled_audit,
)
from hmb_batch.rules.reconcile import (
    IDENTICAL_REPEAT,
    INPUT,
    AfterExpectation,
    Totals,
    combine,
    component_sums,
    line_totals,
    member_totals,
)
from hmb_batch.rules.validation import (
    DETAIL,
    IS_REVERSAL,
    REASONS,
    RECORD,
    absolute_total,
    batch_within_bounds,
    keys_unique,
    line_records,
    quarantine_frame,
    settlement_records,
    validate,
)


def collected(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    return [f.lazy() for f in pl.collect_all(frames, engine=ENGINE)]


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
    # one chunk per column: a part is read from many files, and a frame chunked other than
    # the columns joined to it is copied whole to realign them by every filter and join
    typed_settlements, typed_lines = (
        frame.rechunk()
        for frame in pl.collect_all([extract.settlements, extract.fee_lines], engine=ENGINE)
    )
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
        ],
        engine=ENGINE,
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


def _touched(prior: PriorState, settlements: pl.DataFrame) -> PriorState:
    """The prior state of the valid settlements only: the caller reads it for every row of the
    bucket, and a quarantined row naming an old settlement must not add its plan year."""
    ids = pl.concat(
        [settlements.select("setl_id"), settlements.select(pl.col("init_setl_id").alias("setl_id"))]
    ).drop_nulls()
    registry = prior.registry.join(ids.lazy(), on="setl_id", how="semi")
    members = pl.concat([settlements.lazy().select("psn_no"), registry.select("psn_no")])
    return PriorState(registry, prior.accumulators.join(members, on="psn_no", how="semi"))


@functools.cache
def _no_records() -> pl.DataFrame:
    """A quarantine with no rows and every column a record may have (whichever stage gives it,
    a bucket's quarantine has these columns, so the buckets' rows go into one file as is)."""

    def typed(contract: Contract) -> pl.LazyFrame:
        empty = pl.LazyFrame(schema={ROW: pl.UInt32, FILE: pl.Categorical})
        return type_table(empty, contract, require=False).with_columns(
            pl.lit(None, pl.List(pl.String)).alias(REASONS), pl.lit(None, pl.String).alias(DETAIL)
        )

    return quarantine_frame(typed(SETTLEMENTS), typed(FEE_LINES)).collect(engine=ENGINE)


def _sorted_quarantine(frames: list[pl.DataFrame], batch_id: str) -> pl.DataFrame:
    quarantine = pl.concat([_no_records(), *frames], how="diagonal_relaxed").with_columns(
        pl.lit(batch_id).alias("batch_id")
    )
    order = [c for c in (RECORD, FILE, ROW, "setl_id", "feedetl_sn") if c in quarantine.columns]
    return quarantine.sort(order, nulls_last=True, maintain_order=True)


# --- 1. the lines: validation and the line rules, per part of whole settlements ------------


@dataclass(frozen=True)
class LinePart:
    """Whole settlements of a batch: every settlement row and fee line of each of its setl_ids
    (typed, not yet validated). A part is cut by a hash of setl_id, or is the whole batch."""

    settlements: pl.DataFrame
    fee_lines: pl.DataFrame


@dataclass(frozen=True)
class LineResult:
    """What a part's lines give: the accepted settlements with their line facts (what the
    member stage reads), the fee-line audit as if no settlement were denied (settled by
    :func:`settle_audit`), validation's quarantine, the line totals and the counts."""

    facts: pl.DataFrame
    audit: pl.DataFrame
    quarantine: pl.DataFrame
    totals: Totals
    settlements_in: int
    fee_lines_in: int
    identical_repeats: int
    repeated_fee_lines: int
    absolute_fen: int


def adjudicate_lines(
    part: LinePart,
    *,
    plan: PlanSelection,
    lists: pl.DataFrame,
    batch_id: str,
    shape: str,
    files: tuple[Path, ...] = (),
    unmasked: bool = False,
) -> LineResult:
    """Validate a part's settlements and run their fee lines through the line rules.

    ``shape``: the extract's shape ('two-file' or 'wide'); ``files``: the input files (named in
    messages). Raises :class:`hmb_batch.errors.InputError` when the part's amounts are beyond
    what the engine can add up (see :func:`hmb_batch.rules.validation.batch_within_bounds`).
    """
    checked = check_extract(
        Extract(part.settlements.lazy(), part.fee_lines.lazy(), shape, files), batch_id
    )
    years = plan_years(checked.settlements, None)
    facts, audit = line_facts(
        checked.settlements.lazy(),
        checked.fee_lines.lazy(),
        lists.lazy(),
        plan,
        years=years,
        materialize=collected,
    )
    facts_df, audit_df = pl.collect_all([facts, audit], engine=ENGINE)
    quarantine = _sorted_quarantine([checked.quarantine], batch_id)
    return LineResult(
        facts=facts_df,
        audit=audit_df,
        quarantine=masked_personal(quarantine, unmasked=unmasked),
        totals=line_totals(quarantine=quarantine.lazy(), line_sums=checked.line_sums),
        settlements_in=checked.settlements_in,
        fee_lines_in=checked.fee_lines_in,
        identical_repeats=checked.identical_repeats,
        repeated_fee_lines=checked.repeated_fee_lines,
        absolute_fen=checked.absolute_fen,
    )


# --- 2. the members: eligibility, costs, year to date, benefits, per bucket of members ------


@dataclass(frozen=True)
class MemberBucket:
    """A bucket of members: their settlements' facts (:attr:`LineResult.facts` of every part,
    the rows of these members), their checked roster rows, the ledger's prior state for them
    (None: no ledger)."""

    facts: pl.DataFrame
    roster: pl.DataFrame
    prior: PriorState | None = None


@dataclass(frozen=True)
class MemberResult:
    """What a bucket of members gives.

    ``payouts``: the engine's frame (fen), in no particular order; ``payout_file`` and
    ``quarantine``: rows of payouts.parquet and quarantine.parquet (the settlements the engine
    quarantined; personal data masked unless asked); ``ledger_rows``: what the ledger inserts
    (None without a ledger); ``totals``: the reconciliation's sums; ``after``: what the ledger
    must hold after the commit for these members; ``denied`` and ``removed``: the settlements
    whose fee-line audit changes (:func:`settle_audit`), ``removed`` with the reasons and detail
    their lines are quarantined with.
    """

    payouts: pl.DataFrame
    payout_file: pl.DataFrame
    quarantine: pl.DataFrame
    ledger_rows: dict[str, pl.DataFrame] | None
    totals: Totals
    after: AfterExpectation | None
    denied: pl.DataFrame
    removed: pl.DataFrame
    years: list[int]  # plan years of the bucket (and of its prior registry)
    claim_years: list[int]  # plan years of its valid non-reversals
    latest: dt.datetime | None  # its latest valid setl_time


SETTLEMENT_KEY = ["setl_id", "batch_seq"]


def adjudicate_members(
    bucket: MemberBucket,
    *,
    plan: PlanSelection,
    batch_id: str,
    unmasked: bool = False,
) -> MemberResult:
    """Adjudicate a bucket of members' settlements from their facts (see the module
    docstring): sequence, eligibility, costs, year to date, benefits."""
    # one chunk per column: a bucket's facts come from many files, and the columns the
    # engine adds are single chunks; a frame whose columns are chunked differently is
    # copied whole to realign them by every filter and join that reads it
    valid = bucket.facts.rechunk()
    roster = bucket.roster.rechunk()
    prior = None
    if bucket.prior is not None:
        # computed once: the engine, the ledger rows and the totals each read it
        touched = _touched(bucket.prior, valid)
        prior = PriorState(*collected([touched.registry, touched.accumulators]))
    costs = cost_ids(plan)
    responsibilities = responsibility_ids(plan)
    years = plan_years(valid, prior)
    result = adjudicate_settlements(
        valid.lazy(), roster.lazy(), plan, prior, years=years, materialize=collected
    )
    payouts, engine_q = pl.collect_all([result.payouts, result.quarantine], engine=ENGINE)
    quarantine = _sorted_quarantine(
        [settlement_records(engine_q.lazy()).collect(engine=ENGINE)], batch_id
    )
    rows = None
    if prior is not None:
        rows = batch_rows(batch_id, payouts, prior.accumulators.collect(engine=ENGINE), costs)
    totals = member_totals(
        plan=plan,
        facts=valid.lazy(),
        roster=roster.lazy(),
        payouts=payouts.lazy(),
        prior=prior,
        accumulator_log=rows["accumulator_log"].lazy() if rows is not None else None,
        costs=costs,
    )
    # lazy: only the columns read are filtered, not the whole facts
    claims = valid.lazy().filter(~pl.col(IS_REVERSAL))
    latest = valid["setl_time"].max() if valid.height else None
    return MemberResult(
        payouts=payouts,
        payout_file=payouts_frame(payouts, costs, responsibilities, unmasked=unmasked),
        quarantine=masked_personal(quarantine, unmasked=unmasked),
        ledger_rows=rows,
        totals=totals,
        after=AfterExpectation.of(payouts, prior, costs) if prior is not None else None,
        denied=payouts.lazy()
        .filter(pl.col("status") == "denied")
        .select(SETTLEMENT_KEY)
        .collect(engine=ENGINE),
        removed=engine_q.select(*SETTLEMENT_KEY, REASONS, DETAIL),
        years=years,
        claim_years=plan_years(claims, None),
        latest=latest,  # type: ignore[arg-type]
    )


# --- 3. the audit settled: denials and the engine's quarantine, per part of whole settlements


@dataclass(frozen=True)
class SettledLines:
    """A part's fee-line audit once its settlements are decided: rows of lines.parquet, the
    fee lines quarantined with the settlements the engine quarantined, and their totals."""

    lines: pl.DataFrame
    quarantine: pl.DataFrame
    totals: Totals


def settle_audit(
    audit: pl.DataFrame,
    fee_lines: pl.DataFrame,
    denied: pl.DataFrame,
    removed: pl.DataFrame,
    *,
    plan: PlanSelection,
    batch_id: str,
    unmasked: bool = False,
) -> SettledLines:
    """Settle a part's audit (:attr:`LineResult.audit`) with the member stage's decisions.

    ``fee_lines``: the part's typed fee lines as read (only those of ``removed`` settlements
    are read: they go to quarantine, one copy of an identical repeat); ``denied`` and
    ``removed``: from :class:`MemberResult` (any settlements; those of other parts match none
    of this part's lines).
    """
    settled = settled_audit(audit.lazy(), denied, removed, plan).collect(engine=ENGINE)
    quarantine = _sorted_quarantine([], batch_id)
    # a removed settlement was accepted by validation: its lines are the part's lines of
    # its setl_id, one copy of each identical repeat
    lines = fee_lines.join(removed.select("setl_id"), on="setl_id", how="semi")
    if lines.height:
        lines = lines.unique(["setl_id", "feedetl_sn"], keep="first", maintain_order=True)
        why = removed.lazy().select("setl_id", REASONS, DETAIL).unique("setl_id")
        quarantine = _sorted_quarantine(
            [line_records(lines.lazy().join(why, on="setl_id")).collect(engine=ENGINE)],
            batch_id,
        )
    totals = line_totals(quarantine=quarantine.lazy(), audit=settled.lazy())
    return SettledLines(
        lines_frame(settled), masked_personal(quarantine, unmasked=unmasked), totals
    )


# --- one bucket of members, whole: the three stages in turn -------------------------------


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
    """Validate and adjudicate one bucket of members whole: :func:`adjudicate_lines`, then
    :func:`adjudicate_members`, then :func:`settle_audit` (see the module docstring).

    ``shape``: the extract's shape ('two-file' or 'wide'); ``files``: the input files (named in
    messages). Raises :class:`hmb_batch.errors.InputError` when the bucket's amounts are beyond
    what the engine can add up (see :func:`hmb_batch.rules.validation.batch_within_bounds`).
    """
    lined = adjudicate_lines(
        LinePart(bucket.settlements, bucket.fee_lines),
        plan=plan,
        lists=lists,
        batch_id=batch_id,
        shape=shape,
        files=files,
        unmasked=unmasked,
    )
    members = adjudicate_members(
        MemberBucket(lined.facts, bucket.roster, bucket.prior),
        plan=plan,
        batch_id=batch_id,
        unmasked=unmasked,
    )
    settled = settle_audit(
        lined.audit,
        bucket.fee_lines,
        members.denied,
        members.removed,
        plan=plan,
        batch_id=batch_id,
        unmasked=unmasked,
    )
    return BucketResult(
        payouts=members.payouts,
        payout_file=members.payout_file,
        lines=settled.lines,
        quarantine=_sorted_quarantine(
            [lined.quarantine, members.quarantine, settled.quarantine], batch_id
        ),
        ledger_rows=members.ledger_rows,
        totals=combine([lined.totals, members.totals, settled.totals]),
        after=members.after,
        settlements_in=lined.settlements_in,
        fee_lines_in=lined.fee_lines_in,
        identical_repeats=lined.identical_repeats,
        repeated_fee_lines=lined.repeated_fee_lines,
        absolute_fen=lined.absolute_fen,
        years=members.years,
        claim_years=members.claim_years,
        latest=members.latest,
    )


def payout_between(states: pl.DataFrame, plan: PlanSelection, costs: list[str]) -> pl.DataFrame:
    """What each member-year is paid for moving from one year to date to another, under
    ``plan``: ``B(end) − B(start)`` in fen, with its payable ``P(end) − P(start)``.

    ``states``: one row per member-year with ``plan_year``, the roster flags (``pre_existing``,
    ``consecutive_years``), and ``start__COST`` / ``end__COST`` (fen) for each of ``costs``.
    This equals the sum of the member-year's settlement payouts between the two states,
    exactly: each settlement is paid ``B(after) − B(before)`` with the year's edition, so the
    payouts telescope, rounding and caps included. What the settlements added to the year to
    date does not depend on floors, deductibles, rates, bounds or caps (only on costs, lists and
    eligibility), so a sweep over such a parameter reads each member-year's start and end once
    and evaluates each value here (:mod:`hmb_batch.analysis.simulate`). A member-year whose plan
    year no edition of ``plan`` governs is left out.
    """
    flags = dict(
        pre_existing=pl.col("pre_existing").fill_null(False),
        consecutive_years=pl.col("consecutive_years").fill_null(0),
    )
    out = []
    for (year,), rows in states.group_by("plan_year", maintain_order=True):
        edition = plan.for_year(int(year))
        if edition is None:
            continue
        own = [c for c in costs if c in edition.costs]
        end = edition.benefit({c: pl.col(f"end__{c}") for c in own}, **flags)
        start = edition.benefit({c: pl.col(f"start__{c}") for c in own}, **flags)
        out.append(
            rows.select(
                "psn_no",
                "plan_year",
                (end.benefit_total - start.benefit_total).cast(pl.Int64).alias("payout"),
                (end.payable_total - start.payable_total).cast(pl.Int64).alias("payable"),
            )
        )
    if not out:
        return pl.DataFrame(
            schema={
                "psn_no": pl.String,
                "plan_year": states.schema.get("plan_year", pl.Int32),
                "payout": pl.Int64,
                "payable": pl.Int64,
            }
        )
    return pl.concat(out)
