"""Scenario editions: one edition with some settlement-level parameters changed (``--set``).

``--set PATH=VALUE`` names a parameter the way the edition file does, as dotted keys:

- ``premium.amount``, ``premium.operating_cost_share``, ``premium.target_loss_ratio``;
- ``plan_cap``;
- ``deductibles.POOL`` (a shared deductible pool the edition defines);
- ``responsibilities.ID.cap``, ``responsibilities.ID.consecutive_cap.years`` and ``.cap``;
- ``responsibilities.ID.terms.N.floor`` and ``.deductible``;
- ``responsibilities.ID.brackets.N.rate`` and ``.up_to``, and the same under
  ``pre_existing_brackets``.

A responsibility is addressed by its ``id`` (``main``; its 0-based position is accepted too and
recorded as the id); terms and brackets, which have no id, by their 0-based position in the file.
VALUE is written as in the file: yuan as a decimal (``13000`` or ``13000.00``), a rate as a
decimal (``0.80``, not ``80%``), a whole number of years; ``none`` removes an optional parameter
(a cap, a floor, a bracket's ``up_to``).

Only these **settlement-level** parameters can be set: they enter the benefit step (thresholds,
brackets, caps) or the premium pool, never what a settlement's costs are (costs, lists, line
rules) or who is covered (eligibility), so a scenario reuses every cost and eligibility decision
of its edition (:func:`is_settlement_level`). Anything else is refused with a pointer to
``hmb-batch plan new``.

The change is made on the edition's file form (:func:`edition_to_raw`) and the result is checked
exactly as a file is (:func:`hmb_batch.plan.check.check_data`); every problem is a
:class:`~hmb_batch.errors.ConfigError` (exit 5) naming the ``--set`` and the parameter. The
scenario's edition records its source edition and changes (:class:`~hmb_batch.plan.model.Variant`)
and has its own id, ``zhelibao-2022+s3f9a1c``: the tag hashes the normalised changes, so batches,
manifests and the ledger's edition hash never take it for the edition it came from.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, get_args

from pydantic import BaseModel

from hmb_batch.errors import ConfigError
from hmb_batch.plan.catalog import PlanSelection, select_plan
from hmb_batch.plan.check import Problem, check_data
from hmb_batch.plan.compiled import compile_edition
from hmb_batch.plan.model import (
    RATE_SCALE,
    Change,
    Edition,
    Fen,
    MonthDay,
    Rate,
    Variant,
    variant_tag,
)

# --- the file form ------------------------------------------------------------------------

# the validators that mark a field as yuan, a rate or a month-day (the same objects wherever the
# Annotated aliases are used)
_FEN, _RATE, _MONTH_DAY = (get_args(t)[1] for t in (Fen, Rate, MonthDay))


def yuan_text(fen: int) -> str:
    """Fen as the file writes yuan: ``1800000`` → ``"18000.00"`` (exact)."""
    return f"{Decimal(fen) / 100:.2f}"


def rate_text(ppm: int) -> str:
    """Parts per million as the file writes a rate: ``750000`` → ``"0.75"`` (exact)."""
    text = f"{Decimal(ppm) / RATE_SCALE:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scale(annotation: Any, metadata: Iterable[Any] = ()) -> object | None:
    for m in metadata:
        if m is _FEN or m is _RATE or m is _MONTH_DAY:
            found: object = m
            return found
    for arg in get_args(annotation):
        found = _scale(arg, [arg])
        if found is not None:
            return found
    return None


def _raw_value(value: Any, scale: object | None) -> Any:
    if isinstance(value, BaseModel):
        return _raw_model(value)
    if isinstance(value, list):
        return [_raw_value(v, scale) for v in value]
    if isinstance(value, dict):
        return {k: _raw_value(v, scale) for k, v in value.items()}
    if scale is _FEN and isinstance(value, int):
        return yuan_text(value)
    if scale is _RATE and isinstance(value, int):
        return rate_text(value)
    if scale is _MONTH_DAY and isinstance(value, tuple):
        return f"{value[0]:02d}-{value[1]:02d}"
    return value


def _raw_model(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None or name == "variant":  # TOML has no null; a file holds no variant
            continue
        out[name] = _raw_value(value, _scale(info.annotation, info.metadata))
    return out


def edition_to_raw(edition: Edition) -> dict[str, Any]:
    """The edition as its TOML file reads (yuan and rates as decimal strings, dates ``MM-DD``):
    ``check_data(edition_to_raw(e))`` gives back ``e`` (without its variant)."""
    return _raw_model(edition)


# --- paths --------------------------------------------------------------------------------

_INDEX = re.compile(r"^[0-9]+$")
_BRACKET_LISTS = ("brackets", "pre_existing_brackets")

_REFUSED = (
    "--set changes settlement-level parameters only (deductibles, floors, bracket rates and "
    "bounds, caps, the premium); for any other change write a copy of the edition "
    "(hmb-batch plan new --from EDITION FILE), edit it and give --plan FILE"
)


def _shape(segments: Sequence[str]) -> bool:
    """Whether segments (responsibility by id or position) name a settlement-level parameter."""
    match list(segments):
        case ["premium", "amount" | "operating_cost_share" | "target_loss_ratio"]:
            return True
        case ["plan_cap"] | ["deductibles", _]:
            return True
        case ["responsibilities", _, "cap"]:
            return True
        case ["responsibilities", _, "consecutive_cap", "years" | "cap"]:
            return True
        case ["responsibilities", _, "terms", n, "floor" | "deductible"]:
            return bool(_INDEX.match(n))
        case ["responsibilities", _, "brackets" | "pre_existing_brackets", n, "rate" | "up_to"]:
            return bool(_INDEX.match(n))
    return False


def is_settlement_level(path: str) -> bool:
    """Whether ``path`` names a parameter ``--set`` may change: one that enters only the benefit
    step (a deductible, a floor, a bracket rate or bound, a cap) or the premium pool — never a
    cost, a list, a line rule or eligibility. A scenario differing from its edition only in such
    parameters has the same costs and eligibility for every settlement; only payable, benefit and
    the loss ratio can change. Whether the edition has that responsibility, term or bracket is
    :func:`derive_edition`'s to check."""
    return _shape(path.strip().split("."))


