"""Reports: where the money goes, for a batch or a plan year (``report.html``, ``report.md``).

:func:`report_data` aggregates a settlement frame (from a batch's payouts or from the ledger) into
small tables; :func:`render_html` and :func:`render_markdown` draw them. No I/O here.

The HTML is one self-contained file: inline CSS, charts as CSS grids of labels, SVG bars and
values, no script, no network request, a font stack that shows Chinese where a CJK font is
installed (Noto Sans CJK, PingFang, Microsoft YaHei, WenQuanYi). Chart labels are HTML text, so
the browser sizes and wraps them with the font it really has: a label is never cut short,
whatever its length or the window's width (tests/test_report_html.py measures this at 700 and
1400 px). Reports hold aggregates only: never a name, certificate number or member id.

Loss ratio colours (:attr:`LossRatio.tone`): the ratio is payouts ÷ the premium pool net of the
edition's operating-cost share, so 100% is where payouts have used up what premiums fund. The
editions' ``target_loss_ratio`` is a floor (浙丽保: 赔付率原则上不低于95%) that a year-to-date
ratio stays under for most of the year, so it is drawn as a line, not coloured. Above 100% the
ratio is amber (``warn``), above 105% red (``alarm``); Markdown marks both in the ratio's cell.
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
from hmb_batch.report.districts import district_label, district_names
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
# loss ratio bands, in parts per million of the net premium pool (see the module docstring)
LOSS_RATIO_WARN_ABOVE = 1_000_000
LOSS_RATIO_ALARM_ABOVE = 1_050_000


@dataclass(frozen=True)
class Bar:
    """One bar of a chart: a label, an amount in fen (or a count) and a settlement count."""

    label: str
    value: int
    settlements: int = 0
    tone: str = ""  # "" | "warn" | "alarm": the bar's colour


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

    @property
    def tone(self) -> str:
        """The ratio's colour: alarm above 105% of the net pool, warn above 100%, else none
        (see the module docstring)."""
        ratio = self.ratio_ppm
        if ratio is None or ratio <= LOSS_RATIO_WARN_ABOVE:
            return ""
        return "alarm" if ratio > LOSS_RATIO_ALARM_ABOVE else "warn"


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
    districts: Mapping[str, str] | None = None,
) -> ReportData:
    """Aggregate a settlement frame (:data:`SETTLEMENT_COLUMNS`) into a report.

    The frame may be lazy (a bounded-memory run scans its part files): only aggregates are
    collected. ``by_responsibility``: (responsibility, payout_fen) rows, one per settlement and
    responsibility, for the chart of payouts by responsibility (责任). ``districts``: district
    code → name (default: the shipped table, :func:`district_names`).
    """
    names = district_names() if districts is None else districts
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
            [
                Bar(district_label(b.label, names), b.value, b.settlements)
                for b in _bars(district_t, "district")
            ],
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
                [
                    Bar(f"{lr.plan_year}", lr.ratio_ppm or 0, lr.enrolled, lr.tone)
                    for lr in loss_ratios
                ],
                unit="percent",
                target=target,
                note=f"target line: the plan edition's target loss ratio ({_share(target)}); "
                f"amber above {_share(LOSS_RATIO_WARN_ABOVE)}, red above "
                f"{_share(LOSS_RATIO_ALARM_ABOVE)} of the net premium pool",
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


def _share(ppm: int, places: int | None = None) -> str:
    """Parts per million as a percentage: ``places`` decimals, or as many as it has."""
    pct = Decimal(ppm) * 100 / RATE_SCALE
    return f"{pct:.{places}f}%" if places is not None else f"{pct.normalize():f}%"


def _value(chart: Chart, v: int) -> str:
    if chart.unit == "yuan":
        return f"{fen_to_yuan(v):,}"
    if chart.unit == "percent":
        return _share(v, 1)
    return f"{v:,}"


def _ratio(lr: LossRatio) -> str:
    return "-" if lr.ratio_ppm is None else _share(lr.ratio_ppm, 1)


_MARKS = {
    "warn": f"⚠ over {_share(LOSS_RATIO_WARN_ABOVE)} of the pool 超出保费池",
    "alarm": f"‼ ALARM: over {_share(LOSS_RATIO_ALARM_ABOVE)} of the pool 严重超支",
}


def _figure(v: object) -> str:
    """A reconciliation figure with thousands separators: yuan (a decimal string, exact to the
    fen) or a count."""
    if isinstance(v, int):
        return f"{v:,}"
    return f"{Decimal(str(v)):,}"


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font-family:"Noto Sans CJK SC","Noto Sans SC","Source Han Sans SC","PingFang SC",
"Microsoft YaHei","WenQuanYi Micro Hei",sans-serif;margin:24px;color:#1d2733;max-width:1000px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px}
h1,.scope{overflow-wrap:anywhere}
.scope{color:#5b6875;margin:0 0 16px} .nowrap{white-space:nowrap}
table{border-collapse:collapse;margin:8px 0} td,th{padding:3px 10px;border-bottom:1px solid #dde3e8;
text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1a7f37} .fail{color:#c62828;font-weight:bold}
td.warn{color:#9a5b00;font-weight:bold} td.alarm{color:#fff;background:#c62828;font-weight:bold}
figure{margin:8px 0 20px} figcaption{font-weight:bold;margin-bottom:4px}
figcaption span{font-weight:normal;color:#5b6875} .note{color:#5b6875;font-size:12px}
.chart{display:grid;grid-template-columns:fit-content(40%) minmax(80px,1fr) max-content;
column-gap:8px;font-size:12px;line-height:18px}
.chart .label{text-align:right;padding:1px 0} .chart .value{white-space:nowrap;
font-variant-numeric:tabular-nums;padding:1px 0}
.chart .track{position:relative;min-height:20px}
.chart svg{position:absolute;left:0;top:0;width:100%;height:100%}
.bar{fill:#2f6db5} .bar.warn{fill:#e0a100} .bar.alarm{fill:#c62828}
.target{stroke:#1d2733;stroke-width:2;stroke-dasharray:4 3}
p.warn{color:#9a5b00;font-weight:bold} p.alarm{color:#c62828;font-weight:bold}
"""


