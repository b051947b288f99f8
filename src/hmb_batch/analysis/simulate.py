"""``hmb-batch simulate``: extracts adjudicated under a scenario's rules into a ledger of its own.

A scenario never touches the production ledger: its ledger (``DIR/scenario.duckdb``) starts
empty, or as a copy of the production ledger's state as of a batch or date (read, never
written). Each extract is one batch on it, in the order given, with the usual files in
``DIR/batches/NN/``; the year's report of each plan year goes to ``DIR/report-YYYY.html``
(``.md``), and ``DIR/simulation.json`` / ``simulation.md`` hold the totals per plan year side
by side.

A sweep (:func:`sweep`) runs the scenario once, then evaluates every value of one
settlement-level parameter on the member-years' year to date before and after the run
(:func:`hmb_batch.rules.kernel.payout_between`): the fee lines are read once.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__
from hmb_batch.errors import OutputRefused
from hmb_batch.io.atomic import write_files
from hmb_batch.io.reference import load_roster
from hmb_batch.ledger.store import Ledger, LedgerError, create_ledger, open_ledger
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.plan.model import RATE_SCALE
from hmb_batch.report.data import enrolled_of, loss_ratio_json, loss_ratios, year_report
from hmb_batch.report.pages import Bar, Chart, ReportData, render_html, render_markdown
from hmb_batch.rules.engine import cost_ids
from hmb_batch.rules.kernel import payout_between
from hmb_batch.run.batch import BatchInputs, BatchResult, run_batch
from hmb_batch.run.identity import edition_hash, extract_folder

SCENARIO_LEDGER = "scenario.duckdb"
SIMULATION = "simulation.json"


@dataclass(frozen=True)
class ScenarioInputs:
    """What a scenario reads, besides its extracts."""

    roster: Path
    lists: Path
    fees: str | None = None  # one two-file extract's fee lines (else each extract is a folder)
    encoding: str = "utf-8"
    column_map: Mapping[str, str] = field(default_factory=dict)
    timezone: str = "Asia/Shanghai"
    memory_limit: int | None = None

    def batch(
        self,
        spec: str,
        plan: PlanSelection,
        plan_source: tuple[str, tuple[str, ...]] | None,
    ) -> BatchInputs:
        """One extract of the scenario (a settlements file with ``fees``, or a night's
        folder) as a batch's inputs."""
        extract, fees = (spec, self.fees) if self.fees else extract_folder(spec)
        return BatchInputs(
            extract=extract,
            fees=fees,
            roster=self.roster,
            lists=self.lists,
            plan=plan,
            encoding=self.encoding,
            column_map=self.column_map,
            timezone=self.timezone,
            plan_source=plan_source,
        )


