"""A batch's output folder: placeholders in its name, the refusal to mix two batches' files in
one folder, and the mark a revert leaves in the reverted batch's folder.

``--out`` (or ``adjudicate.out`` in hmb.toml) may hold ``{batch_id}``, ``{date}`` (the date of
the batch's latest adjudicated settlement, so that a re-run of a night writes where the night
wrote; the date the batch first ran for a batch with none) and ``{plan_year}`` (the plan years
of its adjudicated settlements, joined by ``-``). A folder whose ``manifest.json`` names another
batch is refused (exit 2) unless ``--force``: night 2 must not silently overwrite night 1's
payout file; nor may a what-if (a dry run, a run without the ledger) overwrite an applied
batch's files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import string
from pathlib import Path
from typing import Any

from hmb_batch.errors import OutputRefused, UsageError
from hmb_batch.io.atomic import write_files

PLACEHOLDERS = ("batch_id", "date", "plan_year")
MANIFEST = "manifest.json"
REVERTED = "REVERTED"
# every file a batch may leave in its folder: what a run does not write again is removed, so
# that a folder never mixes two batches' files
OUTPUT_NAMES = (
    "payouts.parquet",
    "payouts.csv",
    "quarantine.parquet",
    "quarantine.csv",
    "lines.parquet",
    "reconciliation.json",
    "report.html",
    "report.md",
    MANIFEST,
    REVERTED,
)
# what a run's status says about its files: a what-if must not replace the ledger's record
APPLIED = ("applied", "replayed")
WHAT_IF = ("dry_run", "no_ledger")


def check_template(template: str) -> None:
    """Refuse an output folder naming an unknown placeholder or with an unmatched brace."""
    try:
        fields = [(n, spec, conv) for _, n, spec, conv in string.Formatter().parse(template)]
    except ValueError as exc:
        raise UsageError(
            f"--out {template}: {exc} (a literal brace is written {{{{ or }}}})"
        ) from None
    names = [n for n, _, _ in fields if n is not None]
    if any(n is not None and (spec or conv) for n, spec, conv in fields):
        raise UsageError(
            f"--out {template}: a placeholder takes no format ({{date}} is YYYY-MM-DD); write "
            "it as {batch_id}, {date} or {plan_year}"
        )
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise UsageError(
            f"--out {template}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}"
            f"; known: {', '.join('{' + n + '}' for n in PLACEHOLDERS)}"
        )


def has_placeholders(template: str) -> bool:
    """Whether the output folder's name is a template."""
    return any(name is not None for _, name, _, _ in string.Formatter().parse(template))


def fixed_part(template: str) -> Path:
    """The folder above the first placeholder: the run's spill area goes there, since the
    folder itself is named only once the batch is known."""
    if not has_placeholders(template):
        return Path(template)
    head = template[: template.index("{")]
    return Path(head) if head.endswith(("/", "\\")) or not head else Path(head).parent


def resolve(template: str, *, batch_id: str, day: dt.date, plan_years: list[int]) -> Path:
    """The output folder of a batch (see the module's docstring for the placeholders)."""
    if not has_placeholders(template):
        return Path(template)
    years = "-".join(str(y) for y in sorted(plan_years)) or "none"
    return Path(template.format(batch_id=batch_id, date=day.isoformat(), plan_year=years))


def refuse_other_batch(folder: Path, batch_id: str, status: str, *, force: bool) -> None:
    """Refuse (exit 2) to write into a folder holding another batch's outputs, unless ``force``.

    A folder is another batch's when its manifest.json names another batch id. The same batch
    is overwritten (a re-run, a replay, the applied run after its dry run), except by a what-if
    (``status`` dry_run or no_ledger) over the files the ledger applied: those are the night's
    payment files.
    """
    if force:
        return
    manifest = _read_manifest(folder)
    if manifest is None:
        return
    other = manifest.get("batch_id")
    was = manifest.get("status", "applied")
    if other is not None and other != batch_id:
        why = f"holds the files of batch {other} ({was}); writing batch {batch_id} there"
    elif status in WHAT_IF and was in APPLIED:
        why = f"holds the applied files of batch {batch_id}; this {status.replace('_', ' ')} there"
    else:
        return
    raise OutputRefused(
        f"the output folder {folder} {why} would overwrite them. Give another --out "
        "(placeholders such as out/{date} or out/{batch_id} give each batch its own folder) "
        "or --force to overwrite"
    )


def remove_other_outputs(folder: Path, keep: set[str]) -> None:
    """Remove the output files in ``folder`` that this run does not write again (a forced run
    over another batch's folder must not leave that batch's CSV copies or REVERTED mark)."""
    for name in OUTPUT_NAMES:
        if name not in keep:
            # best effort: it runs after the ledger commit, which a stray folder named like an
            # output file must not turn into an error
            with contextlib.suppress(OSError):
                (folder / name).unlink(missing_ok=True)


def mark_reverted(folder: Path, batch_id: str, *, at: dt.datetime, by: str, reason: str) -> bool:
    """Mark a reverted batch's folder: its manifest's status becomes ``reverted`` (with who,
    when, why) and a REVERTED file says so beside the payout file. False when the folder no
    longer holds that batch's files (moved, or overwritten with --force): nothing is changed."""
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("batch_id") != batch_id:
        return False
    manifest["status"] = "reverted"
    manifest["reverted"] = {"at": at.isoformat(timespec="seconds"), "by": by, "reason": reason}
    text = (
        f"batch {batch_id} was reverted on {at:%Y-%m-%d %H:%M:%S} by {by}.\n"
        f"reason: {reason or '(none given)'}\n"
        "Its payouts are no longer in the ledger: do not pay from the files in this folder.\n"
    )
    write_files(
        {
            MANIFEST: json.dumps(manifest, ensure_ascii=False, indent=2).encode(),
            REVERTED: text.encode(),
        },
        folder,
    )
    return True


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
