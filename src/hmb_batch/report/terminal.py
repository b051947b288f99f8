"""Terminal rendering (rich). Draws data built elsewhere; computes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hmb_batch.ledger.store import BatchRecord
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.diff import cost_part_text
from hmb_batch.plan.model import RATE_SCALE, Bracket, Edition
from hmb_batch.report.explain import band_amount, rule_text, term_reached
from hmb_batch.report.summary import BatchSummary
from hmb_batch.rules.codes import REASON_CODES

if TYPE_CHECKING:
    from hmb_batch.report.member import MemberExplanation


def _yuan(fen: int) -> str:
    return f"{fen_to_yuan(fen):,}"


def _pct(ppm: int) -> str:
    return f"{ppm * 100 / RATE_SCALE:g}%"


def batch_summary(
    console: Console,
    s: BatchSummary,
    files: dict[str, str],
    reconciled: dict[str, Any] | None = None,
    loss_ratios: list[dict[str, Any]] | None = None,
) -> None:
    """The one-screen summary of a batch (``reconciled``: the reconciliation's verdict;
    ``loss_ratios``: as in manifest.json), its warnings last, where they are seen."""
    t = Table(
        title=f"hmb-batch · batch {s.batch_id} · {', '.join(s.editions) or '-'}",
        show_header=False,
        title_justify="left",
    )
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("settlements in 结算单", f"{s.settlements_in:,}")
    t.add_row("  identical repeats 重复", f"{s.identical_repeats:,}")
    t.add_row("  quarantined 隔离", f"{s.quarantined:,}")
    t.add_row("  adjudicated 理算", f"{s.adjudicated:,}")
    for status in ("paid", "zero", "denied", "reversal"):
        t.add_row(f"    {status}", f"{s.by_status.get(status, 0):,}")
    t.add_row("fee lines in 费用明细", f"{s.fee_lines_in:,}")
    t.add_row("  orphan fee lines 无结算单明细", f"{s.orphan_fee_lines:,}")
    t.add_row("total payout 赔付合计 (yuan)", _yuan(s.total_payout_fen))
    for year, fen in s.payout_by_plan_year_fen.items():
        t.add_row(f"  plan year {year}", _yuan(fen))
    for lr in loss_ratios or []:
        ratio = lr["loss_ratio"]
        shown = f"{Decimal(ratio) * 100:.2f}%" if ratio is not None else "- (no premium pool)"
        t.add_row(
            f"loss ratio 赔付率 {lr['plan_year']} (year to date)",
            f"{shown} of {Decimal(lr['premium_pool_net']):,} yuan",
        )
    if reconciled is None:
        t.add_row("balanced 平衡", "yes" if s.balanced else "[red]NO[/red]")
    elif reconciled["passed"]:
        t.add_row("reconciled 对账", f"yes: all {reconciled['identities']} identities hold")
    else:
        t.add_row("reconciled 对账", f"[red]NO: {', '.join(reconciled['failed'])}[/red]")
    console.print(t)
    for title, counts in (
        ("denied by reason 拒付原因", s.denied_by_reason),
        ("quarantined by reason 隔离原因", s.quarantined_by_reason),
    ):
        if not counts:
            continue
        r = Table(title=title, title_justify="left")
        r.add_column("code")
        r.add_column("中文")
        r.add_column("count", justify="right")
        for code, n in counts.items():
            c = REASON_CODES.get(code)
            r.add_row(code, c.zh if c else "", f"{n:,}")
        console.print(r)
    for name, path in files.items():
        console.print(f"[dim]{name}:[/dim] {path}")
    for w in s.warnings:
        console.print(
            Text.assemble(("warning ", "bold yellow"), (w["code"], "bold"), ": ", w["message"])
        )


def _brackets(rows: list[Bracket]) -> str:
    parts, low = [], 0
    for b in rows:
        if b.up_to is None:
            parts.append(f"above {_yuan(low)}: {_pct(b.rate)}")
        else:
            parts.append(f"{_yuan(low)}–{_yuan(b.up_to)}: {_pct(b.rate)}")
            low = b.up_to
    return "; ".join(parts)


def edition(console: Console, e: Edition) -> None:
    """An edition in the rule text's terms."""
    status = "scenario" if e.variant else "official" if e.official else "example"
    console.print(f"[bold]{e.plan_name}[/bold] {e.id}  ({status})")
    if e.variant is not None:
        console.print(
            f"scenario 情景: {e.variant.source} with --set", highlight=False, markup=False
        )
        for change in e.variant.changes:
            console.print(
                f"  {change.path}: {change.old or 'none'} → {change.new or 'none'}",
                highlight=False,
                markup=False,
            )
    console.print(f"source 依据: {e.source}")
    p = e.premium
    console.print(
        f"premium 保费 {_yuan(p.amount)} yuan; "
        f"operating cost 运营成本 {_pct(p.operating_cost_share)};"
        f" target loss ratio 赔付率 ≥ {_pct(p.target_loss_ratio)}"
    )
    el = e.eligibility
    m, d = el.enrolment_deadline
    console.print("[bold]eligibility 待遇享受[/bold]")
    console.print(f"  paid by {m:02d}-{d:02d} of the year before → benefits from 1 Jan")
    if el.special_event_windows:
        ev = ", ".join(f"{k} {v} days" for k, v in el.special_event_windows.items())
        console.print(f"  special events (paid within) → basic-insurance start: {ev}")
    if el.launch_year and el.launch_grace_last_day:
        gm, gd = el.launch_grace_last_day
        console.print(
            f"  launch year {el.launch_year}: paid 01-01..{gm:02d}-{gd:02d} → day after payment"
        )
    console.print(f"  otherwise waiting period 等待期 {el.waiting_months} months after payment")
    console.print(
        f"  basic insurance restored → {el.restored_waiting_months} months after restoration"
    )
    console.print("[bold]costs 费用[/bold]")
    for cid, c in e.costs.items():
        scope = f" (med_type {', '.join(c.med_types)})" if c.med_types else ""
        console.print(f"  {cid}: {c.label}{scope}")
        if c.kind == "settlement":
            less = " − ".join([c.start or "", *c.less_funds])
            after = f", then − {' − '.join(c.less_after)}" if c.less_after else ""
            console.print(f"    max(0, {less}){after}, floored at 0")
        else:
            if c.exclude_lists:
                console.print(f"    lines on {', '.join(c.exclude_lists)} list(s): nothing counts")
            for part in c.parts:
                console.print(f"    + {cost_part_text(part)}  {part.label}")
            for sp in c.settlement_parts:
                console.print(f"    + {sp.component} × {_pct(sp.factor)} (half up)  {sp.label}")
    console.print("[bold]responsibilities 责任[/bold]")
    for r in e.responsibilities:
        console.print(f"  {r.id}: {r.name}")
        for t in r.terms:
            if t.floor is not None:
                th = f"above the floor 起付 {_yuan(t.floor)}"
            elif t.shared_deductible is not None:
                pool = t.shared_deductible
                th = f"after shared deductible {pool} {_yuan(e.deductibles[pool])}"
            else:
                th = f"after the deductible 起付线 {_yuan(t.deductible or 0)}"
            console.print(f"    year-to-date {t.cost} {th}")
        console.print(f"    brackets 分段: {_brackets(r.brackets)}")
        if r.pre_existing_brackets:
            console.print(f"    pre-existing 既往症: {_brackets(r.pre_existing_brackets)}")
        cap = _yuan(r.cap) if r.cap is not None else "none 不设封顶线"
        console.print(f"    cap 封顶线: {cap}")
        if r.consecutive_cap:
            cc = r.consecutive_cap
            console.print(f"    after {cc.years} consecutive years: cap {_yuan(cc.cap)}")
    if e.plan_cap is not None:
        console.print(f"plan-wide cap 总封顶: {_yuan(e.plan_cap)}")
    if e.assumptions:
        console.print("[bold yellow]assumptions 假设 (not in public sources)[/bold yellow]")
        for a in e.assumptions:
            console.print(f"  {a.parameter} = {a.value}: {a.why}")


