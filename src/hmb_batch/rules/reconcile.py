"""Reconciliation: prove that every fen of a batch is accounted for, before the ledger commit.

Three levels, in the manner of an X12 835 remittance (README "Reconciliation" lists every
identity and the fields of ``reconciliation.json``):

- **line**: for each of the four fee-line components, the input total (typed fee lines, before
  validation) equals identical repeats + quarantined + reversal lines + the adjudicated lines by
  disposition (counted into a cost, or excluded: negative list, not admitted, denied settlement,
  not covered), to the fen;
- **settlement**: each cost's increments equal what its lines and settlement parts counted;
  a settlement cost's start component splits into paid by funds + moved to another cost +
  out of scope + counted; settlements in = adjudicated + quarantined + identical repeats;
- **batch**: Σ payouts = Σ over touched member-years of B(P_after) − B(P_before), with P from
  the ledger's year to date before the batch plus the batch's increments; the accumulator log
  moves each year's accumulators by exactly the batch's increments.

Everything here is a pure function of frames. :func:`batch_totals` reduces one batch (or one
member bucket of it) to small additive frames; :func:`combine` adds buckets up;
:func:`reconcile` turns totals into identities. Amounts are integer fen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from hmb_batch.io.contracts import COMPONENT_PAIRS, LINE_COMPONENTS
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.plan.compiled import CompiledEdition
from hmb_batch.rules.engine import (
    ENGINE,
    MEMBER_YEAR,
    PriorState,
    code_sum,
    complete_facts,
    counting_code,
    cum,
    disposition_column,
    inc,
    reconciled_codes,
)
from hmb_batch.rules.validation import IS_REVERSAL, LINES_N, line_total

SHOW = 5  # settlements or members named per failed identity

INPUT = "INPUT"
IDENTICAL_REPEAT = "IDENTICAL_REPEAT"
QUARANTINED = "QUARANTINED"
REVERSAL = "REVERSAL"
SETTLEMENT_LEVEL = "SETTLEMENT_LEVEL"
PAID_BY_FUNDS = "PAID_BY_FUNDS"
OUT_OF_SCOPE = "OUT_OF_SCOPE"
COUNTED_FROM_LINES = "FROM_LINES_AND_SETTLEMENT_PARTS"  # what a fee-lines cost's lines counted
START = "START"  # a settlement cost's start amount (e.g. inscp_amt), before the split

_COMPONENTS_SCHEMA = {
    "component": pl.String,
    "disposition": pl.String,
    "amount_fen": pl.Int64,
    "lines": pl.Int64,
}
_PARTS_SCHEMA = {"cost": pl.String, "part": pl.String, "amount_fen": pl.Int64}
_YEARS_SCHEMA = {
    "plan_year": pl.Int64,
    "cost": pl.String,
    "before_fen": pl.Int64,
    "increment_fen": pl.Int64,
    "log_delta_fen": pl.Int64,
}
_PAYOUTS_SCHEMA = {
    "plan_year": pl.Int64,
    "payout_fen": pl.Int64,
    "telescoped_fen": pl.Int64,
    "settlements": pl.Int64,
}
_MISMATCH_SCHEMA = {
    "identity": pl.String,
    "key": pl.String,
    "expected_fen": pl.Int64,
    "found_fen": pl.Int64,
}


@dataclass(frozen=True)
class Totals:
    """A batch (or a member bucket of one) reduced to additive totals; see :func:`combine`."""

    components: pl.DataFrame  # component, disposition, amount_fen, lines
    settlement_parts: pl.DataFrame  # cost, part, amount_fen
    years: pl.DataFrame  # plan_year, cost, before_fen, increment_fen, log_delta_fen
    payouts: pl.DataFrame  # plan_year, payout_fen, telescoped_fen, settlements
    mismatches: pl.DataFrame  # identity, key (setl_id or psn_no), expected_fen, found_fen

    @staticmethod
    def of_lines(components: pl.DataFrame) -> Totals:
        """Totals holding only fee-line component rows (e.g. input totals counted apart)."""
        return Totals(
            components.select(list(_COMPONENTS_SCHEMA)).cast(_COMPONENTS_SCHEMA),  # type: ignore[arg-type]
            pl.DataFrame(schema=_PARTS_SCHEMA),
            pl.DataFrame(schema=_YEARS_SCHEMA),
            pl.DataFrame(schema=_PAYOUTS_SCHEMA),
            pl.DataFrame(schema=_MISMATCH_SCHEMA),
        )


def _fen(col: str) -> pl.Expr:
    return pl.col(col).fill_null(0).cast(pl.Int64)


def no_line_sums() -> pl.DataFrame:
    """An empty frame of :func:`component_sums` rows."""
    return pl.DataFrame(schema=_COMPONENTS_SCHEMA)


def component_sums(frame: pl.LazyFrame, disposition: str | pl.Expr) -> pl.LazyFrame:
    """Long rows (component, disposition, amount_fen, lines) for each component of ``frame``."""
    if isinstance(disposition, str):  # one pass: every component's sum in one select
        sums = frame.select(
            pl.len().cast(pl.Int64).alias("lines"),
            *[_fen(c).sum().alias(c) for c in LINE_COMPONENTS],
        )
        return (
            sums.unpivot(
                on=list(LINE_COMPONENTS),
                index="lines",
                variable_name="component",
                value_name="amount_fen",
            )
            .filter(pl.col("lines") > 0)  # as a group-by of no rows: no row
            .select("component", pl.lit(disposition).alias("disposition"), "amount_fen", "lines")
        )
    label = disposition
    parts = [
        frame.group_by(label.alias("disposition"))
        .agg(_fen(c).sum().alias("amount_fen"), pl.len().cast(pl.Int64).alias("lines"))
        .select(pl.lit(c).alias("component"), "disposition", "amount_fen", "lines")
        for c in LINE_COMPONENTS
    ]
    return pl.concat(parts)


def _audit_sums(audit: pl.LazyFrame) -> pl.LazyFrame:
    # grouped by the Enum (cheap), the few groups' codes then as text
    parts = [
        audit.group_by(pl.col(disposition_column(c)).alias("disposition"))
        .agg(_fen(c).sum().alias("amount_fen"), pl.len().cast(pl.Int64).alias("lines"))
        .select(
            pl.lit(c).alias("component"),
            pl.col("disposition").cast(pl.String),
            "amount_fen",
            "lines",
        )
        for c in LINE_COMPONENTS
    ]
    return pl.concat(parts)


def quarantined_line_fen(quarantine: pl.LazyFrame) -> pl.LazyFrame:
    """The quarantine's fee-line records with their amounts back in fen (they are yuan there)."""
    lines = quarantine.filter(pl.col("record") == "fee_line")
    return lines.select(
        *[
            (pl.col(c).cast(pl.Decimal(20, 2)) * 100).cast(pl.Int64).alias(c)
            for c in LINE_COMPONENTS
        ]
    )


