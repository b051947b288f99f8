"""A batch's output folder: placeholders in its name, the refusal to mix two batches' files in
one folder, and the mark a revert leaves in the reverted batch's folder.

``--out`` (or ``adjudicate.out`` in hmb.toml) may hold ``{batch_id}``, ``{date}`` (the date of
the batch's latest adjudicated settlement, so that a re-run of a night writes where the night
wrote; the run's date for a batch with none) and ``{plan_year}`` (the batch's plan years, joined
by ``-``). A folder whose ``manifest.json`` names another batch is refused (exit 2) unless
``--force``: night 2 must not silently overwrite night 1's payout file.
"""

from __future__ import annotations

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


def check_template(template: str) -> None:
    """Refuse an output folder naming an unknown placeholder or with an unmatched brace."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise UsageError(
            f"--out {template}: {exc} (a literal brace is written {{{{ or }}}})"
        ) from None
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


def resolve(
    template: str, *, batch_id: str, latest: dt.datetime | None, plan_years: list[int]
) -> Path:
    """The output folder of a batch (see the module's docstring for the placeholders)."""
    if not has_placeholders(template):
        return Path(template)
    day = (latest or dt.datetime.now()).date()
    years = "-".join(str(y) for y in sorted(plan_years)) or "none"
    return Path(template.format(batch_id=batch_id, date=day.isoformat(), plan_year=years))


def refuse_other_batch(folder: Path, batch_id: str, *, force: bool) -> None:
    """Refuse (exit 2) to write into a folder holding another batch's outputs, unless ``force``.

    A folder is another batch's when its manifest.json names another batch id; the same batch
    (a re-run, a replay) and a dry run's files of the same batch are overwritten.
    """
    if force:
        return
    manifest = _read_manifest(folder)
    if manifest is None:
        return
    other = manifest.get("batch_id")
    if other is not None and other != batch_id:
        raise OutputRefused(
            f"the output folder {folder} holds the files of batch {other} "
            f"({manifest.get('status', 'applied')}); writing batch {batch_id} there would "
            "overwrite them. Give another --out (placeholders such as out/{date} or "
            "out/{batch_id} give each batch its own folder) or --force to overwrite"
        )


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
