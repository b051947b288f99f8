"""Loading and checking plan editions: every problem at once, each with its path and a fix hint."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hmb_batch.cli.config import read_toml
from hmb_batch.errors import ConfigError
from hmb_batch.plan.model import (
    KNOWN_LISTS,
    LINE_MONEY,
    SETTLEMENT_MONEY,
    Bracket,
    Cost,
    Edition,
    Eligibility,
    Fen,
    Responsibility,
)
from hmb_batch.rules.codes import REASON_CODES


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an edition file."""

    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        hint = f" — {self.hint}" if self.hint else ""
        return f"{self.path}: {self.message}{hint}"


_HINTS = {
    "missing": "add this key",
    "extra_forbidden": "remove it, or check its spelling against `hmb-batch plan new`",
    "literal_error": "use the value shown",
    "value_error": "see the expected form in the message",
    "greater_than_equal": "use a value in the range shown",
    "less_than_equal": "use a value in the range shown",
}


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(Problem(path, msg, _HINTS.get(err["type"], "")))
    return out


def _bracket_problems(path: str, brackets: list[Bracket]) -> list[Problem]:
    out = []
    last = -1
    for i, b in enumerate(brackets):
        if b.up_to is None and i != len(brackets) - 1:
            out.append(
                Problem(
                    f"{path}[{i}].up_to",
                    "only the last bracket may be open-ended",
                    "give this bracket an up_to, or move it last",
                )
            )
        if b.up_to is not None:
            if b.up_to <= last:
                out.append(
                    Problem(
                        f"{path}[{i}].up_to",
                        "brackets are out of order: up_to must increase",
                        "list brackets from the lowest band to the highest",
                    )
                )
            last = b.up_to
    if brackets and brackets[-1].up_to is not None:
        out.append(
            Problem(
                f"{path}[{len(brackets) - 1}]",
                "the last bracket must be open-ended",
                "leave up_to out of the last bracket (use a cap to limit payouts)",
            )
        )
    return out


def semantic_problems(
    costs: dict[str, Cost],
    responsibilities: list[Responsibility],
    deductibles: dict[str, int],
    el: Eligibility | None,
    list_names: Iterable[str] | None = None,
) -> list[Problem]:
    """Cross-field checks pydantic cannot do field by field (on whichever parts are valid)."""
    lists = set(list_names) if list_names is not None else set(KNOWN_LISTS)
    where = "the lists file" if list_names is not None else f"the known lists {sorted(lists)}"
    out: list[Problem] = []

    def component(path: str, name: str, allowed: tuple[str, ...]) -> None:
        if name not in allowed:
            out.append(
                Problem(path, f"unknown fee component {name!r}", f"use one of {', '.join(allowed)}")
            )

    def list_ref(path: str, name: str) -> None:
        if name not in lists:
            out.append(
                Problem(
                    path,
                    f"no list called {name!r} is defined in {where}",
                    "add the list's entries to the lists file or fix the name",
                )
            )

    for cid, cost in costs.items():
        p = f"costs.{cid}"
        if cost.kind == "settlement":
            if cost.start is None:
                out.append(
                    Problem(
                        f"{p}.start",
                        "a settlement cost needs a start column",
                        'e.g. start = "inscp_amt"',
                    )
                )
            else:
                component(f"{p}.start", cost.start, SETTLEMENT_MONEY)
            for i, c in enumerate(cost.less_funds):
                component(f"{p}.less_funds[{i}]", c, SETTLEMENT_MONEY)
            for i, c in enumerate(cost.less_after):
                component(f"{p}.less_after[{i}]", c, SETTLEMENT_MONEY)
            if cost.parts or cost.settlement_parts or cost.exclude_lists:
                out.append(
                    Problem(
                        p,
                        "a settlement cost takes no fee-line parts or lists",
                        'use kind = "fee_lines" for costs built from fee lines',
                    )
                )
        else:
            if not cost.parts and not cost.settlement_parts:
                out.append(
                    Problem(
                        f"{p}.parts",
                        "a fee-lines cost needs at least one part",
                        "add [[costs.ID.parts]] with components = [...]",
                    )
                )
            if cost.start is not None or cost.less_funds or cost.less_after:
                out.append(
                    Problem(
                        p,
                        "a fee-lines cost takes no start/less_funds/less_after",
                        'use kind = "settlement" for those',
                    )
                )
            for i, part in enumerate(cost.parts):
                for j, c in enumerate(part.components):
                    component(f"{p}.parts[{i}].components[{j}]", c, LINE_MONEY)
                if part.on_list is not None:
                    list_ref(f"{p}.parts[{i}].on_list", part.on_list)
            for i, sp in enumerate(cost.settlement_parts):
                component(f"{p}.settlement_parts[{i}].component", sp.component, SETTLEMENT_MONEY)
            for i, name in enumerate(cost.exclude_lists):
                list_ref(f"{p}.exclude_lists[{i}]", name)
        if cost.audit_code is not None and cost.audit_code not in REASON_CODES:
            out.append(
                Problem(
                    f"{p}.audit_code",
                    f"unknown reason code {cost.audit_code!r}",
                    "use a code listed by `hmb-batch codes`",
                )
            )

    seen: set[str] = set()
    for i, r in enumerate(responsibilities):
        p = f"responsibilities[{i}]"
        if r.id in seen:
            out.append(
                Problem(
                    f"{p}.id",
                    f"responsibility id {r.id!r} is used twice",
                    "give each responsibility its own id",
                )
            )
        seen.add(r.id)
        for j, t in enumerate(r.terms):
            if costs and t.cost not in costs:
                out.append(
                    Problem(
                        f"{p}.terms[{j}].cost",
                        f"no cost called {t.cost!r}",
                        f"define [costs.{t.cost}] or use one of {sorted(costs)}",
                    )
                )
            if t.shared_deductible is not None and t.shared_deductible not in deductibles:
                out.append(
                    Problem(
                        f"{p}.terms[{j}].shared_deductible",
                        f"no deductible pool called {t.shared_deductible!r}",
                        "define it under [deductibles]",
                    )
                )
        out += _bracket_problems(f"{p}.brackets", r.brackets)
        if r.pre_existing_brackets is not None:
            out += _bracket_problems(f"{p}.pre_existing_brackets", r.pre_existing_brackets)
        if r.consecutive_cap is not None and r.cap is None:
            out.append(
                Problem(
                    f"{p}.consecutive_cap",
                    "a consecutive-years cap needs a base cap",
                    "set cap as well",
                )
            )
    if el is None:
        return out
    if el.launch_grace_last_day is not None and el.launch_year is None:
        out.append(
            Problem(
                "eligibility.launch_grace_last_day",
                "a grace window needs launch_year",
                "set launch_year or remove the window",
            )
        )
    for name, days in el.special_event_windows.items():
        if days < 0:
            out.append(
                Problem(
                    f"eligibility.special_event_windows.{name}",
                    f"window of {days} days is negative",
                    "give days after event_date",
                )
            )
    return out