def _mismatches(frame: pl.LazyFrame, identity: str, key: str) -> pl.LazyFrame:
    return (
        frame.filter(pl.col("expected_fen") != pl.col("found_fen"))
        .sort(key)
        .head(SHOW)
        .select(
            pl.lit(identity).alias("identity"),
            pl.col(key).cast(pl.String).alias("key"),
            "expected_fen",
            "found_fen",
        )
    )


def line_totals(
    *,
    quarantine: pl.LazyFrame,
    line_sums: pl.DataFrame | None = None,
    audit: pl.LazyFrame | None = None,
) -> Totals:
    """The fee-line component totals of one part of a batch's lines.

    ``line_sums``: :func:`component_sums` of the typed fee lines as read, before validation
    (``INPUT``), and of the copies validation dropped as identical repeats; ``quarantine``:
    quarantine records (amounts in yuan; its fee-line records count as ``QUARANTINED``);
    ``audit``: the settled fee-line audit (its lines by disposition).
    """
    parts = [component_sums(quarantined_line_fen(quarantine), QUARANTINED)]
    if line_sums is not None:
        parts.append(line_sums.lazy())
    if audit is not None:
        present = set(audit.collect_schema().names())
        audit = audit.with_columns(  # an empty batch's audit may lack them: nothing to dispose of
            *[
                pl.lit(None, pl.String).alias(disposition_column(c))
                for c in LINE_COMPONENTS
                if disposition_column(c) not in present
            ],
            *[pl.lit(None, pl.Int64).alias(c) for c in LINE_COMPONENTS if c not in present],
        )
        parts.append(_audit_sums(audit))
    components = (
        pl.concat(parts)
        .group_by("component", "disposition")
        .agg(pl.col("amount_fen").sum(), pl.col("lines").sum())
        .collect(engine=ENGINE)
    )
    return Totals.of_lines(components)