def ledger_batches(console: Console, batches: list[BatchRecord]) -> None:
    """The batch registry (columns fold rather than truncate on narrow terminals); a reverted
    batch with when, by whom and why."""
    t = Table(title="batches 批次")
    names = [
        "seq",
        "batch",
        "status",
        "started",
        "in / adjudicated / quarantined",
        "payout (yuan)",
        "latest setl_time",
    ]
    reverted = any(b.reverted_at is not None for b in batches)
    for name in names + (["reverted (when, by, why)"] if reverted else []):
        t.add_column(name, overflow="fold")
    for b in batches:
        cells = [
            str(b.seq),
            b.batch_id,
            b.status,
            f"{b.started_at:%Y-%m-%d %H:%M:%S}",
            f"{b.settlements_in:,} / {b.adjudicated:,} / {b.quarantined:,}",
            _yuan(b.total_payout_fen),
            str(b.max_setl_time or ""),
        ]
        if reverted:
            cells.append(
                f"{b.reverted_at:%Y-%m-%d %H:%M}, {b.reverted_by or '?'}, {b.revert_reason or '-'}"
                if b.reverted_at is not None
                else ""
            )
        t.add_row(*cells)
    console.print(t)


def ledger_status(console: Console, batches: list[BatchRecord], state: pl.DataFrame) -> None:
    """Batches and per-year totals."""
    applied = [b for b in batches if b.status == "applied"]
    console.print(
        f"{len(applied)} batch(es) applied, {len(batches) - len(applied)} reverted; "
        f"latest: {applied[-1].batch_id if applied else '-'}"
    )
    t = Table(
        "plan year",
        "members",
        "settlements",
        "payable (yuan)",
        "payout (yuan)",
        title="year to date 年度累计",
    )
    for r in state.iter_rows(named=True):
        t.add_row(
            str(r["plan_year"]),
            f"{r['members']:,}",
            f"{r['settlements']:,}",
            _yuan(r["payable_fen"]),
            _yuan(r["payout_fen"]),
        )
    console.print(t)


