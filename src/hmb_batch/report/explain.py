"""Why a member was paid what they were paid: a member's statement explained. Pure — no I/O.

Everything here is derived from what the ledger keeps of each settlement (its edition, its
costs' increments and year to date after it, each responsibility's payable and payout and year
to date after it) and from the edition's parameters, through the same compiled expressions the
engine pays with:

- each term of a responsibility: its cost's year to date before and after the settlement
  against its floor or deductible, and what counted above it before and after;
- the bracket bands the responsibility's year-to-date payable crossed: where
  ``P_before .. P_after`` falls against the bands' bounds, the part of the settlement's payable
  in each band and the band's rate (B is rounded once per year-to-date amount, so the payout is
  ``round(B(P_after)) − round(B(P_before))``, not the sum of rounded bands);
- the cap, if one was reached, and whether the edition's own computation from the stored year
  to date reproduces the stored payout;
- the roster facts of each plan year: the benefit start, the rule (1–4) that set it, whether
  restored basic insurance moved it later, the last day of the waiting period, suspensions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import polars as pl

from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.compiled import CompiledEdition, bracket_benefit
from hmb_batch.plan.model import RATE_SCALE, Bracket, Edition, Term

EXPLAINED = "_explained_order"

TERM = pl.Struct(
    {
        "cost": pl.String,
        "kind": pl.String,  # floor | deductible | shared_deductible
        "pool": pl.String,  # the shared deductible's id
        "threshold_fen": pl.Int64,  # after the settlement (a shared pool's remainder moves)
        "cost_before_fen": pl.Int64,
        "cost_after_fen": pl.Int64,
        "counted_before_fen": pl.Int64,
        "counted_after_fen": pl.Int64,
    }
)
BAND = pl.Struct(
    {
        "from_fen": pl.Int64,
        "to_fen": pl.Int64,  # null: open above
        "rate_ppm": pl.Int64,
        "payable_fen": pl.Int64,  # the part of this settlement's payable in the band
    }
)
ROSTER_FACTS = {
    "psn_no": pl.String,
    "plan_year": pl.Int64,
    "edition": pl.String,
    "pay_date": pl.Date,
    "basic_start_date": pl.Date,
    "special_event": pl.String,
    "event_date": pl.Date,
    "rule": pl.Int8,
    "rule_start": pl.Date,
    "basic_restored_date": pl.Date,
    "restored_start": pl.Date,
    "set_by_restoration": pl.Boolean,
    "benefit_start": pl.Date,
    "waiting_period_last_day": pl.Date,
    "basic_suspended_from": pl.Date,
    "basic_suspended_to": pl.Date,
    "pre_existing": pl.Boolean,
    "consecutive_years": pl.Int64,
}


def _field(list_col: str, key: str, value: str, wanted: str, default: int | None = 0) -> pl.Expr:
    """``value`` of the element of list-of-struct ``list_col`` whose ``key`` is ``wanted``."""
    picked = (
        pl.col(list_col)
        .list.eval(
            pl.element().filter(pl.element().struct.field(key) == wanted).struct.field(value)
        )
        .list.first()
    )
    return picked.fill_null(default) if default is not None else picked


def _term_kind(t: Term) -> str:
    if t.floor is not None:
        return "floor"
    if t.shared_deductible is not None:
        return "shared_deductible"
    return "deductible"


def _bands(before: pl.Expr, after: pl.Expr, brackets: list[Bracket]) -> pl.Expr:
    """The bands ``before .. after`` overlaps, with the overlap (negative for a reversal)."""
    parts = []
    low = 0
    for b in brackets:

        def portion(p: pl.Expr, low: int = low, up: int | None = b.up_to) -> pl.Expr:
            inside = p - low if up is None else p.clip(low, up) - low
            return inside.clip(lower_bound=0)

        parts.append(
            pl.struct(
                pl.lit(low, pl.Int64).alias("from_fen"),
                pl.lit(b.up_to, pl.Int64).alias("to_fen"),
                pl.lit(b.rate, pl.Int64).alias("rate_ppm"),
                (portion(after) - portion(before)).alias("payable_fen"),
            )
        )
        if b.up_to is not None:
            low = b.up_to
    return pl.concat_list(parts).list.eval(
        pl.element().filter(pl.element().struct.field("payable_fen") != 0)
    )


def explain_settlements(
    statement: pl.DataFrame,
    edition: CompiledEdition,
    flags: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per settlement of ``statement`` under ``edition`` and responsibility of the
    edition: how its payable and payout follow from its year to date.

    ``statement``: :meth:`hmb_batch.ledger.store.Ledger.member_statement` rows (``setl_id``,
    ``plan_year``, ``edition``, ``costs``, ``responsibilities``); rows of other editions are
    left out. ``flags``: the member's ``plan_year``, ``pre_existing`` and
    ``consecutive_years`` (roster); without them a member has no pre-existing condition and no
    consecutive years, as the engine reads a missing flag.

    Columns: ``setl_id``, ``responsibility``, ``name``; from the ledger ``payable_fen``,
    ``payout_fen``, ``payable_before_fen``, ``payable_after_fen``, ``benefit_before_fen``,
    ``benefit_after_fen``; ``terms`` (list of :data:`TERM`), ``brackets`` (``standard`` or
    ``pre_existing``), ``bands`` (list of :data:`BAND`, the bands the settlement's payable
    fell in), ``cap_fen`` (the cap that applies, null: none), ``cap_reached``,
    ``plan_cap_reached``, ``recomputed_payout_fen`` (the edition's payout from the stored year
    to date) and ``reproduced`` (it and the year-to-date payable equal the ledger's).
    """
    e = edition.edition
    rows = statement.filter(pl.col("edition") == edition.id).with_row_index(EXPLAINED)
    if flags is not None:
        rows = rows.join(
            flags.select("plan_year", "pre_existing", "consecutive_years").unique("plan_year"),
            on="plan_year",
            how="left",
        )
    else:
        rows = rows.with_columns(
            pl.lit(None, pl.Boolean).alias("pre_existing"),
            pl.lit(None, pl.Int64).alias("consecutive_years"),
        )
    pre = pl.col("pre_existing").fill_null(False)
    years = pl.col("consecutive_years").fill_null(0)
    costs = list(e.costs)
    rows = rows.with_columns(
        *[_field("costs", "cost", "cum_fen", c).alias(f"_cum_{c}") for c in costs],
        *[_field("costs", "cost", "increment_fen", c).alias(f"_inc_{c}") for c in costs],
    )
    after = {c: pl.col(f"_cum_{c}") for c in costs}
    before = {c: pl.col(f"_cum_{c}") - pl.col(f"_inc_{c}") for c in costs}
    terms_after, terms_before = edition.term_values(after), edition.term_values(before)
    b_after = edition.benefit(after, pre, years)
    b_before = edition.benefit(before, pre, years)

    parts = []
    for order, r in enumerate(e.responsibilities):

        def resp(value: str, rid: str = r.id) -> pl.Expr:
            return _field("responsibilities", "responsibility", value, rid)

        payable_after = resp("cum_payable_fen")
        payable_before = payable_after - resp("payable_fen")
        terms = pl.concat_list(
            [
                pl.struct(
                    pl.lit(t.term.cost).alias("cost"),
                    pl.lit(_term_kind(t.term)).alias("kind"),
                    pl.lit(t.term.shared_deductible, pl.String).alias("pool"),
                    t.threshold.cast(pl.Int64).alias("threshold_fen"),
                    before[t.term.cost].alias("cost_before_fen"),
                    after[t.term.cost].alias("cost_after_fen"),
                    tb.counted.cast(pl.Int64).alias("counted_before_fen"),
                    t.counted.cast(pl.Int64).alias("counted_after_fen"),
                )
                for t, tb in zip(terms_after[r.id], terms_before[r.id], strict=True)
            ]
        )
        bands = _bands(payable_before, payable_after, r.brackets)
        uncapped = bracket_benefit(payable_after, r.brackets)
        brackets = pl.lit("standard")
        if r.pre_existing_brackets is not None:
            bands = (
                pl.when(pre)
                .then(_bands(payable_before, payable_after, r.pre_existing_brackets))
                .otherwise(bands)
            )
            uncapped = (
                pl.when(pre)
                .then(bracket_benefit(payable_after, r.pre_existing_brackets))
                .otherwise(uncapped)
            )
            brackets = pl.when(pre).then(pl.lit("pre_existing")).otherwise(brackets)
        cap: pl.Expr = pl.lit(r.cap, pl.Int64)
        if r.consecutive_cap is not None:
            cc = r.consecutive_cap
            cap = pl.when(years >= cc.years).then(pl.lit(cc.cap, pl.Int64)).otherwise(cap)
        capped_alone = pl.min_horizontal(uncapped, cap.fill_null(uncapped))
        recomputed = b_after.benefit[r.id] - b_before.benefit[r.id]
        parts.append(
            rows.select(
                EXPLAINED,
                pl.lit(order).alias("_resp_order"),
                "setl_id",
                pl.lit(r.id).alias("responsibility"),
                pl.lit(r.name).alias("name"),
                resp("payable_fen").alias("payable_fen"),
                resp("payout_fen").alias("payout_fen"),
                payable_before.alias("payable_before_fen"),
                payable_after.alias("payable_after_fen"),
                (resp("cum_payout_fen") - resp("payout_fen")).alias("benefit_before_fen"),
                resp("cum_payout_fen").alias("benefit_after_fen"),
                terms.alias("terms"),
                brackets.alias("brackets"),
                bands.alias("bands"),
                cap.alias("cap_fen"),
                (cap.is_not_null() & (uncapped > cap)).fill_null(False).alias("cap_reached"),
                (b_after.benefit[r.id] < capped_alone).alias("plan_cap_reached"),
                recomputed.cast(pl.Int64).alias("recomputed_payout_fen"),
                (
                    (recomputed == resp("payout_fen"))
                    & (b_after.payable[r.id] == payable_after)
                    & (b_after.benefit[r.id] == resp("cum_payout_fen"))
                ).alias("reproduced"),
            )
        )
    if not parts:  # pragma: no cover - an edition has at least one responsibility
        return pl.DataFrame()
    return (
        pl.concat(parts)
        .sort(EXPLAINED, "_resp_order")
        .drop(EXPLAINED, "_resp_order")
        .with_columns(
            pl.col("terms").cast(pl.List(TERM)),
            pl.col("bands").cast(pl.List(BAND)),
        )
    )