def member_totals(
    *,
    plan: PlanSelection,
    facts: pl.LazyFrame,
    roster: pl.LazyFrame,
    payouts: pl.LazyFrame,
    prior: PriorState | None,
    accumulator_log: pl.LazyFrame | None,
    costs: Sequence[str],
) -> Totals:
    """Reduce one member bucket's adjudication to the totals the settlement and batch
    identities compare, and its valid reversals' fee lines (``REVERSAL``).

    ``facts``: the settlements the engine read, with their line facts
    (:func:`hmb_batch.rules.engine.line_facts`); ``payouts``: the engine's;
    ``accumulator_log``: the ledger rows the batch would insert (None without a ledger).
    """
    key = ["setl_id", "batch_seq"]
    facts = complete_facts(facts, plan)
    reversals = payouts.filter(pl.col(IS_REVERSAL)).select(key)
    reversal_lines = facts.join(reversals, on=key, how="semi").select(
        pl.lit(REVERSAL).alias("disposition"),
        pl.col(LINES_N).fill_null(0).sum().cast(pl.Int64).alias("lines"),
        *[_fen(line_total(c)).sum().alias(c) for c in LINE_COMPONENTS],
    )
    components = reversal_lines.unpivot(
        on=list(LINE_COMPONENTS),
        index=["disposition", "lines"],
        variable_name="component",
        value_name="amount_fen",
    ).filter(pl.col("lines") > 0)
    # only the header columns the cost checks read: the whole header of every settlement cost
    # as much to join as the checks themselves
    read: set[str] = set()
    for e in plan.editions:
        for c in e.costs.values():
            read |= set(c.in_scope.meta.root_names()) | set(c.settlement_amount.meta.root_names())
            read |= {n for n in (c.start, *c.less_funds, *c.less_after) if n is not None}
    have = payouts.collect_schema().names()
    names = facts.collect_schema().names()
    header = [c for c in names if c in read and c not in have]
    sums = [code_sum(c) for c in reconciled_codes(plan)]
    # and only the payout columns they read: each edition's filter copies what is joined
    wanted = read | {"status", "edition"} | {inc(c) for c in costs}
    checked = [c for c in have if c in wanted and c not in key]
    (originals,) = pl.collect_all(
        [
            payouts.filter(~pl.col(IS_REVERSAL))
            .select(*key, *checked)
            .join(facts.select(*key, *header, *sums), on=key, how="left"),
        ],
        engine=ENGINE,
    )
    parts: list[pl.LazyFrame] = []
    mismatches: list[pl.LazyFrame] = []
    for edition in {e.id: e for e in plan.editions}.values():
        mine = originals.filter(pl.col("edition") == edition.id)
        p, m = _cost_checks(edition, mine, costs)
        parts += p
        mismatches += m
    years, payout_years, m = _batch_level(plan, payouts, roster, prior, accumulator_log, costs)
    mismatches += m
    frames = pl.collect_all(
        [
            components.select("component", "disposition", "amount_fen", "lines"),
            pl.concat(parts).group_by("cost", "part").agg(pl.col("amount_fen").sum())
            if parts
            else pl.DataFrame(schema=_PARTS_SCHEMA).lazy(),
            years,
            payout_years,
            pl.concat(mismatches) if mismatches else pl.DataFrame(schema=_MISMATCH_SCHEMA).lazy(),
        ],
        engine=ENGINE,
    )
    return Totals(*frames)


