"""``hmb-batch plan diff A B``: the parameters that differ between two editions, in the rule
text's terms ("responsibility main (…): floor 起付 on compliant cost 18,000.00 → 13,000.00 yuan"),
not as a diff of their files.

Each :class:`Difference` also carries the parameter's path in the edition file (the ``--set``
spelling where it is one) and both values as the file writes them, for scripts. Whatever the
comparisons below do not name is still reported, path by path (:func:`_uncovered`): two editions
said to be equal have the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.model import (
    RATE_SCALE,
    Bracket,
    ConsecutiveCap,
    Cost,
    Edition,
    LinePart,
    Responsibility,
    Term,
)
from hmb_batch.plan.scenario import edition_to_raw, rate_text, yuan_text

NONE = "—"  # a parameter one edition does not have

# keys that say which edition it is, not what it pays
_IDENTITY = ("format", "format_version", "edition", "source", "variant")


@dataclass(frozen=True)
class Difference:
    """One parameter that differs: where (plan, premium, a cost, a responsibility), what, its
    value in A and in B for a person (``a``, ``b``, ``unit``) and for a script (``path``,
    ``a_value``, ``b_value``: as the edition file writes them, None when absent)."""

    where: str
    what: str
    a: str
    b: str
    unit: str
    path: str
    a_value: Any
    b_value: Any

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit and NONE not in (self.a, self.b) else ""
        what = f"{self.what} " if self.what else ""
        return f"{self.where}: {what}{self.a} → {self.b}{unit}"

    def to_json(self) -> dict[str, Any]:
        """The difference as JSON: its text, where/what, both values for a person and as the
        file writes them."""
        return {
            "text": str(self),
            "where": self.where,
            "what": self.what,
            "path": self.path,
            "a": self.a,
            "b": self.b,
            "unit": self.unit,
            "a_value": self.a_value,
            "b_value": self.b_value,
        }


def _yuan(fen: int | None) -> str:
    return NONE if fen is None else f"{fen_to_yuan(fen):,}"


def _pct(ppm: int | None) -> str:
    if ppm is None:
        return NONE
    text = f"{Decimal(ppm) * 100 / RATE_SCALE:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"


def _md(value: tuple[int, int] | None) -> str:
    return NONE if value is None else f"{value[0]:02d}-{value[1]:02d}"


def _words(values: list[str], empty: str = "none") -> str:
    return ", ".join(values) if values else empty


def _opt(value: object) -> str:
    return NONE if value is None else str(value)


T = TypeVar("T")


class _Differ:
    """Collects differences between editions ``a`` and ``b``."""

    def __init__(self) -> None:
        self.found: list[Difference] = []
        # paths whose every difference an entry above already describes, though under another
        # path (a bracket schedule that gained a band: each band moved)
        self.covered: list[str] = []

    def add(
        self,
        where: str,
        what: str,
        path: str,
        a: T | None,
        b: T | None,
        show: Callable[[T | None], str],
        unit: str = "",
        raw: Callable[[T], Any] | None = None,
    ) -> None:
        """Record ``what`` if ``a != b``, shown with ``show`` (raw values with ``raw``)."""
        if a == b:
            return

        def file_form(v: T | None) -> Any:
            if v is None:
                return None
            return raw(v) if raw is not None else v

        self.found.append(
            Difference(where, what, show(a), show(b), unit, path, file_form(a), file_form(b))
        )

    def money(self, where: str, what: str, path: str, a: int | None, b: int | None) -> None:
        """An amount in fen, shown in yuan."""
        self.add(where, what, path, a, b, _yuan, "yuan", yuan_text)

    def rate(self, where: str, what: str, path: str, a: int | None, b: int | None) -> None:
        """A rate in ppm, shown as a percentage."""
        self.add(where, what, path, a, b, _pct, "", rate_text)


def diff_editions(a: Edition, b: Edition) -> list[Difference]:
    """Every parameter that differs from edition ``a`` to edition ``b``, in the rule text's
    terms, in the order ``plan show`` prints an edition; empty when they are equal (their ids,
    years and sources aside)."""
    d = _Differ()
    if a.plan != b.plan or a.plan_name != b.plan_name:
        d.add("plan", "plan", "plan", f"{a.plan_name} ({a.plan})", f"{b.plan_name} ({b.plan})", str)
        d.covered.append("plan_name")
    d.add(
        "plan",
        "status",
        "official",
        a.official,
        b.official,
        lambda v: "official" if v else "example",
    )
    _premium(d, a, b)
    _eligibility(d, a, b)
    _costs(d, a, b)
    _responsibilities(d, a, b)
    d.money("plan", "plan-wide cap 总封顶", "plan_cap", a.plan_cap, b.plan_cap)
    _assumptions(d, a, b)
    return d.found + _uncovered(a, b, [f.path for f in d.found] + d.covered)


def _premium(d: _Differ, a: Edition, b: Edition) -> None:
    w = "premium 保费"
    pa, pb = a.premium, b.premium
    d.money(w, "premium per member 保费", "premium.amount", pa.amount, pb.amount)
    d.rate(
        w,
        "operating cost share 运营成本",
        "premium.operating_cost_share",
        pa.operating_cost_share,
        pb.operating_cost_share,
    )
    d.rate(
        w,
        "target loss ratio 赔付率",
        "premium.target_loss_ratio",
        pa.target_loss_ratio,
        pb.target_loss_ratio,
    )


def _eligibility(d: _Differ, a: Edition, b: Edition) -> None:
    w = "eligibility 待遇享受"
    ea, eb = a.eligibility, b.eligibility
    p = "eligibility"
    d.add(
        w,
        "enrolment deadline (of the year before) 参保截止",
        f"{p}.enrolment_deadline",
        ea.enrolment_deadline,
        eb.enrolment_deadline,
        _md,
        raw=_md,
    )
    d.add(w, "launch year", f"{p}.launch_year", ea.launch_year, eb.launch_year, _opt)
    d.add(
        w,
        "launch-year grace window, last day",
        f"{p}.launch_grace_last_day",
        ea.launch_grace_last_day,
        eb.launch_grace_last_day,
        _md,
        raw=_md,
    )
    d.add(
        w,
        "waiting period 等待期",
        f"{p}.waiting_months",
        ea.waiting_months,
        eb.waiting_months,
        _opt,
        "months",
    )
    d.add(
        w,
        "wait after basic insurance is restored",
        f"{p}.restored_waiting_months",
        ea.restored_waiting_months,
        eb.restored_waiting_months,
        _opt,
        "months",
    )
    for event in _union(ea.special_event_windows, eb.special_event_windows):
        d.add(
            w,
            f"special-event window {event}",
            f"{p}.special_event_windows.{event}",
            ea.special_event_windows.get(event),
            eb.special_event_windows.get(event),
            _opt,
            "days",
        )


def _joined(values: list[str] | None) -> str:
    return "; ".join(values or []) or "none"


def _presence(present: bool | None) -> str:
    return "present" if present else "absent"


def _union(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [*a, *(k for k in b if k not in a)]


def _lists_used(e: Edition) -> list[str]:
    out: set[str] = set()
    for c in e.costs.values():
        out |= set(c.exclude_lists) | {p.on_list for p in c.parts if p.on_list}
    return sorted(out)


def cost_part_text(part: LinePart) -> str:
    """A fee-line cost part in the rule text's terms: its components and when they count
    (``plan show`` and ``plan diff`` say it alike)."""
    cond = []
    if part.list_types:
        cond.append(f"list_type {'/'.join(x + 'xx' for x in part.list_types)}")
    if part.levels:
        cond.append(f"level {'/'.join(part.levels)}")
    if part.on_list:
        cond.append(f"on the {part.on_list} list")
    when = f" if {' and '.join(cond)}" if cond else ""
    return f"{' + '.join(part.components)}{when}"


def _cost_parts(c: Cost) -> list[str]:
    return [cost_part_text(part) for part in c.parts]


def _costs(d: _Differ, a: Edition, b: Edition) -> None:
    d.add(
        "lists 清单",
        "lists the costs read",
        "lists",
        _lists_used(a),
        _lists_used(b),
        lambda v: _words(v or []),
    )
    for cid in _union(a.costs, b.costs):
        ca, cb = a.costs.get(cid), b.costs.get(cid)
        p = f"costs.{cid}"
        either = ca if ca is not None else cb
        assert either is not None
        w = f"cost {cid} ({either.label})"
        if ca is None or cb is None:
            d.add(w, "", p, ca is not None, cb is not None, _presence)
            continue
        d.add(w, "label", f"{p}.label", ca.label, cb.label, str)
        d.add(w, "built from", f"{p}.kind", ca.kind, cb.kind, _opt)
        d.add(
            w,
            "medical categories (med_type)",
            f"{p}.med_types",
            ca.med_types,
            cb.med_types,
            lambda v: _words(v or [], "all"),
        )
        d.add(w, "start column", f"{p}.start", ca.start, cb.start, _opt)
        d.add(
            w,
            "fund payments deducted",
            f"{p}.less_funds",
            ca.less_funds,
            cb.less_funds,
            lambda v: _words(v or []),
        )
        d.add(
            w,
            "deducted afterwards",
            f"{p}.less_after",
            ca.less_after,
            cb.less_after,
            lambda v: _words(v or []),
        )
        d.add(
            w,
            "lines on these lists count nothing",
            f"{p}.exclude_lists",
            ca.exclude_lists,
            cb.exclude_lists,
            lambda v: _words(v or []),
        )
        d.add(w, "fee-line parts", f"{p}.parts", _cost_parts(ca), _cost_parts(cb), _joined)
        if _cost_parts(ca) == _cost_parts(cb):
            labels = ([x.label for x in ca.parts], [x.label for x in cb.parts])
            d.add(w, "fee-line part labels", f"{p}.parts", *labels, _joined)
        sa = [f"{sp.component} × {_pct(sp.factor)}" for sp in ca.settlement_parts]
        sb = [f"{sp.component} × {_pct(sp.factor)}" for sp in cb.settlement_parts]
        d.add(w, "settlement parts", f"{p}.settlement_parts", sa, sb, _joined)
        if sa == sb:
            sla = [x.label for x in ca.settlement_parts]
            slb = [x.label for x in cb.settlement_parts]
            d.add(w, "settlement part labels", f"{p}.settlement_parts", sla, slb, _joined)
        d.add(w, "line audit code", f"{p}.audit_code", ca.audit_code, cb.audit_code, _opt)


def _threshold(e: Edition, t: Term) -> tuple[str, int | None]:
    """(kind, amount) of a term's threshold."""
    if t.floor is not None:
        return "floor 起付", t.floor
    if t.shared_deductible is not None:
        return f"shared deductible {t.shared_deductible}", e.deductibles.get(t.shared_deductible)
    if t.deductible is not None:
        return "deductible 起付线", t.deductible
    return "no threshold", None


