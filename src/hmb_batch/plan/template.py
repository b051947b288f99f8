"""``hmb-batch plan new --from EDITION FILE``: a starting edition for a new city, every parameter
commented, written back from a validated :class:`Edition` (nothing is lost: reading the file back
gives the same edition under the new name and year).
"""

from __future__ import annotations

import json
from decimal import Decimal

from hmb_batch.plan.model import RATE_SCALE, Bracket, Cost, Edition, Responsibility


def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string is a JSON string


def _yuan(fen: int) -> str:
    return _s(f"{Decimal(fen) / 100:.2f}")


def _rate(ppm: int) -> str:
    text = f"{Decimal(ppm) / RATE_SCALE:f}".rstrip("0").rstrip(".")
    return _s(text or "0")


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_s(v) for v in values) + "]"


def _line(key: str, value: str, comment: str, width: int = 44) -> str:
    text = f"{key} = {value}"
    return f"{text:<{width}} # {comment}"


def _brackets(brackets: list[Bracket]) -> str:
    items = [
        "{ "
        + (f"up_to = {_yuan(b.up_to)}, " if b.up_to is not None else "")
        + f"rate = {_rate(b.rate)} }}"
        for b in brackets
    ]
    return "[\n  " + ",\n  ".join(items) + ",\n]"


def edition_template(source: Edition, *, plan: str, plan_name: str, year: int) -> str:
    """TOML for a new edition that starts as a copy of ``source``, every parameter explained."""
    out = [
        f"# {plan_name}, plan year {year}: a starting edition copied from {source.id}",
        f"# ({source.plan_name}) by `hmb-batch plan new`. Every value below is {source.id}'s:",
        "# replace each with your city's published terms, cite them in `source`, and record any",
        "# figure that is not public under [[assumptions]]. Then check it:",
        "#   hmb-batch plan check FILE --lists LISTS_FILE",
        '# Amounts are yuan (strings with two decimals), rates are decimals ("0.75" = 75%).',
        "",
        _line("format", _s("hmb-batch/plan-edition"), "file format: leave as is"),
        _line("format_version", "1", "leave as is"),
        _line("plan", _s(plan), "plan family id: lower-case letters, digits, _"),
        _line("plan_name", _s(plan_name), "the plan's name as members know it"),
        _line("edition", str(year), "the plan year this edition governs"),
        _line("official", "false", "true only once every value is the plan's published term"),
        _line("source", _s(f"copied from {source.id}: replace"), "documents the rules come from"),
    ]
    if source.plan_cap is not None:
        out.append(
            _line("plan_cap", _yuan(source.plan_cap), "cap on all responsibilities together")
        )
    else:
        out.append('# plan_cap = "2000000.00"                  # optional: cap on all of them')
    p = source.premium
    out += [
        "",
        "[premium]",
        _line("amount", _yuan(p.amount), "premium per member and year (the loss ratio's pool)"),
        _line(
            "operating_cost_share",
            _rate(p.operating_cost_share),
            "share of premium kept for operating costs",
        ),
        _line(
            "target_loss_ratio",
            _rate(p.target_loss_ratio),
            "payouts ÷ premium net of operating cost (赔付率)",
        ),
    ]
    el = source.eligibility
    out += [
        "",
        "[eligibility]",
        _line(
            "enrolment_deadline",
            _s(f"{el.enrolment_deadline[0]:02d}-{el.enrolment_deadline[1]:02d}"),
            "paid by this day of the year before → benefits from 1 Jan",
        ),
    ]
    if el.launch_year is not None:
        out.append(_line("launch_year", str(el.launch_year), "the plan's first year"))
    else:
        out.append(
            "# launch_year = 2025                          # optional: the plan's first year"
        )
    if el.launch_grace_last_day is not None:
        m, d = el.launch_grace_last_day
        out.append(
            _line(
                "launch_grace_last_day",
                _s(f"{m:02d}-{d:02d}"),
                "launch year: paid 1 Jan to this day → the day after payment",
            )
        )
    out += [
        _line("waiting_months", str(el.waiting_months), "late enrolment: pay_date + N months"),
        _line(
            "restored_waiting_months",
            str(el.restored_waiting_months),
            "basic insurance restored: + N months",
        ),
    ]
    if el.special_event_windows:
        windows = ", ".join(f"{k} = {v}" for k, v in el.special_event_windows.items())
        out.append(
            _line(
                "special_event_windows",
                "{ " + windows + " }",
                "event → days after event_date within which payment starts benefits",
            )
        )
    else:
        out.append(
            "# special_event_windows = { newborn = 90 }   # optional: event → days to pay after it"
        )
    if source.deductibles:
        out += ["", "[deductibles]  # pools that terms share (consumed in responsibility order)"]
        out += [_line(k, _yuan(v), "a shared deductible") for k, v in source.deductibles.items()]
    for cid, c in source.costs.items():
        out += ["", *_cost(cid, c)]
    for r in source.responsibilities:
        out += ["", *_responsibility(r)]
    for a in source.assumptions:
        out += [
            "",
            "[[assumptions]]  # a value the public sources do not give",
            _line("parameter", _s(a.parameter), "which parameter"),
            _line("value", _s(a.value), "the value used"),
            _line("why", _s(a.why), "why it was chosen"),
        ]
    return "\n".join(out) + "\n"