@dataclass(frozen=True)
class YearTotals:
    """A plan year's totals in a scenario: its batches' settlements, and the year to date."""

    plan_year: int
    settlements: int
    members_paid: int  # member-years whose payout in the scenario's batches is above zero
    payout_fen: int  # paid by the scenario's batches
    loss_ratio: dict[str, Any] | None  # the year to date's, as in manifest.json

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: money as decimal strings."""
        return {
            "plan_year": self.plan_year,
            "settlements": self.settlements,
            "members_paid": self.members_paid,
            "payout": str(fen_to_yuan(self.payout_fen)),
            "loss_ratio": self.loss_ratio,
        }


@dataclass(frozen=True)
class SimulationResult:
    """What a scenario did: its batches, its ledger, its totals per plan year."""

    out_dir: Path
    ledger: Path
    batches: list[BatchResult]
    years: list[YearTotals]
    document: dict[str, Any]


def prepare_folder(out_dir: Path, *, force: bool) -> None:
    """Refuse a folder holding another scenario (exit 2) unless ``force``, which clears it."""
    if (out_dir / SCENARIO_LEDGER).exists() or (out_dir / SIMULATION).exists():
        if not force:
            raise OutputRefused(
                f"{out_dir} holds a scenario already ({SCENARIO_LEDGER}); give another --out, "
                "or --force to replace it"
            )
        for name in (
            SCENARIO_LEDGER,
            f"{SCENARIO_LEDGER}.wal",
            SIMULATION,
            "simulation.md",
            "sweep.json",
            "sweep.md",
            "sweep.html",
        ):
            (out_dir / name).unlink(missing_ok=True)
        for folder in ("batches", f"{SCENARIO_LEDGER}.files"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
        for report in out_dir.glob("report-*.*"):
            report.unlink()


def simulate(
    extracts: Sequence[str],
    plan: PlanSelection,
    inputs: ScenarioInputs,
    out_dir: Path,
    *,
    force: bool = False,
    plan_source: tuple[str, tuple[str, ...]] | None = None,
    start_ledger: Callable[[Path], None] | None = None,
    describe: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Adjudicate ``extracts`` in order under ``plan`` into a scenario ledger in ``out_dir``.

    ``start_ledger(path)`` creates the scenario ledger (default: an empty one); a what-if for
    the rest of a year passes a copy of the production ledger's state as of a batch.
    ``describe``: what the scenario is (changes, source ledger ...), kept in simulation.json.
    ``plan_source``: ``plan``'s ``--plan`` and ``--set`` list, recorded in each batch's manifest
    so that ``hmb-batch replay`` can choose the same editions again.
    """
    prepare_folder(out_dir, force=force)
    ledger = out_dir / SCENARIO_LEDGER
    (start_ledger or (lambda p: create_ledger(p)))(ledger)
    results = []
    for i, spec in enumerate(extracts, start=1):
        if progress is not None:
            progress(f"batch {i} of {len(extracts)}: {spec}")
        batch_inputs = inputs.batch(spec, plan, plan_source)
        result = run_batch(
            batch_inputs,
            out_dir / "batches" / f"{i:02d}",
            ledger_path=ledger,
            memory_limit=inputs.memory_limit,
        )
        if result.replayed:
            # the same inputs and editions are in the scenario's ledger already (an extract
            # given twice, or one the copied ledger holds): counting its settlements as the
            # scenario's would be wrong, and a run of another value would find duplicates
            raise LedgerError(
                f"extract {spec} is already in the scenario's ledger as batch "
                f"{result.summary.batch_id} (given twice, or applied before --as-of in the "
                "ledger it was copied from): a scenario adjudicates each extract once, after "
                "the state it starts from"
            )
        results.append(result)
    batch_ids = [r.summary.batch_id for r in results]
    with open_ledger(ledger) as lg:
        years = year_totals(lg, plan, batch_ids)
        pages: dict[str, bytes] = {}
        for y in years:
            data = year_report(lg, y.plan_year, plan)
            pages[f"report-{y.plan_year}.html"] = render_html(data).encode()
            pages[f"report-{y.plan_year}.md"] = render_markdown(data).encode()
    document = {
        "hmb_version": __version__,
        "created_at": dt.datetime.now().isoformat(timespec="seconds"),
        "plan": plan.label,
        # the editions the batches used, with the hashes that name them (as manifest.json)
        "editions": {
            e.id: edition_hash(e)
            for e in plan.editions
            if e.id in {u for r in results for u in r.summary.editions}
        },
        **(describe or {}),
        "extracts": list(extracts),
        "ledger": str(ledger),
        "batches": [
            {"batch_id": r.summary.batch_id, "out": str(r.out_dir), "replayed": r.replayed}
            for r in results
        ],
        "plan_years": [y.to_json() for y in years],
    }
    pages[SIMULATION] = json.dumps(document, ensure_ascii=False, indent=2).encode()
    pages["simulation.md"] = _markdown(document).encode()
    write_files(pages, out_dir)
    return SimulationResult(out_dir, ledger, results, years, document)


