"""The rule engine: validated settlements in, adjudicated settlements out. Pure — no I/O.

For each settlement, in (batch, setl_time, setl_id) order within each member and plan year:

1. sequencing: a setl_id adjudicated before is a duplicate; a reversal needs an adjudicated,
   not yet reversed original that comes before it (quarantined otherwise);
2. eligibility (non-reversals): roster row for the plan year, benefit start, suspension;
3. cost increments (each edition's costs: 浙丽保's compliant and reasonable cost), zero when
   denied; a reversal's increments are the negated increments of its original, in the original's
   member and plan year;
4. year-to-date costs = prior year to date + running sums; payable and benefit are functions of
   the year to date, so payout = T(after) − T(before) telescopes exactly.

Money is Int64 fen throughout. Every step is a Polars expression over whole frames; the only Python
loops are over plan years, costs and list names, never over members or settlements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

import polars as pl

from hmb_batch.io.contracts import COMPONENT_PAIRS, LINE_COMPONENTS, SETTLEMENTS, Kind
from hmb_batch.money import to_decimal
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.plan.compiled import (
    ADMISSION_CODES,
    EXCLUSION_CODES,
    CompiledEdition,
    list_flag,
)
from hmb_batch.rules.codes import code_list
from hmb_batch.rules.validation import DETAIL, IS_REVERSAL, REASONS, Materialize

ORDER = ["batch_seq", "setl_time", "setl_id"]
# per responsibility and settlement: this settlement's payable and payout, and the year to date
RESPONSIBILITY_VALUES = ("payable", "payout", "cum_payable", "cum_payout")
MEMBER_YEAR = ["psn_no", "plan_year"]
CARRIED = [
    "med_type",
    "insu_admdvs",
    "fixmedins_code",
    "fixmedins_name",
    "insutype",
    "begndate",
    "enddate",
    "psn_name",
    "certno",
    "header_fen",
]
# A settlement's header amounts, in contract order, kept in the ledger so that a later reversal
# can be checked against its original (REVERSAL_MISMATCH).
HEADER_AMOUNTS = SETTLEMENTS.of_kind(Kind.MONEY)
HEADER_FEN = "header_fen"
# Every query of the rules runs on the in-memory engine, named at each collect: a bucket is in
# memory already (its frames come in collected, sized by the run's memory budget), so the
# streaming engine's bounded memory buys nothing here, and its start-up per query (dozens per
# bucket) and its morsel pipelines cost more than the in-memory engine's plans (BENCHMARKS.md:
# the kernel on one bucket, engine against engine). Named at each call, not set with
# pl.Config: that is process-wide state, which the orchestration's own streaming queries, run
# at the same time in another thread, would see.
ENGINE: Final = "in-memory"
# the roster's member flags the benefit reads
FLAGS = ("pre_existing", "consecutive_years")


def header_fen() -> pl.Expr:
    """The settlement's header amounts as one list (fen, :data:`HEADER_AMOUNTS` order)."""
    # concat_arr then a cast: concat_list of 16 columns cost 30x more (1.3 s on 400k rows)
    return (
        pl.concat_arr([pl.col(c).fill_null(0) for c in HEADER_AMOUNTS])
        .cast(pl.List(pl.Int64))
        .alias(HEADER_FEN)
    )


def inc(cost: str) -> str:
    """Column of a settlement's increment of ``cost``."""
    return f"inc__{cost}"


def cum(cost: str) -> str:
    """Column of the year-to-date ``cost`` after a settlement."""
    return f"cum__{cost}"


@dataclass(frozen=True)
class PriorState:
    """What earlier batches left: adjudicated settlements and year-to-date costs.

    ``registry``: setl_id, psn_no, plan_year, is_reversal, init_setl_id, reversed (bool), and
    ``inc__COST`` for each cost. ``accumulators``: psn_no, plan_year and ``cum__COST``.
    """

    registry: pl.LazyFrame
    accumulators: pl.LazyFrame

    @staticmethod
    def empty(costs: list[str]) -> PriorState:
        """No history: every member starts the year at zero."""
        reg = pl.DataFrame(
            schema={
                "setl_id": pl.String,
                "psn_no": pl.String,
                "plan_year": pl.Int64,
                IS_REVERSAL: pl.Boolean,
                "init_setl_id": pl.String,
                "reversed": pl.Boolean,
                HEADER_FEN: pl.List(pl.Int64),
                **{inc(c): pl.Int64 for c in costs},
            }
        ).lazy()
        acc = pl.DataFrame(
            schema={"psn_no": pl.String, "plan_year": pl.Int64, **{cum(c): pl.Int64 for c in costs}}
        ).lazy()
        return PriorState(reg, acc)


@dataclass(frozen=True)
class Adjudication:
    """The engine's result, all lazy, money in fen.

    ``payouts``: one row per adjudicated settlement (denied included). ``lines``: the fee-line
    audit. ``quarantine``: settlements the engine rejected (duplicates, orphan reversals, no plan
    edition) with reasons and detail.
    """

    payouts: pl.LazyFrame
    lines: pl.LazyFrame
    quarantine: pl.LazyFrame
    costs: list[str]
    responsibilities: list[str]


def cost_ids(plan: PlanSelection) -> list[str]:
    """Ordered union of the cost ids of a selection's editions."""
    out: list[str] = []
    for e in plan.editions:
        out += [c for c in e.costs if c not in out]
    return out


def responsibility_ids(plan: PlanSelection) -> list[str]:
    """Ordered union of the responsibility ids of a selection's editions."""
    out: list[str] = []
    for e in plan.editions:
        out += [r.id for r in e.edition.responsibilities if r.id not in out]
    return out


