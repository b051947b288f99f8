"""Balancing around the ledger commit: the reconciliation's totals added up, the ledger as found
checked for the batch's members, and the check inside the commit that the ledger after equals the
ledger before plus the batch. The identities themselves are :mod:`hmb_batch.rules.reconcile` (pure);
this module reads the ledger.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from hmb_batch.errors import ReconciliationError
from hmb_batch.ledger.store import Ledger
from hmb_batch.money import fen_to_yuan
from hmb_batch.report.summary import BatchSummary
from hmb_batch.rules.engine import PriorState
from hmb_batch.rules.reconcile import (
    SHOW,
    AfterExpectation,
    Identity,
    Reconciliation,
    Totals,
    long_accumulators,
    reconcile,
)


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
    held = long_accumulators(prior, members, costs).rename({"value": "amount_fen"})
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


def refusal(batch_id: str, failed: list[Identity]) -> str:
    """The error message for a batch whose identities ``failed``."""
    shown = "\n".join(f"  - {i.message()}" for i in failed)
    return f"batch {batch_id} does not reconcile; nothing was applied:\n{shown}"


def reconciliation_json(
    recon: Reconciliation, loss_ratios: list[dict[str, Any]] | None = None
) -> bytes:
    """``reconciliation.json``'s bytes; with ``loss_ratios`` (see
    :func:`hmb_batch.report.data.loss_ratio_json`) beside the identities."""
    doc = recon.to_json()
    if loss_ratios is not None:
        doc["loss_ratios"] = loss_ratios
    return json.dumps(doc, ensure_ascii=False, indent=2).encode()