def _set(*fields: tuple[str, str | None, str]) -> list[str]:
    """Key lines for the fields that are set (None: left out, so the default applies)."""
    return [_line(key, value, comment) for key, value, comment in fields if value is not None]


def _list_or_none(values: list[str]) -> str | None:
    return _list(values) if values else None


def _s_or_none(value: str | None) -> str | None:
    return _s(value) if value is not None else None


def _cost(cid: str, c: Cost) -> list[str]:
    out = [
        f"[costs.{cid}]  # a per-settlement amount that accumulates over the plan year",
        *_set(
            ("label", _s(c.label), "what it is, in the rule text's words"),
            ("kind", _s(c.kind), "settlement: from settlement columns; fee_lines: from lines"),
            ("med_types", _list_or_none(c.med_types), "medical categories covered (empty: all)"),
            ("start", _s_or_none(c.start), "the settlement column it starts from"),
            ("less_funds", _list_or_none(c.less_funds), "fund payments subtracted (floored at 0)"),
            ("less_after", _list_or_none(c.less_after), "then subtracted (moved to another cost)"),
            ("exclude_lists", _list_or_none(c.exclude_lists), "lines on these lists: none"),
            ("audit_code", _s_or_none(c.audit_code), "line audit code (hmb-batch codes)"),
        ),
    ]
    for part in c.parts:
        out += [
            "",
            f"[[costs.{cid}.parts]]  # fee-line components that count, on lines that match",
            *_set(
                ("label", _s(part.label), "what the part is"),
                ("components", _list(part.components), "fee-line amount columns counted"),
                ("list_types", _list_or_none(part.list_types), "list_type prefixes (1 drugs ...)"),
                ("levels", _list_or_none(part.levels), "chrgitm_lv values (01 A, 02 B, 03)"),
                ("on_list", _s_or_none(part.on_list), "only lines on this list at the date"),
            ),
        ]
    for sp in c.settlement_parts:
        out += [
            "",
            f"[[costs.{cid}.settlement_parts]]  # a settlement column counted at a factor",
            *_set(
                ("label", _s(sp.label), "what the part is"),
                ("component", _s(sp.component), "settlement column"),
                ("factor", _rate(sp.factor), "share counted, rounded half up to the fen"),
            ),
        ]
    return out


def _responsibility(r: Responsibility) -> list[str]:
    terms = []
    for t in r.terms:
        fields = [f"cost = {_s(t.cost)}"]
        if t.floor is not None:
            fields.append(f"floor = {_yuan(t.floor)}")
        if t.deductible is not None:
            fields.append(f"deductible = {_yuan(t.deductible)}")
        if t.shared_deductible is not None:
            fields.append(f"shared_deductible = {_s(t.shared_deductible)}")
        terms.append("{ " + ", ".join(fields) + " }")
    out = [
        "[[responsibilities]]  # a benefit line (责任): terms → payable → brackets → cap",
        _line("id", _s(r.id), "short id: lower-case letters, digits, _"),
        _line("name", _s(r.name), "its name in the terms"),
        "# terms: max(0, year-to-date cost − floor | deductible | shared pool), added up",
        "terms = [" + ", ".join(terms) + "]",
        "# brackets: rate on the part of year-to-date payable up to up_to (last: open)",
        f"brackets = {_brackets(r.brackets)}",
    ]
    if r.pre_existing_brackets is not None:
        out += [
            "# members with a pre-existing condition (roster pre_existing) get these instead",
            f"pre_existing_brackets = {_brackets(r.pre_existing_brackets)}",
        ]
    else:
        out.append('# pre_existing_brackets = [{ rate = "0.40" }]  # optional: pre-existing rates')
    if r.cap is not None:
        out.append(_line("cap", _yuan(r.cap), "the year's benefit of this responsibility"))
    else:
        out.append(
            '# cap = "1000000.00"                        # optional: the year\'s benefit cap'
        )
    if r.consecutive_cap is None:
        out.append(
            '# consecutive_cap = { years = 3, cap = "1500000.00" }  # optional: after N years'
        )
    else:
        cc = r.consecutive_cap
        out.append(
            _line(
                "consecutive_cap",
                f"{{ years = {cc.years}, cap = {_yuan(cc.cap)} }}",
                "higher cap after N consecutive years",
            )
        )
    return out