def _terms(
    d: _Differ, w: str, p: str, a: Edition, b: Edition, ra: Responsibility, rb: Responsibility
) -> None:
    def text(e: Edition, t: Term) -> str:
        kind, amount = _threshold(e, t)
        return f"{t.cost} above its {kind} {_yuan(amount)}" if amount is not None else t.cost

    if len(ra.terms) != len(rb.terms):
        d.add(
            w,
            "terms (year-to-date cost above its threshold)",
            f"{p}.terms",
            [text(a, t) for t in ra.terms],
            [text(b, t) for t in rb.terms],
            lambda v: " + ".join(v or []),
        )
        return
    for i, (ta, tb) in enumerate(zip(ra.terms, rb.terms, strict=True)):
        tp = f"{p}.terms.{i}"
        d.add(w, f"term {i + 1}: cost", f"{tp}.cost", ta.cost, tb.cost, str)
        ka, ya = _threshold(a, ta)
        kb, yb = _threshold(b, tb)
        if ka == kb and ta.shared_deductible is None:
            key = "floor" if ta.floor is not None else "deductible"
            d.money(w, f"{ka} on {tb.cost} cost", f"{tp}.{key}", ya, yb)
        elif ka != kb:
            d.add(
                w,
                f"term {i + 1}: threshold on {tb.cost} cost",
                tp,
                ka if ya is None else f"{ka} {_yuan(ya)} yuan",
                kb if yb is None else f"{kb} {_yuan(yb)} yuan",
                str,
            )


