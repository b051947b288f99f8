"""Reports: where the money goes, for a batch or a plan year (``report.html``, ``report.md``).

:func:`report_data` aggregates a settlement frame (from a batch's payouts or from the ledger) into
small tables; :func:`render_html` and :func:`render_markdown` draw them. No I/O here.

The HTML is one self-contained file: inline CSS and SVG charts, no script, no network request,
a font stack that shows Chinese where a CJK font is installed (Noto Sans CJK, PingFang,
Microsoft YaHei, WenQuanYi). Reports hold aggregates only: never a name, certificate number or
member id.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import polars as pl

from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.plan.model import RATE_SCALE
from hmb_batch.report.summary import collect_aggregates
from hmb_batch.rules.codes import REASON_CODES

# the columns a settlement frame must have (money in fen)
SETTLEMENT_COLUMNS = [
    "plan_year",
    "status",
    "reasons",
    "setl_time",
    "insu_admdvs",
    "fixmedins_code",
    "fixmedins_name",
    "edition",
    "payable_fen",
    "payout_fen",
    "cum_payable_fen",
]
TOP_HOSPITALS = 10
DISTRIBUTION_EDGES = [0, 100, 1_000, 5_000, 10_000, 50_000, 100_000]  # yuan


@dataclass(frozen=True)
class Bar:
    """One bar of a chart: a label, an amount in fen (or a count) and a settlement count."""

    label: str
    value: int
    settlements: int = 0


@dataclass(frozen=True)
class Chart:
    """A titled bar chart (Chinese title with English alongside)."""

    id: str
    title_zh: str
    title_en: str
    bars: list[Bar]
    unit: str = "yuan"  # yuan (values in fen) | count | percent (values in ppm)
    target: int | None = None  # a target line (same unit as the values)
    note: str = ""


@dataclass(frozen=True)
class LossRatio:
    """A plan year's loss ratio (赔付率) against the premium pool net of operating cost."""

    plan_year: int
    enrolled: int
    premium_fen: int
    operating_cost_share_ppm: int
    target_ppm: int
    payout_fen: int

    @property
    def pool_fen(self) -> int:
        """Members × premium, less the operating-cost share (rounded half up to the fen)."""
        gross = self.enrolled * self.premium_fen
        return gross - (gross * self.operating_cost_share_ppm + RATE_SCALE // 2) // RATE_SCALE

    @property
    def ratio_ppm(self) -> int | None:
        """Payouts ÷ pool in parts per million (None without a pool)."""
        if self.pool_fen <= 0:
            return None
        return (self.payout_fen * RATE_SCALE + self.pool_fen // 2) // self.pool_fen


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows."""

    title: str
    scope: str  # what the figures cover, in words
    generated_at: str
    headline: list[tuple[str, str]]  # (label, value)
    charts: list[Chart]
    loss_ratios: list[LossRatio] = field(default_factory=list)
    reconciliation: list[dict[str, object]] = field(default_factory=list)  # identities (JSON)


def _bars(frame: pl.DataFrame, label: str, value: str = "payout_fen") -> list[Bar]:
    return [
        Bar(str(r[label]), int(r[value] or 0), int(r.get("settlements") or 0))
        for r in frame.iter_rows(named=True)
    ]


def _band_bars(frame: pl.LazyFrame, plan: PlanSelection) -> list[Bar]:
    """Payouts split by bracket band of each edition's first responsibility (before caps)."""
    bars: list[Bar] = []
    editions = {x.id: x for x in plan.editions}
    present = set(frame.select("edition").unique().collect()["edition"].to_list())
    for e in (editions[i] for i in sorted(present) if i in editions):
        rows = frame.filter(pl.col("edition") == e.id)
        brackets = e.edition.responsibilities[0].brackets
        after = pl.col("cum_payable_fen")
        before = pl.col("cum_payable_fen") - pl.col("payable_fen")
        low = 0
        exprs: list[pl.Expr] = []
        labels: list[str] = []
        rates: list[int] = []
        for b in brackets:
            high = b.up_to
            in_band = (
                (after.clip(low, high) - before.clip(low, high))
                if high is not None
                else (after.clip(lower_bound=low) - before.clip(lower_bound=low))
            )
            exprs.append(in_band.sum().alias(str(len(exprs))))
            rates.append(b.rate)
            rate = f"{(Decimal(b.rate) * 100 / RATE_SCALE).normalize():f}%"
            span = (
                f"{fen_to_yuan(low):,.0f}–{fen_to_yuan(high):,.0f}"
                if high is not None
                else f"> {fen_to_yuan(low):,.0f}"
            )
            labels.append(f"{e.id}: {span} @ {rate}")
            low = high if high is not None else low
        sums = (
            rows.select(exprs).collect().row(0)
        )  # fen per band; the rate is applied in Python ints
        bars += [
            Bar(label, _half_up(int(v or 0) * rate, RATE_SCALE))
            for label, v, rate in zip(labels, sums, rates, strict=True)
        ]
    return bars


def _half_up(numerator: int, scale: int) -> int:
    half = scale // 2
    return (numerator + half) // scale if numerator >= 0 else -((-numerator + half) // scale)


def report_data(
    settlements: pl.DataFrame | pl.LazyFrame,
    plan: PlanSelection,
    *,
    title: str,
    scope: str,
    quarantined_by_reason: Mapping[str, int],
    loss_ratios: Sequence[LossRatio] = (),
    reconciliation: Sequence[dict[str, object]] = (),
    generated_at: dt.datetime | None = None,
    by_responsibility: pl.DataFrame | pl.LazyFrame | None = None,
    orphan_fee_lines: int = 0,
) -> ReportData:
    """Aggregate a settlement frame (:data:`SETTLEMENT_COLUMNS`) into a report.

    The frame may be lazy (a bounded-memory run scans its part files): only aggregates are
    collected. ``by_responsibility``: (responsibility, payout_fen) rows, one per settlement and
    responsibility, for the chart of payouts by responsibility (责任).
    """
    s = settlements.lazy().select(SETTLEMENT_COLUMNS)
    n = pl.len().alias("settlements")
    pay = pl.col("payout_fen").sum()
    month = (
        s.group_by(pl.col("setl_time").dt.strftime("%Y-%m").alias("month"))
        .agg(pay, n)
        .sort("month")
    )
    district = (
        s.group_by(pl.col("insu_admdvs").fill_null("(none)").alias("district"))
        .agg(pay, n)
        .sort(["payout_fen", "district"], descending=[True, False])
    )
    hospitals = (
        s.group_by(
            pl.format(
                "{} {}",
                pl.col("fixmedins_code").fill_null("-"),
                pl.col("fixmedins_name").fill_null(""),
            ).alias("hospital")
        )
        .agg(pay, n)
        .sort(["payout_fen", "hospital"], descending=[True, False])
        .head(TOP_HOSPITALS)
    )
    paid = s.filter(pl.col("payout_fen") > 0)
    edges = [e * 100 for e in DISTRIBUTION_EDGES]
    labels = [f"{lo // 100:,}–{hi // 100:,}" for lo, hi in itertools.pairwise(edges)] + [
        f"> {edges[-1] // 100:,}"
    ]
    bucket: pl.Expr = pl.lit(labels[-1])
    for high, label in reversed(list(zip(edges[1:], labels, strict=False))):
        bucket = pl.when(pl.col("payout_fen") < high).then(pl.lit(label)).otherwise(bucket)
    denied = (
        s.filter(pl.col("status") == "denied")
        .select(pl.col("reasons").list.explode(keep_nulls=False, empty_as_null=False))
        .group_by("reasons")
        .agg(pl.len().alias("n"))
    )
    month_t, district_t, hospital_t, distribution, denied_t, by_status, totals = collect_aggregates(
        [
            month,
            district,
            hospitals,
            paid.group_by(bucket.alias("bucket")).agg(n, pay),
            denied,
            s.group_by("status").agg(n),
            s.select(pl.len().alias("n"), pay),
        ]
    )
    dist_bars = []
    for label in labels:
        row = distribution.filter(pl.col("bucket").cast(pl.String) == label)
        count = int(row["settlements"][0]) if row.height else 0
        dist_bars.append(Bar(label, count, count))
    reason_bars = [
        Bar(f"denied · {_reason(r['reasons'])}", int(r["n"]), int(r["n"]))
        for r in denied_t.sort(["n", "reasons"], descending=[True, False]).iter_rows(named=True)
    ] + [
        Bar(f"quarantined · {_reason(code)}", int(k), int(k))
        for code, k in sorted(quarantined_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    status = dict(by_status.iter_rows())
    total = int(totals["payout_fen"][0] or 0)
    headline = [
        ("settlements 结算单", f"{int(totals['n'][0]):,}"),
        ("paid 赔付", f"{status.get('paid', 0):,}"),
        ("denied 拒付", f"{status.get('denied', 0):,}"),
        ("reversals 冲销", f"{status.get('reversal', 0):,}"),
        ("quarantined 隔离", f"{sum(quarantined_by_reason.values()):,}"),
        ("orphan fee lines 无结算单明细", f"{orphan_fee_lines:,}"),
        ("total payout 赔付合计 (yuan)", f"{fen_to_yuan(total):,}"),
    ]
    responsibility_bars = []
    if by_responsibility is not None:
        (per,) = collect_aggregates(
            [
                by_responsibility.lazy()
                .group_by("responsibility")
                .agg(pay, n)
                .sort(["payout_fen", "responsibility"], descending=[True, False])
            ]
        )
        responsibility_bars = _bars(per, "responsibility")
    charts = [
        Chart(
            "responsibilities",
            "按责任",
            "Payouts by responsibility",
            responsibility_bars,
        ),
        Chart(
            "bands",
            "按赔付档次",
            "Payouts by bracket band",
            _band_bars(s, plan),
            note="the year-to-date payable of each settlement split over the first "
            "responsibility's bands, before caps; each band rounded half up",
        ),
        Chart("months", "按月份", "Payouts by month", _bars(month_t, "month")),
        Chart(
            "districts",
            "按参保地区划",
            "Payouts by district (insu_admdvs)",
            _bars(district_t, "district"),
        ),
        Chart(
            "hospitals",
            "赔付最多的医疗机构",
            f"Top {TOP_HOSPITALS} hospitals by payout",
            _bars(hospital_t, "hospital"),
        ),
        Chart(
            "distribution",
            "赔付金额分布",
            "Distribution of payouts (settlements paid, by amount in yuan)",
            dist_bars,
            unit="count",
        ),
        Chart(
            "reasons",
            "拒付与隔离原因",
            "Denials and quarantine by reason",
            reason_bars,
            unit="count",
        ),
    ]
    if loss_ratios:
        target = loss_ratios[0].target_ppm
        charts.append(
            Chart(
                "loss_ratio",
                "赔付率",
                "Loss ratio, year to date (payouts ÷ premium pool net of operating cost)",
                [Bar(f"{lr.plan_year}", lr.ratio_ppm or 0, lr.enrolled) for lr in loss_ratios],
                unit="percent",
                target=target,
                note="target line: the plan edition's target loss ratio",
            )
        )
    return ReportData(
        title=title,
        scope=scope,
        generated_at=(generated_at or dt.datetime.now()).isoformat(timespec="seconds"),
        headline=headline,
        charts=charts,
        loss_ratios=list(loss_ratios),
        reconciliation=list(reconciliation),
    )


def _reason(code: str) -> str:
    c = REASON_CODES.get(code)
    return f"{code} {c.zh}" if c else code


def _value(chart: Chart, v: int) -> str:
    if chart.unit == "yuan":
        return f"{fen_to_yuan(v):,}"
    if chart.unit == "percent":
        return f"{Decimal(v) / RATE_SCALE * 100:.1f}%"
    return f"{v:,}"


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font-family:"Noto Sans CJK SC","Noto Sans SC","Source Han Sans SC","PingFang SC",
"Microsoft YaHei","WenQuanYi Micro Hei",sans-serif;margin:24px;color:#1d2733;max-width:1000px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px}
.scope{color:#5b6875;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0} td,th{padding:3px 10px;border-bottom:1px solid #dde3e8;
text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37} .fail{color:#c62828;font-weight:bold}
figure{margin:8px 0 20px} figcaption{font-weight:bold;margin-bottom:4px}
figcaption span{font-weight:normal;color:#5b6875} .note{color:#5b6875;font-size:12px}
svg text{font-size:12px;fill:#1d2733} .bar{fill:#2f6db5} .target{stroke:#c62828;stroke-width:2;
stroke-dasharray:6 4}
"""


def _svg(chart: Chart) -> str:
    label_w, bar_w, row_h, value_w = 300, 460, 22, 120
    bars = chart.bars or [Bar("(none)", 0)]
    top = max([abs(b.value) for b in bars] + [chart.target or 0, 1])
    height = row_h * len(bars) + 10
    width = label_w + bar_w + value_w
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for i, b in enumerate(bars):
        y = i * row_h + 4
        w = 0 if b.value <= 0 else max(1, round(bar_w * b.value / top))
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">'
            f"{html.escape(b.label[:48])}</text>"
            f'<rect class="bar" x="{label_w}" y="{y}" width="{w}" height="{row_h - 6}">'
            f"<title>{html.escape(b.label)}: {_value(chart, b.value)}</title></rect>"
            f'<text x="{label_w + w + 6}" y="{y + 14}">{_value(chart, b.value)}</text>'
        )
    if chart.target is not None:
        x = label_w + round(bar_w * chart.target / top)
        parts.append(
            f'<line class="target" x1="{x}" y1="0" x2="{x}" y2="{height}">'
            f"<title>target {_value(chart, chart.target)}</title></line>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: ReportData) -> str:
    """One self-contained HTML page: no script, no external resource."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>{e(data.title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(data.title)}</h1>",
        f'<p class="scope">{e(data.scope)} · generated {e(data.generated_at)}</p>',
        "<table>",
    ]
    out += [f'<tr><th>{e(k)}</th><td class="n">{e(v)}</td></tr>' for k, v in data.headline]
    out.append("</table>")
    if data.reconciliation:
        passed = all(bool(i.get("passed")) for i in data.reconciliation)
        verdict = "balanced 平衡" if passed else "NOT BALANCED 不平衡"
        out.append(
            f'<h2>对账 Reconciliation: <span class="{"pass" if passed else "fail"}">'
            f"{verdict}</span></h2><table><tr><th>identity</th><th>expected</th>"
            "<th>found</th><th></th></tr>"
        )
        for i in data.reconciliation:
            ok = bool(i.get("passed"))
            out.append(
                f'<tr><td>{e(str(i["name"]))}</td><td class="n">{e(str(i["expected"]))}</td>'
                f'<td class="n">{e(str(i["found"]))}</td>'
                f'<td class="{"pass" if ok else "fail"}">{"✓" if ok else "✗"}</td></tr>'
            )
        out.append("</table>")
    if data.loss_ratios:
        out.append(
            "<h2>赔付率 Loss ratio</h2><table><tr><th>plan year</th><th>members</th>"
            "<th>premium pool, net (yuan)</th><th>payouts (yuan)</th><th>loss ratio</th>"
            "<th>target</th></tr>"
        )
        for lr in data.loss_ratios:
            ratio = "-" if lr.ratio_ppm is None else f"{lr.ratio_ppm * 100 / RATE_SCALE:.1f}%"
            out.append(
                f'<tr><td>{lr.plan_year}</td><td class="n">{lr.enrolled:,}</td>'
                f'<td class="n">{fen_to_yuan(lr.pool_fen):,}</td>'
                f'<td class="n">{fen_to_yuan(lr.payout_fen):,}</td><td class="n">{ratio}</td>'
                f'<td class="n">{lr.target_ppm * 100 / RATE_SCALE:g}%</td></tr>'
            )
        out.append("</table>")
    for c in data.charts:
        out.append(
            f'<figure data-chart="{e(c.id)}"><figcaption>{e(c.title_zh)} '
            f"<span>{e(c.title_en)}</span></figcaption>{_svg(c)}"
        )
        if c.note:
            out.append(f'<div class="note">{e(c.note)}</div>')
        out.append("</figure>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(data: ReportData) -> str:
    """The same tables as Markdown, for terminals and e-mail."""
    out = [f"# {data.title}", "", f"{data.scope} · generated {data.generated_at}", ""]
    out += ["| | |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in data.headline] + [""]
    if data.reconciliation:
        passed = all(bool(i.get("passed")) for i in data.reconciliation)
        out += [
            f"## 对账 Reconciliation: {'balanced' if passed else 'NOT BALANCED'}",
            "",
            "| identity | expected | found | |",
            "|---|---:|---:|---|",
        ]
        out += [
            f"| {i['name']} | {i['expected']} | {i['found']} | "
            f"{'ok' if i.get('passed') else 'FAILED'} |"
            for i in data.reconciliation
        ] + [""]
    if data.loss_ratios:
        out += [
            "## 赔付率 Loss ratio",
            "",
            "| plan year | members | premium pool, net (yuan) | payouts (yuan) | loss ratio | "
            "target |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for lr in data.loss_ratios:
            ratio = "-" if lr.ratio_ppm is None else f"{lr.ratio_ppm * 100 / RATE_SCALE:.1f}%"
            out.append(
                f"| {lr.plan_year} | {lr.enrolled:,} | {fen_to_yuan(lr.pool_fen):,} | "
                f"{fen_to_yuan(lr.payout_fen):,} | {ratio} | "
                f"{lr.target_ppm * 100 / RATE_SCALE:g}% |"
            )
        out.append("")
    for c in data.charts:
        head = "settlements" if c.unit == "count" else ("share" if c.unit == "percent" else "yuan")
        out += [f"## {c.title_zh} {c.title_en}", "", f"| | {head} |", "|---|---:|"]
        out += [f"| {b.label} | {_value(c, b.value)} |" for b in c.bars] or ["| (none) | |"]
        if c.note:
            out += ["", f"_{c.note}_"]
        out.append("")
    return "\n".join(out)