@dataclass(frozen=True)
class SparkScenario:
    """A scenario run on Spark: its batches' folders, the state after the last (the
    scenario's year to date, as Parquet), its totals per plan year and the sweep's rows."""

    out_dir: Path
    state: Path
    years: list[YearTotals]
    document: dict[str, Any]
    sweep: list[SweepRow]


def simulate_on_spark(
    extracts: Sequence[str],
    plan: PlanSelection,
    inputs: ScenarioInputs,
    out_dir: Path,
    *,
    master: str,
    buckets: int,
    force: bool = False,
    plan_source: tuple[str, tuple[str, ...]] | None = None,
    start: Callable[[Path], None] | None = None,
    variants: Sequence[tuple[str, PlanSelection]] = (),
    describe: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SparkScenario:
    """:func:`simulate` on Spark: each extract, in order, one batch of
    :func:`hmb_batch.run.spark.run_spark_batch` (the same kernel per member bucket), each
    starting from the state the one before left (``DIR/batches/NN/state``). There is no
    scenario ledger: the year to date travels as Parquet (:mod:`hmb_batch.ledger.parquet_state`).

    ``start(folder)`` writes the state folder the first batch starts from (a what-if for the
    rest of a year: ``hmb-batch ledger export`` of the production ledger as of a batch or
    date); None: every member's year at zero. ``variants``: a sweep's values, each evaluated
    on the member-years' year to date at the start and after the last batch, on Spark. The
    plan years' reports need a ledger; each batch's own report is in its folder.
    """
    from hmb_batch.ledger.parquet_state import read_state
    from hmb_batch.run.spark import (
        run_spark_batch,
        scenario_year_totals,
        spark_session,
        sweep_on_spark,
    )

    prepare_folder(out_dir, force=force)
    shutil.rmtree(out_dir / "start", ignore_errors=True)
    prior = None
    if start is not None:
        start(out_dir / "start")
        prior = out_dir / "start"
    first = prior
    session = spark_session(master, shuffle_partitions=min(buckets, 4096))
    try:
        manifests = []
        for i, spec in enumerate(extracts, start=1):
            if progress is not None:
                progress(f"batch {i} of {len(extracts)} on Spark: {spec}")
            batch_inputs = inputs.batch(spec, plan, plan_source)
            folder = out_dir / "batches" / f"{i:02d}"
            result = run_spark_batch(
                batch_inputs, folder, buckets=buckets, prior=prior, scenario=True, session=session
            )
            manifests.append(result.manifest | {"out": str(folder)})
            prior = folder / "state"
        assert prior is not None or not extracts
        payouts = [Path(m["out"]) / "payouts" for m in manifests]
        state = read_state(prior) if prior is not None else None
        found = scenario_year_totals(session, payouts)
        years = []
        for year, settlements, paid, fen in found:
            enrolled = state.enrolled_by_plan_year if state is not None else {}
            ytd = state.payout_by_plan_year_fen.get(year, 0) if state is not None else 0
            ratios = loss_ratio_json(loss_ratios(plan, enrolled, {year: ytd}))
            years.append(YearTotals(year, settlements, paid, fen, ratios[0] if ratios else None))
        rows: list[SweepRow] = []
        if variants and prior is not None and state is not None:
            start_info = read_state(first) if first is not None else None
            totals = sweep_on_spark(
                session,
                [v for _, v in variants],
                start=first,
                end=prior,
                payouts=payouts,
                roster=inputs.roster,
                column_map=dict(inputs.column_map),
                timezone=inputs.timezone,
                buckets=buckets,
            )
            for (value, variant), t in zip(variants, totals, strict=True):
                ratios = []
                for year, fen in sorted(t.payout_by_plan_year_fen.items()):
                    before = start_info.payout_by_plan_year_fen.get(year, 0) if start_info else 0
                    ratios += loss_ratio_json(
                        loss_ratios(
                            variant,
                            state.enrolled_by_plan_year,
                            {year: before + fen},
                        )
                    )
                rows.append(
                    SweepRow(
                        value,
                        variant.editions[0].id,
                        sum(t.payout_by_plan_year_fen.values()),
                        t.members_paid,
                        ratios,
                    )
                )
    finally:
        session.stop()
    used = {e for m in manifests for e in m["editions"]}
    document = {
        "hmb_version": __version__,
        "created_at": dt.datetime.now().isoformat(timespec="seconds"),
        "plan": plan.label,
        "engine": "spark",
        "spark_master": master,
        "buckets": buckets,
        "editions": {e.id: edition_hash(e) for e in plan.editions if e.id in used},
        **(describe or {}),
        "extracts": list(extracts),
        "state": str(prior) if prior is not None else None,
        "start_state": str(first) if first is not None else None,
        "batches": [
            {"batch_id": m["batch_id"], "out": m["out"], "replayed": False} for m in manifests
        ],
        "plan_years": [y.to_json() for y in years],
    }
    pages = {
        SIMULATION: json.dumps(document, ensure_ascii=False, indent=2).encode(),
        "simulation.md": _markdown(document).encode(),
    }
    write_files(pages, out_dir)
    return SparkScenario(out_dir, prior or out_dir, years, document, rows)


def year_totals(lg: Ledger, plan: PlanSelection, batch_ids: list[str]) -> list[YearTotals]:
    """Per plan year: the scenario batches' settlements, payout and members paid, and the
    loss ratio of the year to date in the scenario ledger."""
    if not batch_ids:
        return []
    per_member = lg.query(
        """SELECT plan_year::BIGINT AS plan_year, psn_no, count(*) AS n,
                  sum(payout_fen)::BIGINT AS payout_fen
           FROM settlements WHERE batch_id IN (SELECT unnest($ids)) GROUP BY ALL""",
        {"ids": batch_ids},
    )
    by_year = (
        per_member.group_by("plan_year")
        .agg(
            pl.col("n").sum().alias("settlements"),
            (pl.col("payout_fen") > 0).sum().alias("members_paid"),
            pl.col("payout_fen").sum().alias("payout_fen"),
        )
        .sort("plan_year")
    )
    state = {int(r["plan_year"]): int(r["payout_fen"]) for r in lg.state().iter_rows(named=True)}
    out = []
    for r in by_year.iter_rows(named=True):
        year = int(r["plan_year"])
        enrolled = enrolled_of(lg.year_batches(year))
        ratios = loss_ratio_json(loss_ratios(plan, enrolled, {year: state.get(year, 0)}))
        out.append(
            YearTotals(
                year,
                int(r["settlements"]),
                int(r["members_paid"]),
                int(r["payout_fen"]),
                ratios[0] if ratios else None,
            )
        )
    return out


def _markdown(doc: Mapping[str, Any]) -> str:
    years = doc["plan_years"]
    head = "| | " + " | ".join(str(y["plan_year"]) for y in years) + " |"
    rule = "|---|" + "---:|" * len(years)

    def row(label: str, values: list[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    def ratio(y: Mapping[str, Any]) -> str:
        lr = y["loss_ratio"]
        if not lr or lr["loss_ratio"] is None:
            return "-"
        return f"{Decimal(lr['loss_ratio']) * 100:.1f}%"

    lines = [
        f"# Scenario: {doc['plan']}",
        "",
        f"Editions: {', '.join(doc['editions'])}. Batches: {len(doc['batches'])}. "
        + (
            f"Ledger: `{doc['ledger']}`."
            if "ledger" in doc
            else f"On Spark ({doc['spark_master']}, {doc['buckets']} buckets); state after the "
            f"last batch: `{doc['state']}`."
        ),
    ]
    for change in doc.get("changes", []):
        lines.append(f"- changed: `{change}`")
    lines += [
        "",
        head,
        rule,
        row("settlements", [f"{y['settlements']:,}" for y in years]),
        row("members paid", [f"{y['members_paid']:,}" for y in years]),
        row("payout (yuan)", [f"{Decimal(y['payout']):,}" for y in years]),
        row("loss ratio (year to date)", [ratio(y) for y in years]),
        "",
    ]
    return "\n".join(lines)


# --- sweep -------------------------------------------------------------------------------------


def member_year_states(lg: Ledger, batch_ids: list[str], costs: list[str]) -> pl.DataFrame:
    """The member-years the batches touched, each cost's year to date before the first of them
    (``start__COST``) and after the last (``end__COST``), in fen. A cost the batches did not
    move is where the ledger holds it now, at both ends."""
    log = lg.query(
        """SELECT l.psn_no, l.plan_year::BIGINT AS plan_year, l.cost,
                  arg_min(coalesce(l.before_fen, 0), b.seq)::BIGINT AS start_fen,
                  arg_max(l.after_fen, b.seq)::BIGINT AS end_fen
           FROM accumulator_log l JOIN batches b USING (batch_id)
           WHERE l.batch_id IN (SELECT unnest($ids)) GROUP BY ALL""",
        {"ids": batch_ids},
    )
    now = lg.query(
        """SELECT m.psn_no, m.plan_year::BIGINT AS plan_year, m.cost,
                  m.amount_fen::BIGINT AS amount_fen
           FROM member_state m SEMI JOIN (
               SELECT DISTINCT psn_no, plan_year FROM accumulator_log
               WHERE batch_id IN (SELECT unnest($ids))) t
           ON m.psn_no = t.psn_no AND m.plan_year = t.plan_year""",
        {"ids": batch_ids},
    )
    keys = log.select("psn_no", "plan_year").unique()
    out = keys
    for c in costs:
        moved = log.filter(pl.col("cost") == c).select(
            "psn_no",
            "plan_year",
            pl.col("start_fen").alias(f"start__{c}"),
            pl.col("end_fen").alias(f"end__{c}"),
        )
        held = now.filter(pl.col("cost") == c).select(
            "psn_no", "plan_year", pl.col("amount_fen").alias(f"_now__{c}")
        )
        out = (
            out.join(moved, on=["psn_no", "plan_year"], how="left")
            .join(held, on=["psn_no", "plan_year"], how="left")
            .with_columns(
                pl.coalesce(f"start__{c}", f"_now__{c}", pl.lit(0)).alias(f"start__{c}"),
                pl.coalesce(f"end__{c}", f"_now__{c}", pl.lit(0)).alias(f"end__{c}"),
            )
            .drop(f"_now__{c}")
        )
    return out


@dataclass(frozen=True)
class SweepRow:
    """One value of a swept parameter: what the scenario's batches pay under it."""

    value: str
    edition: str
    payout_fen: int
    members_paid: int
    loss_ratios: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: money as decimal strings."""
        return {
            "value": self.value,
            "edition": self.edition,
            "payout": str(fen_to_yuan(self.payout_fen)),
            "members_paid": self.members_paid,
            "loss_ratios": self.loss_ratios,
        }


def sweep_values(
    result: SimulationResult,
    variants: Sequence[tuple[str, PlanSelection]],
    inputs: ScenarioInputs,
) -> list[SweepRow]:
    """Each ``(value, plan)`` variant's totals on the scenario's member-years: the run is not
    repeated; every variant is evaluated on the year to date before and after the scenario's
    batches (:func:`payout_between`). Right only for variants that differ from the run's plan
    in settlement-level parameters (the caller checks)."""
    batch_ids = [b.summary.batch_id for b in result.batches]
    costs = cost_ids(variants[0][1])
    with open_ledger(result.ledger) as lg:
        states = member_year_states(lg, batch_ids, costs)
        before = {
            int(r["plan_year"]): int(r["payout_fen"]) for r in lg.state().iter_rows(named=True)
        }
        enrolled = {y.plan_year: enrolled_of(lg.year_batches(y.plan_year)) for y in result.years}
    own = {y.plan_year: y.payout_fen for y in result.years}
    roster = load_roster(
        inputs.roster,
        inputs.column_map,
        inputs.encoding,
        members=states["psn_no"].unique(),
        timezone=inputs.timezone,
    ).select(
        "psn_no",
        pl.col("plan_year").cast(pl.Int64),
        "pre_existing",
        "consecutive_years",
    )
    states = states.join(roster, on=["psn_no", "plan_year"], how="left")
    rows = []
    for value, plan in variants:
        paid = payout_between(states, plan, costs)
        by_year = dict(paid.group_by("plan_year").agg(pl.col("payout").sum()).iter_rows())
        ratios = []
        for year, fen in sorted(by_year.items()):
            # the year to date under this value: what the ledger held before the scenario,
            # plus what the scenario's batches pay under it
            ytd = before.get(int(year), 0) - own.get(int(year), 0) + int(fen)
            ratios += loss_ratio_json(
                loss_ratios(plan, enrolled.get(int(year), {}), {int(year): ytd})
            )
        rows.append(
            SweepRow(
                value,
                plan.editions[0].id,
                int(paid["payout"].sum()),
                int((paid["payout"] > 0).sum()),
                ratios,
            )
        )
    return rows


def write_sweep(path: str, rows: Sequence[SweepRow], out_dir: Path) -> dict[str, Path]:
    """sweep.json, sweep.md and sweep.html (charts of the payout and the loss ratio per value)
    in ``out_dir``."""
    doc = {"parameter": path, "values": [r.to_json() for r in rows]}

    years = sorted({int(lr["plan_year"]) for r in rows for lr in r.loss_ratios})

    def ratio_ppm(lr: Mapping[str, Any]) -> int:
        return 0 if lr["loss_ratio"] is None else int(Decimal(lr["loss_ratio"]) * RATE_SCALE)

    def ratios_text(r: SweepRow) -> str:
        return ", ".join(
            f"loss ratio {lr['plan_year']} "
            + ("-" if lr["loss_ratio"] is None else f"{Decimal(lr['loss_ratio']) * 100:.1f}%")
            for lr in r.loss_ratios
        )

    charts = [
        Chart(
            "payout",
            "赔付合计",
            "Total payout per value",
            [Bar(f"{path} = {r.value}", r.payout_fen, r.members_paid) for r in rows],
        )
    ]
    for year in years:
        of_year = [(r, lr) for r in rows for lr in r.loss_ratios if int(lr["plan_year"]) == year]
        charts.append(
            Chart(
                f"loss-ratio-{year}",
                f"赔付率 {year}",
                f"Loss ratio per value, plan year {year} (year to date)",
                [Bar(f"{path} = {r.value}", ratio_ppm(lr)) for r, lr in of_year],
                unit="percent",
                target=int(Decimal(of_year[0][1]["target_loss_ratio"]) * RATE_SCALE),
                note="target line: the edition's target loss ratio",
            )
        )
    data = ReportData(
        title=f"参数扫描 Sweep · {path}",
        scope=(
            f"{len(rows)} values of {path}; each the scenario's batches paid under that value "
            "(the year to date reused: the fee lines were read once)"
        ),
        generated_at=dt.datetime.now().isoformat(timespec="seconds"),
        headline=[
            (
                f"{path} = {r.value}",
                f"{fen_to_yuan(r.payout_fen):,} yuan · {r.members_paid:,} members paid · "
                + (ratios_text(r) or "loss ratio -"),
            )
            for r in rows
        ],
        charts=charts,
    )
    files = {
        "sweep.json": json.dumps(doc, ensure_ascii=False, indent=2).encode(),
        "sweep.md": render_markdown(data).encode(),
        "sweep.html": render_html(data).encode(),
    }
    write_files(files, out_dir)
    return {name: out_dir / name for name in files}
