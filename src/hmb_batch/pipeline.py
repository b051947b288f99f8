"""One batch end to end: read, validate, adjudicate, apply to the ledger, write.

This is the orchestration edge: it does I/O and calls the pure core (validation, engine). The CLI
calls :func:`run_batch` and renders what it returns.

With a ledger, the order is: take the writer lock; if the same inputs (content hashes) under the
same plan editions were applied before, rewrite that batch's files from the ledger and stop;
otherwise read the touched members' year to date, adjudicate, commit everything in one
transaction, and only then write the output files (temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__, partitioned
from hmb_batch.balancing import (
    AfterExpectation,
    PartitionAudit,
    ledger_before_identity,
    reconciliation_json,
    reconciliation_of,
    refusal,
    verify_after,
)
from hmb_batch.engine import PriorState, cost_ids, plan_years
from hmb_batch.errors import (
    ConfigError,
    InputUnreadable,
    OutputUnwritable,
    ReconciliationError,
    ReferenceDataError,
)
from hmb_batch.extract import read_extract
from hmb_batch.ledger import Ledger, LedgerError, batch_rows, file_rows, open_ledger
from hmb_batch.money import fen_to_yuan
from hmb_batch.outputs import lines_frame, masked_personal, payouts_frame, to_text_frame
from hmb_batch.plan.catalog import PlanSelection, select_plan
from hmb_batch.reconcile import Reconciliation, batch_totals
from hmb_batch.reference import enrolled_by_year, load_lists, load_roster
from hmb_batch.reporting import batch_report
from hmb_batch.stages import CheckedFrames, check_extract, run_engine
from hmb_batch.summary import BatchSummary, summarise

CRASH_ENV = "HMB_TEST_CRASH_AT"  # test hook: SIGKILL this process at a named stage


def _crash_point(stage: str) -> None:
    """Kill the process at ``stage`` when the test hook asks for it (crash-safety tests)."""
    if os.environ.get(CRASH_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class BatchInputs:
    """Everything a batch reads."""

    extract: Path | str
    fees: Path | str | None
    roster: Path
    lists: Path
    plan: str
    encoding: str = "utf-8"
    column_map: Mapping[str, str] | None = None
    batch_id: str | None = None
    timezone: str = "Asia/Shanghai"  # of time-zone-aware Parquet timestamps (hmb.toml)


@dataclass(frozen=True)
class BatchResult:
    """What a batch did and wrote."""

    summary: BatchSummary
    files: dict[str, Path]
    payouts: pl.LazyFrame  # the payout file's rows (bounded-memory runs: scanned from it)
    quarantine: pl.LazyFrame
    replayed: bool = False  # the same batch was applied before: files rewritten, ledger unchanged
    manifest: dict[str, Any] = field(default_factory=dict)


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


def describe_batch(inputs: BatchInputs, spill: Path | None = None) -> BatchHeader:
    """Read the lists, choose the plan, hash every input file: the batch's identity.

    ``spill``: the run's spill folder, where temporary copies of inputs go (see
    :func:`spill_area`).
    """
    cmap = inputs.column_map
    lists = load_lists(
        inputs.lists, cmap, inputs.encoding, timezone=inputs.timezone, temp_dir=spill
    )
    plan = select_plan(inputs.plan, sorted(lists["list"].unique().to_list()))
    extract_files = expand_inputs(inputs.extract)
    fee_files = expand_inputs(inputs.fees) if inputs.fees is not None else []
    described = {
        "extract": [{"path": str(p), "sha256": file_hash(p)} for p in extract_files],
        "fees": [{"path": str(p), "sha256": file_hash(p)} for p in fee_files],
        "roster": [{"path": str(inputs.roster), "sha256": file_hash(inputs.roster)}],
        "lists": [{"path": str(inputs.lists), "sha256": file_hash(inputs.lists)}],
    }
    edition_hashes = {
        e.id: hashlib.sha256(e.edition.model_dump_json().encode()).hexdigest()
        for e in plan.editions
    }
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


@dataclass(frozen=True)
class PreparedBatch:
    """A batch read and validated, before the engine: everything in memory, typed."""

    header: BatchHeader
    roster: pl.DataFrame
    checked: CheckedFrames
    shape: str

    @property
    def batch_id(self) -> str:
        """The batch id (derived from the inputs unless given)."""
        return self.header.batch_id


def prepare_batch(
    inputs: BatchInputs,
    header: BatchHeader | None = None,
    *,
    roster_checked: bool = False,
    spill: Path | None = None,
) -> PreparedBatch:
    """Read reference data, choose the plan, read and validate the extract (in memory).

    ``roster_checked``: the roster file was checked whole by an earlier batch (same SHA-256), so
    only the rows of this batch's members are read and checked. ``spill``: see
    :func:`describe_batch`.
    """
    header = header or describe_batch(inputs, spill)
    extract = read_extract(
        header.extract_files,
        header.fee_files or None,
        column_map=inputs.column_map,
        encoding=inputs.encoding,
        timezone=inputs.timezone,
        temp_dir=spill,
    )
    checked = check_extract(extract, header.batch_id)
    members = checked.settlements["psn_no"].unique() if roster_checked else None
    roster = load_roster(
        inputs.roster,
        inputs.column_map,
        inputs.encoding,
        members=members,
        timezone=inputs.timezone,
        temp_dir=spill,
    )
    _crash_point("read")
    return PreparedBatch(header, roster, checked, extract.shape)


@dataclass(frozen=True)
class Adjudicated:
    """The engine's results for a prepared batch, collected, and the output files as bytes."""

    payouts: pl.DataFrame  # engine frame, fen
    quarantine: pl.DataFrame
    summary: BatchSummary
    files: dict[str, bytes]
    payout_file: pl.DataFrame
    costs: list[str]
    lines: pl.DataFrame  # the engine's fee-line audit, fen


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def covered_years(plan: PlanSelection, years: list[int]) -> None:
    """Refuse a batch none of whose plan years the plan covers (exit 5)."""
    uncovered = [y for y in years if plan.for_year(y) is None]
    if uncovered and len(uncovered) == len(years):
        raise ConfigError(
            f"plan {plan.label} has no edition for plan year(s) {uncovered} "
            f"(it covers {plan.years}); give --plan with an edition id or file to apply one "
            "edition to every year"
        )


