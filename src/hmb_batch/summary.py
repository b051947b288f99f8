"""The batch summary as data: counts and totals a claims officer checks before release.

Renderers (terminal, JSON) only draw it; tests check it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from hmb_batch.money import fen_to_yuan, yuan_to_fen


@dataclass(frozen=True)
class BatchSummary:
    """What one batch did. Money in fen.

    Settlement rows in = adjudicated + quarantined settlement rows + identical repeats.
    """

    batch_id: str
    editions: list[str]
    shape: str
    settlements_in: int
    fee_lines_in: int
    identical_repeats: int
    repeated_fee_lines: int
    adjudicated: int
    quarantined: int
    by_status: dict[str, int] = field(default_factory=dict)
    denied_by_reason: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    total_payout_fen: int = 0
    payout_by_plan_year_fen: dict[int, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """Every settlement row is accounted for."""
        return self.settlements_in == self.adjudicated + self.quarantined + self.identical_repeats

    @staticmethod
    def from_json(d: dict[str, Any]) -> BatchSummary:
        """The inverse of :meth:`to_json` (the ledger keeps each batch's summary as JSON)."""
        fields = {
            k: v
            for k, v in d.items()
            if k not in ("total_payout", "payout_by_plan_year", "balanced")
        }
        return BatchSummary(
            **fields,
            total_payout_fen=yuan_to_fen(d["total_payout"]),
            payout_by_plan_year_fen={
                int(k): yuan_to_fen(v) for k, v in d["payout_by_plan_year"].items()
            },
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with money as decimal strings."""
        d = asdict(self)
        d["total_payout"] = str(fen_to_yuan(d.pop("total_payout_fen")))
        d["payout_by_plan_year"] = {
            str(k): str(fen_to_yuan(v)) for k, v in d.pop("payout_by_plan_year_fen").items()
        }
        d["balanced"] = self.balanced
        return d


def _counts(series: pl.Series) -> dict[str, int]:
    vc = series.value_counts(sort=True)
    return {str(k): int(n) for k, n in vc.iter_rows()}


def summarise(
    *,
    batch_id: str,
    editions: list[str],
    shape: str,
    settlements_in: int,
    fee_lines_in: int,
    identical_repeats: int,
    repeated_fee_lines: int,
    payouts: pl.DataFrame,
    quarantine: pl.DataFrame,
) -> BatchSummary:
    """Build the summary from the payout frame (fen) and the quarantine frame."""
    q_settlements = quarantine.filter(pl.col("record") == "settlement")
    denied = payouts.filter(pl.col("status") == "denied")
    by_year = payouts.group_by("plan_year").agg(pl.col("payout").sum()).sort("plan_year")
    return BatchSummary(
        batch_id=batch_id,
        editions=editions,
        shape=shape,
        settlements_in=settlements_in,
        fee_lines_in=fee_lines_in,
        identical_repeats=identical_repeats,
        repeated_fee_lines=repeated_fee_lines,
        adjudicated=payouts.height,
        quarantined=q_settlements.height,
        by_status=_counts(payouts["status"]) if payouts.height else {},
        denied_by_reason=_counts(denied["reasons"].explode()) if denied.height else {},
        quarantined_by_reason=(
            _counts(q_settlements["reasons"].explode()) if q_settlements.height else {}
        ),
        total_payout_fen=int(payouts["payout"].sum() or 0),
        payout_by_plan_year_fen={int(y): int(v) for y, v in by_year.iter_rows()},
    )