def _bands(brackets: list[Bracket]) -> list[tuple[int, int | None, int]]:
    """(low, up_to, rate) of each band."""
    out, low = [], 0
    for br in brackets:
        out.append((low, br.up_to, br.rate))
        if br.up_to is not None:
            low = br.up_to
    return out


def _band(low: int, up_to: int | None) -> str:
    return f"above {_yuan(low)}" if up_to is None else f"{_yuan(low)}–{_yuan(up_to)}"


def _schedule(brackets: list[Bracket] | None) -> str:
    if brackets is None:
        return "none"
    return "; ".join(f"{_band(lo, up)}: {_pct(r)}" for lo, up, r in _bands(brackets))


def _brackets(
    d: _Differ, w: str, p: str, name: str, a: list[Bracket] | None, b: list[Bracket] | None
) -> None:
    if a is None or b is None:
        d.add(w, name, p, a, b, _schedule, raw=lambda v: [edition_bracket(x) for x in v])
        return
    ba, bb = _bands(a), _bands(b)
    if len(ba) == len(bb):
        # the same bands, maybe moved or at other rates: band by band
        for i, ((_, ua, xa), (lb, ub, xb)) in enumerate(zip(ba, bb, strict=True)):
            d.money(w, f"{name} band {i + 1}: upper bound", f"{p}.{i}.up_to", ua, ub)
            d.rate(w, f"{name} band {i + 1} ({_band(lb, ub)}): rate", f"{p}.{i}.rate", xa, xb)
        return
    # bands added or removed: a band is the same band when it ends at the same bound
    d.covered.append(p)
    ends_a = {up: i for i, (_, up, _) in enumerate(ba)}
    ends_b = {up: i for i, (_, up, _) in enumerate(bb)}
    for i, (lo, up, r) in enumerate(ba):
        if up not in ends_b:
            d.rate(w, f"{name}: band {_band(lo, up)} removed; rate", f"{p}.{i}", r, None)
    for i, (lo, up, r) in enumerate(bb):
        if up not in ends_a:
            d.rate(w, f"{name}: band {_band(lo, up)} added; rate", f"{p}.{i}", None, r)
        else:
            ra = ba[ends_a[up]][2]
            d.rate(w, f"{name} band {_band(lo, up)}: rate", f"{p}.{i}.rate", ra, r)