def member_statement(console: Console, psn_no: str, statement: pl.DataFrame) -> None:
    """A member's settlements, year by year: what a claims officer reads on the phone.

    Two lines per settlement so that it fits an 80-column terminal.
    """
    for (year,), rows in statement.group_by("plan_year", maintain_order=True):
        t = Table(title=f"member 参保人 {psn_no} · plan year {year}", title_justify="left")
        # folded, never cut with an ellipsis: a setl_id is what the member quotes
        t.add_column("settlement\ntime (batch)", overflow="fold")
        t.add_column("status\nreasons", min_width=8, overflow="fold")
        t.add_column("increments", min_width=12, overflow="fold")
        t.add_column("payable\npayout", justify="right", min_width=10, overflow="fold")
        t.add_column("YTD payable\nYTD paid", justify="right", min_width=11, overflow="fold")
        for r in rows.iter_rows(named=True):
            setl = r["setl_id"] + (f" ↩ {r['init_setl_id']}" if r["init_setl_id"] else "")
            t.add_row(
                f"{setl}\n{r['setl_time']:%Y-%m-%d %H:%M} ({r['batch_seq']})",
                "\n".join([r["status"], *(r["reasons"] or [])]),
                "\n".join(f"{c['cost']} {_yuan(c['increment_fen'])}" for c in r["costs"] or []),
                f"{_yuan(r['payable_fen'])}\n{_yuan(r['payout_fen'])}",
                f"{_yuan(r['cum_payable_fen'])}\n{_yuan(r['cum_payout_fen'])}",
            )
        console.print(t)