def _percent_of(value: int, top: int) -> str:
    """``value`` (> 0) as a percentage of ``top`` with two decimals, in integers (an SVG width);
    at least 0.01%, so that a small positive amount still shows a bar."""
    basis = max(1, value * 10_000 // top)
    return f"{basis // 100}.{basis % 100:02d}%"


def _chart(chart: Chart) -> str:
    """A bar chart as a grid: label (HTML text, wraps), bar (SVG), value (HTML text).

    Bars are drawn in percent of the chart's largest value (or target), so the bar column can
    take whatever width the labels leave; the target is a dashed line at its percentage on every
    row, the rows touching, so the lines join into one.
    """
    e = html.escape
    bars = chart.bars or [Bar("(none)", 0)]
    top = max([abs(b.value) for b in bars] + [chart.target or 0, 1])
    target = (
        f'<line class="target" x1="{_percent_of(chart.target, top)}" y1="0" '
        f'x2="{_percent_of(chart.target, top)}" y2="100%">'
        f"<title>target {_value(chart, chart.target)}</title></line>"
        if chart.target is not None
        else ""
    )
    out = ['<div class="chart">']
    for b in bars:
        width = "0" if b.value <= 0 else _percent_of(b.value, top)
        shown = _value(chart, b.value)
        tone = f" {b.tone}" if b.tone else ""
        out.append(
            f'<div class="label">{e(b.label)}</div>'
            f'<div class="track"><svg xmlns="http://www.w3.org/2000/svg" aria-hidden="true">'
            f'<rect class="bar{tone}" x="0" y="3" width="{width}" height="14">'
            f"<title>{e(b.label)}: {shown}</title></rect>{target}</svg></div>"
            f'<div class="value">{shown}</div>'
        )
    out.append("</div>")
    return "".join(out)


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
        f'<p class="scope">{e(data.scope)} · '
        f'<span class="nowrap">generated {e(data.generated_at)}</span></p>',
        "<table>",
    ]
    out += [f'<tr><th>{e(k)}</th><td class="n">{e(v)}</td></tr>' for k, v in data.headline]
    out.append("</table>")
    if data.reconciliation:
        passed = all(bool(i.get("passed")) for i in data.reconciliation)
        verdict = "balanced 平衡" if passed else "NOT BALANCED 不平衡"
        out.append(
            f'<h2>对账 Reconciliation: <span class="{"pass" if passed else "fail"}">'
            f"{verdict}</span></h2><table><tr><th>identity</th><th>unit</th><th>expected</th>"
            "<th>found</th><th></th></tr>"
        )
        for i in data.reconciliation:
            ok = bool(i.get("passed"))
            out.append(
                f"<tr><td>{e(str(i['name']))}</td><td>{e(str(i.get('unit', '')))}</td>"
                f'<td class="n">{e(_figure(i["expected"]))}</td>'
                f'<td class="n">{e(_figure(i["found"]))}</td>'
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
            tone = f" {lr.tone}" if lr.tone else ""
            mark = f' title="{e(_MARKS[lr.tone])}"' if lr.tone else ""
            out.append(
                f'<tr><td>{lr.plan_year}</td><td class="n">{lr.enrolled:,}</td>'
                f'<td class="n">{fen_to_yuan(lr.pool_fen):,}</td>'
                f'<td class="n">{fen_to_yuan(lr.payout_fen):,}</td>'
                f'<td class="n{tone}"{mark}>{_ratio(lr)}</td>'
                f'<td class="n">{_share(lr.target_ppm)}</td></tr>'
            )
        out.append("</table>")
        out += [
            f'<p class="{lr.tone}">{lr.plan_year}: {e(_MARKS[lr.tone])}</p>'
            for lr in data.loss_ratios
            if lr.tone
        ]
    for c in data.charts:
        out.append(
            f'<figure data-chart="{e(c.id)}"><figcaption>{e(c.title_zh)} '
            f"<span>{e(c.title_en)}</span></figcaption>{_chart(c)}"
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
            "| identity | unit | expected | found | |",
            "|---|---|---:|---:|---|",
        ]
        out += [
            f"| {i['name']} | {i.get('unit', '')} | {_figure(i['expected'])} | "
            f"{_figure(i['found'])} | {'ok' if i.get('passed') else 'FAILED'} |"
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
            ratio = f"**{_ratio(lr)}** {_MARKS[lr.tone]}" if lr.tone else _ratio(lr)
            out.append(
                f"| {lr.plan_year} | {lr.enrolled:,} | {fen_to_yuan(lr.pool_fen):,} | "
                f"{fen_to_yuan(lr.payout_fen):,} | {ratio} | {_share(lr.target_ppm)} |"
            )
        out.append("")
    for c in data.charts:
        head = "settlements" if c.unit == "count" else ("share" if c.unit == "percent" else "yuan")
        out += [f"## {c.title_zh} {c.title_en}", "", f"| | {head} |", "|---|---:|"]
        out += [
            f"| {b.label} | {_value(c, b.value)}{' ' + _MARKS[b.tone] if b.tone else ''} |"
            for b in c.bars
        ] or ["| (none) | |"]
        if c.note:
            out += ["", f"_{c.note}_"]
        out.append("")
    return "\n".join(out)
