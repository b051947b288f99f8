"""Report data for a batch (from the engine's payouts) or a plan year (from the ledger alone).

:mod:`hmb_batch.report.pages` aggregates and draws; this module gathers what it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import polars as pl

from hmb_batch.ledger.store import Ledger
from hmb_batch.money import fen_to_yuan, yuan_to_fen
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.plan.model import RATE_SCALE
from hmb_batch.report.districts import district_names
from hmb_batch.report.pages import (
    SETTLEMENT_COLUMNS,
    LossRatio,
    ReportData,
    render_html,
    render_markdown,
    report_data,
)
from hmb_batch.report.summary import BatchSummary
from hmb_batch.rules.engine import responsibility_ids
from hmb_batch.rules.reconcile import Reconciliation


def report_columns(payouts: pl.DataFrame) -> pl.DataFrame:
    """The columns of the engine's payout frame that the batch's summary
    (:func:`hmb_batch.report.summary.summarise`), its report (:func:`batch_report`) and the
    ledger's order check read: no name, ID number or amount the files already hold."""
    responsibility = [
        c for c in payouts.columns if c.startswith("resp__") and c.endswith("__payout")
    ]
    # the engine's names of the report's columns (report_frame adds "_fen" to the amounts); the
    # summary reads plan_year, status, reasons and payout, the order check setl_time
    engine = [c.removesuffix("_fen") for c in SETTLEMENT_COLUMNS]
    return payouts.select(*engine, *responsibility)