def rows(console: Console, title: str, frame: pl.DataFrame) -> None:
    """Rows of an output file as a table (``hmb-batch show``): every value in full, money as
    plain decimals, lists joined by '|'."""
    from hmb_batch.io.outputs import to_text_frame

    text = to_text_frame(frame).select(pl.all().cast(pl.String))
    t = Table(title=title, title_justify="left")
    for name, dtype in frame.schema.items():
        numeric = dtype.is_numeric() or isinstance(dtype, pl.Decimal)
        t.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in text.iter_rows():
        t.add_row(*("" if v is None else v for v in row))
    console.print(t)


def _line(console: Console, text: str) -> None:
    # plain text, never wrapped or cut: ids and amounts must survive a pipe or a cron log
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _span(low: int, up: int | None) -> str:
    return f"{_yuan(low)}–{_yuan(up)}" if up is not None else f"above {_yuan(low)}"


def _roster_lines(console: Console, m: MemberExplanation) -> None:
    r = m.roster
    if not r.available:
        _line(console, f"roster facts 参保信息: unavailable — {r.reason}")
        return
    same = f"; the file batches {', '.join(r.same_as_batches)} read" if r.same_as_batches else ""
    other = (
        f"; batches {', '.join(r.other_batches)} read another roster file"
        if r.other_batches
        else ""
    )
    _line(console, f"roster 参保名单: {r.path} (sha256 {r.sha256}{same}{other})")
    if m.facts.height == 0:
        _line(console, "  no roster row for this member" + (f" in {m.year}" if m.year else ""))
    for f in m.facts.iter_rows(named=True):
        year = f["plan_year"]
        e = m.editions.get(year)
        head = f"  plan year {year}: premium paid {f['pay_date']}"
        if f["special_event"]:
            head += f"; special event {f['special_event']} on {f['event_date']}"
        if f["basic_start_date"]:
            head += f"; basic insurance from {f['basic_start_date']}"
        _line(console, head)
        if e is None or f["rule"] is None:
            _line(console, "    benefit start: no edition for this plan year")
        else:
            _line(
                console,
                f"    benefit start 待遇起始 {f['benefit_start']} ({e.id}, "
                f"{rule_text(e.edition, year, f['rule'])}: {f['rule_start']})",
            )
        if f["basic_restored_date"] is not None:
            moved = (
                "it set the benefit start"
                if f["set_by_restoration"]
                else "the rule's start is later"
            )
            _line(
                console,
                f"    basic insurance restored {f['basic_restored_date']}: benefits no earlier "
                f"than {f['restored_start']} ({moved})",
            )
        waiting = f["waiting_period_last_day"]
        _line(
            console,
            f"    waiting period 等待期: services up to {waiting} are denied WAITING_PERIOD"
            if waiting is not None
            else "    waiting period 等待期: none in the plan year",
        )
        if f["basic_suspended_from"] is not None:
            until = f["basic_suspended_to"] or "(still suspended)"
            _line(
                console,
                f"    basic insurance suspended 暂停 {f['basic_suspended_from']} – {until}: "
                "services then are denied BASIC_SUSPENDED",
            )
        else:
            _line(console, "    basic insurance suspended 暂停: never")
        _line(
            console,
            f"    pre-existing condition 既往症: {'yes' if f['pre_existing'] else 'no'}; "
            f"consecutive years 连续参保: {f['consecutive_years'] or 0}",
        )


def _term_line(t: dict[str, Any]) -> str:
    kind = {"floor": "floor 起付", "deductible": "deductible 起付线"}.get(
        t["kind"], f"shared deductible {t['pool']} (left)"
    )
    state = term_reached(t)
    if state == "below":
        state += f" ({_yuan(max(0, t['threshold_fen'] - t['cost_after_fen']))} to go)"
    return (
        f"      {t['cost']} {_yuan(t['cost_before_fen'])} → {_yuan(t['cost_after_fen'])} against "
        f"{kind} {_yuan(t['threshold_fen'])}: {state}; counts "
        f"{_yuan(t['counted_before_fen'])} → {_yuan(t['counted_after_fen'])}"
    )