def roster_facts(roster: pl.DataFrame, editions: Mapping[int, CompiledEdition]) -> pl.DataFrame:
    """A member's roster facts per plan year, the benefit start computed by the edition of the
    year as the engine computes it (:meth:`CompiledEdition.benefit_start`).

    ``roster``: typed roster rows (:func:`hmb_batch.io.reference.roster_frame`). ``editions``:
    plan year → edition; a year without one gets no benefit start. Columns:
    :data:`ROSTER_FACTS` — ``rule`` (1–4) is the rule that gave ``rule_start``;
    ``restored_start`` (basic insurance restored + the edition's months) moves the benefit start
    later when ``set_by_restoration``; ``waiting_period_last_day`` is the day before the benefit
    start when that is after 1 Jan (services up to it are denied ``WAITING_PERIOD``). Only
    these columns: nothing personal is carried.
    """
    out = []
    for year in sorted(set(roster["plan_year"].to_list())):
        rows = roster.filter(pl.col("plan_year") == year)
        e = editions.get(int(year))
        if e is None:
            out.append(rows.with_columns(pl.lit(None, pl.String).alias("edition")))
            continue
        start = e.benefit_start(int(year))
        restored = e.restored_start()
        out.append(
            rows.with_columns(
                pl.lit(e.id).alias("edition"),
                e.benefit_start_rule(int(year)).alias("rule"),
                e.rule_start(int(year)).alias("rule_start"),
                restored.alias("restored_start"),
                (restored.is_not_null() & (restored > e.rule_start(int(year))))
                .fill_null(False)
                .alias("set_by_restoration"),
                start.alias("benefit_start"),
                pl.when(start > dt.date(int(year), 1, 1))
                .then(start - pl.duration(days=1))
                .alias("waiting_period_last_day"),
            )
        )
    if not out:
        return pl.DataFrame(schema=ROSTER_FACTS)
    facts = pl.concat(out, how="diagonal_relaxed")
    return facts.with_columns(
        pl.lit(None, t).alias(c) for c, t in ROSTER_FACTS.items() if c not in facts.columns
    ).select(pl.col(c).cast(t) for c, t in ROSTER_FACTS.items())