def report_frame(payouts: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The engine's payout frame as reports read settlements (:data:`report.SETTLEMENT_COLUMNS`)."""
    return (
        payouts.lazy()
        .rename({engine: f"{engine}_fen" for engine in ("payable", "payout", "cum_payable")})
        .with_columns(pl.col("plan_year").cast(pl.Int64))
        .select(SETTLEMENT_COLUMNS)
    )


def responsibility_frame(
    payouts: pl.DataFrame | pl.LazyFrame, responsibilities: list[str]
) -> pl.LazyFrame:
    """(responsibility, payout_fen) per settlement and responsibility, from engine payouts."""
    frames = [
        payouts.lazy().select(
            pl.lit(r).alias("responsibility"), pl.col(f"resp__{r}__payout").alias("payout_fen")
        )
        for r in responsibilities
    ]
    return (
        pl.concat(frames)
        if frames
        else pl.LazyFrame(schema={"responsibility": pl.String, "payout_fen": pl.Int64})
    )


def loss_ratios(
    plan: PlanSelection,
    enrolled: Mapping[int, int],
    payout_by_year: Mapping[int, int],
) -> list[LossRatio]:
    """The loss ratio of each plan year with payouts, from its edition's premium parameters."""
    out = []
    for year in sorted(payout_by_year):
        edition = plan.for_year(year)
        if edition is None:
            continue
        premium = edition.edition.premium
        out.append(
            LossRatio(
                year,
                enrolled.get(year, 0),
                premium.amount,
                premium.operating_cost_share,
                premium.target_loss_ratio,
                payout_by_year[year],
            )
        )
    return out


def year_to_date_loss_ratios(
    plan: PlanSelection,
    summary: BatchSummary,
    before: list[dict[str, Any]] | None,
    *,
    included: bool = False,
) -> list[LossRatio]:
    """A batch's loss ratio per plan year: the year to date when it ran on a ledger (the ledger
    ``before`` it + the batch; ``included``: ``before`` already holds the batch, as when it is
    replayed), else the batch alone."""
    ytd = dict(summary.payout_by_plan_year_fen)
    for row in before or []:
        year = int(row["plan_year"])
        if year in ytd:
            ytd[year] = (0 if included else ytd[year]) + yuan_to_fen(row["payout"])
    return loss_ratios(plan, summary.enrolled_by_plan_year, ytd)


def loss_ratio_json(ratios: list[LossRatio]) -> list[dict[str, Any]]:
    """Loss ratios for JSON (the summary, manifest.json, reconciliation.json): money as decimal
    yuan strings, ratios as decimal strings (4 places: a hundredth of a percent), exact."""
    return [
        {
            "plan_year": lr.plan_year,
            "enrolled": lr.enrolled,
            "premium": str(fen_to_yuan(lr.premium_fen)),
            "premium_pool_net": str(fen_to_yuan(lr.pool_fen)),
            "payout": str(fen_to_yuan(lr.payout_fen)),
            "loss_ratio": None if lr.ratio_ppm is None else str(ppm_to_ratio(lr.ratio_ppm)),
            "target_loss_ratio": str(ppm_to_ratio(lr.target_ppm)),
        }
        for lr in ratios
    ]


def ppm_to_ratio(ppm: int) -> Decimal:
    """Parts per million as an exact decimal ratio rounded half up to 4 places (0.9512)."""
    return (Decimal(ppm) / RATE_SCALE).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def batch_report(
    plan: PlanSelection,
    batch_id: str,
    payouts: pl.DataFrame | pl.LazyFrame,
    summary: BatchSummary,
    recon: Reconciliation | None,
    before: list[dict[str, Any]] | None,
    *,
    dry_run: bool = False,
    districts: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """``report.html`` and ``report.md`` of a batch; the loss ratio is the year to date when
    the batch ran on a ledger (the ledger before + this batch), else this batch alone.
    ``dry_run``: the title and scope say that nothing was applied. ``districts``: hmb.toml's
    district names, on top of the shipped table."""
    name = plan.editions[0].edition.plan_name
    scope = (
        f"batch {batch_id}; loss ratio: year to date on the ledger"
        if before is not None
        else f"batch {batch_id}; loss ratio: this batch only (no ledger)"
    )
    if dry_run:
        scope = f"DRY RUN 试算: nothing was applied to the ledger; {scope}"
    data = report_data(
        report_frame(payouts),
        plan,
        by_responsibility=responsibility_frame(payouts, responsibility_ids(plan)),
        title=("[DRY RUN 试算] " if dry_run else "") + f"{name} 理算报告 · batch {batch_id}",
        scope=scope,
        quarantined_by_reason=summary.quarantined_by_reason,
        orphan_fee_lines=summary.orphan_fee_lines,
        loss_ratios=year_to_date_loss_ratios(plan, summary, before),
        reconciliation=recon.to_json()["identities"] if recon is not None else (),
        districts=district_names(districts),
    )
    return {
        "report.html": render_html(data).encode(),
        "report.md": render_markdown(data).encode(),
    }


def enrolled_of(summaries: list[dict[str, Any]]) -> dict[int, int]:
    """Members on the roster per plan year, as the latest of these batch summaries (in order)
    counted them: the premium pool of a loss ratio read from the ledger."""
    return {
        int(k): int(v)
        for summary in summaries
        for k, v in summary.get("enrolled_by_plan_year", {}).items()
    }


def year_report(
    ledger: Ledger,
    plan_year: int,
    plan: PlanSelection,
    districts: Mapping[str, str] | None = None,
) -> ReportData:
    """The year-to-date report of a plan year from the ledger alone (``hmb-batch report``);
    ``districts``: hmb.toml's district names, on top of the shipped table."""
    settlements = ledger.year_settlements(plan_year)
    summaries = ledger.year_batches(plan_year)
    quarantined: dict[str, int] = {}
    for summary in summaries:
        for code, n in summary.get("quarantined_by_reason", {}).items():
            quarantined[code] = quarantined.get(code, 0) + int(n)
    enrolled = enrolled_of(summaries)
    payout = int(settlements["payout_fen"].sum() or 0) if settlements.height else 0
    edition = plan.for_year(plan_year)
    name = edition.edition.plan_name if edition is not None else plan.label
    return report_data(
        settlements,
        plan,
        by_responsibility=ledger.year_responsibilities(plan_year),
        title=f"{name} 年度报告 · plan year {plan_year}",
        scope=(
            f"plan year {plan_year}, year to date: {len(summaries)} applied batch(es) in "
            f"{ledger.path}; quarantine counts are those of these batches"
        ),
        quarantined_by_reason=quarantined,
        orphan_fee_lines=sum(int(s.get("orphan_fee_lines", 0)) for s in summaries),
        loss_ratios=loss_ratios(plan, enrolled, {plan_year: payout}),
        districts=district_names(districts),
    )
