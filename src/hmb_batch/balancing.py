"""Balancing around the ledger commit: the reconciliation's totals added up, the ledger as found
checked for the batch's members, and the check inside the commit that the ledger after equals the
ledger before plus the batch. The identities themselves are :mod:`hmb_batch.reconcile` (pure);
this module reads the ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from hmb_batch import partitioned
from hmb_batch.engine import PriorState, cum, inc
from hmb_batch.errors import ReconciliationError
from hmb_batch.ledger import Ledger
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.reconcile import (
    QUARANTINED,
    SHOW,
    Identity,
    Reconciliation,
    Totals,
    batch_totals,
    combine,
    component_sums,
    no_line_sums,
    quarantined_line_fen,
    reconcile,
)
from hmb_batch.summary import BatchSummary


def reconciliation_of(
    batch_id: str, totals: Totals, s: BatchSummary, with_ledger: bool
) -> Reconciliation:
    """The identities of a batch from its totals and its summary's counts."""
    return reconcile(
        batch_id,
        totals,
        settlements_in=s.settlements_in,
        adjudicated=s.adjudicated,
        quarantined=s.quarantined,
        identical_repeats=s.identical_repeats,
        by_status=s.by_status,
        quarantined_by_reason=s.quarantined_by_reason,
        with_ledger=with_ledger,
    )


def ledger_before_identity(
    ledger: Ledger, payouts: pl.DataFrame, prior: PriorState, costs: list[str]
) -> Identity:
    """The ledger as found, for the batch's members: each accumulator (``prior``, as read from
    the ledger) equals the sum of the increments of the member's settlements in the registry
    (a ledger edited by hand, or damaged, between batches fails here)."""
    members = payouts.select("psn_no").unique()
    held = _long_accumulators(prior, members, costs).rename({"value": "amount_fen"})
    registry = ledger.increments_of(members).filter(pl.col("cost").is_in(costs))
    key = ["psn_no", "plan_year", "cost"]
    both = held.join(registry, on=key, how="full", coalesce=True, suffix="_registry").with_columns(
        pl.col("amount_fen").fill_null(0), pl.col("amount_fen_registry").fill_null(0)
    )
    bad = both.filter(pl.col("amount_fen") != pl.col("amount_fen_registry")).sort(key)
    return Identity(
        "ledger.before",
        "ledger",
        "the ledger's accumulators of the batch's members = the sum of their settlements' "
        "increments in the registry",
        int(both["amount_fen_registry"].sum() or 0),
        int(both["amount_fen"].sum() or 0),
        first=[
            f"{r['psn_no']} {r['plan_year']} {r['cost']} (registry "
            f"{fen_to_yuan(r['amount_fen_registry'])}, accumulator {fen_to_yuan(r['amount_fen'])})"
            for r in bad.head(SHOW).iter_rows(named=True)
        ],
    )


