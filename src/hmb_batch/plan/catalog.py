"""Shipped editions, plan families, and choosing the edition for each plan year.

``--plan`` accepts:

- a **family** id (``zhelibao``): each settlement's plan year picks the family's edition for that
  year; a batch spanning late December and early January uses two editions;
- an **edition** id (``zhelibao-2023``) or an edition **file**: that edition governs every plan
  year in the run — what an analyst wants when trying next year's rules on last year's data;
- a **folder** of edition files: a family of one's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hmb_batch.errors import ConfigError
from hmb_batch.plan.check import load_edition
from hmb_batch.plan.compiled import CompiledEdition, compile_edition
from hmb_batch.plan.model import Edition


def shipped_edition_files() -> dict[str, Path]:
    """Edition id → file, for the editions shipped inside the package."""
    root = resources.files("hmb_batch") / "editions"
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name.removesuffix(".toml")] = Path(str(entry))
    return dict(sorted(out.items()))


def shipped_editions() -> list[Edition]:
    """Every shipped edition, validated."""
    return [load_edition(p) for p in shipped_edition_files().values()]


@dataclass(frozen=True)
class PlanSelection:
    """The editions a run may use and how a plan year picks one."""

    label: str
    editions: tuple[CompiledEdition, ...]
    fixed: bool  # one edition for every plan year

    def for_year(self, plan_year: int) -> CompiledEdition | None:
        """The edition governing ``plan_year``, or None if none does."""
        if self.fixed:
            return self.editions[0]
        for e in self.editions:
            if e.edition.edition == plan_year:
                return e
        return None

    @property
    def years(self) -> list[int]:
        """Plan years the family covers (empty for a fixed edition: it covers all)."""
        return [] if self.fixed else [e.edition.edition for e in self.editions]


def select_plan(spec: str, list_names: Iterable[str] | None = None) -> PlanSelection:
    """Resolve ``--plan`` (family id, edition id, edition file or folder) to editions."""
    names = list(list_names) if list_names is not None else None
    shipped = shipped_edition_files()
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.toml"))
        if not files:
            raise ConfigError(f"{path}: no edition files (*.toml) in this folder")
        eds = [load_edition(f, names) for f in files]
        return PlanSelection(str(path), tuple(compile_edition(e) for e in eds), fixed=False)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: no such plan edition file")
        e = load_edition(path, names)
        return PlanSelection(e.id, (compile_edition(e),), fixed=True)
    if spec in shipped:
        e = load_edition(shipped[spec], names)
        return PlanSelection(e.id, (compile_edition(e),), fixed=True)
    family = [p for eid, p in shipped.items() if eid.rsplit("-", 1)[0] == spec]
    if family:
        eds = [load_edition(p, names) for p in family]
        return PlanSelection(spec, tuple(compile_edition(e) for e in eds), fixed=False)
    known = sorted({eid.rsplit("-", 1)[0] for eid in shipped}) + sorted(shipped)
    raise ConfigError(
        f"unknown plan {spec!r}: give a family, an edition id or an edition file "
        f"(shipped: {', '.join(known)}; see `hmb-batch plan list`)"
    )
