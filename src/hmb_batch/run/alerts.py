"""Warnings about a batch that a person on call would want at 2 a.m.

A batch can run cleanly and still be wrong for the night: the roster is last year's (most
settlements denied NOT_ENROLLED), the extract is half a day (far fewer settlements than the
ledger's recent nights), a feed broke (many rows quarantined). None of these stops a batch; they
are shown in its summary and JSON, kept in the ledger with it, and ``--fail-on warning`` turns
them into exit 10 for cron. The limits are ``[warnings]`` in hmb.toml.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from hmb_batch.report.summary import BatchSummary


class WarningLimits(BaseModel):
    """``[warnings]`` in hmb.toml: when a batch gets a warning. Shares are of the batch's
    settlement rows (0.5 = half)."""

    model_config = ConfigDict(extra="forbid")

    # most of the batch's adjudicated settlements have no roster row for their plan year
    not_enrolled_share: Decimal = Field(default=Decimal("0.5"), ge=0, le=1)
    denied_share: Decimal = Field(default=Decimal("0.5"), ge=0, le=1)
    quarantined_share: Decimal = Field(default=Decimal("0.05"), ge=0, le=1)
    # a batch this many times larger, or smaller, than the median of the recent nights
    size_factor: Decimal = Field(default=Decimal("3"), gt=1)
    recent_batches: int = Field(default=7, ge=1)


@dataclass(frozen=True)
class BatchWarning:
    """One warning: a stable code for scripts and a sentence for a person."""

    code: str
    message: str


def batch_warnings(
    s: BatchSummary, recent_sizes: list[int], limits: WarningLimits
) -> list[BatchWarning]:
    """The warnings of a batch. ``recent_sizes``: settlement rows of the ledger's latest applied
    batches, oldest first (empty without a ledger; fewer than 3 give no size warning)."""
    found: list[BatchWarning] = []
    n = s.adjudicated
    not_enrolled = s.denied_by_reason.get("NOT_ENROLLED", 0)
    if n and not_enrolled > limits.not_enrolled_share * n:
        found.append(
            BatchWarning(
                "ROSTER_MISSES_MEMBERS",
                f"{not_enrolled:,} of {n:,} adjudicated settlements "
                f"({_pct(not_enrolled, n)}) were denied NOT_ENROLLED: the roster has no row for "
                "their members' plan year. Is it the right year's roster?",
            )
        )
    denied = s.by_status.get("denied", 0)
    if n and denied > limits.denied_share * n:
        found.append(
            BatchWarning(
                "HIGH_DENIAL_RATE",
                f"{denied:,} of {n:,} adjudicated settlements ({_pct(denied, n)}) were denied; "
                f"the limit is {_share(limits.denied_share)}",
            )
        )
    rows = s.settlements_in
    if rows and s.quarantined > limits.quarantined_share * rows:
        found.append(
            BatchWarning(
                "HIGH_QUARANTINE_RATE",
                f"{s.quarantined:,} of {rows:,} settlement rows ({_pct(s.quarantined, rows)}) "
                f"were quarantined; the limit is {_share(limits.quarantined_share)}. See "
                "quarantine.parquet (hmb-batch show) for the reasons",
            )
        )
    if s.orphan_fee_lines:
        found.append(
            BatchWarning(
                "ORPHAN_FEE_LINES",
                f"{s.orphan_fee_lines:,} fee lines belong to no settlement in the extract "
                "(quarantined ORPHAN_FEE_LINES): is the settlements file complete?",
            )
        )
    recent = recent_sizes[-limits.recent_batches :]
    if len(recent) >= 3:
        median = Decimal(statistics.median(recent))
        f = limits.size_factor
        if median and (rows > f * median or rows * f < median):
            found.append(
                BatchWarning(
                    "UNUSUAL_BATCH_SIZE",
                    f"{rows:,} settlement rows, against a median of {median:,.0f} over the "
                    f"ledger's last {len(recent)} batches (limit: {f}× either way). Is the "
                    "extract complete, or two nights in one?",
                )
            )
    return found


def _pct(part: int, whole: int) -> str:
    return f"{Decimal(100 * part) / whole:.1f}%"


def _share(share: Decimal) -> str:
    return f"{share * 100:g}%"