def _long_accumulators(prior: PriorState, members: pl.DataFrame, costs: list[str]) -> pl.DataFrame:
    """The prior year to date of ``members``: psn_no, plan_year, cost, value (fen)."""
    return (
        prior.accumulators.join(members.lazy(), on="psn_no", how="semi")
        .collect()
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
        """From a batch's (or partition's) engine payouts and the prior it was computed on."""
        members = payouts.select("psn_no").unique()
        before = (
            _long_accumulators(prior, members, costs)
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
        """Add up partitions (their members are disjoint)."""
        return AfterExpectation(
            pl.concat([p.by_year for p in parts])
            .group_by("plan_year", "cost")
            .agg(pl.col("before").sum(), pl.col("batch").sum()),
            sum(p.payout_fen for p in parts),
        )


def verify_after(expected: AfterExpectation, costs: list[str], batch_id: str) -> Any:
    """The ledger after = the ledger before + the batch, per plan year and cost (checked inside
    the commit's transaction, for the batch's members), and its payout history holds the
    batch's payouts."""

    def verify(ledger: Ledger) -> None:
        # the batch's accumulator rows as the transaction holds them: after the commit they are
        # its members' year to date (the latest applied batch). Summing them by plan year and
        # cost keeps DuckDB's work small at province scale (a 10M-settlement batch's members
        # re-read through the accumulators view ran out of DuckDB's share of a 1 GiB limit)
        after = (
            ledger.batch_accumulators(batch_id)
            .filter(pl.col("cost").is_in(costs))
            .rename({"amount_fen": "after"})
        )
        key = ["plan_year", "cost"]
        table = expected.by_year.join(after, on=key, how="full", coalesce=True).fill_null(0)
        ids = [
            Identity(
                f"ledger.after.{r['plan_year']}.{r['cost']}",
                "ledger",
                "the ledger after = the ledger before + this batch (year to date of the "
                "batch's members)",
                r["before"] + r["batch"],
                r["after"],
            )
            for r in table.sort(key).iter_rows(named=True)
        ]
        ids.append(
            Identity(
                "ledger.payout_history",
                "ledger",
                "the payout history records the batch's payouts",
                expected.payout_fen,
                ledger.batch_payout_fen(batch_id),
            )
        )
        failed = [i for i in ids if not i.passed]
        if failed:
            raise ReconciliationError(refusal(batch_id, failed))

    return verify


class PartitionAudit:
    """The reconciliation of a partitioned run, added up member partition by member partition."""

    def __init__(self, plan: PlanSelection, ledger: Ledger | None) -> None:
        self.plan = plan
        self.ledger = ledger
        self.totals: list[Totals] = []
        self.before: list[Identity] = []
        self.after: list[AfterExpectation] = []

    def __call__(self, part: partitioned.MemberPartition) -> None:
        """Take one member partition's totals (``adjudicate_partitions`` calls it)."""
        done, prior = part.done, part.prior
        self.totals.append(
            batch_totals(
                plan=self.plan,
                line_sums=no_line_sums(),  # stage A's input and repeats are added once
                fee_lines=part.checked.fee_lines.lazy(),
                settlements=part.checked.settlements.lazy(),
                roster=part.roster.lazy(),
                payouts=done.payouts.lazy(),
                audit=done.lines.lazy(),
                quarantine=done.quarantine.clear().lazy(),  # counted once, from the whole file
                prior=prior,
                accumulator_log=part.accumulator_log.lazy()
                if part.accumulator_log is not None
                else None,
                costs=done.costs,
            )
        )
        if self.ledger is not None and prior is not None:
            self.before.append(ledger_before_identity(self.ledger, done.payouts, prior, done.costs))
            self.after.append(AfterExpectation.of(done.payouts, prior, done.costs))

    def reconciliation(
        self,
        batch_id: str,
        staged: partitioned.StagedBatch,
        quarantine: pl.LazyFrame,
        summary: BatchSummary,
    ) -> Reconciliation:
        """All partitions' totals, stage A's input and repeat totals and the quarantine's."""
        lines = pl.concat(
            [
                *staged.line_sums,
                component_sums(quarantined_line_fen(quarantine), QUARANTINED).collect(),
            ],
            how="vertical_relaxed",
        )
        totals = combine([*self.totals, Totals.of_lines(lines)])
        recon = reconciliation_of(batch_id, totals, summary, self.ledger is not None)
        if self.before:
            first = [f for i in self.before for f in i.first][:SHOW]
            recon = recon.with_identities(
                [
                    replace(
                        self.before[0],
                        expected=sum(i.expected for i in self.before),
                        found=sum(i.found for i in self.before),
                        first=first,
                    )
                ]
            )
        return recon


def refusal(batch_id: str, failed: list[Identity]) -> str:
    """The error message for a batch whose identities ``failed``."""
    shown = "\n".join(f"  - {i.message()}" for i in failed)
    return f"batch {batch_id} does not reconcile; nothing was applied:\n{shown}"


def reconciliation_json(recon: Reconciliation) -> bytes:
    """``reconciliation.json``'s bytes."""
    return json.dumps(recon.to_json(), ensure_ascii=False, indent=2).encode()