def edition_bracket(b: Bracket) -> dict[str, str]:
    """A bracket as the edition file writes it."""
    out = {"rate": rate_text(b.rate)}
    if b.up_to is not None:
        out["up_to"] = yuan_text(b.up_to)
    return out


def _consecutive(c: ConsecutiveCap | None) -> str:
    return NONE if c is None else f"{_yuan(c.cap)} after {c.years} consecutive years"


def _responsibilities(d: _Differ, a: Edition, b: Edition) -> None:
    ra_by = {r.id: r for r in a.responsibilities}
    rb_by = {r.id: r for r in b.responsibilities}
    common_a = [r.id for r in a.responsibilities if r.id in rb_by]
    common_b = [r.id for r in b.responsibilities if r.id in ra_by]
    d.add(
        "responsibilities 责任",
        "order (shared deductibles and the plan-wide cap are used in this order)",
        "responsibilities[order]",
        common_a,
        common_b,
        lambda v: ", ".join(v or []),
    )
    for rid in _union(ra_by, rb_by):
        ra, rb = ra_by.get(rid), rb_by.get(rid)
        p = f"responsibilities.{rid}"
        either = ra if ra is not None else rb
        assert either is not None
        w = f"responsibility {rid} ({either.name})"
        if ra is None or rb is None:
            d.add(w, "", p, ra is not None, rb is not None, _presence)
            continue
        d.add(w, "name", f"{p}.name", ra.name, rb.name, str)
        _terms(d, w, p, a, b, ra, rb)
        _brackets(d, w, f"{p}.brackets", "brackets 分段", ra.brackets, rb.brackets)
        _brackets(
            d,
            w,
            f"{p}.pre_existing_brackets",
            "pre-existing brackets 既往症",
            ra.pre_existing_brackets,
            rb.pre_existing_brackets,
        )
        d.money(w, "cap 封顶线", f"{p}.cap", ra.cap, rb.cap)
        ca, cb = ra.consecutive_cap, rb.consecutive_cap
        if ca is not None and cb is not None:
            d.add(
                w,
                "consecutive years for the higher cap",
                f"{p}.consecutive_cap.years",
                ca.years,
                cb.years,
                str,
                "years",
            )
            d.money(
                w, "higher cap after consecutive years", f"{p}.consecutive_cap.cap", ca.cap, cb.cap
            )
        else:
            d.add(
                w,
                "higher cap after consecutive years",
                f"{p}.consecutive_cap",
                ca,
                cb,
                _consecutive,
                raw=lambda c: {"years": c.years, "cap": yuan_text(c.cap)},
            )
    for pool in _union(a.deductibles, b.deductibles):
        d.money(
            "deductibles 免赔额",
            f"shared deductible {pool}",
            f"deductibles.{pool}",
            a.deductibles.get(pool),
            b.deductibles.get(pool),
        )


