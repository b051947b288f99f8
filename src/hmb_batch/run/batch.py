"""One batch end to end: read, cut into parts and member buckets, adjudicate, apply, write.

This is the orchestration edge: it does the I/O and calls the pure kernel's three stages
(:mod:`hmb_batch.rules.kernel`): ``adjudicate_lines`` once per part of whole settlements,
``adjudicate_members`` once per member bucket, ``settle_audit`` once per part. The CLI calls
:func:`run_batch` and renders what it returns.

There is one path for every batch, a 5,000-line night or a year of a province: the batch is cut
into P parts by a hash of setl_id and its settlements' facts into M buckets by a hash of the
member (:mod:`hmb_batch.run.buckets`; P = M = 1 when it fits the memory budget, and then
nothing is cut), the results go to part files in the run's spill area (kept in memory when
nothing is cut), and the output files, the reconciliation and the ledger rows are made from the
parts. Within a stage, the kernel runs in one worker thread one part or bucket ahead of the
writes of the previous one's results (:func:`one_ahead`), in order.

With a ledger, the order is: take the writer lock; if the same inputs (content hashes) under the
same plan editions were applied before, rewrite that batch's files from the ledger and stop;
otherwise read each bucket's members' year to date, adjudicate, refuse the batch unless it
reconciles, commit everything in one transaction, and only then put the output files in place
(temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__
from hmb_batch.crash import crash_point
from hmb_batch.errors import ConfigError, ReconciliationError, ReferenceDataError
from hmb_batch.io.atomic import copy_files, file_key, install_files, write_files
from hmb_batch.io.extract import Extract, read_extract
from hmb_batch.io.reference import enrolled_by_year, load_roster
from hmb_batch.ledger.store import BatchRecord, Ledger, LedgerError, file_rows, open_ledger
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import PlanSelection
from hmb_batch.report.data import batch_report, loss_ratio_json, year_to_date_loss_ratios
from hmb_batch.report.summary import BatchSummary, summarise
from hmb_batch.rules.engine import cost_ids, responsibility_ids
from hmb_batch.rules.kernel import (
    LinePart,
    LineResult,
    MemberBucket,
    MemberResult,
    SettledLines,
    adjudicate_lines,
    adjudicate_members,
    settle_audit,
)
from hmb_batch.rules.reconcile import SHOW, AfterExpectation, Identity, Reconciliation, combine
from hmb_batch.rules.validation import batch_within_bounds
from hmb_batch.run import buckets, out_folder
from hmb_batch.run.alerts import WarningLimits, batch_warnings
from hmb_batch.run.balancing import (
    ledger_before_identity,
    reconciliation_json,
    reconciliation_of,
    refusal,
    verify_after,
)
from hmb_batch.run.identity import BatchHeader, BatchInputs, describe_batch, file_hash
from hmb_batch.run.laps import Laps
from hmb_batch.run.spill import spill_area
from hmb_batch.run.worker import one_ahead

__all__ = ["BatchInputs", "BatchResult", "run_batch"]


PERSONAL_DATA = "personal_data"  # the batch record's summary: "masked" or "unmasked" files


@dataclass(frozen=True)
class BatchResult:
    """What a batch did and wrote."""

    summary: BatchSummary
    files: dict[str, Path]
    payouts: pl.LazyFrame  # the payout file's rows, scanned from it
    quarantine: pl.LazyFrame
    replayed: bool = False  # the same batch was applied before: files rewritten, ledger unchanged
    manifest: dict[str, Any] = field(default_factory=dict)
    out_dir: Path = Path(".")  # where its files went (``--out`` with its placeholders filled)


def covered_years(plan: PlanSelection, years: list[int]) -> None:
    """Refuse a batch none of whose plan years the plan covers (exit 5)."""
    uncovered = [y for y in years if plan.for_year(y) is None]
    if uncovered and len(uncovered) == len(years):
        raise ConfigError(
            f"plan {plan.label} has no edition for plan year(s) {uncovered} "
            f"(it covers {plan.years}); give --plan with an edition id or file to apply one "
            "edition to every year"
        )


def editions_used(plan: PlanSelection, years: list[int]) -> list[str]:
    """The ids of the editions that apply to ``years``."""
    return sorted({e.id for y in years if (e := plan.for_year(y)) is not None})


def _ledger_state(ledger: Ledger) -> list[dict[str, Any]]:
    return [
        {
            "plan_year": r["plan_year"],
            "members": r["members"],
            "settlements": r["settlements"],
            "payable": str(fen_to_yuan(r["payable_fen"])),
            "payout": str(fen_to_yuan(r["payout_fen"])),
        }
        for r in ledger.state().iter_rows(named=True)
    ]


def run_batch(
    inputs: BatchInputs,
    out_dir: Path | str,
    *,
    csv: bool = False,
    csv_encoding: str = "utf-8",
    ledger_path: Path | None = None,
    wait: float = 30.0,
    allow_out_of_order: bool = False,
    memory_limit: int | None = None,
    buckets_wanted: int | None = None,
    unmasked: bool = False,
    dry_run: bool = False,
    force: bool = False,
    warning_limits: WarningLimits | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> BatchResult:
    """Adjudicate one batch, apply it to the ledger (if any), write its files into ``out_dir``.

    ``out_dir`` may hold placeholders (:mod:`hmb_batch.run.out_folder`); a folder holding
    another batch's files is refused unless ``force``. ``dry_run``: adjudicate against the
    ledger's year to date and write the files (marked dry run), but apply nothing.
    ``memory_limit`` (bytes; default :func:`hmb_batch.run.buckets.default_memory_limit`) sets
    the number of buckets; ``buckets_wanted`` forces it. ``unmasked``: the payout files carry
    psn_name and certno in full. ``csv_encoding``: of the CSV copies (``csv``). ``progress`` is
    told each stage as it ends, with its seconds.
    """
    started = dt.datetime.now()
    template = str(out_dir)
    out_folder.check_template(template)
    limit = memory_limit or buckets.default_memory_limit()
    opened: contextlib.AbstractContextManager[Ledger | None] = (
        open_ledger(
            ledger_path,
            wait=wait,
            holder=f"{'dry run' if dry_run else 'batch'} of {inputs.extract}, pid {os.getpid()}",
            upgrade=not dry_run,
        )
        if ledger_path is not None
        else contextlib.nullcontext()
    )
    target = _Target(
        template,
        ledger_path,
        dry_run,
        force,
        csv,
        csv_encoding,
        rerun_record(inputs, unmasked=unmasked, csv_encoding=csv_encoding if csv else None),
    )
    with (
        spill_area(out_folder.fixed_part(template)) as spill,
        Laps(progress) as clock,
        opened as ledger,
    ):
        if ledger is not None:
            ledger.limit_memory(buckets.duckdb_share(limit))
        clock.lap("lock")
        header = describe_batch(inputs, spill)
        before = _ledger_state(ledger) if ledger is not None else None
        if ledger is not None:
            existing = ledger.find_batch(batch_key=header.batch_key)
            if existing is not None:
                return _replay(ledger, existing, header, target, started, clock, before, unmasked)
            header = _unique_batch_id(ledger, header, explicit=inputs.batch_id is not None)
        n, m, groups = _stage_counts(header, limit, buckets_wanted)
        plan = header.plan
        parts = buckets.BucketParts(
            spill / "parts",
            with_ledger=ledger is not None,
            members=m,
            in_memory=n == m == 1,
            parts=n,
        )
        source = _source(inputs, header, ledger, spill, (n, m, groups), clock, limit)
        # each stage in its own function: a stage's last part or bucket is not held while the
        # next stage runs
        _line_stage(parts, source, header, unmasked)
        clock.lap("adjudicate_lines")
        before_ids = _member_stage(parts, source, ledger, header, m, unmasked)
        clock.lap("adjudicate_members")
        _settle_stage(parts, source, header, unmasked)
        clock.lap("settle_audit")
        crash_point("compute")
        # refusals that need the whole batch, before anything is written or applied
        require_roster_years(plan, parts.claim_years, source.enrolled, inputs.roster)
        covered_years(plan, sorted(parts.years))
        if ledger is not None:
            check_order(ledger, header.batch_id, parts.latest, allow_out_of_order)
        files: dict[str, bytes | Path] = dict(
            parts.assemble(
                csv=csv,
                csv_encoding=csv_encoding,
                responsibilities=responsibility_ids(plan),
                memory_limit=limit,
            )
        )
        clock.lap("assemble_outputs")
        payouts = parts.scan("payouts")
        summary = summarise(
            batch_id=header.batch_id,
            editions=editions_used(plan, sorted(parts.years)),
            shape=source.shape,
            settlements_in=parts.settlements_in,
            fee_lines_in=parts.fee_lines_in,
            identical_repeats=parts.identical_repeats,
            repeated_fee_lines=parts.repeated_fee_lines,
            payouts=payouts,
            quarantine=pl.scan_parquet(files["quarantine.parquet"]),
        )
        summary = replace(summary, enrolled_by_plan_year=source.enrolled)
        recent = (
            [b.settlements_in for b in ledger.batches() if b.status == "applied"]
            if (ledger is not None)
            else []
        )
        found = batch_warnings(summary, recent, warning_limits or WarningLimits())
        summary = replace(summary, warnings=[{"code": w.code, "message": w.message} for w in found])
        check_balanced(summary)
        latest = order_mark(payouts)
        folder = out_folder.resolve(
            template,
            batch_id=header.batch_id,
            day=(latest or started).date(),
            plan_years=sorted(summary.payout_by_plan_year_fen),
        )
        out_folder.refuse_other_batch(folder, header.batch_id, target.status, force=force)
        recon = reconciliation_of(
            header.batch_id, combine(parts.totals), summary, ledger is not None
        )
        if before_ids:
            recon = recon.with_identities([_added_up(before_ids)])
        written, manifest = _finish(
            ledger,
            header,
            summary,
            recon,
            payouts,
            files,
            rows=parts.ledger_rows() if ledger is not None else None,
            expected=AfterExpectation.combine(parts.after) if parts.after else None,
            latest=latest,
            started=started,
            clock=clock,
            before=before,
            out_dir=folder,
            target=target,
            buckets_used=n,
            unmasked=unmasked,
            districts=inputs.districts,
        )
        return BatchResult(
            summary,
            written,
            pl.scan_parquet(written["payouts"]),
            pl.scan_parquet(written["quarantine"]),
            False,
            manifest,
            folder,
        )


@dataclass(frozen=True)
class _Target:
    """What the run was asked to leave behind, and where."""

    template: str  # --out, placeholders and all
    ledger: Path | None
    dry_run: bool
    force: bool
    csv: bool
    csv_encoding: str
    rerun: dict[str, Any] = field(default_factory=dict)  # manifest.json's "rerun"

    @property
    def status(self) -> str:
        """What the run leaves in the ledger: applied, dry_run or no_ledger (manifest.json)."""
        return "dry_run" if self.dry_run else "applied" if self.ledger is not None else "no_ledger"


def rerun_record(
    inputs: BatchInputs, *, unmasked: bool, csv_encoding: str | None
) -> dict[str, Any]:
    """How the batch was asked for, beyond its input files and editions (manifest.json's
    ``rerun``, what ``hmb-batch replay`` runs it again with): the extract and fee specs as given
    (a folder or glob is expanded again, and must give the same files), the plan spec (a file
    or folder made absolute), how files were read (encoding, time zone, ``[columns]``), whether
    psn_name and certno were masked, the CSV copies' encoding (None: none), and the folder the
    run was started from (relative input paths are relative to it)."""
    sets: list[str] = []
    if inputs.plan_source is not None:  # a scenario's editions: its --plan and --set list
        spec, sets = inputs.plan_source[0], list(inputs.plan_source[1])
    elif isinstance(inputs.plan, PlanSelection):
        spec = inputs.plan.label
    else:
        spec = inputs.plan
    path = Path(spec)
    return {
        "extract": str(inputs.extract),
        "fees": str(inputs.fees) if inputs.fees is not None else None,
        "plan": str(path.resolve()) if path.exists() else spec,
        "sets": sets,
        "encoding": inputs.encoding,
        "timezone": inputs.timezone,
        "columns": dict(inputs.column_map or {}),
        PERSONAL_DATA: "unmasked" if unmasked else "masked",
        "csv_encoding": csv_encoding,
        "cwd": os.getcwd(),
    }


def _line_stage(
    parts: buckets.BucketParts, source: _Source, header: BatchHeader, unmasked: bool
) -> None:
    """Every part of whole settlements through the line stage (an empty batch: one empty part,
    so that its files have their columns)."""

    def lines(item: tuple[int, LinePart]) -> tuple[int, LineResult]:
        k, part = item
        return k, adjudicate_lines(
            part,
            plan=header.plan,
            lists=header.lists,
            batch_id=header.batch_id,
            shape=source.shape,
            files=(*header.extract_files, *header.fee_files),
            unmasked=unmasked,
        )

    def read() -> Iterator[tuple[int, LinePart]]:
        for k, part in source.line_parts():
            crash_point("read")
            yield k, part

    found = False
    for k, result in one_ahead(read(), lines):
        found = True
        parts.add_lines(k, result)
        batch_within_bounds(parts.absolute_fen)  # each part is within; the batch must be
    if not found:
        empty = adjudicate_lines(
            source.empty_part(),
            plan=header.plan,
            lists=header.lists,
            batch_id=header.batch_id,
            shape=source.shape,
            unmasked=unmasked,
        )
        parts.add_lines(0, empty)


def _member_stage(
    parts: buckets.BucketParts,
    source: _Source,
    ledger: Ledger | None,
    header: BatchHeader,
    m: int,
    unmasked: bool,
) -> list[Identity]:
    """Every member bucket through the member stage; with a ledger, each bucket's
    ledger.before identity. The worker (:func:`one_ahead`) is the only one to use the ledger
    while the stage runs."""

    def read() -> Iterator[tuple[int, pl.DataFrame, pl.DataFrame, bool]]:
        found = False
        for bucket in range(m):
            facts = parts.facts_of(bucket)
            if facts is not None:
                found = True
                crash_point("read")
                yield bucket, facts, source.roster(bucket), False
        if not found:  # no settlement at all: the empty files need the engine's columns
            assert parts.no_facts is not None
            crash_point("read")
            yield 0, parts.no_facts, source.roster(0).clear(), True

    def members(
        item: tuple[int, pl.DataFrame, pl.DataFrame, bool],
    ) -> tuple[int, MemberResult, Identity | None]:
        bucket, facts, roster, empty = item
        result, identity = _adjudicate_members(facts, roster, ledger, header, unmasked)
        return bucket, result, None if empty else identity

    before_ids: list[Identity] = []
    for bucket, result, identity in one_ahead(read(), members):
        parts.add_members(bucket, result)
        if identity is not None:
            before_ids.append(identity)
    return before_ids


def _settle_stage(
    parts: buckets.BucketParts, source: _Source, header: BatchHeader, unmasked: bool
) -> None:
    """Every part's audit settled with the member stage's decisions."""

    def read() -> Iterator[tuple[int, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
        for k in list(parts.audited):
            denied, removed = parts.decided(k)
            yield k, parts.audit_of(k), source.fee_lines(k, removed), denied, removed

    def settle(
        item: tuple[int, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame],
    ) -> tuple[int, SettledLines]:
        k, audit, fee_lines, denied, removed = item
        return k, settle_audit(
            audit,
            fee_lines,
            denied,
            removed,
            plan=header.plan,
            batch_id=header.batch_id,
            unmasked=unmasked,
        )

    for k, settled in one_ahead(read(), settle):
        parts.add_settled(k, settled)
    parts.forget_decisions()


def _stage_counts(header: BatchHeader, limit: int, wanted: int | None) -> tuple[int, int, int]:
    """How many parts of whole settlements and member buckets the batch runs in: from its fee
    lines and settlements and the memory limit, or ``wanted`` (``--buckets``) for both; and in
    how many groups of parts the cut goes first (:func:`buckets.cut_groups`)."""
    lines = buckets.estimated_fee_lines(header.fee_files or header.extract_files)
    n = wanted or buckets.bucket_count(lines, limit)
    if n == 1:
        return 1, 1, 1
    settlements = buckets.estimated_settlement_rows(header.extract_files)
    m = wanted or buckets.member_bucket_count(settlements, limit)
    return n, m, buckets.cut_groups(n, lines, settlements, limit)


def _adjudicate_members(
    facts: pl.DataFrame,
    roster: pl.DataFrame,
    ledger: Ledger | None,
    header: BatchHeader,
    unmasked: bool,
) -> tuple[MemberResult, Identity | None]:
    """A member bucket through the member stage; with a ledger, the bucket's prior state is
    read first and its ledger.before identity checked after."""
    costs = cost_ids(header.plan)
    prior = ledger.prior_for(facts, costs) if ledger is not None else None
    result = adjudicate_members(
        MemberBucket(facts, roster, prior),
        plan=header.plan,
        batch_id=header.batch_id,
        unmasked=unmasked,
    )
    if ledger is None or prior is None:
        return result, None
    return result, ledger_before_identity(ledger, result.payouts, prior, costs)


@dataclass(frozen=True)
class _Source:
    """Where the stages read a batch from: its parts of whole settlements, a part's fee lines
    again (those of the settlements the engine quarantined), each member bucket's roster."""

    shape: str
    enrolled: dict[int, int]
    line_parts: Callable[[], Iterator[tuple[int, LinePart]]]
    fee_lines: Callable[[int, pl.DataFrame], pl.DataFrame]
    roster: Callable[[int], pl.DataFrame]
    empty_part: Callable[[], LinePart]