def settable_paths(edition: Edition) -> list[str]:
    """Every parameter of ``edition`` that ``--set`` can change, as PATH (for help and for
    did-you-mean)."""
    out = ["premium.amount", "premium.operating_cost_share", "premium.target_loss_ratio"]
    out.append("plan_cap")
    out += [f"deductibles.{pool}" for pool in edition.deductibles]
    for r in edition.responsibilities:
        p = f"responsibilities.{r.id}"
        out += [f"{p}.cap", f"{p}.consecutive_cap.years", f"{p}.consecutive_cap.cap"]
        for i, t in enumerate(r.terms):
            if t.floor is not None:
                out.append(f"{p}.terms.{i}.floor")
            elif t.deductible is not None:
                out.append(f"{p}.terms.{i}.deductible")
            elif t.shared_deductible is None:
                out += [f"{p}.terms.{i}.floor", f"{p}.terms.{i}.deductible"]
        for key in _BRACKET_LISTS:
            brackets = getattr(r, key)
            for i, _ in enumerate(brackets or []):
                if i < len(brackets) - 1:  # the last band is open-ended
                    out.append(f"{p}.{key}.{i}.up_to")
                out.append(f"{p}.{key}.{i}.rate")
    return out


def _refusal(segments: list[str]) -> str | None:
    """Why a known but not settable path is refused (None: the path is not known at all)."""
    head = segments[0]
    if head == "costs":
        return "costs decide which fee lines and settlement columns count: a rule, not a parameter"
    if head == "eligibility":
        return "eligibility decides who is covered and from when, not what a settlement pays"
    if head in ("plan", "plan_name", "edition", "format", "format_version", "official", "source"):
        return "it names or describes the edition: not a parameter"
    if head in ("assumptions", "variant"):
        return "it documents the edition: not a parameter"
    if head in ("premium", "deductibles", "responsibilities") and len(segments) == 1:
        return "give one parameter, e.g. responsibilities.main.brackets.0.rate"
    if head != "responsibilities" or len(segments) < 3:
        return None
    rest = segments[2:]
    if rest in (["id"], ["name"]):
        return "it names the responsibility: not a parameter"
    if rest[0] in ("terms", *_BRACKET_LISTS) and len(rest) <= 2:
        return f"give one parameter, e.g. {'.'.join(segments[:3])}.0.{_leaf(rest[0])}"
    if rest[0] == "terms" and len(rest) == 3 and rest[2] in ("cost", "shared_deductible"):
        return "which cost or deductible pool a term reads is a rule, not a parameter"
    return None