def _cost_checks(
    edition: CompiledEdition,
    originals: pl.DataFrame,
    costs: Sequence[str],
) -> tuple[list[pl.LazyFrame], list[pl.LazyFrame]]:
    """Per cost: increments against what lines and settlement parts counted, per settlement.

    ``originals``: the edition's non-reversal settlements of the payouts with their header
    columns and what their lines put under each reconciled code (before any denial: a denied
    settlement's lines count nothing).
    """
    denied = pl.col("status") == "denied"
    parts: list[pl.LazyFrame] = []
    mismatches: list[pl.LazyFrame] = []
    rows = originals
    for cid, c in edition.costs.items():
        if cid not in costs:
            continue
        code = counting_code(cid, c.audit_code)
        if c.line_amount is not None:
            check = rows.select(
                "setl_id",
                (
                    pl.when(denied).then(0).otherwise(_fen(code_sum(code)))
                    + pl.when(denied | ~c.in_scope).then(0).otherwise(c.settlement_amount)
                )
                .cast(pl.Int64)
                .alias("expected_fen"),
                pl.col(inc(cid)).alias("found_fen"),
            )
            sums = check.select(
                pl.col("expected_fen").sum().alias(COUNTED_FROM_LINES),
                pl.col("found_fen").sum().alias(code),
            )
            parts.append(_long(cid, sums))
            mismatches.append(_mismatches(check.lazy(), f"cost_counted.{cid}", "setl_id"))
            continue
        # a settlement cost: its start splits into paid by funds, moved, out of scope, counted
        assert c.start is not None
        start = _fen(c.start)
        funds = pl.sum_horizontal([pl.lit(0), *[_fen(f) for f in c.less_funds]])
        after = pl.sum_horizontal([pl.lit(0), *[_fen(f) for f in c.less_after]])
        rest = (start - funds).clip(lower_bound=0)
        live = c.in_scope
        moved = "MOVED_" + "_".join(c.less_after).upper() if c.less_after else "MOVED"
        split = rows.filter(~denied).select(
            "setl_id",
            start.alias(START),
            pl.when(live).then(pl.min_horizontal(start, funds)).otherwise(0).alias(PAID_BY_FUNDS),
            pl.when(live).then(pl.min_horizontal(rest, after)).otherwise(0).alias(moved),
            pl.when(live).then(0).otherwise(start).alias(OUT_OF_SCOPE),
            pl.col(inc(cid)).alias(code),
            *(
                [_fen(code_sum(SETTLEMENT_LEVEL)).alias("_lines_left")]
                if code_sum(SETTLEMENT_LEVEL) in rows.columns
                else [pl.lit(0, pl.Int64).alias("_lines_left")]
            ),
        )
        parts.append(_long(cid, split.select(pl.exclude("setl_id", "_lines_left").sum())))
        check = split.select(
            "setl_id",
            pl.col(START).alias("expected_fen"),
            (pl.col(PAID_BY_FUNDS) + pl.col(moved) + pl.col(OUT_OF_SCOPE) + pl.col(code))
            .cast(pl.Int64)
            .alias("found_fen"),
        )
        mismatches.append(_mismatches(check.lazy(), f"cost_split.{cid}", "setl_id"))
        if c.start in COMPONENT_PAIRS:
            # what the lines left at settlement level must be what the settlement split
            comp = COMPONENT_PAIRS[c.start]
            both = split.select(
                "setl_id",
                pl.col("_lines_left").alias("expected_fen"),
                pl.col(START).alias("found_fen"),
            )
            mismatches.append(_mismatches(both.lazy(), f"settlement_level.{comp}", "setl_id"))
    return parts, mismatches


def _long(cost: str, sums: pl.DataFrame) -> pl.LazyFrame:
    """One row of sums (a column per part) as (cost, part, amount_fen) rows."""
    return (
        sums.unpivot(variable_name="part", value_name="amount_fen")
        .select(pl.lit(cost).alias("cost"), "part", pl.col("amount_fen").cast(pl.Int64))
        .lazy()
    )