def _source(
    inputs: BatchInputs,
    header: BatchHeader,
    ledger: Ledger | None,
    spill: Path,
    counts: tuple[int, int, int],
    clock: Laps,
    memory_limit: int,
) -> _Source:
    """The batch's inputs for the stages; ``counts``: see :func:`_stage_counts`.

    One part (n = 1): the extract read straight from the input files and the roster loaded
    whole, or, when the ledger has checked this roster file before (same SHA-256), only the
    rows of the batch's members. More: the inputs cut into the spill area first.
    """
    n, m, groups = counts
    cmap = dict(inputs.column_map or {})
    if n > 1:
        cut = buckets.cut_into_buckets(
            header.extract_files,
            header.fee_files,
            inputs.roster,
            n,
            m,
            spill / "buckets",
            column_map=cmap,
            encoding=inputs.encoding,
            timezone=inputs.timezone,
            rows_per_query=buckets.chunk_rows(memory_limit),
            groups=groups,
        )
        clock.lap("cut_into_parts")
        return _Source(
            cut.shape,
            cut.enrolled_by_year,
            cut.line_parts,
            cut.fee_lines,
            cut.roster,
            lambda: _empty_part(inputs, header, spill),
        )
    extract = _whole_extract(inputs, header, spill)
    settlements, fee_lines = pl.collect_all([extract.settlements, extract.fee_lines])
    digest = header.inputs["roster"][0]["sha256"]
    known = ledger is not None and ledger.knows_roster(digest)
    roster = load_roster(
        inputs.roster,
        cmap,
        inputs.encoding,
        members=settlements["psn_no"].drop_nulls().unique() if known else None,
        timezone=inputs.timezone,
        temp_dir=spill,
    )
    # the same roster file (same SHA-256) has the same members: no need to count them again
    enrolled = ledger.roster_enrolment(digest) if ledger is not None else None
    if enrolled is None:
        enrolled = enrolled_by_year(inputs.roster, cmap, inputs.encoding, temp_dir=spill)
    whole = LinePart(settlements, fee_lines)
    return _Source(
        extract.shape,
        enrolled,
        lambda: iter([(0, whole)]) if settlements.height or fee_lines.height else iter([]),
        lambda k, ids: fee_lines,
        lambda m: roster,
        lambda: whole,
    )


