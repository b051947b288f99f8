"""Reproduce a past batch from its manifest.json and check its payout file byte for byte.

:func:`replay_batch` checks every input file against the SHA-256 the manifest recorded (a file
changed or gone: :class:`InputChanged`, exit 3) and every edition the batch used against its
recorded hash (:class:`EditionChanged`, exit 5); rebuilds the ledger as it was just before the
batch ran (:func:`hmb_batch.ledger.asof.copy_as_of`) in a scratch ledger inside the output
folder, removed afterwards; runs the batch again there with the same batch id, masking and CSV
copies; and compares the new ``payouts.parquet`` with the one the batch wrote (from the
ledger's file archive, else the batch's folder, either checked against the ledger's SHA-256).
The production ledger is only read: its bytes never change.

The same inputs under the same editions give the same payout file, byte for byte: Parquet with
no time or host in it, rows in a fixed order. What may differ between two runs of one batch:
``manifest.json`` (start time, timings, peak memory, paths) and ``report.html``/``report.md``
(the time they were generated). ``quarantine.parquet`` and ``lines.parquet`` name input files
by the path given, so they are the same bytes when the paths are (a replay from the folder the
batch ran in, which manifest.json records); ``reconciliation.json`` is the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__
from hmb_batch.errors import ConfigError, InputUnreadable, OutputRefused
from hmb_batch.io.atomic import write_files
from hmb_batch.ledger.asof import BatchFacts, batch_facts, copy_as_of
from hmb_batch.ledger.store import FileArchive, LedgerError
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.plan.scenario import select_plan_with
from hmb_batch.run import out_folder
from hmb_batch.run.alerts import WarningLimits
from hmb_batch.run.batch import PERSONAL_DATA, BatchInputs, run_batch
from hmb_batch.run.identity import edition_hash, expand_inputs, file_hash

__all__ = ["Defaults", "EditionChanged", "InputChanged", "ReplayResult", "replay_batch"]

REPLAY_STATUS = "replay"  # manifest.json's status in a replay's folder
COMPARED = ("payouts.parquet", "quarantine.parquet", "lines.parquet", "reconciliation.json")
SHOWN = 10  # differing settlements listed
# columns whose values a difference shows: amounts, codes and ids, never a name or an ID number
_VALUE_COLUMNS = ("status", "reasons", "edition", "plan_year", "batch_id", "init_setl_id")


class InputChanged(InputUnreadable):
    """An input file is not what the batch read: changed (another SHA-256) or gone (exit 3)."""


class EditionChanged(ConfigError):
    """A plan edition the batch used has changed since, or cannot be found (exit 5)."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay found."""

    batch_id: str
    identical: bool  # payouts.parquet byte for byte
    original: str  # where the batch's payout file was read from
    original_sha256: str
    replay: Path
    replay_sha256: str
    out_dir: Path
    files: dict[str, bool | None] = field(default_factory=dict)  # name -> same bytes (None: n/a)
    differences: list[dict[str, Any]] = field(default_factory=list)
    only_in_original: list[str] = field(default_factory=list)
    only_in_replay: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (``replay --json``)."""
        return {
            "batch_id": self.batch_id,
            "identical": self.identical,
            "payouts": {
                "original": self.original,
                "original_sha256": self.original_sha256,
                "replay": str(self.replay),
                "replay_sha256": self.replay_sha256,
            },
            "files": self.files,
            "differences": self.differences,
            "only_in_original": self.only_in_original,
            "only_in_replay": self.only_in_replay,
            "out": str(self.out_dir),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Defaults:
    """What a manifest written before ``rerun`` was recorded is replayed with (hmb.toml), and
    what never changes a payout (district names, warning limits, memory)."""

    plan: str | None = None
    encoding: str = "utf-8"
    timezone: str = "Asia/Shanghai"
    columns: Mapping[str, str] | None = None
    districts: Mapping[str, str] | None = None
    warnings: WarningLimits | None = None
    ledger: Path | None = None


def replay_batch(
    manifest_path: Path,
    out_dir: Path,
    *,
    ledger_path: Path | None = None,
    plan: str | None = None,
    defaults: Defaults | None = None,
    wait: float = 30.0,
    memory_limit: int | None = None,
    buckets_wanted: int | None = None,
) -> ReplayResult:
    """Run the batch ``manifest_path`` describes again into ``out_dir`` and compare.

    ``ledger_path``: the ledger the batch was applied to (default: the manifest's ``ledger``,
    else ``defaults.ledger``). ``plan``: where its editions are (default: the manifest's
    ``rerun.plan``, else ``defaults.plan``); they must hash as recorded. Raises
    :class:`InputChanged`, :class:`EditionChanged`; returns the comparison (the caller decides
    what a difference means; the CLI exits 11).
    """
    defaults = defaults or Defaults()
    if manifest_path.is_dir():  # the batch's folder
        manifest_path = manifest_path / out_folder.MANIFEST
    manifest = _read_manifest(manifest_path)
    batch_id = str(manifest["batch_id"])
    status = manifest.get("status")
    rerun: dict[str, Any] = manifest.get("rerun") or {}
    if status == "dry_run":
        raise LedgerError(
            f"{manifest_path} is a dry run's manifest: a dry run applied nothing, so the ledger "
            "state it read is not in the ledger's history. Replay an applied batch's manifest"
        )
    with_ledger = status != "no_ledger"
    notes: list[str] = []
    facts: BatchFacts | None = None
    source: Path | None = None
    if with_ledger:
        recorded = manifest.get("ledger")
        source = ledger_path or (Path(recorded) if recorded else None) or defaults.ledger
        if source is None:
            raise ConfigError(
                "the manifest names no ledger: give --ledger (or set adjudicate.ledger)"
            )
        facts = batch_facts(source, batch_id, wait=wait)
        _same_batch(manifest, facts, source)
        if facts.status == "reverted":
            notes.append(f"batch {batch_id} has been reverted since; replayed as it ran")
    base = Path(rerun["cwd"]) if rerun.get("cwd") else None
    inputs = _verified_inputs(manifest, rerun, base)
    spec = plan or rerun.get("plan") or defaults.plan
    if not spec:
        raise ConfigError("the manifest records no plan: give --plan (or set adjudicate.plan)")
    sets = list(rerun.get("sets") or [])  # a scenario's --set list (simulate)
    # the ledger's own record of the editions, when there is one: a manifest can be edited
    selection = _verify_editions(
        facts.editions if facts is not None else manifest.get("editions") or {}, spec, sets
    )
    if manifest.get("hmb_version") not in (None, __version__):
        notes.append(
            f"the batch ran under hmb-batch {manifest['hmb_version']}, this is {__version__}"
        )
    personal = (facts.summary.get(PERSONAL_DATA) if facts else None) or rerun.get(PERSONAL_DATA)
    csv_encoding = rerun.get("csv_encoding")
    originals = _originals(manifest_path, facts, source, notes)
    if "payouts.parquet" not in originals:
        where = "the ledger's file archive nor " if facts is not None else ""
        raise LedgerError(
            f"the payout file of batch {batch_id} is in neither {where}"
            f"{manifest_path.parent} (with the SHA-256 the ledger recorded): nothing to compare "
            "the replay with"
        )
    _refuse_folder(out_dir, manifest_path, batch_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / f".replay-ledger.{os.getpid()}"
    try:
        ledger = None
        if with_ledger:
            assert source is not None and facts is not None
            ledger = scratch / "ledger.duckdb"
            # the batch itself is not replayed from the archive: no file of the copy is needed
            copy_as_of(
                source,
                ledger,
                before=facts.seq,
                wait=wait,
                files=False,
                memory_limit=memory_limit,
            )
        batch = BatchInputs(
            extract=inputs["extract"],
            fees=inputs["fees"],
            roster=Path(inputs["roster"]),
            lists=Path(inputs["lists"]),
            plan=selection,
            plan_source=(spec, tuple(sets)) if sets else None,
            encoding=rerun.get("encoding") or defaults.encoding,
            column_map=rerun.get("columns", defaults.columns),
            batch_id=batch_id,
            timezone=rerun.get("timezone") or defaults.timezone,
            districts=defaults.districts,
        )
        result = run_batch(
            batch,
            out_dir,
            csv=csv_encoding is not None,
            csv_encoding=csv_encoding or "utf-8",
            ledger_path=ledger,
            wait=wait,
            allow_out_of_order=True,  # it passed the check when it ran: the same state now
            memory_limit=memory_limit,
            buckets_wanted=buckets_wanted,
            unmasked=personal == "unmasked",
            force=True,  # the folder was checked above: empty, or an earlier replay's
            warning_limits=defaults.warnings,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    replay = Path(result.files["payouts"])
    compared = _compare(originals, out_dir)
    original, original_sha = originals["payouts.parquet"]
    replay_sha = file_hash(replay)
    identical = original_sha == replay_sha
    diff = {} if identical else _differences(original, replay)
    outcome = ReplayResult(
        batch_id,
        identical,
        str(original),
        original_sha,
        replay,
        replay_sha,
        out_dir,
        compared,
        diff.get("rows", []),
        diff.get("only_in_original", []),
        diff.get("only_in_replay", []),
        notes + diff.get("notes", []),
    )
    _mark_folder(out_dir, manifest_path, outcome)
    return outcome


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputUnreadable(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputUnreadable(f"{path}: not a manifest.json hmb-batch wrote ({exc})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("batch_id", "inputs")):
        raise InputUnreadable(f"{path}: not a manifest.json hmb-batch wrote (no batch_id, inputs)")
    if data.get("status") == REPLAY_STATUS:
        raise InputUnreadable(
            f"{path} is a replay's manifest: give the manifest in the batch's own folder"
        )
    return data


def _same_batch(manifest: dict[str, Any], facts: BatchFacts, source: Path) -> None:
    """The manifest describes the ledger's batch of that id: the same content key and input
    hashes (a manifest edited by hand, or the folder of another ledger's batch, is refused)."""

    def hashes(inputs: Mapping[str, Any]) -> dict[str, list[str]]:
        return {k: [f["sha256"] for f in v] for k, v in inputs.items()}

    if facts.batch_key != manifest.get("batch_key") or hashes(facts.inputs) != hashes(
        manifest["inputs"]
    ):
        raise LedgerError(
            f"the manifest of batch {facts.batch_id} does not match the ledger {source}'s record "
            "of it (batch key or input hashes differ): was it edited, or is it another ledger's "
            "batch? Give the ledger it was applied to with --ledger"
        )


def _resolve(text: str, base: Path | None) -> Path:
    """An input path as recorded; relative ones from the folder the batch ran in (when the
    replay runs elsewhere)."""
    path = Path(text)
    if path.is_absolute() or base is None or base == Path.cwd():
        return path
    return base / path


def _verified_inputs(
    manifest: dict[str, Any], rerun: dict[str, Any], base: Path | None
) -> dict[str, Any]:
    """The batch's input specs for :class:`BatchInputs`, every file checked against its
    recorded SHA-256; all problems at once (:class:`InputChanged`)."""
    recorded: dict[str, list[dict[str, str]]] = manifest["inputs"]
    problems: list[str] = []
    for kind in ("extract", "fees", "roster", "lists"):
        for f in recorded.get(kind, []):
            path = _resolve(f["path"], base)
            if not path.is_file():
                problems.append(f"{kind} file {path} is missing (SHA-256 {f['sha256']} recorded)")
                continue
            now = file_hash(path)
            if now != f["sha256"]:
                problems.append(
                    f"{kind} file {path} has changed: SHA-256 {f['sha256']} recorded in the "
                    f"manifest, {now} now"
                )
    specs: dict[str, Any] = {}
    for kind in ("extract", "fees"):
        files = [_resolve(f["path"], base) for f in recorded.get(kind, [])]
        given = rerun.get(kind)
        spec = str(_resolve(given, base)) if given else _spec_of(files)
        if spec is not None and files:
            # a folder or glob read again must give the files the batch read, and no other
            with contextlib.suppress(InputUnreadable):  # none at all: each is named above
                extra = {p.resolve() for p in expand_inputs(spec)} - {p.resolve() for p in files}
                problems += [
                    f"{kind} file {p} is in {spec} now but the batch did not read it"
                    for p in sorted(map(str, extra))
                ]
        specs[kind] = spec
    for kind in ("roster", "lists"):
        one = recorded.get(kind, [])
        specs[kind] = str(_resolve(one[0]["path"], base)) if one else None
    if not specs["extract"] or not specs["roster"] or not specs["lists"]:
        problems.append("the manifest lacks the extract, roster or lists file")
    if problems:
        raise InputChanged(
            "the batch's inputs are not what it read, so it cannot be reproduced:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return specs


def _spec_of(files: list[Path]) -> str | None:
    """A manifest written before ``rerun``: one file is itself; several are their folder."""
    if not files:
        return None
    if len(files) == 1:
        return str(files[0])
    return str(Path(os.path.commonpath([str(p) for p in files])))


def _verify_editions(
    recorded: Mapping[str, str], spec: str, sets: Sequence[str] = ()
) -> PlanSelection:
    """Every edition the batch used is in the plan ``spec`` (with a scenario's ``sets``) with
    the hash it had then; the plan, to run the batch again with."""
    try:
        plan = select_plan_with(spec, sets)
    except ConfigError as exc:
        raise EditionChanged(f"the plan {spec} the batch ran under cannot be read: {exc}") from None
    now = {e.id: edition_hash(e) for e in plan.editions}
    problems = []
    for edition, digest in sorted(recorded.items()):
        if edition not in now:
            problems.append(f"edition {edition} is not in plan {spec} (give --plan)")
        elif now[edition] != digest:
            problems.append(
                f"edition {edition} (plan {spec}) has changed: SHA-256 {digest} recorded in the "
                f"manifest, {now[edition]} now"
            )
    if problems:
        raise EditionChanged(
            "the plan editions are not what the batch used, so it cannot be reproduced:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return plan


def _refuse_folder(out_dir: Path, manifest_path: Path, batch_id: str) -> None:
    """The replay writes a batch's files: never over the batch's own folder or another run's
    files — only into a new or empty folder, or over an earlier replay."""
    folder = manifest_path.parent
    if out_dir.resolve() == folder.resolve():
        raise OutputRefused(
            f"--out {out_dir} is the batch's own folder: a replay writes its files elsewhere, so "
            "the batch's payout file is never overwritten. Give a new folder"
        )
    manifest = out_dir / out_folder.MANIFEST
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    try:
        status = json.loads(manifest.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status != REPLAY_STATUS:
        raise OutputRefused(
            f"--out {out_dir} is not empty and holds no earlier replay: give a new or empty "
            f"folder for the replay of batch {batch_id}"
        )


def _originals(
    manifest_path: Path, facts: BatchFacts | None, source: Path | None, notes: list[str]
) -> dict[str, tuple[Path, str]]:
    """The batch's own files, by name: where to read each and its SHA-256. The ledger's
    archive first, then the batch's folder if that copy has the ledger's digest; without a
    ledger (a ``no_ledger`` batch) the folder's files as they are. A folder copy that is not
    the file the ledger recorded is noted: someone changed the file a payment may be made from.
    """
    folder = manifest_path.parent
    found: dict[str, tuple[Path, str]] = {}
    for name in COMPARED:
        here = folder / name
        if facts is None or source is None:  # no ledger recorded it: the folder's file is all
            if here.is_file():
                found[name] = (here, file_hash(here))
            continue
        digest = facts.files.get(name)
        if digest is None:
            continue
        mine = file_hash(here) if here.is_file() else None
        if mine is not None and mine != digest:
            notes.append(
                f"{here} is not the file the ledger recorded for the batch (SHA-256 {digest} "
                f"recorded, {mine} there): it was changed after the batch wrote it"
            )
        kept = FileArchive(source).find(digest)
        if kept is not None:
            found[name] = (kept, digest)
        elif mine == digest:
            found[name] = (here, digest)
    return found


def _compare(originals: Mapping[str, tuple[Path, str]], out_dir: Path) -> dict[str, bool | None]:
    """Per compared file: the replay wrote the same bytes (None: no original to compare)."""
    out: dict[str, bool | None] = {}
    for name in COMPARED:
        new = out_dir / name
        out[name] = (
            file_hash(new) == originals[name][1] if name in originals and new.is_file() else None
        )
    return out


def _differences(original: Path, replay: Path) -> dict[str, Any]:
    """The first settlements whose rows differ (setl_id, the columns, and for amounts and codes
    both values), the setl_ids in one file only, and what else differs."""
    a, b = pl.read_parquet(original), pl.read_parquet(replay)
    notes = []
    if a.schema != b.schema:
        notes.append(
            "the columns differ: "
            + ", ".join(
                f"{c} only in the {which}"
                for which, x, y in (("original", a, b), ("replay", b, a))
                for c in x.columns
                if c not in y.columns
            )
            or "the columns' types or order differ"
        )
    common = [c for c in a.columns if c in b.columns and c != "setl_id"]
    keyed = [f.with_columns(pl.int_range(pl.len()).over("setl_id").alias("_n")) for f in (a, b)]
    joined = keyed[0].join(keyed[1], on=["setl_id", "_n"], how="full", suffix="__r")
    only_a = joined.filter(pl.col("setl_id__r").is_null())["setl_id"].to_list()
    only_b = joined.filter(pl.col("setl_id").is_null())["setl_id__r"].to_list()
    both = joined.filter(pl.col("setl_id").is_not_null() & pl.col("setl_id__r").is_not_null())
    flags = both.select(
        "setl_id", *[pl.col(c).ne_missing(pl.col(f"{c}__r")).alias(c) for c in common]
    )
    differing = flags.filter(pl.any_horizontal(common)) if common else flags.clear()
    rows = []
    for flag in differing.head(SHOWN).iter_rows(named=True):
        setl = flag["setl_id"]
        cols = [c for c in common if flag[c]]
        mine = both.filter(pl.col("setl_id") == setl).row(0, named=True)
        rows.append(
            {
                "setl_id": setl,
                "columns": cols,
                "values": {
                    c: {"original": str(mine[c]), "replay": str(mine[f"{c}__r"])}
                    for c in cols
                    if c.endswith("_amt") or c in _VALUE_COLUMNS
                },
            }
        )
    if not rows and not only_a and not only_b and not notes:
        notes.append(
            "every row is the same: the files differ in row order or in how Parquet wrote them"
        )
    if differing.height > SHOWN:
        notes.append(f"{differing.height:,} settlements differ; the first {SHOWN} are listed")
    return {
        "rows": rows,
        "only_in_original": only_a[:SHOWN],
        "only_in_replay": only_b[:SHOWN],
        "notes": notes
        + [
            f"{n:,} settlements are only in the {which}"
            for which, n in (("original", len(only_a)), ("replay", len(only_b)))
            if n
        ],
    }


def _mark_folder(out_dir: Path, manifest_path: Path, outcome: ReplayResult) -> None:
    """The replay's folder says what it is: manifest.json status ``replay`` (no ledger: its
    scratch ledger is gone), what it replayed and what it found."""
    path = out_dir / out_folder.MANIFEST
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest |= {
            "status": REPLAY_STATUS,
            "ledger": None,
            "ledger_after": None,
            "replay_of": str(manifest_path.resolve()),
            "replay": outcome.to_json(),
        }
        write_files(
            {out_folder.MANIFEST: json.dumps(manifest, ensure_ascii=False, indent=2).encode()},
            out_dir,
        )