def check_data(
    data: dict[str, Any], list_names: Iterable[str] | None = None
) -> tuple[Edition | None, list[Problem]]:
    """Validate edition data; the edition (if structurally valid) and every problem found."""
    if "variant" in data:
        # a variant is what `--set` derives from a checked edition: a file claiming to be one
        # could record changes that were never made
        data = {k: v for k, v in data.items() if k != "variant"}
        _, problems = check_data(data, list_names)
        return None, [_VARIANT_IN_FILE, *problems]
    try:
        edition = Edition.model_validate(data)
    except ValidationError as exc:
        # still check the parts that are valid on their own, so one pass shows everything
        problems = _pydantic_problems(exc)
        costs = _valid_part(_COSTS, data.get("costs"))
        resps = []
        for i, raw in enumerate(_as_list(data.get("responsibilities"))):
            r = _valid_part(_RESP, raw)
            if r is not None:
                resps.append(r)
            elif isinstance(raw, dict):
                # an invalid responsibility: still check its bracket order from the raw values
                for key in ("brackets", "pre_existing_brackets"):
                    problems += _raw_bracket_order(
                        f"responsibilities[{i}].{key}", _as_list(raw.get(key))
                    )
        deductibles = _valid_part(_DEDUCTIBLES, data.get("deductibles", {}))
        el = _valid_part(_ELIGIBILITY, data.get("eligibility"))
        problems += semantic_problems(costs or {}, resps, deductibles or {}, el, list_names)
        return None, problems
    return edition, semantic_problems(
        edition.costs,
        edition.responsibilities,
        edition.deductibles,
        edition.eligibility,
        list_names,
    )


_VARIANT_IN_FILE = Problem(
    "variant",
    "an edition file cannot declare itself a variant",
    "remove it; a variant is made with --set PATH=VALUE",
)
_COSTS: TypeAdapter[dict[str, Cost]] = TypeAdapter(dict[str, Cost])
_RESP: TypeAdapter[Responsibility] = TypeAdapter(Responsibility)
_DEDUCTIBLES: TypeAdapter[dict[str, Fen]] = TypeAdapter(dict[str, Fen])
_ELIGIBILITY: TypeAdapter[Eligibility] = TypeAdapter(Eligibility)


def _raw_bracket_order(path: str, raw: list[object]) -> list[Problem]:
    brackets = []
    for b in raw:
        up_to = b.get("up_to") if isinstance(b, dict) else None
        try:
            brackets.append(Bracket(up_to=up_to, rate=0))
        except ValidationError:
            return []  # the up_to itself is bad: its field error says so
    return _bracket_problems(path, brackets)


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _valid_part(adapter: TypeAdapter[Any], value: object) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None


def load_edition(path: Path, list_names: Iterable[str] | None = None) -> Edition:
    """Read and validate an edition file; ConfigError listing every problem if it is invalid."""
    edition, problems = check_data(read_toml(path), list_names)
    if problems or edition is None:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s) in the plan edition:\n{lines}")
    return edition