def _whole_extract(inputs: BatchInputs, header: BatchHeader, spill: Path) -> Extract:
    """The batch's extract as one lazy frame pair, straight from the input files."""
    return read_extract(
        header.extract_files,
        header.fee_files or None,
        column_map=dict(inputs.column_map or {}),
        encoding=inputs.encoding,
        timezone=inputs.timezone,
        temp_dir=spill,
    )


def _empty_part(inputs: BatchInputs, header: BatchHeader, spill: Path) -> LinePart:
    """An empty part with the batch's columns (a batch with no rows still writes its files)."""
    extract = _whole_extract(inputs, header, spill)
    settlements, fee_lines = pl.collect_all(
        [extract.settlements.clear(), extract.fee_lines.clear()]
    )
    return LinePart(settlements, fee_lines)


def _added_up(identities: list[Identity]) -> Identity:
    """One identity from the same identity of each bucket (their members are disjoint)."""
    return replace(
        identities[0],
        expected=sum(i.expected for i in identities),
        found=sum(i.found for i in identities),
        first=[f for i in identities for f in i.first][:SHOW],
    )


def _finish(
    ledger: Ledger | None,
    header: BatchHeader,
    summary: BatchSummary,
    recon: Reconciliation,
    payouts: pl.DataFrame | pl.LazyFrame,
    files: dict[str, bytes | Path],
    *,
    rows: Mapping[str, pl.DataFrame | str] | None,
    expected: AfterExpectation | None,
    latest: dt.datetime | None,
    started: dt.datetime,
    clock: Laps,
    before: list[dict[str, Any]] | None,
    out_dir: Path,
    target: _Target,
    buckets_used: int,
    unmasked: bool = False,
    districts: Mapping[str, str] | None = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """A batch's last steps: refuse it unless it reconciles, add
    the reconciliation and the reports to its files, apply it to the ledger (checked inside the
    commit; not on a dry run), then put its files in ``out_dir`` and write the manifest.

    ``files``: output name -> bytes, or a file assembled in the spill area (moved into place).
    ``rows``: the ledger rows (see :meth:`Ledger.apply`), None without a ledger.
    """
    ratios = loss_ratio_json(year_to_date_loss_ratios(header.plan, summary, before))
    files["reconciliation.json"] = reconciliation_json(recon, ratios)
    check_reconciled(recon, out_dir)
    clock.lap("reconcile")
    files.update(
        batch_report(
            header.plan,
            header.batch_id,
            payouts,
            summary,
            recon,
            before,
            dry_run=target.dry_run,
            districts=districts,
        )
    )
    clock.lap("report")
    after = None
    if ledger is not None and not target.dry_run:
        assert rows is not None
        digests = {name: ledger.archive.keep(content) for name, content in files.items()}
        record = _record(ledger, header, summary, started, latest, unmasked=unmasked)
        ledger.apply(
            record | {"out_dir": str(out_dir.resolve())},
            {**rows, "batch_files": file_rows(header.batch_id, digests)},
            crash_hook=crash_point,
            verify=verify_after(expected, cost_ids(header.plan), header.batch_id)
            if expected is not None
            else None,
        )
        clock.lap("ledger_commit")
        after = _ledger_state(ledger)
    out_folder.remove_other_outputs(out_dir, keep={*files, out_folder.MANIFEST})
    written = write_files({k: v for k, v in files.items() if isinstance(v, bytes)}, out_dir)
    written |= install_files({k: v for k, v in files.items() if isinstance(v, Path)}, out_dir)
    clock.lap("write_outputs")
    manifest = _manifest(header, summary, started, clock, before, after, target.status, target)
    manifest["loss_ratios"] = ratios
    manifest["buckets"] = buckets_used
    _write_manifest(manifest, out_dir)
    return written, manifest


def _replay(
    ledger: Ledger,
    record: BatchRecord,
    header: BatchHeader,
    target: _Target,
    started: dt.datetime,
    clock: Laps,
    before: list[dict[str, Any]] | None,
    unmasked: bool,
) -> BatchResult:
    """The same inputs were applied before: rewrite that batch's files, leave the ledger as is.

    The files come from the ledger's archive (or, for ledgers written before it, the ledger
    itself); a file missing from both is refused (the ledger is unchanged either way). How the
    files hold psn_name and certno is part of what they are: a replay asking otherwise than the
    first run (``--unmasked`` or not) is refused rather than writing what was not asked.
    """
    batch_id = record.batch_id
    summary = BatchSummary.from_json(ledger.batch_summary(batch_id))
    # named as the first run named it: the same batch, day and plan years
    out_dir = out_folder.resolve(
        target.template,
        batch_id=batch_id,
        day=(record.max_setl_time or record.started_at).date(),
        plan_years=sorted(summary.payout_by_plan_year_fen),
    )
    out_folder.refuse_other_batch(out_dir, batch_id, "replayed", force=target.force)
    recorded = ledger.batch_summary(batch_id).get(PERSONAL_DATA)
    asked = "unmasked" if unmasked else "masked"
    if recorded is not None and recorded != asked:
        how = "with" if recorded == "unmasked" else "without"
        raise LedgerError(
            f"batch {batch_id} with these inputs was applied before with psn_name and certno "
            f"{recorded} in its files, and this run asks for them {asked}: its files are "
            f"rewritten only as they were written. Run it {how} --unmasked; the ledger is "
            "unchanged"
        )
    stored = ledger.batch_files(batch_id)
    if "payouts.parquet" not in stored:
        # imported from a Spark run (hmb-batch ledger import): its datasets are folders that
        # stayed where that run wrote them, not files the ledger archived
        raise LedgerError(
            f"batch {batch_id} with these inputs was adjudicated on Spark and imported into "
            f"the ledger; its payouts, lines and quarantine are the datasets in "
            f"{record.out_dir or 'its folder'}: the ledger is unchanged and nothing was written"
        )
    kept = {k: v for k, v in stored.items() if isinstance(v, bytes)}
    archived: dict[str, Path] = {}
    for name, digest in stored.items():
        if isinstance(digest, str):
            found = ledger.archive.find(digest)
            if found is not None:
                archived[name] = found
                continue
            copy = out_dir / name
            if not (copy.exists() and file_hash(copy) == digest):
                raise LedgerError(
                    f"batch {batch_id} with these inputs was applied before, but its file "
                    f"{name} (SHA-256 {digest}) is missing from the ledger's archive "
                    f"{ledger.archive.root} or damaged, and {copy} is missing or different. "
                    "The ledger is unchanged; restore the archive from the ledger's backup"
                )
    out_folder.remove_other_outputs(out_dir, keep={*stored, out_folder.MANIFEST})
    files = write_files(kept, out_dir) | copy_files(archived, out_dir)
    files |= {file_key(k): out_dir / k for k in stored if k not in kept and k not in archived}
    manifest = _manifest(header, summary, started, clock, before, before, "replayed", target)
    manifest["loss_ratios"] = _first_loss_ratios(out_dir) or loss_ratio_json(
        year_to_date_loss_ratios(header.plan, summary, before, included=True)
    )
    _write_manifest(manifest, out_dir)
    return BatchResult(
        summary,
        files,
        pl.scan_parquet(files["payouts"]),
        pl.scan_parquet(files["quarantine"]),
        True,
        manifest,
        out_dir,
    )


def _first_loss_ratios(out_dir: Path) -> list[dict[str, Any]] | None:
    """The loss ratios a replayed batch's reconciliation.json recorded when it was applied (the
    year to date then, not now); None for a batch applied before they were recorded."""
    try:
        recorded = json.loads((out_dir / "reconciliation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ratios = recorded.get("loss_ratios") if isinstance(recorded, dict) else None
    return ratios if isinstance(ratios, list) else None


def require_roster_years(
    plan: PlanSelection, years: list[int] | set[int], enrolled: Mapping[int, int], roster: Path
) -> None:
    """Stop (exit 8, nothing applied) when the roster has nobody for a plan year the batch
    adjudicates: a header-only or wrong-year roster would deny every settlement NOT_ENROLLED,
    and those denials, once applied, would make the corrected re-run quarantine them all as
    duplicates. Years without an edition are left to NO_PLAN_EDITION."""
    empty = sorted(y for y in years if plan.for_year(y) is not None and not enrolled.get(y))
    if empty:
        raise ReferenceDataError(
            f"roster {roster} has no member for plan year(s) {', '.join(map(str, empty))}, "
            "which this batch adjudicates: every settlement would be denied NOT_ENROLLED. "
            "Nothing was applied; give the roster of those years"
        )


def order_mark(payouts: pl.DataFrame | pl.LazyFrame) -> dt.datetime | None:
    """The latest setl_time the batch applies: its adjudicated settlements' (denied and
    reversals included), never a quarantined one's — a quarantined row dated 2099 must not
    make every later night look out of order."""
    latest = payouts.lazy().select(pl.col("setl_time").max()).collect().item()
    return latest if isinstance(latest, dt.datetime) else None


def check_order(
    ledger: Ledger, batch_id: str, latest_here: dt.datetime | None, allow_out_of_order: bool
) -> None:
    newest = ledger.max_setl_time()
    if (
        not allow_out_of_order
        and newest is not None
        and latest_here is not None
        and latest_here < newest
    ):
        raise LedgerError(
            f"batch {batch_id} looks out of order: its latest settlement "
            f"({latest_here!s}) is earlier than the ledger's latest ({newest!s}). Run nightly "
            "extracts in order, or give --allow-out-of-order to take its settlements after "
            "everything already applied"
        )


def _record(
    ledger: Ledger,
    header: BatchHeader,
    summary: BatchSummary,
    started: dt.datetime,
    max_setl_time: dt.datetime | None,
    *,
    unmasked: bool,
) -> dict[str, Any]:
    return {
        "batch_id": header.batch_id,
        "seq": len(ledger.batches()) + 1,
        "batch_key": header.batch_key,
        "inputs": json.dumps(header.inputs, ensure_ascii=False),
        "editions": json.dumps(header.edition_hashes),
        "hmb_version": __version__,
        "started_at": started,
        "finished_at": dt.datetime.now(),
        "settlements_in": summary.settlements_in,
        "adjudicated": summary.adjudicated,
        "quarantined": summary.quarantined,
        "total_payout_fen": summary.total_payout_fen,
        "max_setl_time": max_setl_time,
        "summary": json.dumps(
            summary.to_json() | {PERSONAL_DATA: "unmasked" if unmasked else "masked"},
            ensure_ascii=False,
        ),
    }


def check_balanced(s: BatchSummary) -> None:
    """Refuse to apply a batch whose settlements are not all accounted for."""
    if not s.balanced:
        raise ReconciliationError(
            f"batch {s.batch_id} does not balance: {s.settlements_in:,} settlement rows in, but "
            f"{s.adjudicated:,} adjudicated + {s.quarantined:,} quarantined + "
            f"{s.identical_repeats:,} identical repeats = "
            f"{s.adjudicated + s.quarantined + s.identical_repeats:,}; nothing was applied"
        )


def check_reconciled(recon: Reconciliation, out_dir: Path) -> None:
    """Refuse a batch any of whose identities fails (exit 6), leaving reconciliation.json (and
    nothing else) in ``out_dir`` for the people who must find out why."""
    failed = recon.failures()
    if failed:
        write_files({"reconciliation.json": reconciliation_json(recon)}, out_dir)
        raise ReconciliationError(
            refusal(recon.batch_id, failed) + f"\n(all identities: {out_dir}/reconciliation.json)"
        )


def _unique_batch_id(ledger: Ledger, header: BatchHeader, *, explicit: bool) -> BatchHeader:
    """Keep batch ids unique: an explicit id in use is refused; a derived id in use (the same
    inputs applied, then reverted) gets a ``-rN`` suffix, so the reverted record stays."""
    taken = {b.batch_id for b in ledger.batches()}
    if header.batch_id not in taken:
        return header
    if explicit:
        raise LedgerError(
            f"batch id {header.batch_id} is already in the ledger with other inputs; "
            "give another --batch-id"
        )
    n = 2
    while f"{header.batch_id}-r{n}" in taken:
        n += 1
    return replace(header, batch_id=f"{header.batch_id}-r{n}")


def _manifest(
    header: BatchHeader,
    summary: BatchSummary,
    started: dt.datetime,
    clock: Laps,
    before: list[dict[str, Any]] | None,
    after: list[dict[str, Any]] | None,
    status: str,
    target: _Target,
) -> dict[str, Any]:
    """manifest.json: who the batch is, what it read, what it did to the ledger.

    ``status``: applied | replayed | dry_run (adjudicated against the ledger, nothing applied)
    | no_ledger; ``ledger revert`` later sets it to reverted.
    """
    used = set(summary.editions)
    # a scenario's edition (--set) is named by its id and hash like any other; what was changed,
    # from which edition, is kept beside them (absent when no scenario was used)
    variants = {
        e.id: e.edition.variant.model_dump(mode="json")
        for e in header.plan.editions
        if e.id in used and e.edition.variant is not None
    }
    return {
        "batch_id": header.batch_id,
        "batch_key": header.batch_key,
        "status": status,
        "dry_run": target.dry_run,
        "replayed": status == "replayed",
        "hmb_version": __version__,
        "ledger": str(target.ledger.resolve()) if target.ledger is not None else None,
        "inputs": header.inputs,
        # only the editions the batch's plan years used, with the hashes that name them
        "editions": {k: v for k, v in header.edition_hashes.items() if k in used},
        **({"scenarios": variants} if variants else {}),
        "ledger_before": before,
        "ledger_after": after,
        "rerun": target.rerun,
        "counts": summary.to_json(),
        "started_at": started.isoformat(timespec="seconds"),
        "timings_seconds": clock.laps,
        "peak_rss_mib": clock.peak_mib,
        "elapsed_seconds": round(time.monotonic() - clock.start, 3),
    }


def _write_manifest(manifest: dict[str, Any], out_dir: Path) -> None:
    write_files(
        {"manifest.json": json.dumps(manifest, ensure_ascii=False, indent=2, default=str).encode()},
        out_dir,
    )
