"""Compiled editions: a validated edition turned once into the Polars expressions the engine runs.

Nothing downstream of this module reads an edition's raw fields for computation; the engine asks a
:class:`CompiledEdition` for expressions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from hmb_batch.plan.model import RATE_SCALE, Bracket, Cost, Edition, Responsibility, Term

LIST_FLAG = "on_list__{}"  # boolean column on a fee line: on list {} at its fee date

EXCLUSION_CODES = {"negative": "NEGATIVE_LIST"}
ADMISSION_CODES = {"admission": "NOT_ADMITTED"}


def list_flag(name: str) -> str:
    """Column name of the fee-line flag 'on list ``name`` at the fee date'."""
    return LIST_FLAG.format(name)


def half_up(numerator: pl.Expr, scale: int) -> pl.Expr:
    """Round ``numerator / scale`` half away from zero, in integers (the numerator's type)."""
    half = scale // 2
    # 0 − x rather than −x: Polars has no negation for Int128
    return (
        pl.when(numerator >= 0)
        .then((numerator + half) // scale)
        .otherwise(0 - ((0 - numerator + half) // scale))
    )


def times_rate(amount: pl.Expr, rate_ppm: int) -> pl.Expr:
    """``amount × rate / 10^6`` rounded half up to the fen, exact at any Int64 amount.

    The product is formed in Int128: an Int64 amount of fen times a rate of up to 10^6 parts per
    million can reach 9.2 × 10^24, far past Int64 (which wraps from 9.2 × 10^12 fen, about 9.2 ×
    10^10 yuan); Int128 holds 1.7 × 10^38. The result is at most ``amount`` in magnitude (rates
    are validated to lie in 0..1), so it fits Int64 again.
    """
    return half_up(amount.cast(pl.Int128) * pl.lit(rate_ppm, pl.Int128), RATE_SCALE).cast(pl.Int64)


def bracket_benefit(payable: pl.Expr, brackets: list[Bracket]) -> pl.Expr:
    """B(P): the sum over bands of rate × the part of P in the band, rounded half up to the fen.

    In Int128 (see :func:`times_rate`): B(P) ≤ P, so the result fits Int64 again.
    """
    parts = []
    low = 0
    wide = payable.cast(pl.Int128)
    for b in brackets:
        portion = wide - low if b.up_to is None else wide.clip(low, b.up_to) - low
        parts.append(portion.clip(lower_bound=0) * pl.lit(b.rate, pl.Int128))
        if b.up_to is not None:
            low = b.up_to
    return half_up(pl.sum_horizontal(parts), RATE_SCALE).cast(pl.Int64)


@dataclass(frozen=True)
class CompiledCost:
    """One cost, compiled.

    ``settlement_amount``: the settlement-level amount (all of a settlement cost; the settlement
    parts of a fee-lines cost). ``line_amount``: per fee line (fee-lines costs), reading the list
    flags ``on_list__NAME``. ``in_scope``: the settlement's med_type is covered.
    """

    id: str
    label: str
    kind: str
    settlement_amount: pl.Expr
    line_amount: pl.Expr | None
    in_scope: pl.Expr
    lists: frozenset[str]
    audit_code: str | None
    excluded: pl.Expr | None  # line on an excluded list
    not_admitted: pl.Expr | None  # a part refused for want of list membership
    # per fee-line component: does this cost count it on this line / refuse it for want of a list
    counts_component: dict[str, pl.Expr] = field(default_factory=dict)
    refuses_component: dict[str, pl.Expr] = field(default_factory=dict)
    # settlement costs: start − less_funds (clipped at 0) − less_after (clipped at 0)
    start: str | None = None
    less_funds: tuple[str, ...] = ()
    less_after: tuple[str, ...] = ()


@dataclass(frozen=True)
class TermValue:
    """One term of a responsibility at some year to date: ``counted = max(0, cost − threshold)``
    (see :meth:`CompiledEdition.term_values`)."""

    term: Term
    threshold: pl.Expr  # the floor, the deductible, or what earlier terms left of a shared pool
    counted: pl.Expr


@dataclass(frozen=True)
class BenefitExprs:
    """What a member's year-to-date costs are worth: payable and benefit, per responsibility."""

    payable: dict[str, pl.Expr]
    benefit: dict[str, pl.Expr]  # after brackets, caps and the plan-wide cap allocation
    payable_total: pl.Expr
    benefit_total: pl.Expr


def _compile_cost(cid: str, cost: Cost) -> CompiledCost:
    in_scope = pl.col("med_type").is_in(cost.med_types) if cost.med_types else pl.lit(True)
    if cost.kind == "settlement":
        assert cost.start is not None
        after_funds = (
            pl.col(cost.start) - pl.sum_horizontal([pl.lit(0), *map(pl.col, cost.less_funds)])
        ).clip(lower_bound=0)
        amount = (after_funds - pl.sum_horizontal([pl.lit(0), *map(pl.col, cost.less_after)])).clip(
            lower_bound=0
        )
        return CompiledCost(
            cid,
            cost.label,
            cost.kind,
            amount,
            None,
            in_scope,
            frozenset(),
            cost.audit_code,
            None,
            None,
            start=cost.start,
            less_funds=tuple(cost.less_funds),
            less_after=tuple(cost.less_after),
        )
    excluded = pl.any_horizontal(
        [pl.lit(False), *[pl.col(list_flag(n)) for n in cost.exclude_lists]]
    )
    line_terms = []
    refused = []
    counts: dict[str, list[pl.Expr]] = {}
    refuses: dict[str, list[pl.Expr]] = {}
    for part in cost.parts:
        matches = pl.lit(True)
        if part.list_types:
            matches = pl.any_horizontal(
                [pl.col("list_type").str.starts_with(p) for p in part.list_types]
            )
        if part.levels:
            matches = matches & pl.col("chrgitm_lv").is_in(part.levels)
        amount = pl.sum_horizontal([pl.col(c) for c in part.components])
        if part.on_list is not None:
            refused.append(matches & ~pl.col(list_flag(part.on_list)) & (amount != 0))
            for comp in part.components:
                refuses.setdefault(comp, []).append(matches & ~pl.col(list_flag(part.on_list)))
            matches = matches & pl.col(list_flag(part.on_list))
        line_terms.append(pl.when(matches).then(amount).otherwise(0))
        for comp in part.components:
            counts.setdefault(comp, []).append(matches)
    line_amount = pl.when(excluded).then(0).otherwise(pl.sum_horizontal([pl.lit(0), *line_terms]))
    settlement_amount = pl.sum_horizontal(
        [
            pl.lit(0),
            *[times_rate(pl.col(sp.component), sp.factor) for sp in cost.settlement_parts],
        ]
    )
    lists = set(cost.exclude_lists) | {p.on_list for p in cost.parts if p.on_list}
    not_admitted = (~excluded & pl.any_horizontal(refused)) if refused else None
    excl = excluded if cost.exclude_lists else None
    return CompiledCost(
        cid,
        cost.label,
        cost.kind,
        settlement_amount,
        line_amount,
        in_scope,
        frozenset(lists),
        cost.audit_code,
        excl,
        not_admitted,
        counts_component={k: ~excluded & pl.any_horizontal(v) for k, v in counts.items()},
        refuses_component={k: ~excluded & pl.any_horizontal(v) for k, v in refuses.items()},
    )


@dataclass(frozen=True)
class CompiledEdition:
    """An edition compiled for the engine."""

    edition: Edition
    costs: dict[str, CompiledCost] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Edition id, e.g. ``zhelibao-2022``."""
        return self.edition.id

    @property
    def lists(self) -> frozenset[str]:
        """Every list name the edition's costs read."""
        out: set[str] = set()
        for c in self.costs.values():
            out |= c.lists
        return frozenset(out)

    # --- eligibility -----------------------------------------------------------------------
    def _start_rules(self, plan_year: int) -> list[tuple[int, pl.Expr, pl.Expr]]:
        """DOMAIN.md rules 1–4 as (rule, applies, start), in the order they are tried."""
        el = self.edition.eligibility
        jan1 = dt.date(plan_year, 1, 1)
        m, d = el.enrolment_deadline
        deadline = dt.date(plan_year - 1, m, d)
        pay = pl.col("pay_date")
        on_time = pay <= deadline

        event_ok = pl.lit(False)
        for name, days in el.special_event_windows.items():
            event_ok = event_ok | (
                (pl.col("special_event") == name)
                & (pay >= pl.col("event_date"))
                & (pay <= pl.col("event_date") + pl.duration(days=days))
            )
        event_ok = event_ok.fill_null(False)
        event_start = pl.max_horizontal(pl.lit(jan1), pl.col("basic_start_date").fill_null(jan1))

        grace = pl.lit(False)
        if el.launch_year == plan_year and el.launch_grace_last_day is not None:
            gm, gd = el.launch_grace_last_day
            grace = (pay >= jan1) & (pay <= dt.date(plan_year, gm, gd))

        late = pay.dt.offset_by(f"{el.waiting_months}mo")
        return [
            (1, on_time, pl.lit(jan1)),
            (2, event_ok, event_start),
            (3, grace, pay + pl.duration(days=1)),
            (4, pl.lit(True), late),
        ]

    def restored_start(self) -> pl.Expr:
        """The earliest benefit start after basic insurance is restored (null: not restored)."""
        months = self.edition.eligibility.restored_waiting_months
        return pl.col("basic_restored_date").dt.offset_by(f"{months}mo")

    def benefit_start_rule(self, plan_year: int) -> pl.Expr:
        """Which of DOMAIN.md rules 1–4 gives roster rows of ``plan_year`` their benefit start
        before the restored-basic rule (:meth:`restored_start`) may move it later."""
        expr = pl.lit(None, pl.Int8)
        for rule, applies, _ in reversed(self._start_rules(plan_year)):
            expr = pl.when(applies).then(pl.lit(rule, pl.Int8)).otherwise(expr)
        return expr

    def rule_start(self, plan_year: int) -> pl.Expr:
        """The benefit start rules 1–4 give roster rows of ``plan_year`` (before the
        restored-basic rule)."""
        rules = self._start_rules(plan_year)
        start = rules[-1][2]  # rule 4 applies to whoever the others do not
        for _, applies, value in reversed(rules[:-1]):
            start = pl.when(applies).then(value).otherwise(start)
        return start

    def benefit_start(self, plan_year: int) -> pl.Expr:
        """Benefit start for roster rows of ``plan_year`` (DOMAIN.md rules 1–4, restored rule)."""
        start = self.rule_start(plan_year)
        restored = self.restored_start()
        return (
            pl.when(restored.is_not_null())
            .then(pl.max_horizontal(start, restored))
            .otherwise(start)
        )

    # --- benefit ---------------------------------------------------------------------------
    def term_values(self, cum: Mapping[str, pl.Expr]) -> dict[str, list[TermValue]]:
        """Each responsibility's terms at year-to-date costs ``cum`` (cost id → Int64 fen expr):
        the threshold each term's cost is measured against and what it counts above it.

        A shared deductible is consumed in the order of the terms across responsibilities: a
        term's threshold is what earlier terms left of the pool.
        """
        e = self.edition
        pool_used: dict[str, pl.Expr] = {k: pl.lit(0, pl.Int64) for k in e.deductibles}
        out: dict[str, list[TermValue]] = {}
        for r in e.responsibilities:
            values = []
            for t in r.terms:
                ytd = cum[t.cost]
                if t.shared_deductible is not None:
                    pool = t.shared_deductible
                    remaining = (pl.lit(e.deductibles[pool]) - pool_used[pool]).clip(lower_bound=0)
                    threshold = remaining
                    pool_used[pool] = pool_used[pool] + ytd.clip(lower_bound=0)
                else:
                    fixed = t.floor if t.floor is not None else (t.deductible or 0)
                    threshold = pl.lit(fixed, pl.Int64)
                values.append(TermValue(t, threshold, (ytd - threshold).clip(lower_bound=0)))
            out[r.id] = values
        return out

    def benefit(
        self,
        cum: Mapping[str, pl.Expr],
        pre_existing: pl.Expr,
        consecutive_years: pl.Expr,
    ) -> BenefitExprs:
        """Payable and benefit from year-to-date costs ``cum`` (cost id → Int64 fen expr).

        A pure function of the year to date, so a settlement's payout ``T(after) − T(before)``
        telescopes: a member's payouts sum to ``T(year)`` however the year is split.
        """
        e = self.edition
        terms = self.term_values(cum)
        payable: dict[str, pl.Expr] = {}
        benefit: dict[str, pl.Expr] = {}
        for r in e.responsibilities:
            p = pl.sum_horizontal([t.counted for t in terms[r.id]])
            payable[r.id] = p
            benefit[r.id] = self._capped(r, p, pre_existing, consecutive_years)
        if e.plan_cap is not None:
            used: pl.Expr = pl.lit(0, pl.Int64)
            for rid, b in list(benefit.items()):
                room = (pl.lit(e.plan_cap) - used).clip(lower_bound=0)
                benefit[rid] = pl.min_horizontal(b, room)
                used = used + benefit[rid]
        return BenefitExprs(
            payable=payable,
            benefit=benefit,
            payable_total=pl.sum_horizontal(list(payable.values())),
            benefit_total=pl.sum_horizontal(list(benefit.values())),
        )

    @staticmethod
    def _capped(
        r: Responsibility, p: pl.Expr, pre_existing: pl.Expr, consecutive_years: pl.Expr
    ) -> pl.Expr:
        b = bracket_benefit(p, r.brackets)
        if r.pre_existing_brackets is not None:
            b = pl.when(pre_existing).then(bracket_benefit(p, r.pre_existing_brackets)).otherwise(b)
        if r.cap is not None:
            cap: pl.Expr = pl.lit(r.cap)
            if r.consecutive_cap is not None:
                cc = r.consecutive_cap
                cap = pl.when(consecutive_years >= cc.years).then(pl.lit(cc.cap)).otherwise(cap)
            b = pl.min_horizontal(b, cap)
        return b


def compile_edition(edition: Edition) -> CompiledEdition:
    """Compile a validated edition once."""
    return CompiledEdition(
        edition=edition,
        costs={cid: _compile_cost(cid, c) for cid, c in edition.costs.items()},
    )