def _assumptions(d: _Differ, a: Edition, b: Edition) -> None:
    xa = {x.parameter: x for x in a.assumptions}
    xb = {x.parameter: x for x in b.assumptions}
    for param in _union(xa, xb):
        va, vb = xa.get(param), xb.get(param)
        d.add(
            "assumptions 假设",
            param,
            "assumptions",
            va and va.value,
            vb and vb.value,
            _opt,
        )
        if va is not None and vb is not None:
            d.add("assumptions 假设", f"{param}: why", "assumptions", va.why, vb.why, str)


# --- the safety net -----------------------------------------------------------------------


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif (
        isinstance(value, list) and value and all(isinstance(x, dict) and "id" in x for x in value)
    ):
        for x in value:  # responsibilities: by id, as --set and the diff name them
            yield from _leaves(x, f"{path}.{x['id']}")
    elif isinstance(value, list) and any(isinstance(x, dict) for x in value):
        for i, x in enumerate(value):
            yield from _leaves(x, f"{path}.{i}")
    else:
        yield path, value


def _uncovered(a: Edition, b: Edition, covered: list[str]) -> list[Difference]:
    """Every file-level difference no comparison above named (a parameter added to the model
    and not to this module): reported by path, so editions with any difference are never said
    to be equal."""
    raw_a = {k: v for k, v in edition_to_raw(a).items() if k not in _IDENTITY}
    raw_b = {k: v for k, v in edition_to_raw(b).items() if k not in _IDENTITY}
    la, lb = dict(_leaves(raw_a, "")), dict(_leaves(raw_b, ""))
    out = []
    for path in _union(la, lb):
        if la.get(path) == lb.get(path):
            continue
        if any(path == c or path.startswith(c + ".") for c in covered):
            continue
        va, vb = la.get(path), lb.get(path)
        out.append(Difference("other", path, _opt(va), _opt(vb), "", path, va, vb))
    return out