def _leaf(key: str) -> str:
    return "floor" if key == "terms" else "rate"


# --- deriving a scenario ------------------------------------------------------------------


def parse_set(text: str) -> tuple[str, str]:
    """``"PATH=VALUE"`` → (path, value); surrounding spaces and one pair of quotes around VALUE
    are dropped (``rate="0.80"`` as a TOML file writes it)."""
    path, eq, value = text.partition("=")
    path, value = path.strip(), value.strip()
    if not eq or not path:
        raise ConfigError(
            f"--set {text}: write PATH=VALUE, e.g. responsibilities.main.brackets.0.rate=0.80"
        )
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return path, value


def _normalise(segments: list[str], raw: dict[str, Any]) -> list[str]:
    """A responsibility given by position → by id (one spelling per parameter, one tag)."""
    if len(segments) >= 2 and segments[0] == "responsibilities" and _INDEX.match(segments[1]):
        resps = raw.get("responsibilities", [])
        i = int(segments[1])
        if i < len(resps):
            return [segments[0], str(resps[i]["id"]), *segments[2:]]
    # positions of terms and brackets: 01 → 1
    return [str(int(s)) if _INDEX.match(s) else s for s in segments]


def _container(
    segments: list[str], raw: dict[str, Any], edition_id: str, where: str
) -> dict[str, Any]:
    """The dict in ``raw`` holding the parameter's key (an absent consecutive cap is created);
    ConfigError when the responsibility, term, bracket or pool does not exist. ``raw`` is the
    caller's own copy (:func:`edition_to_raw` builds a new one each time): changed in place."""
    head = segments[0]
    if head == "plan_cap":
        return raw
    if head == "premium":
        container: dict[str, Any] = raw["premium"]
        return container
    if head == "deductibles":
        pools: dict[str, Any] = raw.get("deductibles", {})
        if segments[1] not in pools:
            raise ConfigError(
                f"{where}: {edition_id} has no deductible pool {segments[1]!r} "
                f"(its pools: {', '.join(pools) or 'none'})"
            )
        return pools
    resps = {r["id"]: r for r in raw["responsibilities"]}
    rid = segments[1]
    if rid not in resps:
        close = difflib.get_close_matches(rid, list(resps), n=1)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else f" (its responsibilities: {', '.join(resps)})"
        )
        raise ConfigError(f"{where}: {edition_id} has no responsibility {rid!r}{hint}")
    resp: dict[str, Any] = resps[rid]
    key = segments[2]
    if key == "cap":
        return resp
    if key == "consecutive_cap":
        cc: dict[str, Any] = resp.setdefault("consecutive_cap", {})
        return cc
    items = resp.get(key)
    if items is None:
        raise ConfigError(f"{where}: responsibility {rid} of {edition_id} has no {key}")
    n = int(segments[3])
    if n >= len(items):
        kind = "term" if key == "terms" else "bracket"
        raise ConfigError(
            f"{where}: responsibility {rid} of {edition_id} has no {kind} {n} "
            f"({key} are numbered from 0: 0–{len(items) - 1})"
        )
    item: dict[str, Any] = items[n]
    return item


def _lookup(raw: dict[str, Any], segments: list[str]) -> Any:
    node: Any = raw
    for s in segments:
        if isinstance(node, list):
            node = (
                node[int(s)]
                if _INDEX.match(s)
                else next((x for x in node if x.get("id") == s), None)
            )
        elif isinstance(node, dict):
            node = node.get(s)
        if node is None:
            return None
    return node


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _problem_path(path: str, raw: dict[str, Any]) -> str:
    """A problem's path in ``--set`` spelling: ``responsibilities[0].brackets[1].up_to`` and
    ``responsibilities.0.brackets.1.up_to`` → ``responsibilities.main.brackets.1.up_to``."""
    dotted = re.sub(r"\[(\d+)\]", r".\1", path)
    m = re.match(r"^responsibilities\.(\d+)(\..*)?$", dotted)
    resps = raw.get("responsibilities", [])
    if m and int(m.group(1)) < len(resps) and isinstance(resps[int(m.group(1))], dict):
        rid = resps[int(m.group(1))].get("id", m.group(1))
        return f"responsibilities.{rid}{m.group(2) or ''}"
    return dotted