def adjudicate_prepared(
    batch: PreparedBatch, prior: PriorState | None, *, csv: bool, unmasked: bool = False
) -> Adjudicated:
    """Run the engine on a prepared batch and render the output files in memory."""
    plan = batch.header.plan
    years = plan_years(batch.checked.settlements, prior)
    covered_years(plan, years)
    done = run_engine(
        batch.batch_id, plan, batch.checked, batch.roster, batch.header.lists, prior, years
    )
    _crash_point("compute")
    c = batch.checked
    summary = summarise(
        batch_id=batch.batch_id,
        editions=editions_used(plan, years),
        shape=batch.shape,
        settlements_in=c.settlements_in,
        fee_lines_in=c.fee_lines_in,
        identical_repeats=c.identical_repeats,
        repeated_fee_lines=c.repeated_fee_lines,
        payouts=done.payouts,
        quarantine=done.quarantine,
    )
    payout_file = payouts_frame(done.payouts, done.costs, done.responsibilities, unmasked=unmasked)
    files = {
        "payouts.parquet": _parquet_bytes(payout_file),
        "quarantine.parquet": _parquet_bytes(masked_personal(done.quarantine, unmasked=unmasked)),
        "lines.parquet": _parquet_bytes(lines_frame(done.lines)),
    }
    if csv:
        buf = io.BytesIO()
        to_text_frame(payout_file).write_csv(buf)
        files["payouts.csv"] = buf.getvalue()
    return Adjudicated(
        done.payouts, done.quarantine, summary, files, payout_file, done.costs, done.lines
    )


def reconcile_prepared(
    batch: PreparedBatch,
    done: Adjudicated,
    prior: PriorState | None,
    accumulator_log: pl.DataFrame | None,
) -> Reconciliation:
    """The identities of an in-memory batch (see :mod:`hmb_batch.reconcile`)."""
    totals = batch_totals(
        plan=batch.header.plan,
        line_sums=batch.checked.line_sums,
        fee_lines=batch.checked.fee_lines.lazy(),
        settlements=batch.checked.settlements.lazy(),
        roster=batch.roster.lazy(),
        payouts=done.payouts.lazy(),
        audit=done.lines.lazy(),
        quarantine=done.quarantine.lazy(),
        prior=prior,
        accumulator_log=accumulator_log.lazy() if accumulator_log is not None else None,
        costs=done.costs,
    )
    return reconciliation_of(batch.batch_id, totals, done.summary, accumulator_log is not None)