def _batch_level(
    plan: PlanSelection,
    payouts: pl.LazyFrame,
    roster: pl.LazyFrame,
    prior: PriorState | None,
    accumulator_log: pl.LazyFrame | None,
    costs: Sequence[str],
) -> tuple[pl.LazyFrame, pl.LazyFrame, list[pl.LazyFrame]]:
    """Year totals and the telescoping of payouts, per member-year then per plan year."""
    member_years = payouts.group_by(MEMBER_YEAR).agg(
        *[pl.col(inc(c)).sum() for c in costs],
        pl.col("payout").sum().alias("payout_fen"),
        pl.len().cast(pl.Int64).alias("settlements"),
    )
    before = (
        prior.accumulators.select(*MEMBER_YEAR, *[cum(c) for c in costs])
        if prior is not None
        else pl.DataFrame(
            schema={"psn_no": pl.String, "plan_year": pl.Int64, **{cum(c): pl.Int64 for c in costs}}
        ).lazy()
    )
    flags = roster.select(
        "psn_no",
        pl.col("plan_year").cast(pl.Int64),
        pl.col("pre_existing").fill_null(False),
        pl.col("consecutive_years").fill_null(0),
    )
    my = (
        member_years.with_columns(pl.col("plan_year").cast(pl.Int64))
        .join(before.with_columns(pl.col("plan_year").cast(pl.Int64)), on=MEMBER_YEAR, how="left")
        .join(flags, on=MEMBER_YEAR, how="left")
        .with_columns(
            *[pl.col(cum(c)).fill_null(0) for c in costs],
            pl.col("pre_existing").fill_null(False),
            pl.col("consecutive_years").fill_null(0),
        )
    )
    telescoped: list[pl.LazyFrame] = []
    for year in sorted({e.edition.edition for e in plan.editions}) if not plan.fixed else [None]:
        edition = plan.editions[0] if year is None else plan.for_year(year)
        assert edition is not None
        flag_exprs = dict(
            pre_existing=pl.col("pre_existing"), consecutive_years=pl.col("consecutive_years")
        )
        b_before = edition.benefit({c: pl.col(cum(c)) for c in costs}, **flag_exprs)
        b_after = edition.benefit({c: pl.col(cum(c)) + pl.col(inc(c)) for c in costs}, **flag_exprs)
        rows = my if year is None else my.filter(pl.col("plan_year") == year)
        telescoped.append(
            rows.with_columns(
                (b_after.benefit_total - b_before.benefit_total)
                .cast(pl.Int64)
                .alias("telescoped_fen")
            )
        )
    tel = pl.concat(telescoped)
    payout_years = tel.group_by("plan_year").agg(
        pl.col("payout_fen").sum(), pl.col("telescoped_fen").sum(), pl.col("settlements").sum()
    )
    mismatches = [
        _mismatches(
            tel.select(
                pl.format("{} {}", pl.col("psn_no"), pl.col("plan_year")).alias("member_year"),
                pl.col("telescoped_fen").alias("expected_fen"),
                pl.col("payout_fen").alias("found_fen"),
            ),
            "payouts_telescope",
            "member_year",
        )
    ]
    long_inc = pl.concat(
        [
            my.group_by("plan_year").agg(
                pl.lit(c).alias("cost"),
                pl.col(cum(c)).sum().alias("before_fen"),
                pl.col(inc(c)).sum().alias("increment_fen"),
            )
            for c in costs
        ]
    )
    if accumulator_log is not None:
        delta = accumulator_log.group_by(pl.col("plan_year").cast(pl.Int64), "cost").agg(
            (pl.col("after_fen") - pl.col("before_fen").fill_null(0)).sum().alias("log_delta_fen")
        )
        years = long_inc.join(delta, on=["plan_year", "cost"], how="full", coalesce=True)
    else:
        years = long_inc.with_columns(pl.col("increment_fen").alias("log_delta_fen"))
    years = years.select(
        pl.col("plan_year").cast(pl.Int64),
        "cost",
        *[
            pl.col(c).fill_null(0).cast(pl.Int64)
            for c in ("before_fen", "increment_fen", "log_delta_fen")
        ],
    )
    return years, payout_years, mismatches


def combine(parts: Iterable[Totals]) -> Totals:
    """Add up the totals of a batch's member buckets."""
    parts = list(parts)
    return Totals(
        pl.concat([p.components for p in parts])
        .group_by("component", "disposition")
        .agg(pl.col("amount_fen").sum(), pl.col("lines").sum()),
        pl.concat([p.settlement_parts for p in parts])
        .group_by("cost", "part")
        .agg(pl.col("amount_fen").sum()),
        pl.concat([p.years for p in parts])
        .group_by("plan_year", "cost")
        .agg(
            pl.col("before_fen").sum(), pl.col("increment_fen").sum(), pl.col("log_delta_fen").sum()
        ),
        pl.concat([p.payouts for p in parts])
        .group_by("plan_year")
        .agg(
            pl.col("payout_fen").sum(), pl.col("telescoped_fen").sum(), pl.col("settlements").sum()
        ),
        pl.concat([p.mismatches for p in parts]),
    )