def _denial(m: MemberExplanation, year: int, reason: str) -> str:
    """A denial reason with the roster fact behind it."""
    facts = m.facts.filter(pl.col("plan_year") == year) if m.roster.available else None
    if reason == "NOT_ENROLLED":
        return f"no roster row for plan year {year}"
    if facts is None:
        return "the roster facts are unavailable; nothing counts"
    if facts.height == 0:
        return f"this roster has no row for plan year {year}; nothing counts"
    f = facts.row(0, named=True)
    if reason == "WAITING_PERIOD":
        return (
            f"the service date (admission, else the settlement's day) is before the benefit "
            f"start {f['benefit_start']} (rule {f['rule']}); nothing counts"
        )
    if reason == "BASIC_SUSPENDED":
        until = f["basic_suspended_to"] or "(still suspended)"
        return (
            f"the service date falls in the basic-insurance suspension "
            f"{f['basic_suspended_from']} – {until}; nothing counts"
        )
    return "nothing counts"


def _why(console: Console, m: MemberExplanation, s: dict[str, Any]) -> None:
    started = s["batch_started_at"]
    when = f"{started:%Y-%m-%d %H:%M}" if started else "-"
    reasons = f" {', '.join(s['reasons'])}" if s["reasons"] else ""
    reversal = f" of {s['init_setl_id']}" if s["init_setl_id"] else ""
    _line(
        console,
        f"{s['setl_id']} · {s['setl_time']:%Y-%m-%d %H:%M} · {s['status']}{reversal}{reasons} · "
        f"edition {s['edition']} · batch {s['batch_id']} (seq {s['batch_seq']}, {when})",
    )
    if s["status"] == "denied":
        # a denied settlement counts nothing: why it was denied is the whole answer
        for reason in s["reasons"] or []:
            _line(console, f"    {reason}: {_denial(m, s['plan_year'], reason)}")
        return
    rows = m.rows_of(s["setl_id"])
    if not rows:
        _line(console, f"    not explained: {m.unexplained.get(s['setl_id'], 'no edition')}")
        return
    for r in rows:
        _line(console, f"    {r['responsibility']} {r['name']}")
        for t in r["terms"]:
            _line(console, _term_line(t))
        _line(
            console,
            f"      payable 应付 year to date {_yuan(r['payable_before_fen'])} → "
            f"{_yuan(r['payable_after_fen'])}: {_yuan(r['payable_fen'])} this settlement"
            + (" (pre-existing brackets)" if r["brackets"] == "pre_existing" else ""),
        )
        for b in r["bands"]:
            _line(
                console,
                f"        {_yuan(b['payable_fen'])} in band {_span(b['from_fen'], b['to_fen'])} "
                f"× {_pct(b['rate_ppm'])} = {band_amount(b['payable_fen'], b['rate_ppm']):,}",
            )
        if r["cap_reached"]:
            _line(console, f"      cap 封顶线 {_yuan(r['cap_fen'])} reached")
        if r["plan_cap_reached"]:
            _line(console, "      plan-wide cap 总封顶 reached")
        check = (
            "as the edition computes it"
            if r["reproduced"]
            else f"the edition computes {_yuan(r['recomputed_payout_fen'])}: see the roster facts"
        )
        _line(
            console,
            f"      benefit 赔付 year to date (rounded half up) {_yuan(r['benefit_before_fen'])} → "
            f"{_yuan(r['benefit_after_fen'])}: payout {_yuan(r['payout_fen'])} ({check})",
        )