def editions_used(plan: PlanSelection, years: list[int]) -> list[str]:
    """The ids of the editions that apply to ``years``."""
    return sorted({e.id for y in years if (e := plan.for_year(y)) is not None})


def write_files(files: dict[str, bytes], out_dir: Path) -> dict[str, Path]:
    """Write output files atomically (temporary name in the same folder, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in files.items():
        target = out_dir / name
        tmp = out_dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(content)
        _crash_point("outputs")
        os.replace(tmp, target)
        written[_file_key(name)] = target
    return written


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
    out_dir: Path,
    *,
    csv: bool = False,
    ledger_path: Path | None = None,
    wait: float = 30.0,
    allow_out_of_order: bool = False,
    memory_limit: int | None = None,
    partitions: int | None = None,
    unmasked: bool = False,
    progress: Callable[[str, float], None] | None = None,
) -> BatchResult:
    """Adjudicate one batch, apply it to the ledger (if any), write its files into ``out_dir``.

    ``memory_limit`` (bytes): a batch that would not fit is run in partitions
    (:mod:`hmb_batch.partitioned`); ``partitions`` forces a number of partitions. ``unmasked``:
    the payout files carry psn_name and certno in full. ``progress`` is told each stage as it
    ends, with its seconds.
    """
    started = dt.datetime.now()
    opened: contextlib.AbstractContextManager[Ledger | None] = (
        open_ledger(ledger_path, wait=wait, holder=f"batch of {inputs.extract}, pid {os.getpid()}")
        if ledger_path is not None
        else contextlib.nullcontext()
    )
    with spill_area(out_dir) as spill, _Laps(progress) as clock, opened as ledger:
        if ledger is not None and memory_limit is not None:
            ledger.limit_memory(partitioned.duckdb_share(memory_limit))
        clock.lap("lock")
        header = describe_batch(inputs, spill)
        before = _ledger_state(ledger) if ledger is not None else None
        if ledger is not None:
            existing = ledger.find_batch(batch_key=header.batch_key)
            if existing is not None:
                return _replay(
                    ledger, existing.batch_id, header, out_dir, started, clock, before, unmasked
                )
            header = _unique_batch_id(ledger, header, explicit=inputs.batch_id is not None)
        n = partitions or 1
        if partitions is None and memory_limit is not None:
            n = partitioned.partitions_for(
                partitioned.estimated_fee_lines(header.fee_files or header.extract_files),
                memory_limit,
            )
        if n > 1:
            return _run_partitioned(
                inputs,
                header,
                ledger,
                out_dir,
                spill,
                n,
                csv=csv,
                allow_out_of_order=allow_out_of_order,
                memory_limit=memory_limit,
                unmasked=unmasked,
                started=started,
                clock=clock,
                before=before,
            )
        roster_digest = header.inputs["roster"][0]["sha256"]
        roster_checked = ledger is not None and ledger.knows_roster(roster_digest)
        # the same roster file (same SHA-256) has the same members: no need to count them again
        enrolled = ledger.roster_enrolment(roster_digest) if ledger is not None else None
        batch = prepare_batch(inputs, header, roster_checked=roster_checked, spill=spill)
        if enrolled is None:
            enrolled = enrolled_by_year(
                inputs.roster, inputs.column_map, inputs.encoding, temp_dir=spill
            )
        clock.lap("read_and_validate")
        settlements = batch.checked.settlements
        require_roster_years(
            header.plan,
            plan_years(settlements.filter(~pl.col("is_reversal")), None),
            enrolled,
            inputs.roster,
        )
        latest: dt.datetime | None = (
            settlements["setl_time"].max() if settlements.height else None  # type: ignore[assignment]
        )
        prior = None
        if ledger is not None:
            _check_order(ledger, header.batch_id, latest, allow_out_of_order)
            prior = ledger.prior_for(settlements, cost_ids(header.plan))
            clock.lap("ledger_read")
        done = adjudicate_prepared(batch, prior, csv=csv, unmasked=unmasked)
        done = replace(
            done,
            summary=replace(
                done.summary,
                enrolled_by_plan_year=enrolled,
            ),
        )
        clock.lap("adjudicate")
        _check_balanced(done.summary)
        new_rows = (
            batch_rows(header.batch_id, done.payouts, prior.accumulators.collect(), done.costs)
            if ledger is not None and prior is not None
            else None
        )
        recon = reconcile_prepared(
            batch, done, prior, new_rows["accumulator_log"] if new_rows else None
        )
        if ledger is not None and prior is not None:
            recon = recon.with_identities(
                [ledger_before_identity(ledger, done.payouts, prior, done.costs)]
            )
        files, manifest = _finish(
            ledger,
            header,
            done.summary,
            recon,
            done.payouts,
            dict(done.files),
            rows=new_rows,
            expected=AfterExpectation.of(done.payouts, prior, done.costs)
            if prior is not None
            else None,
            latest=order_mark(done.payouts),
            started=started,
            clock=clock,
            before=before,
            out_dir=out_dir,
            unmasked=unmasked,
        )
        return BatchResult(
            done.summary, files, done.payout_file.lazy(), done.quarantine.lazy(), False, manifest
        )


def _run_partitioned(
    inputs: BatchInputs,
    header: BatchHeader,
    ledger: Ledger | None,
    out_dir: Path,
    spill: Path,
    n: int,
    *,
    csv: bool,
    allow_out_of_order: bool,
    memory_limit: int | None,
    unmasked: bool,
    started: dt.datetime,
    clock: _Laps,
    before: list[dict[str, Any]] | None,
) -> BatchResult:
    """:func:`run_batch` for a batch in ``n`` partitions, through files in ``spill`` (see
    :func:`spill_area`); the ledger's archive holds the output files from before the commit, so
    a retry after a kill (a replay) takes them from it.
    """
    staged = partitioned.stage_batch(
        header.batch_id,
        header.extract_files,
        header.fee_files,
        inputs.roster,
        n,
        spill,
        column_map=dict(inputs.column_map or {}),
        encoding=inputs.encoding,
        timezone=inputs.timezone,
    )
    _crash_point("read")
    clock.lap("read_and_validate")
    require_roster_years(header.plan, staged.claim_years, staged.enrolled_by_year, inputs.roster)
    if ledger is not None:
        _check_order(ledger, header.batch_id, staged.max_setl_time, allow_out_of_order)
    costs = cost_ids(header.plan)

    def prior_for(settlements: pl.DataFrame) -> PriorState | None:
        return ledger.prior_for(settlements, costs) if ledger is not None else None

    audit = PartitionAudit(header.plan, ledger)
    outcome = partitioned.adjudicate_partitions(
        staged,
        batch_id=header.batch_id,
        plan=header.plan,
        lists=header.lists,
        prior_for=prior_for,
        with_ledger=ledger is not None,
        csv=csv,
        memory_limit=memory_limit or partitioned.RUNTIME_BYTES * 2,
        unmasked=unmasked,
        on_partition=audit,
        lap=clock.lap,
    )
    covered_years(header.plan, outcome.years)
    _crash_point("compute")
    clock.lap("assemble_outputs")
    summary = summarise(
        batch_id=header.batch_id,
        editions=editions_used(header.plan, outcome.years),
        shape=staged.shape,
        settlements_in=staged.settlements_in,
        fee_lines_in=staged.fee_lines_in,
        identical_repeats=staged.identical_repeats,
        repeated_fee_lines=staged.repeated_fee_lines,
        payouts=outcome.payouts,
        quarantine=outcome.quarantine,
    )
    summary = replace(summary, enrolled_by_plan_year=staged.enrolled_by_year)
    _check_balanced(summary)
    recon = audit.reconciliation(header.batch_id, staged, outcome.quarantine, summary)
    files, manifest = _finish(
        ledger,
        header,
        summary,
        recon,
        outcome.payouts,
        dict(outcome.files),
        rows=outcome.ledger_rows,
        expected=AfterExpectation.combine(audit.after) if audit.after else None,
        latest=order_mark(outcome.payouts),
        started=started,
        clock=clock,
        before=before,
        out_dir=out_dir,
        partitions=n,
        unmasked=unmasked,
    )
    return BatchResult(
        summary,
        files,
        pl.scan_parquet(files["payouts"]),
        pl.scan_parquet(files["quarantine"]),
        False,
        manifest,
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
    clock: _Laps,
    before: list[dict[str, Any]] | None,
    out_dir: Path,
    partitions: int | None = None,
    unmasked: bool = False,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """A batch's last steps, in memory or in partitions: refuse it unless it reconciles, add
    the reconciliation and the reports to its files, apply it to the ledger (checked inside the
    commit), then put its files in ``out_dir`` and write the manifest.

    ``files``: output name -> bytes, or a file assembled in the spill folder (moved into place).
    ``rows``: the ledger rows (see :meth:`Ledger.apply`), None without a ledger.
    """
    files["reconciliation.json"] = reconciliation_json(recon)
    _check_reconciled(recon, out_dir)
    clock.lap("reconcile")
    files.update(batch_report(header.plan, header.batch_id, payouts, summary, recon, before))
    clock.lap("report")
    after = None
    if ledger is not None:
        assert rows is not None
        digests = {name: ledger.archive.keep(content) for name, content in files.items()}
        ledger.apply(
            _record(ledger, header, summary, started, latest, unmasked=unmasked),
            {**rows, "batch_files": file_rows(header.batch_id, digests)},
            crash_hook=_crash_point,
            verify=verify_after(expected, cost_ids(header.plan), header.batch_id)
            if expected is not None
            else None,
        )
        clock.lap("ledger_commit")
        after = _ledger_state(ledger)
    written = write_files({k: v for k, v in files.items() if isinstance(v, bytes)}, out_dir)
    written |= install_files({k: v for k, v in files.items() if isinstance(v, Path)}, out_dir)
    clock.lap("write_outputs")
    manifest = _manifest(header, summary, started, clock, before, after, replayed=False)
    if partitions is not None:
        manifest["partitions"] = partitions
    _write_manifest(manifest, out_dir)
    return written, manifest


SPILL_PREFIX = ".hmb-spill-"
PERSONAL_DATA = "personal_data"  # the batch record's summary: "masked" or "unmasked" files


@contextlib.contextmanager
def spill_area(out_dir: Path) -> Iterator[Path]:
    """This run's temporary folder, ``.hmb-spill-PID`` inside the output folder, removed at the
    end whatever happens; spill folders of runs that are gone (killed) are removed first.

    Every temporary copy of input data (a GBK file's UTF-8 copy, partition files) lives here,
    never in the system's temp folder, so personal data a killed run left behind is found and
    removed by the next run of any kind in that folder. Creating it is also the check that the
    output folder can be written, before anything is read or applied (exit 3).
    """
    _remove_stale_spills(out_dir)
    spill = out_dir / f"{SPILL_PREFIX}{os.getpid()}"
    created = not out_dir.exists()
    try:
        shutil.rmtree(spill, ignore_errors=True)
        spill.mkdir(parents=True)
        probe = spill / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputUnwritable(
            f"the output folder {out_dir} cannot be written ({exc.strerror or exc}); "
            "nothing was read or applied. Give --out a folder this user can write"
        ) from None
    try:
        yield spill
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        if created:  # a run that wrote nothing (refused early) leaves no empty folder behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()


def _remove_stale_spills(out_dir: Path) -> None:
    """Remove spill folders of runs that are gone (killed)."""
    if not out_dir.is_dir():
        return
    for folder in out_dir.glob(f"{SPILL_PREFIX}*"):
        pid = folder.name.removeprefix(SPILL_PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_files(files: Mapping[str, Path], out_dir: Path) -> dict[str, Path]:
    """Copy files into ``out_dir`` under the given names, atomically (see :func:`write_files`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in files.items():
        target = out_dir / name
        tmp = out_dir / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        _crash_point("outputs")
        os.replace(tmp, target)
        written[_file_key(name)] = target
    return written


def _file_key(name: str) -> str:
    stem, _, ext = name.partition(".")
    return stem + (f"_{ext}" if ext in ("csv", "md") else "")


def install_files(staged: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    """Move files assembled in the spill folder (same file system) into place, atomically."""
    written = {}
    for name, path in staged.items():
        target = out_dir / name
        _crash_point("outputs")
        os.replace(path, target)
        written[_file_key(name)] = target
    return written


def _replay(
    ledger: Ledger,
    batch_id: str,
    header: BatchHeader,
    out_dir: Path,
    started: dt.datetime,
    clock: _Laps,
    before: list[dict[str, Any]] | None,
    unmasked: bool,
) -> BatchResult:
    """The same inputs were applied before: rewrite that batch's files, leave the ledger as is.

    The files come from the ledger's archive (or, for ledgers written before it, the ledger
    itself); a file missing from both is refused (the ledger is unchanged either way). How the
    files hold psn_name and certno is part of what they are: a replay asking otherwise than the
    first run (``--unmasked`` or not) is refused rather than writing what was not asked.
    """
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
    kept = {k: v for k, v in stored.items() if isinstance(v, bytes)}
    archived: dict[str, Path] = {}
    for name, digest in stored.items():
        if isinstance(digest, str):
            found = ledger.archive.find(digest)
            if found is not None:
                archived[name] = found
                continue
            target = out_dir / name
            if not (target.exists() and file_hash(target) == digest):
                raise LedgerError(
                    f"batch {batch_id} with these inputs was applied before, but its file "
                    f"{name} (SHA-256 {digest}) is missing from the ledger's archive "
                    f"{ledger.archive.root} or damaged, and {target} is missing or different. "
                    "The ledger is unchanged; restore the archive from the ledger's backup"
                )
    files = write_files(kept, out_dir) | copy_files(archived, out_dir)
    files |= {_file_key(k): out_dir / k for k in stored if k not in kept and k not in archived}
    summary = BatchSummary.from_json(ledger.batch_summary(batch_id))
    manifest = _manifest(header, summary, started, clock, before, before, replayed=True)
    _write_manifest(manifest, out_dir)
    return BatchResult(
        summary,
        files,
        pl.scan_parquet(files["payouts"]),
        pl.scan_parquet(files["quarantine"]),
        True,
        manifest,
    )


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


def _check_order(
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


class _Laps:
    """Wall-clock seconds and peak resident memory per stage, for the manifest (and a progress
    display): which stage to look at when a run is slow or near its memory limit.

    A stage's peak: where the process's high-water mark (Linux VmHWM) rose during the stage,
    that mark — exact; otherwise the largest resident size a sampling thread saw (every 50 ms).
    The high-water mark itself is never reset, so tools that read it from outside (``time``,
    ``ru_maxrss``) still see the run's peak. Elsewhere than Linux: the peak so far
    (``ru_maxrss``). Use as a context manager (the sampling thread stops at its end).
    """

    def __init__(self, progress: Callable[[str, float], None] | None = None) -> None:
        self.start = self.last = time.monotonic()
        self.laps: dict[str, float] = {}
        self.peak_mib: dict[str, int] = {}
        self.progress = progress
        self._high_water = _high_water_mark()
        self._seen = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        if self._high_water is not None:
            self._sampler = threading.Thread(target=self._sample, name="hmb-rss", daemon=True)
            self._sampler.start()

    def __enter__(self) -> _Laps:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._seen = max(self._seen, _resident())

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 3)
        self.last = now
        high = _high_water_mark()
        if high is None:
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        else:
            assert self._high_water is not None
            peak = high if high > self._high_water else max(self._seen, _resident())
            self._high_water, self._seen = high, 0
        self.peak_mib[name] = peak // partitioned.MiB
        if self.progress is not None:
            self.progress(name, self.laps[name])


def _high_water_mark() -> int | None:
    """The process's peak resident memory in bytes (Linux VmHWM), None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _resident() -> int:
    """The process's resident memory in bytes now (Linux)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _check_balanced(s: BatchSummary) -> None:
    """Refuse to apply a batch whose settlements are not all accounted for."""
    if not s.balanced:
        raise ReconciliationError(
            f"batch {s.batch_id} does not balance: {s.settlements_in:,} settlement rows in, but "
            f"{s.adjudicated:,} adjudicated + {s.quarantined:,} quarantined + "
            f"{s.identical_repeats:,} identical repeats = "
            f"{s.adjudicated + s.quarantined + s.identical_repeats:,}; nothing was applied"
        )


def _check_reconciled(recon: Reconciliation, out_dir: Path) -> None:
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
    clock: _Laps,
    before: list[dict[str, Any]] | None,
    after: list[dict[str, Any]] | None,
    *,
    replayed: bool,
) -> dict[str, Any]:
    return {
        "batch_id": header.batch_id,
        "batch_key": header.batch_key,
        "replayed": replayed,
        "hmb_version": __version__,
        "inputs": header.inputs,
        "editions": header.edition_hashes,
        "ledger_before": before,
        "ledger_after": after,
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
