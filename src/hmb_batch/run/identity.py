"""Who a batch is: its input files (expanded, hashed), plan editions and batch id.

The batch key (a hash of every input file's bytes and of the editions) is how a re-run of the
same batch is recognised and replayed instead of applied twice.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from hmb_batch.errors import ConfigError, InputUnreadable
from hmb_batch.io.reference import load_lists
from hmb_batch.plan.catalog import PlanSelection, select_plan
from hmb_batch.plan.compiled import CompiledEdition


@dataclass(frozen=True)
class BatchInputs:
    """Everything a batch reads."""

    extract: Path | str
    fees: Path | str | None
    roster: Path
    lists: Path
    plan: str | PlanSelection  # --plan, or a selection the caller made (simulate's variants)
    encoding: str = "utf-8"
    column_map: Mapping[str, str] | None = None
    batch_id: str | None = None
    timezone: str = "Asia/Shanghai"  # of time-zone-aware Parquet timestamps (hmb.toml)
    # district code -> name for the report (hmb.toml's [districts]); not part of the batch key:
    # names change how a report reads, not what the batch pays
    districts: Mapping[str, str] | None = None
    # a PlanSelection's --plan and --set PATH=VALUE list (simulate), recorded for a replay
    plan_source: tuple[str, tuple[str, ...]] | None = None


def expand_inputs(spec: Path | str) -> list[Path]:
    """A file, a folder (its CSV/Parquet files, recursively: Hive partitions) or a glob."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.suffix.lower() in (".parquet", ".pq", ".csv")
        )
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True))
    else:
        return [path]
    if not files:
        raise InputUnreadable(f"{text}: no CSV or Parquet files match")
    return files


EXTRACT_SUFFIXES = (".parquet", ".pq", ".csv")


def extract_folder(spec: str) -> tuple[str, str | None]:
    """A folder laid out as two-file extract (``settlements.*`` and ``fees.*`` beside each
    other, as ``hmb-batch generate --nights`` writes each night): (settlements, fees). Anything
    else is returned as given, with no fee-lines file."""
    folder = Path(spec)
    if not folder.is_dir():
        return spec, None

    def named(stem: str) -> list[Path]:
        return sorted(
            p for p in folder.iterdir() if p.stem == stem and p.suffix.lower() in EXTRACT_SUFFIXES
        )

    settlements, fees = named("settlements"), named("fees")
    if len(settlements) == 1 and len(fees) == 1:
        return str(settlements[0]), str(fees[0])
    return spec, None


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    except FileNotFoundError:
        raise InputUnreadable(f"{path}: no such file") from None
    except OSError as exc:
        raise InputUnreadable(f"{path}: cannot be read ({exc.strerror})") from None
    return h.hexdigest()


def edition_hash(edition: CompiledEdition) -> str:
    """SHA-256 of an edition's validated parameters (not of its file's text: a comment or a
    reordered table leaves it as it was, a changed amount or rate does not)."""
    return hashlib.sha256(edition.edition.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class BatchHeader:
    """Who a batch is: its id, content key, input files with hashes, plan and reference lists."""

    batch_id: str
    batch_key: str
    inputs: dict[str, list[dict[str, str]]]
    plan: PlanSelection
    edition_hashes: dict[str, str]
    lists: pl.DataFrame
    extract_files: list[Path]
    fee_files: list[Path]


def _check_lists(plan: PlanSelection, list_names: list[str]) -> None:
    """Editions chosen before the lists were read: every list they read must be in the lists
    file (what select_plan checks when it is given the list names); ConfigError (exit 5)."""
    for e in plan.editions:
        missing = sorted(e.lists - set(list_names))
        if missing:
            raise ConfigError(
                f"edition {e.id} reads the list(s) {', '.join(missing)}, which the lists file "
                f"does not define (it has {', '.join(list_names) or 'none'})"
            )


def describe_batch(inputs: BatchInputs, spill: Path | None = None) -> BatchHeader:
    """Read the lists, choose the plan, hash every input file: the batch's identity.

    ``spill``: the run's spill folder, where temporary copies of inputs go (see
    :func:`spill_area`).
    """
    cmap = inputs.column_map
    lists = load_lists(
        inputs.lists, cmap, inputs.encoding, timezone=inputs.timezone, temp_dir=spill
    )
    # a selection made by the caller (a scenario's variant) was checked against the lists there
    plan = (
        inputs.plan
        if isinstance(inputs.plan, PlanSelection)
        else select_plan(inputs.plan, sorted(lists["list"].unique().to_list()))
    )
    extract_files = expand_inputs(inputs.extract)
    fee_files = expand_inputs(inputs.fees) if inputs.fees is not None else []
    if isinstance(inputs.plan, PlanSelection):  # made before the lists were read: check them
        _check_lists(plan, sorted(lists["list"].unique().to_list()))
    described = {
        "extract": [{"path": str(p), "sha256": file_hash(p)} for p in extract_files],
        "fees": [{"path": str(p), "sha256": file_hash(p)} for p in fee_files],
        "roster": [{"path": str(inputs.roster), "sha256": file_hash(inputs.roster)}],
        "lists": [{"path": str(inputs.lists), "sha256": file_hash(inputs.lists)}],
    }
    edition_hashes = {e.id: edition_hash(e) for e in plan.editions}
    key_material = json.dumps(
        {k: [f["sha256"] for f in v] for k, v in described.items()}
        | {"editions": edition_hashes, "fixed": plan.fixed},
        sort_keys=True,
    )
    batch_key = hashlib.sha256(key_material.encode()).hexdigest()
    first = extract_files[0]
    label = first.stem if first.parent.name in ("", ".") else f"{first.parent.name}-{first.stem}"
    batch_id = inputs.batch_id or f"{label}-{batch_key[:12]}"
    return BatchHeader(
        batch_id, batch_key, described, plan, edition_hashes, lists, extract_files, fee_files
    )