def rule_text(edition: Edition, plan_year: int, rule: int) -> str:
    """Rule ``rule`` (1–4) of ``edition``'s eligibility in the rule text's terms."""
    el = edition.eligibility
    m, d = el.enrolment_deadline
    if rule == 1:
        return f"rule 1: premium paid by {plan_year - 1}-{m:02d}-{d:02d} → benefits from 1 Jan"
    if rule == 2:
        windows = ", ".join(f"{k} {v} days" for k, v in el.special_event_windows.items())
        return (
            f"rule 2: special event, paid within its window ({windows}) → the later of 1 Jan "
            "and the basic-insurance start"
        )
    if rule == 3:
        gm, gd = el.launch_grace_last_day or (0, 0)
        return f"rule 3: launch year, paid 1 Jan–{gm:02d}-{gd:02d} → the day after payment"
    return f"rule 4: late enrolment → pay date + {el.waiting_months} months (waiting period)"


def band_amount(payable_fen: int, rate_ppm: int) -> Decimal:
    """A band's payable times its rate, exactly, in yuan (before B's rounding to the fen)."""
    exact = Decimal(payable_fen * rate_ppm).scaleb(-8)  # fen × ppm = 10^-8 yuan
    cents = exact.quantize(Decimal("0.01"))
    return cents if cents == exact else exact.normalize()