@dataclass(frozen=True)
class Identity:
    """One balancing identity: what was expected, what was found, and who is involved."""

    name: str
    level: str  # line | settlement | batch | ledger
    description: str
    expected: int
    found: int
    unit: str = "fen"  # fen | count
    first: list[str] = field(default_factory=list)  # settlements or members involved

    @property
    def passed(self) -> bool:
        """Whether expected equals found (and no settlement or member is named)."""
        return self.expected == self.found and not self.first

    def to_json(self) -> dict[str, Any]:
        """Stable fields for monitoring (README: reconciliation.json)."""

        def show(v: int) -> str | int:
            return str(fen_to_yuan(v)) if self.unit == "fen" else v

        return {
            "name": self.name,
            "level": self.level,
            "description": self.description,
            "unit": "yuan" if self.unit == "fen" else self.unit,
            "expected": show(self.expected),
            "found": show(self.found),
            "difference": show(self.found - self.expected),
            "passed": self.passed,
            "first_involved": self.first,
        }

    def message(self) -> str:
        """One line for an error message."""

        def show(v: int) -> str:
            return f"{fen_to_yuan(v)} yuan" if self.unit == "fen" else f"{v:,}"

        who = f"; first involved: {', '.join(self.first)}" if self.first else ""
        return (
            f"{self.name} ({self.description}): expected {show(self.expected)}, "
            f"found {show(self.found)}{who}"
        )


@dataclass(frozen=True)
class Reconciliation:
    """A batch's identities and the totals behind them (``reconciliation.json``)."""

    batch_id: str
    identities: list[Identity]
    totals: Totals
    settlement_counts: dict[str, Any]

    @property
    def passed(self) -> bool:
        """Whether every identity holds."""
        return all(i.passed for i in self.identities)

    def failures(self) -> list[Identity]:
        """The identities that do not hold."""
        return [i for i in self.identities if not i.passed]

    def with_identities(self, extra: Iterable[Identity]) -> Reconciliation:
        """The same reconciliation with more identities (e.g. the ledger's, checked later)."""
        return Reconciliation(
            self.batch_id, [*self.identities, *extra], self.totals, self.settlement_counts
        )

    def to_json(self) -> dict[str, Any]:
        """Stable field names for monitoring (README: reconciliation.json)."""
        t = self.totals
        components = [
            {
                "component": c,
                "input": str(fen_to_yuan(_amount(t.components, c, INPUT))),
                "by_disposition": {
                    r["disposition"]: {
                        "amount": str(fen_to_yuan(r["amount_fen"])),
                        "lines": r["lines"],
                    }
                    for r in t.components.filter(
                        (pl.col("component") == c) & (pl.col("disposition") != INPUT)
                    )
                    .sort("disposition")
                    .iter_rows(named=True)
                },
            }
            for c in LINE_COMPONENTS
        ]
        parts = {
            cost: {
                r["part"]: str(fen_to_yuan(r["amount_fen"]))
                for r in t.settlement_parts.filter(pl.col("cost") == cost)
                .sort("part")
                .iter_rows(named=True)
            }
            for cost in sorted(set(t.settlement_parts["cost"].to_list()))
        }
        years = [
            {
                "plan_year": y,
                "settlements": int(_sum(t.payouts.filter(pl.col("plan_year") == y), "settlements")),
                "payout": str(
                    fen_to_yuan(_sum(t.payouts.filter(pl.col("plan_year") == y), "payout_fen"))
                ),
                "costs": {
                    r["cost"]: {
                        "before": str(fen_to_yuan(r["before_fen"])),
                        "increment": str(fen_to_yuan(r["increment_fen"])),
                        "after": str(fen_to_yuan(r["before_fen"] + r["increment_fen"])),
                    }
                    for r in t.years.filter(pl.col("plan_year") == y)
                    .sort("cost")
                    .iter_rows(named=True)
                },
            }
            for y in sorted(
                set(t.years["plan_year"].to_list()) | set(t.payouts["plan_year"].to_list())
            )
        ]
        return {
            "format": "hmb-batch/reconciliation",
            "format_version": 1,
            "batch_id": self.batch_id,
            "passed": self.passed,
            "identities": [i.to_json() for i in self.identities],
            "settlements": self.settlement_counts,
            "fee_line_components": components,
            "costs": parts,
            "plan_years": years,
        }