def member_explanation(console: Console, m: MemberExplanation) -> None:
    """A member's statement with its explanation: the roster facts, the statement, and for
    each settlement its edition, batch, floors and deductibles, bands and rates, and split."""
    _line(console, f"member 参保人 {m.psn_no}" + (f" · plan year {m.year}" if m.year else ""))
    _roster_lines(console, m)
    member_statement(console, m.psn_no, m.statement)
    _line(console, "why 赔付说明")
    for s in m.statement.iter_rows(named=True):
        _why(console, m, s)
    for t in m.totals().iter_rows(named=True):
        _line(
            console,
            f"plan year {t['plan_year']}: {t['settlements']:,} settlements, payable "
            f"{_yuan(t['payable_fen'])}, payout {_yuan(t['payout_fen'])}",
        )


def _ratio_text(lr: dict[str, Any] | None) -> str:
    if not lr or lr.get("loss_ratio") is None:
        return "-"
    return f"{Decimal(lr['loss_ratio']) * 100:.2f}%"


def scenario(console: Console, doc: dict[str, Any]) -> None:
    """A scenario's totals per plan year, side by side (``hmb-batch simulate``)."""
    years = doc["plan_years"]
    t = Table(
        title=f"scenario 情景 · {doc['plan']} · {len(doc['batches'])} batch(es)",
        title_justify="left",
    )
    t.add_column("")
    for y in years:
        t.add_column(str(y["plan_year"]), justify="right")
    t.add_row("settlements 结算单", *(f"{y['settlements']:,}" for y in years))
    t.add_row("members paid 获赔人数", *(f"{y['members_paid']:,}" for y in years))
    t.add_row("payout 赔付 (yuan)", *(f"{Decimal(y['payout']):,}" for y in years))
    t.add_row("loss ratio 赔付率", *(_ratio_text(y["loss_ratio"]) for y in years))
    console.print(t)
    for change in doc.get("changes", []):
        console.print(f"changed: {change}", highlight=False, markup=False)
    if "ledger" in doc:
        console.print(f"ledger: {doc['ledger']}", highlight=False, markup=False)
    else:  # on Spark: the year to date after the last batch, as Parquet
        console.print(f"state: {doc['state']}", highlight=False, markup=False)


def comparison(console: Console, doc: dict[str, Any]) -> None:
    """The headline of a comparison (``hmb-batch compare``)."""
    m = doc["members"]
    t = Table(title=f"compare 比较 · plan year {doc['plan_year']}", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("A", doc["a"]["source"])
    t.add_row("B", doc["b"]["source"])
    t.add_row("payout A (yuan)", f"{Decimal(doc['a']['payout']):,}")
    t.add_row("payout B (yuan)", f"{Decimal(doc['b']['payout']):,}")
    t.add_row("difference B − A (yuan)", f"{Decimal(doc['difference']):,}")
    t.add_row(
        "loss ratio A / B",
        f"{_ratio_text(doc['a']['loss_ratio'])} / {_ratio_text(doc['b']['loss_ratio'])}",
    )
    t.add_row("members changed", f"{m['changed']:,} of {m['compared']:,}")
    t.add_row("gained / lost", f"{m['gained']:,} / {m['lost']:,}")
    t.add_row("newly paid / no longer paid", f"{m['newly_paid']:,} / {m['no_longer_paid']:,}")
    console.print(t)


def sweep(console: Console, path: str, values: list[dict[str, Any]]) -> None:
    """A sweep's table: total payout, members paid and loss ratio per value."""
    t = Table(title=f"sweep 参数扫描 · {path}", title_justify="left")
    t.add_column("value")
    t.add_column("edition")
    t.add_column("payout (yuan)", justify="right")
    t.add_column("members paid", justify="right")
    t.add_column("loss ratio", justify="right")
    for v in values:
        lrs = v["loss_ratios"]
        t.add_row(
            v["value"],
            v["edition"],
            f"{Decimal(v['payout']):,}",
            f"{v['members_paid']:,}",
            " / ".join(_ratio_text(lr) for lr in lrs) or "-",
        )
    console.print(t)