def rate_text(rate_ppm: int) -> str:
    """A rate as a decimal string, as edition files write it (``0.75``)."""
    return str((Decimal(rate_ppm) / RATE_SCALE).normalize())


def yuan(fen: int | None) -> str | None:
    """Fen as a yuan decimal string (JSON), None stays None."""
    return None if fen is None else str(fen_to_yuan(fen))


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.date | dt.datetime) else v


def facts_json(facts: pl.DataFrame, editions: Mapping[int, CompiledEdition]) -> list[Any]:
    """Roster facts (:func:`roster_facts`) as JSON values, each rule with its text."""
    out = []
    for f in facts.iter_rows(named=True):
        e = editions.get(int(f["plan_year"]))
        rule = f["rule"]
        out.append(
            {k: _iso(v) for k, v in f.items() if k not in ("psn_no",)}
            | {
                "rule_text": rule_text(e.edition, int(f["plan_year"]), int(rule))
                if e is not None and rule is not None
                else None,
                "suspensions": [
                    {
                        "from": _iso(f["basic_suspended_from"]),
                        "to": _iso(f["basic_suspended_to"]),
                    }
                ]
                if f["basic_suspended_from"] is not None
                else [],
            }
        )
    return out


def explanation_json(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One settlement's explanation rows (:func:`explain_settlements`) as JSON: amounts as
    yuan decimal strings, rates as decimals."""
    resps = []
    for r in rows:
        resps.append(
            {
                "id": r["responsibility"],
                "name": r["name"],
                "payable": yuan(r["payable_fen"]),
                "payout": yuan(r["payout_fen"]),
                "payable_before": yuan(r["payable_before_fen"]),
                "payable_after": yuan(r["payable_after_fen"]),
                "benefit_before": yuan(r["benefit_before_fen"]),
                "benefit_after": yuan(r["benefit_after_fen"]),
                "terms": [
                    {
                        "cost": t["cost"],
                        "kind": t["kind"],
                        "pool": t["pool"],
                        "threshold": yuan(t["threshold_fen"]),
                        "cost_before": yuan(t["cost_before_fen"]),
                        "cost_after": yuan(t["cost_after_fen"]),
                        "counted_before": yuan(t["counted_before_fen"]),
                        "counted_after": yuan(t["counted_after_fen"]),
                        "reached": term_reached(t),
                    }
                    for t in r["terms"]
                ],
                "brackets": r["brackets"],
                "bands": [
                    {
                        "from": yuan(b["from_fen"]),
                        "to": yuan(b["to_fen"]),
                        "rate": rate_text(b["rate_ppm"]),
                        "payable": yuan(b["payable_fen"]),
                        "at_rate": str(band_amount(b["payable_fen"], b["rate_ppm"])),
                    }
                    for b in r["bands"]
                ],
                "cap": yuan(r["cap_fen"]),
                "cap_reached": r["cap_reached"],
                "plan_cap_reached": r["plan_cap_reached"],
                "recomputed_payout": yuan(r["recomputed_payout_fen"]),
                "reproduced": r["reproduced"],
            }
        )
    return {"responsibilities": resps, "reproduced": all(r["reproduced"] for r in rows)}


def term_reached(term: Mapping[str, Any]) -> str:
    """Where a term's cost stands against its threshold: ``below`` (nothing counts yet),
    ``crossed`` (this settlement took it over), ``above`` (over before and after), ``fell
    below`` (a reversal took it back under)."""
    before, after = term["counted_before_fen"] > 0, term["counted_after_fen"] > 0
    if after:
        return "above" if before else "crossed"
    return "fell below" if before else "below"