def _sum(frame: pl.DataFrame, col: str) -> int:
    return int(frame[col].sum() or 0) if frame.height else 0


def _amount(
    components: pl.DataFrame, component: str, disposition: str, col: str = "amount_fen"
) -> int:
    rows = components.filter(
        (pl.col("component") == component) & (pl.col("disposition") == disposition)
    )
    return _sum(rows, col)


def _first(mismatches: pl.DataFrame, identity: str) -> list[str]:
    rows = mismatches.filter(pl.col("identity") == identity).sort("key").head(SHOW)
    return [
        f"{r['key']} (expected {fen_to_yuan(r['expected_fen'])}, "
        f"found {fen_to_yuan(r['found_fen'])})"
        for r in rows.iter_rows(named=True)
    ]


def reconcile(
    batch_id: str,
    totals: Totals,
    *,
    settlements_in: int,
    adjudicated: int,
    quarantined: int,
    identical_repeats: int,
    by_status: dict[str, int],
    quarantined_by_reason: dict[str, int],
    with_ledger: bool,
) -> Reconciliation:
    """The batch's identities from its totals (README "Reconciliation" describes each)."""
    t = totals
    ids: list[Identity] = []
    for c in LINE_COMPONENTS:
        rows = t.components.filter(pl.col("component") == c)
        out = rows.filter(pl.col("disposition") != INPUT)
        ids.append(
            Identity(
                f"fee_lines.{c}",
                "line",
                f"fee lines' {c} in = repeats + quarantined + reversals + adjudicated lines "
                "by disposition",
                _amount(t.components, c, INPUT),
                _sum(out, "amount_fen"),
            )
        )
    c0 = LINE_COMPONENTS[0]
    ids.append(
        Identity(
            "fee_lines.count",
            "line",
            "fee lines in = repeats + quarantined + reversal lines + adjudicated lines",
            _amount(t.components, c0, INPUT, "lines"),
            _sum(
                t.components.filter((pl.col("component") == c0) & (pl.col("disposition") != INPUT)),
                "lines",
            ),
            unit="count",
        )
    )
    for cost in sorted(set(t.settlement_parts["cost"].to_list())):
        parts = t.settlement_parts.filter(pl.col("cost") == cost)
        if COUNTED_FROM_LINES in set(parts["part"].to_list()):
            name, whole, text = (
                "cost_counted",
                COUNTED_FROM_LINES,
                f"{cost} increments = what each settlement's lines and settlement parts counted",
            )
        else:
            name, whole, text = (
                "cost_split",
                START,
                f"{cost}: start amount = paid by funds + moved to another cost + out of scope "
                "+ counted",
            )
        ids.append(
            Identity(
                f"{name}.{cost}",
                "settlement",
                text,
                _sum(parts.filter(pl.col("part") == whole), "amount_fen"),
                _sum(parts.filter(pl.col("part") != whole), "amount_fen"),
                first=_first(t.mismatches, f"{name}.{cost}"),
            )
        )
    for comp in sorted(
        set(t.components.filter(pl.col("disposition") == SETTLEMENT_LEVEL)["component"].to_list())
    ):
        starts = t.settlement_parts.filter(pl.col("part") == START)
        ids.append(
            Identity(
                f"settlement_level.{comp}",
                "settlement",
                f"{comp} of lines left to the settlement level = the settlement costs' "
                "start amounts",
                _amount(t.components, comp, SETTLEMENT_LEVEL),
                _sum(starts, "amount_fen"),
                first=_first(t.mismatches, f"settlement_level.{comp}"),
            )
        )
    ids.append(
        Identity(
            "settlements.count",
            "settlement",
            "settlement rows in = adjudicated (paid, zero, denied, reversal) + quarantined + "
            "identical repeats",
            settlements_in,
            adjudicated + quarantined + identical_repeats,
            unit="count",
        )
    )
    ids.append(
        Identity(
            "payouts.telescope",
            "batch",
            "Σ payouts = Σ over touched member-years of B(P_after) − B(P_before)",
            _sum(t.payouts, "telescoped_fen"),
            _sum(t.payouts, "payout_fen"),
            first=_first(t.mismatches, "payouts_telescope"),
        )
    )
    if with_ledger:
        ids.append(
            Identity(
                "ledger.accumulator_log",
                "ledger",
                "the batch's accumulator log moves the year to date by exactly its increments",
                _sum(t.years, "increment_fen"),
                _sum(t.years, "log_delta_fen"),
                first=[
                    f"plan year {r['plan_year']} {r['cost']}"
                    for r in t.years.filter(pl.col("increment_fen") != pl.col("log_delta_fen"))
                    .sort("plan_year", "cost")
                    .head(SHOW)
                    .iter_rows(named=True)
                ],
            )
        )
    counts = {
        "in": settlements_in,
        "adjudicated": adjudicated,
        "by_status": dict(sorted(by_status.items())),
        "quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(quarantined_by_reason.items())),
        "identical_repeats": identical_repeats,
        # validation refuses a settlement whose header and lines disagree on any component
        "headers_agreeing_with_lines": adjudicated - by_status.get("reversal", 0),
    }
    return Reconciliation(batch_id, ids, t, counts)