def derive_edition(
    edition: Edition, sets: Sequence[str], list_names: Iterable[str] | None = None
) -> Edition:
    """``edition`` with each ``"PATH=VALUE"`` of ``sets`` applied (in order; a path set twice
    keeps the last value), checked as an edition file is: a new :class:`Edition` whose
    ``variant`` records the source edition's id and each change (path, old and new value as the
    file writes them) and whose id is ``plan-year+tag``.

    A change to the value the edition already has is no change: it is dropped, and an edition
    left with no change is returned as it is. Deriving from a scenario adds to its changes
    (the source stays the edition the first changes were made to).

    ConfigError (exit 5) naming the ``--set`` when PATH is unknown (with the closest known
    parameter), not settlement-level (with why), or names a responsibility, term, bracket or pool
    the edition lacks; or when the changed edition does not check (every problem, at its path).
    """
    if not sets:
        return edition
    raw = edition_to_raw(edition)
    names = list(list_names) if list_names is not None else None
    given: dict[str, str] = {}  # normalised path → the --set text that set it last
    for text in sets:
        path, value = parse_set(text)
        where = f"--set {text} on {edition.id}"
        segments = _normalise(path.split("."), raw)
        if not _shape(segments):
            why = _refusal(segments)
            if why is not None:
                raise ConfigError(f"{where}: {path} cannot be set: {why}. {_REFUSED}")
            known = settable_paths(edition)
            close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else f"the parameters --set can change in {edition.id}: {', '.join(known)}"
            )
            raise ConfigError(f"{where}: unknown parameter {path}; {hint}")
        container = _container(segments, raw, edition.id, where)
        if value.lower() == "none":
            container.pop(segments[-1], None)
        else:
            container[segments[-1]] = value
        norm = ".".join(segments)
        given.pop(norm, None)
        given[norm] = text
    checked, problems = check_data(raw, names)
    if problems or checked is None:
        raise ConfigError(_problems_message(edition, list(given.values()), problems, raw))
    return _as_variant(edition, checked, list(given))


def _problems_message(
    edition: Edition, texts: list[str], problems: list[Problem], raw: dict[str, Any]
) -> str:
    lines = "\n".join(
        f"  - {Problem(_problem_path(p.path, raw), p.message, p.hint)}" for p in problems
    )
    sets = " ".join(f"--set {t}" for t in texts)
    return f"{sets} on {edition.id}: the changed edition has {len(problems)} problem(s):\n{lines}"


def _as_variant(source: Edition, checked: Edition, paths: list[str]) -> Edition:
    before, after = edition_to_raw(source), edition_to_raw(checked)
    prior = {c.path: c for c in source.variant.changes} if source.variant else {}
    changes: dict[str, Change] = dict(prior)
    for path in paths:
        segments = path.split(".")
        old = prior[path].old if path in prior else _text(_lookup(before, segments))
        new = _text(_lookup(after, segments))
        changes[path] = Change(path=path, old=old, new=new)
    kept = [c for c in changes.values() if c.old != c.new]
    if not kept:
        return checked if source.variant is None else source.model_copy(update={"variant": None})
    origin = source.variant.source if source.variant else source.id
    variant = Variant(source=origin, changes=kept, tag=variant_tag(kept))
    return checked.model_copy(update={"variant": variant})


def select_scenario(
    selection: PlanSelection, sets: Sequence[str], list_names: Iterable[str] | None = None
) -> PlanSelection:
    """``selection`` with ``sets`` applied to each of its editions (:func:`derive_edition`),
    compiled: usable wherever :func:`~hmb_batch.plan.catalog.select_plan`'s result is. A fixed
    edition's selection is labelled with the scenario's id; a family's with its label and tag."""
    if not sets:
        return selection
    names = list(list_names) if list_names is not None else None
    derived = [derive_edition(e.edition, sets, names) for e in selection.editions]
    tags = [e.variant.tag for e in derived if e.variant is not None]
    if not tags:  # every change was to the value already there
        return selection
    label = derived[0].id if selection.fixed else f"{selection.label}+{tags[0]}"
    return PlanSelection(label, tuple(compile_edition(e) for e in derived), selection.fixed)


def select_plan_with(
    spec: str, sets: Sequence[str], list_names: Iterable[str] | None = None
) -> PlanSelection:
    """``--plan SPEC --set PATH=VALUE ...``: :func:`~hmb_batch.plan.catalog.select_plan` then
    :func:`select_scenario`; ConfigError (exit 5) for an invalid plan or ``--set``."""
    names = list(list_names) if list_names is not None else None
    return select_scenario(select_plan(spec, names), sets, names)
