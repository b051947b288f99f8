"""``hmb-batch compare A B``: what one run pays against another, for one plan year.

A and B are ledgers (a production ledger, opened read-only and never changed; or a scenario's
``scenario.duckdb``), scenario folders (``hmb-batch simulate --out``), or batch folders
(``hmb-batch adjudicate --out``: their ``payouts.parquet``). The comparison is of the plan
year's applied settlements on each side: totals and loss ratios, every member's annual payout
(who gains, who loses, who is newly paid, who no longer is), the payout by district, hospital,
month, responsibility and bracket band, and the settlements whose status changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from hmb_batch.errors import HmbError, InputUnreadable, UsageError
from hmb_batch.io.atomic import write_files
from hmb_batch.ledger.store import SCHEMA_VERSION, Ledger, LedgerError
from hmb_batch.money import fen_to_yuan, yuan_to_fen
from hmb_batch.plan.catalog import PlanSelection, select_plan
from hmb_batch.plan.scenario import select_plan_with
from hmb_batch.report.data import enrolled_of, loss_ratio_json, loss_ratios
from hmb_batch.report.pages import Bar, Chart, ReportData, render_html, render_markdown
from hmb_batch.run.identity import edition_hash

SHOW = 10  # the largest gains and losses, the first status changes shown
SETTLEMENT = [
    "setl_id",
    "psn_no",
    "plan_year",
    "status",
    "setl_time",
    "insu_admdvs",
    "fixmedins_code",
    "edition",
    "payable_fen",
    "payout_fen",
    "cum_payable_fen",
]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its plan year's settlements and responsibility payouts."""

    label: str
    settlements: pl.DataFrame  # SETTLEMENT columns, money in fen
    responsibilities: pl.DataFrame  # setl_id, responsibility, payout_fen
    loss_ratio: dict[str, Any] | None  # as in manifest.json, when the side knows its pool
    # the side's edition's first responsibility, and its bracket bounds (fen), if known
    banded: tuple[str, list[int]] | None = None