def _quarantined(frame: pl.LazyFrame, code: str, detail: pl.Expr) -> pl.LazyFrame:
    return frame.with_columns(pl.lit([code]).alias(REASONS), detail.alias(DETAIL))


def _sequence(
    settlements: pl.LazyFrame,
    prior: PriorState,
    plan: PlanSelection,
    years: list[int],
    materialize: Materialize | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """Split into (non-reversals to adjudicate, valid reversals, quarantined)."""
    s = settlements.with_columns(
        pl.col("setl_time").dt.year().cast(pl.Int64).alias("plan_year"), header_fen()
    )
    first_batch = pl.col("batch_seq").min().over("setl_id")
    seen = prior.registry.select("setl_id", pl.lit(True).alias("_seen")).unique("setl_id")
    s = s.join(seen, on="setl_id", how="left").with_columns(
        pl.col("_seen").fill_null(False), (pl.col("batch_seq") == first_batch).alias("_first")
    )
    if materialize is not None:  # every branch below reads it (quarantines are usually empty)
        (s,) = materialize([s])
    seen_before = s.filter(pl.col("_seen")).drop("_seen", "_first")
    repeated_in_run = s.filter(~pl.col("_seen") & ~pl.col("_first")).drop("_seen", "_first")
    s = s.filter(~pl.col("_seen") & pl.col("_first")).drop("_seen", "_first")
    dup_detail = pl.format("setl_id {} was adjudicated before", pl.col("setl_id"))
    quarantine = [
        _quarantined(seen_before, "DUPLICATE_SETTLEMENT", dup_detail),
        _quarantined(
            repeated_in_run,
            "DUPLICATE_SETTLEMENT",
            pl.format(
                "setl_id {} was adjudicated in an earlier batch of this run", pl.col("setl_id")
            ),
        ),
    ]

    covered = [y for y in years if plan.for_year(y) is not None]
    originals = s.filter(~pl.col(IS_REVERSAL))
    no_edition = originals.filter(~pl.col("plan_year").is_in(covered))
    quarantine.append(
        _quarantined(
            no_edition,
            "NO_PLAN_EDITION",
            pl.format(
                "setl_id {}: no plan edition for plan year {} (editions: {})",
                pl.col("setl_id"),
                pl.col("plan_year"),
                pl.lit(", ".join(e.id for e in plan.editions)),
            ),
        )
    )
    originals = originals.filter(pl.col("plan_year").is_in(covered))

    reversals = s.filter(pl.col(IS_REVERSAL)).rename({"psn_no": "_rev_psn_no"}).drop("plan_year")
    in_run = originals.select(
        pl.col("setl_id").alias("init_setl_id"),
        "psn_no",
        "plan_year",
        pl.col("batch_seq").alias("_o_batch"),
        pl.col("setl_time").alias("_o_time"),
        pl.lit(False).alias("_orig_reversed"),
        pl.lit(True).alias("_orig_in_run"),
        pl.col(HEADER_FEN).alias("_o_header"),
    )
    from_prior = prior.registry.filter(~pl.col(IS_REVERSAL)).select(
        pl.col("setl_id").alias("init_setl_id"),
        "psn_no",
        "plan_year",
        pl.lit(None, pl.Int64).alias("_o_batch"),
        pl.lit(None, pl.Datetime("us")).alias("_o_time"),
        pl.col("reversed").alias("_orig_reversed"),
        pl.lit(False).alias("_orig_in_run"),
        pl.col(HEADER_FEN).alias("_o_header"),
    )
    # only the originals some reversal names (a semi join hashes the reversals' few ids, not
    # every settlement of the run)
    named = reversals.select("init_setl_id")
    targets = pl.concat([in_run, from_prior], how="vertical_relaxed").join(
        named, on="init_setl_id", how="semi"
    )
    reversals = reversals.join(targets, on="init_setl_id", how="left")
    if materialize is not None:  # few rows, which every check below and the engine read
        (reversals,) = materialize([reversals])
    found = pl.col("psn_no").is_not_null()
    # the original must precede the reversal in (batch, setl_time, setl_id) order
    precedes = (pl.col("_o_batch") < pl.col("batch_seq")) | (
        (pl.col("_o_batch") == pl.col("batch_seq"))
        & (
            (pl.col("_o_time") < pl.col("setl_time"))
            | (
                (pl.col("_o_time") == pl.col("setl_time"))
                & (pl.col("init_setl_id") < pl.col("setl_id"))
            )
        )
    )
    same_member = (pl.col("psn_no") == pl.col("_rev_psn_no")).fill_null(False)
    valid = found & same_member & (~pl.col("_orig_in_run") | precedes).fill_null(False)
    orphan = reversals.filter(~valid)
    reversals = reversals.filter(valid).drop("_rev_psn_no")
    quarantine.append(
        _quarantined(
            orphan.drop("plan_year")
            .rename({"psn_no": "_orig_member"})
            .rename({"_rev_psn_no": "psn_no"}),
            "ORPHAN_REVERSAL",
            pl.when(
                pl.col("_orig_member").is_not_null() & (pl.col("_orig_member") != pl.col("psn_no"))
            )
            .then(
                pl.format(
                    "reversal {} of member {} names init_setl_id {}, which belongs to member {}",
                    pl.col("setl_id"),
                    pl.col("psn_no"),
                    pl.col("init_setl_id"),
                    pl.col("_orig_member"),
                )
            )
            .otherwise(
                pl.format(
                    "reversal {} names init_setl_id {}, which was never adjudicated "
                    "(or comes after the reversal)",
                    pl.col("setl_id"),
                    pl.col("init_setl_id"),
                )
            ),
        )
    )
    rank = pl.int_range(pl.len()).over("init_setl_id", order_by=ORDER)
    duplicate = pl.col("_orig_reversed") | (rank > 0)
    dup_rev = reversals.filter(duplicate)
    quarantine.append(
        _quarantined(
            dup_rev,
            "DUPLICATE_REVERSAL",
            pl.format(
                "reversal {}: settlement {} is already reversed",
                pl.col("setl_id"),
                pl.col("init_setl_id"),
            ),
        )
    )
    reversals = reversals.filter(~duplicate)
    mismatch = _reversal_mismatch()
    quarantine.append(
        _quarantined(reversals.filter(mismatch.is_not_null()), "REVERSAL_MISMATCH", mismatch)
    )
    reversals = reversals.filter(mismatch.is_null())
    scratch = [
        "_o_batch",
        "_o_time",
        "_orig_reversed",
        "_orig_in_run",
        "_orig_member",
        "_o_header",
    ]
    reversals = reversals.drop(scratch, strict=False)
    q = pl.concat(
        [f.drop(scratch, strict=False) for f in quarantine],
        how="diagonal_relaxed",
    )
    return originals, reversals, q


def _reversal_mismatch() -> pl.Expr:
    """Why a reversal's header amounts do not reverse its original's (null when they do).

    A reversal undoes its original in full: its amounts are all zero, or each is exactly the
    negation of the original's. Anything else (a tenth of the amounts, positive amounts) is a
    partial refund in disguise, which the platform sends as a reversal plus a new settlement;
    applying it as a full reversal would pay the wrong money. Its fee lines add up to its header
    (HEADER_LINE_MISMATCH), so they are covered too. Originals applied by ledgers older than
    schema 5 kept no amounts (``_o_header`` null) and are not checked.
    """
    zero = pl.all_horizontal([pl.col(c).fill_null(0) == 0 for c in HEADER_AMOUNTS])
    differs = [
        pl.when(pl.col(c).fill_null(0) != -pl.col("_o_header").list.get(i)).then(
            pl.format(
                "reversal {} of {}: {} expected {} (the negation of the original's) or 0, found {}",
                pl.col("setl_id"),
                pl.col("init_setl_id"),
                pl.lit(c),
                to_decimal(-pl.col("_o_header").list.get(i)).cast(pl.String),
                to_decimal(pl.col(c).fill_null(0)).cast(pl.String),
            )
        )
        for i, c in enumerate(HEADER_AMOUNTS)
    ]
    checked = pl.col("_o_header").is_not_null() & ~zero
    return pl.when(checked).then(pl.coalesce(differs)).otherwise(None)


def _denials(
    originals: pl.LazyFrame, roster: pl.LazyFrame, edition: CompiledEdition, year: int
) -> pl.LazyFrame:
    """Join the roster and give each settlement of ``year`` its denial reasons (sorted) and
    its member's :data:`FLAGS`."""
    r = (
        roster.filter(pl.col("plan_year") == year)
        .with_columns(
            edition.benefit_start(year).alias("benefit_start"), pl.lit(True).alias("_enrolled")
        )
        .select(
            "psn_no",
            "plan_year",
            "benefit_start",
            "basic_suspended_from",
            "basic_suspended_to",
            "_enrolled",
            *FLAGS,
        )
    )
    service = pl.coalesce(pl.col("begndate"), pl.col("setl_time").dt.date())
    enrolled = pl.col("_enrolled").fill_null(False)
    waiting = enrolled & (service < pl.col("benefit_start"))
    suspended = enrolled & (
        (service >= pl.col("basic_suspended_from"))
        & ((service <= pl.col("basic_suspended_to")) | pl.col("basic_suspended_to").is_null())
    ).fill_null(False)
    reasons = code_list(
        [(suspended, "BASIC_SUSPENDED"), (~enrolled, "NOT_ENROLLED"), (waiting, "WAITING_PERIOD")]
    )
    return (
        originals.filter(pl.col("plan_year") == year)
        .join(r, on=["psn_no", "plan_year"], how="left")
        .with_columns(reasons.alias("denials"), service.alias("service_date"))
        .drop("basic_suspended_from", "basic_suspended_to", "_enrolled")
    )


def _flag_lists(
    lines: pl.LazyFrame,
    lists: pl.LazyFrame,
    names: frozenset[str],
    materialize: Materialize | None = None,
) -> pl.LazyFrame:
    """Add ``on_list__NAME``: the line's item is on list NAME at its fee date.

    One join of the lines' codes with every entry of the edition's lists gives the row numbers
    of the lines on each list; the lines, computed once first (a lazy frame evaluated twice need
    not give its rows in the same order, and the numbers must match), then get one flag per
    list by membership of their row number: no join back, which would copy every line.
    """
    index = "_line_index"
    lines = lines.with_row_index(index)
    (lines,) = (
        materialize([lines]) if materialize is not None else [lines.collect(engine=ENGINE).lazy()]
    )
    entries = lists.filter(pl.col("list").is_in(sorted(names))).select(
        pl.col("list").alias("_list"),
        pl.col("code").alias("med_list_codg"),
        "valid_from",
        "valid_to",
    )
    fee_date = pl.col("fee_ocur_time").dt.date()
    hits = (
        lines.select(index, "med_list_codg", fee_date.alias("_fee_date"))
        .join(entries, on="med_list_codg", how="inner")
        .filter(
            (pl.col("_fee_date") >= pl.col("valid_from"))
            & ((pl.col("_fee_date") <= pl.col("valid_to")) | pl.col("valid_to").is_null())
        )
        .select(index, "_list")
        .collect(engine=ENGINE)
    )
    return lines.with_columns(
        [
            pl.col(index)
            .is_in(hits.filter(pl.col("_list") == name)[index].implode())
            .alias(list_flag(name))
            for name in sorted(names)
        ]
    ).drop(index)


def code_sum(code: str) -> str:
    """Column of a settlement's line amounts (all components) under disposition ``code``, as
    its lines were disposed of before any denial (the reconciliation's per-settlement checks)."""
    return f"codesum__{code}"


def line_amount(cost_id: str) -> str:
    """Column of what a fee-lines cost counted of a settlement's lines (before any denial)."""
    return f"line__{cost_id}"


def reconciled_codes(plan: PlanSelection) -> list[str]:
    """The disposition codes whose per-settlement sums the reconciliation checks."""
    codes = ["SETTLEMENT_LEVEL"] + [
        counting_code(cid, c.audit_code) for e in plan.editions for cid, c in e.costs.items()
    ]
    return sorted(set(codes))


def _line_rules(
    originals: pl.LazyFrame,
    lines: pl.LazyFrame,
    lists: pl.LazyFrame,
    edition: CompiledEdition,
    codes: pl.Enum,
    summed: list[str],
    materialize: Materialize | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """One plan year's fee lines through the edition's line rules, as if no settlement were
    denied: per settlement, what each fee-lines cost counted and what its lines put under each
    reconciled code (``summed``); and the fee-line audit. A denial is a per-settlement change
    made afterwards (:func:`settled_audit`): every line rule is a function of the line and its
    settlement's header, and a denied settlement counts nothing."""
    line_costs = {cid: c for cid, c in edition.costs.items() if c.line_amount is not None}
    settlement_costs = [cid for cid, c in edition.costs.items() if c.line_amount is None]
    # what each settlement cost counts, carried to the lines for their audit codes in the same
    # join that brings them the settlement's columns (a second join of every line cost more)
    settled = [
        pl.when(~edition.costs[cid].in_scope)
        .then(0)
        .otherwise(edition.costs[cid].settlement_amount)
        .cast(pl.Int64)
        .alias(f"_settle_{cid}")
        for cid in settlement_costs
    ]
    key = ["setl_id", "batch_seq"]
    settlement = "_settlement"
    # a left join, then a filter of the lines no settlement of the year matched: an inner join
    # gathers every column of every line, the left join leaves the lines in place (and the
    # filter copies nothing when it keeps every line). The filter comes after the lists'
    # materialization: in the join's plan, the optimizer would make the two an inner join
    # again. The settlement's row number then groups its lines, cheaper than the string key.
    joined = lines.join(
        originals.select(*key, "med_type", *settled).with_row_index(settlement),
        on=key,
        how="left",
    )
    fl = _flag_lists(joined, lists, edition.lists, materialize).filter(
        pl.col(settlement).is_not_null()
    )
    line_amount_cols = []
    for cid, c in line_costs.items():
        assert c.line_amount is not None
        line_amount_cols.append(
            pl.when(c.in_scope).then(c.line_amount).otherwise(0).alias(line_amount(cid))
        )
    fl = fl.with_columns(line_amount_cols)
    no = pl.lit(False)
    reasons: list[tuple[pl.Expr, str]] = []
    for list_name, code in EXCLUSION_CODES.items():
        if list_name in edition.lists:
            reasons.append((pl.col(list_flag(list_name)), code))
    for cid, c in edition.costs.items():
        if c.not_admitted is not None:
            code = next(iter(ADMISSION_CODES.values()))
            reasons.append((c.not_admitted & c.in_scope, code))
        if c.audit_code is None:
            continue
        if cid in line_costs:
            counted = pl.col(line_amount(cid)) != 0
        else:
            counted = (pl.col("inscp_scp_amt") != 0) & (pl.col(f"_settle_{cid}") != 0)
        reasons.append((counted, c.audit_code))
    fl = fl.with_columns(
        code_list(reasons).alias(REASONS), *_component_dispositions(edition, no, codes)
    )
    if materialize is not None:  # the per-settlement sums and the line audit both read it
        (fl,) = materialize([fl])
    code_sums = [code_sum(code) for code in summed if code in codes.categories]
    # each line's amount under each code first, then plain sums per group: the expression
    # evaluated in the aggregation cost five times as much as in a projection
    per_settlement = (
        fl.select(
            settlement,
            *key,
            *[line_amount(cid) for cid in line_costs],
            *[
                pl.sum_horizontal(
                    [
                        pl.when(pl.col(disposition_column(k)) == code)
                        .then(pl.col(k).fill_null(0))
                        .otherwise(0)
                        for k in LINE_COMPONENTS
                    ]
                ).alias(code_sum(code))
                for code in summed
                if code in codes.categories
            ],
        )
        .group_by(settlement)
        .agg(
            *[pl.col(k).first() for k in key],
            *[pl.col(line_amount(cid)).sum() for cid in line_costs],
            *[pl.col(c).sum().cast(pl.Int64) for c in code_sums],
        )
        .drop(settlement)
    )
    audit = fl.select(
        "setl_id",
        "feedetl_sn",
        "batch_seq",
        "med_list_codg",
        "det_item_fee_sumamt",
        *LINE_COMPONENTS,
        REASONS,
        *[pl.col(line_amount(cid)).alias(counted_column(cid)) for cid in line_costs],
        *[disposition_column(k) for k in LINE_COMPONENTS],
    )
    return per_settlement, audit


def line_facts(
    settlements: pl.LazyFrame,
    fee_lines: pl.LazyFrame,
    lists: pl.LazyFrame,
    plan: PlanSelection,
    *,
    years: list[int],
    materialize: Materialize | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Validated settlements and their fee lines through the line rules: the settlements with
    their line facts (:func:`line_amount` per fee-lines cost, :func:`code_sum` per reconciled
    code), and the fee-line audit, both as if no settlement were denied.

    Everything after this reads the settlements only, so a batch's fee lines are read once
    and its members' work runs on settlement facts (a sixth of the rows, and narrow). Lines of
    reversals and of plan years without an edition have no audit rows (a reversal counts the
    negation of its original; the others are quarantined with their lines).
    """
    codes = disposition_codes(plan)
    summed = reconciled_codes(plan)
    s = settlements.with_columns(pl.col("setl_time").dt.year().cast(pl.Int64).alias("plan_year"))
    sums: list[pl.LazyFrame] = []
    audits: list[pl.LazyFrame] = []
    for year in years:
        edition = plan.for_year(year)
        if edition is None:
            continue
        originals = s.filter(~pl.col(IS_REVERSAL) & (pl.col("plan_year") == year))
        per_settlement, audit = _line_rules(
            originals, fee_lines, lists, edition, codes, summed, materialize
        )
        sums.append(per_settlement)
        audits.append(audit)
    if sums:
        facts = settlements.join(
            pl.concat(sums, how="diagonal_relaxed"), on=["setl_id", "batch_seq"], how="left"
        )
        audit_all = pl.concat(audits, how="diagonal_relaxed")
    else:
        facts = settlements
        audit_all = fee_lines.filter(pl.lit(False)).select(
            "setl_id", "feedetl_sn", "batch_seq", pl.lit([], pl.List(pl.String)).alias(REASONS)
        )
    return facts, audit_all


def complete_facts(facts: pl.LazyFrame, plan: PlanSelection) -> pl.LazyFrame:
    """``facts`` with every line-fact column of ``plan`` (zero where a part had no lines of
    an edition: only reversals, or another plan year)."""
    names = set(facts.collect_schema().names())
    wanted = [
        line_amount(cid)
        for e in plan.editions
        for cid, c in e.costs.items()
        if c.line_amount is not None
    ] + [code_sum(code) for code in reconciled_codes(plan)]
    return facts.with_columns(
        pl.lit(0, pl.Int64).alias(c) for c in dict.fromkeys(wanted) if c not in names
    )


def _increments(judged: pl.LazyFrame, edition: CompiledEdition, costs: list[str]) -> pl.LazyFrame:
    """Cost increments per settlement from its line facts (zero when denied)."""
    denied = pl.col("denials").list.len() > 0
    inc_exprs = []
    for cid in costs:
        if cid not in edition.costs:
            inc_exprs.append(pl.lit(0, pl.Int64).alias(inc(cid)))
            continue
        c = edition.costs[cid]
        amount = c.settlement_amount
        if c.line_amount is not None:
            amount = amount + pl.col(line_amount(cid)).fill_null(0)
        inc_exprs.append(
            pl.when(denied | ~c.in_scope).then(0).otherwise(amount).cast(pl.Int64).alias(inc(cid))
        )
    return judged.with_columns(inc_exprs)


def settled_audit(
    audit: pl.LazyFrame, denied: pl.DataFrame, removed: pl.DataFrame, plan: PlanSelection
) -> pl.LazyFrame:
    """The fee-line audit once the settlements are decided (see :func:`line_facts`).

    ``denied``: setl_id and batch_seq of the denied settlements: each of their lines counts
    nothing and every component is DENIED_SETTLEMENT, its reasons DENIED_SETTLEMENT and the
    lists that excluded it. ``removed``: the settlements the engine quarantined (their lines
    are quarantined with them). Only the lines of those settlements are rewritten.
    """
    key = ["setl_id", "batch_seq"]
    names = audit.collect_schema().names()
    if not removed.height and not denied.height:
        return audit
    # one left join with the few settlements named marks their lines (True: denied, False:
    # removed; removed wins), and filters split them off: an anti and a semi join of every
    # line each cost more than the join and the filters together
    decided = pl.concat(
        [
            removed.lazy().select(*key, pl.lit(False).alias("_denied")),
            denied.lazy().select(*key, pl.lit(True).alias("_denied")),
        ],
        how="vertical_relaxed",
    ).unique(key, keep="first", maintain_order=True)
    marked = audit.join(decided, on=key, how="left")
    rest = marked.filter(pl.col("_denied").is_null()).drop("_denied")
    if not denied.height:
        return rest
    codes = disposition_codes(plan)
    exclusions = sorted(set(EXCLUSION_CODES.values()))
    hit = marked.filter(pl.col("_denied").fill_null(False)).drop("_denied")
    counted = [c for c in names if c.endswith(COUNTED_SUFFIX)]
    hit = hit.with_columns(
        *[pl.lit(0, pl.Int64).alias(c) for c in counted],
        *[
            pl.lit("DENIED_SETTLEMENT", codes).alias(disposition_column(k))
            for k in LINE_COMPONENTS
            if disposition_column(k) in names
        ],
        pl.concat_list(
            pl.lit(["DENIED_SETTLEMENT"], pl.List(pl.String)),
            pl.col(REASONS).list.eval(pl.element().filter(pl.element().is_in(exclusions))),
        ).alias(REASONS),
    )
    return pl.concat([rest, hit.select(rest.collect_schema().names())])


def counting_code(cost_id: str, audit_code: str | None) -> str:
    """The disposition of a fee-line amount a cost counts: its audit code, else COUNTED_<ID>."""
    return audit_code or f"COUNTED_{cost_id.upper()}"


def _exclusion_code(lists: frozenset[str]) -> str:
    found = (EXCLUSION_CODES[n] for n in sorted(lists) if n in EXCLUSION_CODES)
    return next(found, "EXCLUDED_LIST")


def disposition_codes(plan: PlanSelection) -> pl.Enum:
    """Every disposition a fee-line component can get under ``plan`` (see
    :func:`_component_dispositions`), as the Enum the line audit holds them in: a code per line
    and component as text cost more than the rest of the line's audit."""
    codes = ["DENIED_SETTLEMENT", "SETTLEMENT_LEVEL", "NOT_COVERED"]
    codes += sorted(ADMISSION_CODES.values())
    for e in plan.editions:
        for cid, c in e.costs.items():
            codes += [counting_code(cid, c.audit_code), _exclusion_code(c.lists)]
    return pl.Enum(list(dict.fromkeys(codes)))


DISPOSITION_SUFFIX = "__disposition"
COUNTED_SUFFIX = "_counted"


def disposition_column(component: str) -> str:
    """Audit column naming where a fee-line component went (see :func:`_component_dispositions`)."""
    return f"{component}{DISPOSITION_SUFFIX}"


def counted_column(cost_id: str) -> str:
    """Audit column of what a line cost (e.g. reasonable) counted of the line."""
    return f"{cost_id}{COUNTED_SUFFIX}"


def _component_dispositions(
    edition: CompiledEdition, denied: pl.Expr, codes: pl.Enum
) -> list[pl.Expr]:
    """Per fee-line component, one code saying where its amount went (first that applies).

    ``DENIED_SETTLEMENT``; the counting cost's audit code (e.g. ``COUNTED_REASONABLE``); the
    code of the list that excluded it (``NEGATIVE_LIST``); ``NOT_ADMITTED`` (a part wanted the
    line on a list); ``SETTLEMENT_LEVEL`` (the component a settlement cost starts from, e.g.
    inscp_scp_amt for the compliant cost: accounted per settlement, see hmb_batch.rules.reconcile);
    ``NOT_COVERED`` (no cost counts it). The reconciliation adds amounts up by these codes.
    """
    starts = {
        COMPONENT_PAIRS[c.start]
        for c in edition.costs.values()
        if c.start is not None and c.start in COMPONENT_PAIRS
    }

    def lit(code: str) -> pl.Expr:
        return pl.lit(code, codes)

    out = []
    for comp in LINE_COMPONENTS:
        code: Any = pl.when(denied).then(lit("DENIED_SETTLEMENT"))
        for cid, c in edition.costs.items():
            if comp in c.counts_component:
                counted = c.in_scope & c.counts_component[comp]
                code = code.when(counted).then(lit(counting_code(cid, c.audit_code)))
        for c in edition.costs.values():
            if c.excluded is not None and comp in c.counts_component | c.refuses_component:
                code = code.when(c.in_scope & c.excluded).then(lit(_exclusion_code(c.lists)))
            if comp in c.refuses_component:
                code = code.when(c.in_scope & c.refuses_component[comp]).then(
                    lit(next(iter(ADMISSION_CODES.values())))
                )
        fallback = "SETTLEMENT_LEVEL" if comp in starts else "NOT_COVERED"
        out.append(code.otherwise(lit(fallback)).alias(disposition_column(comp)))
    return out


def _year_to_date(rows: pl.LazyFrame, costs: list[str]) -> pl.LazyFrame:
    """``cum__COST``: the year to date after each settlement, from the prior year to date
    (``cum__COST`` on entry, null for none) and the running sums of ``inc__COST`` in
    (batch, setl_time, setl_id) order within each member and plan year.

    One sort of the keys (a permutation), a running sum over all rows, and each member-year's
    sum before its first row taken off: a window per cost grouped by member and year, each
    ordering its groups again, cost several times more. The rows stay where they are. The
    running sum over all rows is Int128: the bucket's sum need not fit Int64 where each
    member's does.
    """
    # each step its own with_columns: common subexpressions of one are not always shared
    order, first, back = "_ytd_order", "_ytd_first", "_ytd_back"
    rows = rows.with_columns(pl.arg_sort_by([*MEMBER_YEAR, *ORDER]).alias(order))
    starts = [pl.col(k).gather(pl.col(order)) for k in MEMBER_YEAR]
    rows = rows.with_columns(
        pl.any_horizontal(
            pl.int_range(pl.len()) == 0, *[k.ne_missing(k.shift()) for k in starts]
        ).alias(first),
        pl.col(order).arg_sort().alias(back),
    )
    cums = []
    for c in costs:
        step = pl.col(inc(c)).gather(pl.col(order)).cast(pl.Int128)
        running = step.cum_sum()
        start = pl.col(cum(c)).fill_null(0).gather(pl.col(order))
        offset = pl.when(pl.col(first)).then(running - step - start).forward_fill()
        cums.append((running - offset).gather(pl.col(back)).cast(pl.Int64).alias(cum(c)))
    return rows.with_columns(cums).drop(order, first, back)


def _benefit_columns(
    frame: pl.LazyFrame, edition: CompiledEdition, costs: list[str], responsibilities: list[str]
) -> pl.LazyFrame:
    """T and P before and after each settlement, per responsibility and in total."""
    flags = dict(
        pre_existing=pl.col("pre_existing").fill_null(False),
        consecutive_years=pl.col("consecutive_years").fill_null(0),
    )
    after = edition.benefit({c: pl.col(cum(c)) for c in costs}, **flags)
    before = edition.benefit({c: pl.col(cum(c)) - pl.col(inc(c)) for c in costs}, **flags)
    # each responsibility's payable and benefit after and before, computed once into scratch
    # columns that the totals (their sums, as BenefitExprs' totals are) and differences then
    # read: in one with_columns the totals' trees were evaluated again beside the
    # responsibilities'
    ids = list(after.benefit)
    sides = {"pa": after.payable, "ba": after.benefit, "pb": before.payable, "bb": before.benefit}
    scratch = {(k, rid): f"_{k}_{i}" for k in sides for i, rid in enumerate(ids)}
    frame = frame.with_columns(sides[k][rid].alias(name) for (k, rid), name in scratch.items())

    def one(k: str, rid: str) -> pl.Expr:
        return pl.col(scratch[k, rid])

    def total(k: str) -> pl.Expr:
        return pl.sum_horizontal([one(k, rid) for rid in ids])

    cols = [
        total("pa").alias("cum_payable"),
        (total("pa") - total("pb")).alias("payable"),
        total("ba").alias("cum_payout"),
        (total("ba") - total("bb")).alias("payout"),
        pl.lit(edition.id).alias("edition"),
    ]
    for rid in responsibilities:
        if rid in after.benefit:
            cols.append((one("ba", rid) - one("bb", rid)).alias(f"resp__{rid}__payout"))
            cols.append((one("pa", rid) - one("pb", rid)).alias(f"resp__{rid}__payable"))
            cols.append(one("ba", rid).alias(f"resp__{rid}__cum_payout"))
            cols.append(one("pa", rid).alias(f"resp__{rid}__cum_payable"))
        else:
            for k in RESPONSIBILITY_VALUES:
                cols.append(pl.lit(0, pl.Int64).alias(f"resp__{rid}__{k}"))
    return frame.with_columns(cols).drop(scratch.values())


def adjudicate(
    settlements: pl.LazyFrame,
    fee_lines: pl.LazyFrame,
    roster: pl.LazyFrame,
    lists: pl.LazyFrame,
    plan: PlanSelection,
    prior: PriorState | None = None,
    *,
    years: list[int],
    materialize: Materialize | None = None,
) -> Adjudication:
    """Adjudicate validated settlements (with ``batch_seq`` and ``batch_id``) and their fee
    lines under ``plan``: :func:`line_facts`, then :func:`adjudicate_settlements`, then the
    audit settled (:func:`settled_audit`).

    Fee lines carry ``batch_seq`` too: a run may hold several batches, and a setl_id repeated in
    a later batch (a duplicate) must not lend its lines to the first copy.

    ``years``: the plan years present (settlement years and, for reversals, the prior registry's
    years); the caller knows them from the data. Roster: typed roster with ``pre_existing`` as
    a boolean. ``materialize`` (optional) may compute shared intermediate frames once (see
    :func:`hmb_batch.rules.validation.validate`). Returns lazy frames in fen.
    """
    facts, audit = line_facts(
        settlements, fee_lines, lists, plan, years=years, materialize=materialize
    )
    result = adjudicate_settlements(
        facts, roster, plan, prior, years=years, materialize=materialize
    )
    payouts, quarantine = pl.collect_all([result.payouts, result.quarantine], engine=ENGINE)
    key = ["setl_id", "batch_seq"]
    denied = payouts.filter(pl.col("status") == "denied").select(key)
    removed = quarantine.select(key)
    return replace(
        result,
        payouts=payouts.lazy(),
        quarantine=quarantine.lazy(),
        lines=settled_audit(audit, denied, removed, plan),
    )


def adjudicate_settlements(
    facts: pl.LazyFrame,
    roster: pl.LazyFrame,
    plan: PlanSelection,
    prior: PriorState | None = None,
    *,
    years: list[int],
    materialize: Materialize | None = None,
) -> Adjudication:
    """Adjudicate validated settlements with their line facts (:func:`line_facts`): sequence,
    eligibility, costs, year to date, benefits. Reads no fee line: ``lines`` of the result is
    empty (the audit is :func:`line_facts`' and :func:`settled_audit`'s). Returns lazy frames
    in fen."""
    costs = cost_ids(plan)
    resps = responsibility_ids(plan)
    prior = prior or PriorState.empty(costs)
    facts = complete_facts(facts, plan)
    originals, reversals, quarantine = _sequence(facts, prior, plan, years, materialize)

    judged_parts: list[pl.LazyFrame] = []
    for year in years:
        edition = plan.for_year(year)
        if edition is None:
            continue
        judged = _increments(_denials(originals, roster, edition, year), edition, costs)
        judged_parts.append(judged)
    if not judged_parts:
        empty_year = originals.filter(pl.lit(False))
        judged_parts.append(
            empty_year.with_columns(
                pl.lit([], pl.List(pl.String)).alias("denials"),
                *[pl.lit(0, pl.Int64).alias(inc(c)) for c in costs],
                *[pl.lit(None, roster.collect_schema()[f]).alias(f) for f in FLAGS],
            )
        )
    judged_all = pl.concat(judged_parts, how="diagonal_relaxed")

    # reversals: negated increments of the original (this run, else the prior registry)
    orig_inc = pl.concat(
        [
            judged_all.select(pl.col("setl_id").alias("init_setl_id"), *[inc(c) for c in costs]),
            prior.registry.filter(~pl.col(IS_REVERSAL)).select(
                pl.col("setl_id").alias("init_setl_id"), *[inc(c) for c in costs]
            ),
        ],
        how="vertical_relaxed",
    )
    # as in _sequence: the originals some reversal names first
    orig_inc = orig_inc.join(
        reversals.select("init_setl_id"), on="init_setl_id", how="semi"
    ).unique("init_setl_id")
    rev = reversals.join(orig_inc, on="init_setl_id", how="left").with_columns(
        *[(-pl.col(inc(c)).fill_null(0)).alias(inc(c)) for c in costs],
        pl.lit([], pl.List(pl.String)).alias("denials"),
    )
    # a reversal's member flags; the originals' came with their roster row (_denials)
    flags = roster.select("psn_no", "plan_year", *FLAGS).unique(MEMBER_YEAR)
    rev = rev.join(flags, on=MEMBER_YEAR, how="left")
    keep = [
        "setl_id",
        "psn_no",
        "plan_year",
        IS_REVERSAL,
        "init_setl_id",
        "setl_time",
        "batch_seq",
        "batch_id",
        "denials",
        *CARRIED,
        *[inc(c) for c in costs],
        *FLAGS,
    ]
    rows = pl.concat([judged_all.select(keep), rev.select(keep)], how="vertical_relaxed")

    rows = _year_to_date(rows.join(prior.accumulators, on=MEMBER_YEAR, how="left"), costs)
    parts = []
    for year in years:
        edition = plan.for_year(year)
        if edition is None:
            continue
        parts.append(
            _benefit_columns(rows.filter(pl.col("plan_year") == year), edition, costs, resps)
        )
    if parts:
        payouts = pl.concat(parts, how="diagonal_relaxed")
    else:
        payouts = rows.with_columns(
            *[
                pl.lit(0, pl.Int64).alias(n)
                for n in ("cum_payable", "payable", "cum_payout", "payout")
            ],
            pl.lit(None, pl.String).alias("edition"),
            *[
                pl.lit(0, pl.Int64).alias(f"resp__{r}__{k}")
                for r in resps
                for k in RESPONSIBILITY_VALUES
            ],
        )
    status = (
        pl.when(pl.col(IS_REVERSAL))
        .then(pl.lit("reversal"))
        .when(pl.col("denials").list.len() > 0)
        .then(pl.lit("denied"))
        .when(pl.col("payout") > 0)
        .then(pl.lit("paid"))
        .otherwise(pl.lit("zero"))
    )
    payouts = payouts.with_columns(status.alias("status"), pl.col("denials").alias(REASONS)).drop(
        "denials", *FLAGS
    )
    audit = pl.LazyFrame(schema={"setl_id": pl.String, "feedetl_sn": pl.String})
    return Adjudication(payouts, audit, quarantine, costs, resps)


def plan_years(settlements: pl.DataFrame | pl.LazyFrame, prior: PriorState | None) -> list[int]:
    """Plan years present in a batch (and in the prior registry, for late reversals)."""
    lf = settlements.lazy()
    years = set(
        lf.select(pl.col("setl_time").dt.year().unique())
        .collect(engine=ENGINE)
        .to_series()
        .to_list()
    )
    if prior is not None:
        years |= set(
            prior.registry.select(pl.col("plan_year").unique()).collect(engine=ENGINE).to_series()
        )
    return sorted(int(y) for y in years if y is not None)


def registry_rows(payouts: pl.DataFrame, costs: list[str]) -> pl.DataFrame:
    """A run's adjudicated settlements as registry rows of the state after it (``reversed``
    is set once the registry holds every reversal: one may come in a later run)."""
    return payouts.select(
        "setl_id",
        "psn_no",
        pl.col("plan_year").cast(pl.Int64),
        IS_REVERSAL,
        "init_setl_id",
        pl.lit(False).alias("reversed"),
        HEADER_FEN,
        *[pl.col(inc(c)).cast(pl.Int64) for c in costs],
    )


def year_to_date_after(payouts: pl.DataFrame, costs: list[str]) -> pl.DataFrame:
    """The year to date after a run of the member-years it touched: each one's last
    settlement's ``cum__COST`` in (batch, setl_time, setl_id) order."""
    return (
        payouts.sort([*MEMBER_YEAR, *ORDER])
        .group_by(MEMBER_YEAR, maintain_order=True)
        .agg([pl.col(cum(c)).last() for c in costs])
        .with_columns(pl.col("plan_year").cast(pl.Int64))
    )


def carry_forward(prior: PriorState, payouts: pl.DataFrame, costs: list[str]) -> PriorState:
    """The state after a run: its settlements added to the registry, year to date moved on.

    What the ledger stores between nightly batches; pure, so the batch-split property can be
    checked on it.
    """
    new = registry_rows(payouts, costs)
    registry = pl.concat([prior.registry.collect(engine=ENGINE), new], how="vertical_relaxed")
    reversed_ids = registry.filter(pl.col(IS_REVERSAL))["init_setl_id"]
    registry = registry.with_columns(
        (pl.col("reversed") | pl.col("setl_id").is_in(reversed_ids.implode())).alias("reversed")
    )
    latest = year_to_date_after(payouts, costs)
    accumulators = pl.concat(
        [
            prior.accumulators.collect(engine=ENGINE).join(latest, on=MEMBER_YEAR, how="anti"),
            latest,
        ],
        how="vertical_relaxed",
    )
    return PriorState(registry.lazy(), accumulators.lazy())
