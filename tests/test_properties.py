"""Property tests (hypothesis): invariants that must hold for any member's year.

- splitting a year into runs, in order, in any way gives the same per-settlement payouts;
- a member's payouts over the year sum to B(P_year), to the fen;
- a non-reversal's payout is never negative and never exceeds its compliant + reasonable increment;
- a reversal restores the year to date: later settlements see what they would have without the
  reversed settlement.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Extract
from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS
from hmb_batch.io.extract import FILE, ROW, type_table
from hmb_batch.io.extract import Extract as Frames
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import PlanSelection, select_plan
from hmb_batch.rules.engine import PriorState, adjudicate, carry_forward, cost_ids, inc
from hmb_batch.rules.validation import validate

PLAN = select_plan("zhelibao-2022")
COSTS = cost_ids(PLAN)


def _typed(rows: list[dict[str, Any]], contract: Any) -> pl.LazyFrame:
    cols = [c for c in contract.names if c != "union_aid_pay"]
    df = pl.DataFrame(
        [{c: r.get(c) for c in cols} for r in rows],
        schema={c: pl.String for c in cols},
        orient="row",
    )
    return type_table(
        df.lazy().with_row_index(ROW, offset=1).with_columns(pl.lit("mem").alias(FILE)), contract
    )


class Year:
    """A member's plan year, run through the engine in chunks.

    ``special``: per claim, an amount of special drugs (a line on the special_drug list);
    ``plan``/``year``: the edition and plan year (default 浙丽保 2022).
    """

    def __init__(
        self,
        claims: list[tuple[int, int]],
        reversals: list[int],
        *,
        plan: PlanSelection = PLAN,
        year: int = 2022,
        special: list[int] | None = None,
        **member: Any,
    ) -> None:
        self.plan, self.year, self.costs = plan, year, cost_ids(plan)
        self.ex = Extract()
        self.ex.on_list("negative", "NEG1", "2021-01-01")
        self.ex.on_list("special_drug", "SPD", "2021-01-01")
        self.ex.member("M1", plan_year=year, **member)
        start = dt.datetime(year, 1, 3, 8, 0)
        for i, (compliant, reasonable) in enumerate(claims):
            when = start + dt.timedelta(days=i)
            drugs = (special or [])[i] if special and i < len(special) else 0
            extra = (
                [
                    {
                        "list_type": "101",
                        "chrgitm_lv": "03",
                        "fulamt_ownpay_amt": str(fen_to_yuan(drugs)),
                        "code": "SPD",
                    }
                ]
                if drugs
                else None
            )
            self.ex.claim(
                f"S{i:03d}",
                "M1",
                when.isoformat(sep=" "),
                compliant=str(fen_to_yuan(compliant)),
                reasonable=str(fen_to_yuan(reasonable)),
                extra_lines=extra,
            )
        for target in sorted(set(reversals)):
            when = start + dt.timedelta(days=target, hours=12)
            self.ex.reversal(f"S{target:03d}R", f"S{target:03d}", "M1", when.isoformat(sep=" "))
        self.settlements = sorted(self.ex.settlements, key=lambda s: s["setl_time"])

    def run(self, cuts: list[int]) -> pl.DataFrame:
        """Adjudicate in runs split at ``cuts`` (indices into time order)."""
        roster = load_roster_frame(self.ex)
        lists = pl.DataFrame(self.ex.lists).with_columns(
            pl.col("valid_from").str.to_date(), pl.lit(None, pl.Date).alias("valid_to")
        )
        prior = PriorState.empty(self.costs)
        out = []
        bounds = [0, *sorted(set(cuts)), len(self.settlements)]
        for seq, (a, b) in enumerate(itertools.pairwise(bounds)):
            chunk = self.settlements[a:b]
            if not chunk:
                continue
            ids = {s["setl_id"] for s in chunk}
            lines = [ln for ln in self.ex.lines if ln["setl_id"] in ids]
            v = validate(
                Frames(_typed(chunk, SETTLEMENTS), _typed(lines, FEE_LINES), "two-file", ())
            )
            s = v.settlements.with_columns(
                pl.lit(seq, pl.Int64).alias("batch_seq"), pl.lit(str(seq)).alias("batch_id")
            ).collect()
            result = adjudicate(
                s.lazy(),
                v.fee_lines.with_columns(pl.lit(seq, pl.Int64).alias("batch_seq")),
                roster.lazy(),
                lists.lazy(),
                self.plan,
                prior,
                years=[self.year],
            )
            p = result.payouts.collect()
            assert result.quarantine.collect().height == 0
            out.append(p)
            prior = carry_forward(prior, p, self.costs)
        return pl.concat(out).sort("setl_time", "setl_id")


def load_roster_frame(ex: Extract) -> pl.DataFrame:
    df = pl.DataFrame(ex.roster)
    pre_existing = (
        (pl.col("pre_existing") == "1").fill_null(False)
        if "pre_existing" in df.columns
        else pl.lit(False)
    )
    consecutive = (
        pl.col("consecutive_years").cast(pl.Int64)
        if "consecutive_years" in df.columns
        else pl.lit(None, pl.Int64)
    )
    return df.with_columns(
        pl.col("plan_year").cast(pl.Int64),
        pl.col("pay_date").str.to_date(),
        pl.col("basic_start_date").str.to_date(),
        *[
            pl.lit(None, pl.Date).alias(c)
            for c in (
                "event_date",
                "basic_suspended_from",
                "basic_suspended_to",
                "basic_restored_date",
            )
        ],
        pl.lit(None, pl.String).alias("special_event"),
        pre_existing.alias("pre_existing"),
        consecutive.alias("consecutive_years"),
    )


amounts = st.tuples(
    st.one_of(st.just(0), st.integers(0, 3_000_000), st.integers(0, 60_000_000)),
    st.one_of(st.just(0), st.integers(0, 3_000_000), st.integers(0, 120_000_000)),
)
years = st.lists(amounts, min_size=1, max_size=8)
# Each example runs the whole engine a few times; HMB_PROPERTY_EXAMPLES=200 for a deeper search.
SETTINGS = settings(
    max_examples=int(os.environ.get("HMB_PROPERTY_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _b(p_fen: int) -> int:
    """B(P) by hand from the rule text: 75/85/90/95% bands, half up."""
    bands = [
        (0, 20_000_000, 75),
        (20_000_000, 50_000_000, 85),
        (50_000_000, 100_000_000, 90),
        (100_000_000, None, 95),
    ]
    total = 0
    for lo, hi, rate in bands:
        part = max(0, (p_fen if hi is None else min(p_fen, hi)) - lo)
        total += part * rate
    return (total + 50) // 100


@SETTINGS
@given(claims=years, data=st.data())
def test_any_split_into_runs_gives_the_same_payouts(
    claims: list[tuple[int, int]], data: Any
) -> None:
    reversals = data.draw(st.lists(st.integers(0, len(claims) - 1), max_size=2))
    year = Year(claims, reversals)
    n = len(year.settlements)
    cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3)) if n > 1 else []
    whole = year.run([])
    split = year.run(cuts)
    cols = ["setl_id", "status", "payout", "payable", "cum_payout", "cum_payable"]
    assert whole.select(cols).equals(split.select(cols))


@SETTINGS
@given(claims=years)
def test_annual_payout_is_b_of_year_payable_and_bounded(claims: list[tuple[int, int]]) -> None:
    p = Year(claims, []).run([])
    x = sum(c for c, _ in claims)
    r = sum(r for _, r in claims)
    p_year = max(0, x - 1_800_000) + max(0, r - 1_800_000)
    assert p["payout"].sum() == _b(p_year)
    assert p["cum_payout"].to_list()[-1] == _b(p_year)
    for row in p.iter_rows(named=True):
        assert 0 <= row["payout"] <= row[inc("compliant")] + row[inc("reasonable")]


@SETTINGS
@given(claims=st.lists(amounts, min_size=2, max_size=6), data=st.data())
def test_a_reversal_restores_the_year_to_date(claims: list[tuple[int, int]], data: Any) -> None:
    target = data.draw(st.integers(0, len(claims) - 2))
    with_reversal = Year(claims, [target]).run([])
    without = Year([c if i != target else (0, 0) for i, c in enumerate(claims)], []).run([])
    after = [f"S{i:03d}" for i in range(target + 1, len(claims))]
    cols = ["setl_id", "cum_payable", "cum_payout"]

    def later(df: pl.DataFrame) -> pl.DataFrame:
        return df.filter(pl.col("setl_id").is_in(after)).select(cols).sort("setl_id")

    assert later(with_reversal).equals(later(without))
    rev = with_reversal.filter(pl.col("setl_id") == f"S{target:03d}R")
    assert rev["status"].to_list() == ["reversal"]