def long_accumulators(prior: PriorState, members: pl.DataFrame, costs: list[str]) -> pl.DataFrame:
    """The prior year to date of ``members``: psn_no, plan_year, cost, value (fen)."""
    return (
        prior.accumulators.join(members.lazy(), on="psn_no", how="semi")
        .collect(engine=ENGINE)
        .unpivot(index=["psn_no", "plan_year"], on=[cum(c) for c in costs], variable_name="cost")
        .with_columns(pl.col("cost").str.strip_prefix(cum("")), pl.col("value").fill_null(0))
    )


@dataclass(frozen=True)
class AfterExpectation:
    """What the ledger must hold after the commit, for the batch's members."""

    by_year: pl.DataFrame  # plan_year, cost, before, batch (fen)
    payout_fen: int

    @staticmethod
    def of(payouts: pl.DataFrame, prior: PriorState, costs: list[str]) -> AfterExpectation:
        """From a batch's (or bucket's) engine payouts and the prior it was computed on."""
        members = payouts.select("psn_no").unique()
        # only the member-years the batch touches: the ledger's after side is the batch's own
        # accumulator rows, and a member's other plan years are not among them
        touched = payouts.select("psn_no", pl.col("plan_year").cast(pl.Int64)).unique()
        before = (
            long_accumulators(prior, members, costs)
            .with_columns(pl.col("plan_year").cast(pl.Int64))
            .join(touched, on=["psn_no", "plan_year"], how="semi")
            .group_by("plan_year", "cost")
            .agg(pl.col("value").sum().alias("before"))
        )
        batch = (
            payouts.unpivot(index=["plan_year"], on=[inc(c) for c in costs], variable_name="cost")
            .with_columns(
                pl.col("cost").str.strip_prefix(inc("")), pl.col("plan_year").cast(pl.Int64)
            )
            .group_by("plan_year", "cost")
            .agg(pl.col("value").sum().alias("batch"))
        )
        by_year = before.with_columns(pl.col("plan_year").cast(pl.Int64)).join(
            batch, on=["plan_year", "cost"], how="full", coalesce=True
        )
        return AfterExpectation(by_year.fill_null(0), int(payouts["payout"].sum() or 0))

    @staticmethod
    def combine(parts: list[AfterExpectation]) -> AfterExpectation:
        """Add up buckets (their members are disjoint)."""
        return AfterExpectation(
            pl.concat([p.by_year for p in parts])
            .group_by("plan_year", "cost")
            .agg(pl.col("before").sum(), pl.col("batch").sum()),
            sum(p.payout_fen for p in parts),
        )