@contextlib.contextmanager
def read_only_ledger(path: Path) -> Iterator[Ledger]:
    """A ledger opened read-only: no lock, no migration, not a byte changed. A ledger of
    another schema version is refused (open it once with ``hmb-batch ledger status``)."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise LedgerError(
            f"ledger {path} cannot be opened read-only ({str(exc).splitlines()[0]}); if a "
            "batch is running on it, compare once it has finished"
        ) from None
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        version = int(rows[0][0]) if rows else 0
        if version != SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {path} has schema version {version}; this hmb-batch reads "
                f"{SCHEMA_VERSION}: run `hmb-batch ledger status --ledger {path}` once"
            )
        yield Ledger(path, con)
    except duckdb.Error as exc:
        raise LedgerError(f"{path} is not an hmb-batch ledger ({exc})") from None
    finally:
        con.close()


def load_side(spec: Path, plan_year: int | None) -> tuple[Side, int]:
    """One side from a ledger, a scenario folder or a batch folder; and the plan year compared
    (``plan_year``, or the side's only plan year)."""
    if spec.is_dir() and (spec / "scenario.duckdb").is_file():
        side, year = _ledger_side(
            spec / "scenario.duckdb", plan_year, str(spec), _scenario_plan(spec)
        )
        return replace(side, loss_ratio=_scenario_ratio(spec, year) or side.loss_ratio), year
    if spec.is_dir() and (spec / "payouts.parquet").is_file():
        return _folder_side(spec, plan_year)
    if spec.is_file():
        return _ledger_side(spec, plan_year, str(spec))
    raise InputUnreadable(
        f"{spec}: neither a ledger file, a scenario folder (simulate --out) nor a batch folder "
        "(adjudicate --out)"
    )


def _year(found: list[int], asked: int | None, label: str) -> int:
    if asked is not None:
        if asked not in found:
            raise UsageError(f"{label} has no settlement in plan year {asked} (it has {found})")
        return asked
    if len(found) != 1:
        raise UsageError(f"{label} holds plan years {found}: give --year")
    return found[0]


def _scenario_plan(folder: Path) -> PlanSelection | None:
    """The editions a scenario's batches ran under, rebuilt from its simulation.json (its
    ``--plan`` and ``--set``s: a scenario's own edition is not shipped), for its bracket bounds
    — only if each edition still has the hash the scenario recorded. None otherwise."""
    try:
        doc = json.loads((folder / "simulation.json").read_text(encoding="utf-8"))
        plan = select_plan_with(doc["plan_spec"], doc.get("run_changes", []))
    except (OSError, ValueError, KeyError, HmbError):
        return None
    recorded = doc.get("editions", {})
    if any(recorded.get(e.id, edition_hash(e)) != edition_hash(e) for e in plan.editions):
        return None
    return plan


def _scenario_ratio(folder: Path, year: int) -> dict[str, Any] | None:
    """The loss ratio a scenario recorded for ``year`` (simulation.json)."""
    try:
        doc = json.loads((folder / "simulation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for y in doc.get("plan_years", []):
        if y.get("plan_year") == year:
            ratio = y.get("loss_ratio")
            return ratio if isinstance(ratio, dict) else None
    return None


def _ledger_side(
    path: Path, plan_year: int | None, label: str, plan: PlanSelection | None = None
) -> tuple[Side, int]:
    with read_only_ledger(path) as lg:
        years = [
            int(r[0])
            for r in lg.con.execute(
                "SELECT DISTINCT plan_year FROM settlements ORDER BY 1"
            ).fetchall()
        ]
        year = _year(years, plan_year, label)
        settlements = lg.query(
            f"SELECT {', '.join(SETTLEMENT)} FROM settlements WHERE plan_year = $y",
            {"y": year},
        ).with_columns(pl.col("plan_year").cast(pl.Int64))
        responsibilities = lg.query(
            """SELECT r.setl_id, r.responsibility, r.payable_fen, r.payout_fen
               FROM settlement_responsibilities r
               JOIN settlements s USING (setl_id) WHERE s.plan_year = $y""",
            {"y": year},
        )
        enrolled = enrolled_of(lg.year_batches(year))
    plan = plan or _plan_of(sorted(set(settlements["edition"].drop_nulls())))
    payout = int(settlements["payout_fen"].sum() or 0)
    ratio = None
    if plan is not None:
        found = loss_ratio_json(loss_ratios(plan, enrolled, {year: payout}))
        ratio = found[0] if found else None
    return Side(label, settlements, responsibilities, ratio, _bands(plan, year)), year


def _bands(plan: PlanSelection | None, year: int) -> tuple[str, list[int]] | None:
    """The first responsibility of the edition governing ``year`` and its bracket bounds."""
    edition = plan.for_year(year) if plan is not None else None
    if edition is None:
        return None
    first = edition.edition.responsibilities[0]
    return first.id, [b.up_to for b in first.brackets if b.up_to is not None]


def _plan_of(editions: list[str]) -> PlanSelection | None:
    """The shipped edition the side's settlements name, for its premium (None: a variant or a
    city's own file, whose premium the side's own loss ratio gives)."""
    if len(editions) != 1:
        return None
    try:
        return select_plan(editions[0])
    except HmbError:  # an edition of the user's own or a variant: no premium here
        return None


def _folder_side(folder: Path, plan_year: int | None) -> tuple[Side, int]:
    payouts = pl.read_parquet(folder / "payouts.parquet")
    years = sorted(int(y) for y in payouts["plan_year"].unique())
    year = _year(years, plan_year, str(folder))
    rows = payouts.filter(pl.col("plan_year") == year)
    settlements = rows.select(
        "setl_id",
        "psn_no",
        pl.col("plan_year").cast(pl.Int64),
        "status",
        "setl_time",
        "insu_admdvs",
        "fixmedins_code",
        "edition",
        *[
            (pl.col(f"{m}_amt") * 100).cast(pl.Int64).alias(f"{m}_fen")
            for m in ("payable", "payout", "cum_payable")
        ],
    )
    responsibilities = (
        rows.select("setl_id", "responsibilities")
        .explode("responsibilities")
        .drop_nulls("responsibilities")
        .select(
            "setl_id",
            pl.col("responsibilities").struct.field("id").alias("responsibility"),
            *[
                (pl.col("responsibilities").struct.field(f"{m}_amt") * 100)
                .cast(pl.Int64)
                .alias(f"{m}_fen")
                for m in ("payable", "payout")
            ],
        )
    )
    ratio = None
    manifest = folder / "manifest.json"
    if manifest.is_file():
        for lr in json.loads(manifest.read_text(encoding="utf-8")).get("loss_ratios", []):
            if lr["plan_year"] == year:
                ratio = lr
    plan = _plan_of(sorted(set(settlements["edition"].drop_nulls())))
    return Side(str(folder), settlements, responsibilities, ratio, _bands(plan, year)), year


@dataclass(frozen=True)
class Comparison:
    """A against B for one plan year; every amount in fen."""

    plan_year: int
    a: Side
    b: Side
    members: pl.DataFrame  # psn_no, payout_a, payout_b, change (fen), newly/no longer paid
    by: dict[str, pl.DataFrame]  # dimension -> key, payout_a, payout_b, change
    status_changes: pl.DataFrame  # status_a, status_b, settlements
    status_examples: pl.DataFrame

    def totals(self) -> dict[str, Any]:
        """The headline figures, JSON-ready."""
        m = self.members
        a, b = int(m["payout_a"].sum()), int(m["payout_b"].sum())
        changed = m.filter(pl.col("change") != 0)
        return {
            "plan_year": self.plan_year,
            "a": {"source": self.a.label, "payout": _y(a), "loss_ratio": self.a.loss_ratio},
            "b": {"source": self.b.label, "payout": _y(b), "loss_ratio": self.b.loss_ratio},
            "difference": _y(b - a),
            "members": {
                "compared": m.height,
                "changed": changed.height,
                "gained": int((m["change"] > 0).sum()),
                "lost": int((m["change"] < 0).sum()),
                "newly_paid": int(m["newly_paid"].sum()),
                "no_longer_paid": int(m["no_longer_paid"].sum()),
                "change_quantiles": _quantiles(changed["change"]),
                # ties in psn_no order: the same runs list the same members
                "largest_gains": _members(
                    m.sort(["change", "psn_no"], descending=[True, False]).head(SHOW), 1
                ),
                "largest_losses": _members(m.sort(["change", "psn_no"]).head(SHOW), -1),
            },
            "status_changes": [
                {"from": r["status_a"], "to": r["status_b"], "settlements": r["settlements"]}
                for r in self.status_changes.iter_rows(named=True)
            ],
            "by": {
                name: [
                    {
                        "key": r["key"],
                        "payout_a": _y(r["payout_a"]),
                        "payout_b": _y(r["payout_b"]),
                        "change": _y(r["change"]),
                    }
                    for r in frame.iter_rows(named=True)
                ]
                for name, frame in self.by.items()
            },
        }


def _quantiles(changes: pl.Series) -> dict[str, str]:
    """The change at quantiles 0.1 … 0.9 of the members whose payout changed: the value at
    rank round(q × (n − 1)) of the sorted changes, in integers (no float touches money)."""
    values = changes.sort().to_list()
    if not values:
        return {}
    out = {}
    for q in ("0.1", "0.25", "0.5", "0.75", "0.9"):
        rank = (Decimal(q) * (len(values) - 1)).quantize(Decimal(1), ROUND_HALF_UP)
        out[q] = _y(int(values[int(rank)]))
    return out


def _y(fen: int) -> str:
    return str(fen_to_yuan(fen))


def _members(frame: pl.DataFrame, sign: int) -> list[dict[str, Any]]:
    return [
        {
            "psn_no": r["psn_no"],
            "payout_a": _y(r["payout_a"]),
            "payout_b": _y(r["payout_b"]),
            "change": _y(r["change"]),
        }
        for r in frame.iter_rows(named=True)
        if r["change"] * sign > 0
    ]


def compare(a: Side, b: Side, plan_year: int) -> Comparison:
    """Compare two sides of one plan year. Members are also grouped by the bracket band their
    annual payable reaches on side A, when side A's edition is known."""
    sa, sb = a.settlements, b.settlements

    def per_member(s: pl.DataFrame) -> pl.DataFrame:
        return s.group_by("psn_no").agg(
            pl.col("payout_fen").sum().alias("payout"),
            pl.col("payable_fen").sum().alias("payable"),
        )

    members = (
        per_member(sa)
        .join(per_member(sb), on="psn_no", how="full", coalesce=True, suffix="_b")
        .select(
            "psn_no",
            pl.col("payout").fill_null(0).alias("payout_a"),
            pl.col("payout_b").fill_null(0).alias("payout_b"),
            pl.col("payable").fill_null(0).alias("payable_a"),
            pl.col("payable_b").fill_null(0).alias("payable_b"),
        )
        .with_columns(
            (pl.col("payout_b") - pl.col("payout_a")).alias("change"),
            ((pl.col("payout_a") <= 0) & (pl.col("payout_b") > 0)).alias("newly_paid"),
            ((pl.col("payout_a") > 0) & (pl.col("payout_b") <= 0)).alias("no_longer_paid"),
        )
        .sort("psn_no")
    )
    by = {
        "district": _by(sa, sb, pl.col("insu_admdvs")),
        "hospital": _by(sa, sb, pl.col("fixmedins_code")),
        "month": _by(sa, sb, pl.col("setl_time").dt.strftime("%Y-%m")),
        "responsibility": _by(a.responsibilities, b.responsibilities, pl.col("responsibility")),
    }
    if a.banded:
        rid, bounds = a.banded
        # the band a member reaches is that responsibility's own payable, not the total of all
        payable = (
            a.responsibilities.filter(pl.col("responsibility") == rid)
            .join(sa.select("setl_id", "psn_no"), on="setl_id")
            .group_by("psn_no")
            .agg(pl.col("payable_fen").sum())
        )
        banded = members.join(payable, on="psn_no", how="left").with_columns(
            pl.col("payable_fen").fill_null(0)
        )
        by[f"band ({rid}'s annual payable on side A)"] = _by_band(banded, bounds)
    statuses = (
        sa.select("setl_id", pl.col("status").alias("status_a"))
        .join(
            sb.select("setl_id", pl.col("status").alias("status_b")),
            on="setl_id",
            how="full",
            coalesce=True,
        )
        .with_columns(
            pl.col("status_a").fill_null("(absent)"), pl.col("status_b").fill_null("(absent)")
        )
        .filter(pl.col("status_a") != pl.col("status_b"))
    )
    changes = (
        statuses.group_by("status_a", "status_b")
        .agg(pl.len().alias("settlements"))
        .sort(["settlements", "status_a", "status_b"], descending=[True, False, False])
    )
    return Comparison(plan_year, a, b, members, by, changes, statuses.sort("setl_id").head(SHOW))


def _by(a: pl.DataFrame, b: pl.DataFrame, key: pl.Expr) -> pl.DataFrame:
    def side(s: pl.DataFrame, name: str) -> pl.DataFrame:
        return s.group_by(key.cast(pl.String).fill_null("(none)").alias("key")).agg(
            pl.col("payout_fen").sum().alias(name)
        )

    return (
        side(a, "payout_a")
        .join(side(b, "payout_b"), on="key", how="full", coalesce=True)
        .with_columns(pl.col("payout_a", "payout_b").fill_null(0))
        .with_columns((pl.col("payout_b") - pl.col("payout_a")).alias("change"))
        .sort("key")
    )


def _by_band(members: pl.DataFrame, bounds: list[int]) -> pl.DataFrame:
    edges = [0, *bounds]
    labels = [
        f"{fen_to_yuan(lo):,}–{fen_to_yuan(hi):,}" for lo, hi in itertools.pairwise(edges)
    ] + [f"above {fen_to_yuan(edges[-1]):,}"]
    band = pl.lit("no payable")
    for i in range(len(edges) - 1, -1, -1):
        band = pl.when(pl.col("payable_fen") > edges[i]).then(pl.lit(labels[i])).otherwise(band)
    return (
        members.group_by(band.alias("key"))
        .agg(pl.col("payout_a").sum(), pl.col("payout_b").sum())
        .with_columns((pl.col("payout_b") - pl.col("payout_a")).alias("change"))
        .sort("key")
    )


def write_comparison(c: Comparison, out_dir: Path) -> dict[str, Path]:
    """compare.html, compare.md, compare.json and members.parquet (every member's annual
    payout each way and the change, in yuan) in ``out_dir``."""
    doc = c.totals()
    members = c.members.select(
        "psn_no",
        *[
            (pl.col(f"{m}").cast(pl.Decimal(18, 0)) / 100).cast(pl.Decimal(18, 2)).alias(f"{m}_amt")
            for m in ("payout_a", "payout_b", "change")
        ],
        "newly_paid",
        "no_longer_paid",
    )
    parquet = io.BytesIO()
    members.write_parquet(parquet)
    data = _page(c, doc)
    files = {
        "compare.html": render_html(data).encode(),
        "compare.md": render_markdown(data).encode(),
        "compare.json": json.dumps(doc, ensure_ascii=False, indent=2).encode(),
        "members.parquet": parquet.getvalue(),
    }
    write_files(files, out_dir)
    return {name: out_dir / name for name in files}


def _page(c: Comparison, doc: dict[str, Any]) -> ReportData:
    m = doc["members"]

    def ratio(side: dict[str, Any]) -> str:
        lr = side["loss_ratio"]
        if not lr or lr.get("loss_ratio") is None:
            return "-"
        return f"{Decimal(lr['loss_ratio']) * 100:.1f}%"

    headline = [
        ("A", c.a.label),
        ("B", c.b.label),
        ("payout A (yuan)", f"{Decimal(doc['a']['payout']):,}"),
        ("payout B (yuan)", f"{Decimal(doc['b']['payout']):,}"),
        ("difference B − A (yuan)", f"{Decimal(doc['difference']):,}"),
        ("loss ratio A / B", f"{ratio(doc['a'])} / {ratio(doc['b'])}"),
        ("members compared", f"{m['compared']:,}"),
        ("members whose payout changed", f"{m['changed']:,}"),
        ("gained / lost", f"{m['gained']:,} / {m['lost']:,}"),
        ("newly paid / no longer paid", f"{m['newly_paid']:,} / {m['no_longer_paid']:,}"),
    ]
    for q, v in m["change_quantiles"].items():
        headline.append((f"change at quantile {q} (yuan)", f"{Decimal(v):,}"))
    for row in doc["status_changes"]:
        headline.append((f"status {row['from']} → {row['to']}", f"{row['settlements']:,}"))
    charts = [
        Chart(
            f"by-{name.split()[0]}",
            f"按{_ZH.get(name.split()[0], name)}",
            f"Payout change B − A by {name}",
            [Bar(f"{r['key']}", yuan_to_fen(r["change"])) for r in rows],
            note="bars: gains; a loss shows its value with no bar",
        )
        for name, rows in doc["by"].items()
    ]
    gains = [Bar(f"{g['psn_no']}", yuan_to_fen(g["change"])) for g in m["largest_gains"]]
    if gains:
        charts.insert(0, Chart("gains", "增幅最大的参保人", "Largest gains (members)", gains))
    return ReportData(
        title=f"比较 Comparison · plan year {c.plan_year}",
        scope=f"A: {c.a.label}; B: {c.b.label}; applied settlements of plan year {c.plan_year}",
        generated_at=dt.datetime.now().isoformat(timespec="seconds"),
        headline=headline,
        charts=charts,
    )


_ZH = {
    "district": "地区",
    "hospital": "医院",
    "month": "月份",
    "responsibility": "责任",
    "band": "分段",
}
