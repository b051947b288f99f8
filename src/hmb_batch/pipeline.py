"""One batch end to end: read, validate, adjudicate, apply to the ledger, write.

This is the orchestration edge: it does I/O and calls the pure core (validation, engine). The CLI
calls :func:`run_batch` and renders what it returns.

With a ledger, the order is: take the writer lock; if the same inputs (content hashes) under the
same plan editions were applied before, rewrite that batch's files from the ledger and stop;
otherwise read the touched members' year to date, adjudicate, commit everything in one
transaction, and only then write the output files (temporary name, then rename).
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import io
import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__
from hmb_batch.engine import PriorState, adjudicate, cost_ids, plan_years
from hmb_batch.errors import ConfigError, InputUnreadable, ReconciliationError
from hmb_batch.extract import read_extract
from hmb_batch.ledger import Ledger, LedgerError, open_ledger
from hmb_batch.money import fen_to_yuan
from hmb_batch.outputs import lines_frame, payouts_frame, to_text_frame
from hmb_batch.plan.catalog import PlanSelection, select_plan
from hmb_batch.reference import load_lists, load_roster
from hmb_batch.summary import BatchSummary, summarise
from hmb_batch.validation import DETAIL, REASONS, quarantine_frame, validate

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


@dataclass(frozen=True)
class BatchResult:
    """What a batch did and wrote."""

    summary: BatchSummary
    files: dict[str, Path]
    payouts: pl.DataFrame
    quarantine: pl.DataFrame
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
class PreparedBatch:
    """A batch read and validated, before the engine: everything in memory, typed."""

    batch_id: str
    batch_key: str
    inputs: dict[str, list[dict[str, str]]]
    plan: PlanSelection
    edition_hashes: dict[str, str]
    roster: pl.DataFrame
    lists: pl.DataFrame
    settlements: pl.DataFrame
    fee_lines: pl.DataFrame
    validation_quarantine: pl.DataFrame
    shape: str
    settlements_in: int
    fee_lines_in: int
    identical_repeats: int
    repeated_fee_lines: int


def prepare_batch(inputs: BatchInputs) -> PreparedBatch:
    """Read reference data, choose the plan, read and validate the extract."""
    cmap = inputs.column_map
    roster = load_roster(inputs.roster, cmap, inputs.encoding)
    lists = load_lists(inputs.lists, cmap, inputs.encoding)
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

    extract = read_extract(
        extract_files, fee_files or None, column_map=cmap, encoding=inputs.encoding
    )
    _crash_point("read")
    # Parse the files once; validation and the engine then work on the typed frames in memory.
    # (Bounded-memory streaming for province-scale extracts is issue 5.)
    typed_settlements, typed_lines = pl.collect_all([extract.settlements, extract.fee_lines])
    extract = replace(extract, settlements=typed_settlements.lazy(), fee_lines=typed_lines.lazy())
    checked = validate(extract, materialize=_collected)
    settlements, fee_lines, quarantine, counts = pl.collect_all(
        [
            checked.settlements.with_columns(
                pl.lit(0, pl.Int64).alias("batch_seq"), pl.lit(batch_id).alias("batch_id")
            ),
            checked.fee_lines.with_columns(pl.lit(0, pl.Int64).alias("batch_seq")),
            checked.quarantine,
            pl.concat(
                [
                    checked.repeats.select(pl.col("dropped").sum().cast(pl.Int64).alias("n")),
                    checked.repeated_lines.select(
                        pl.col("dropped").sum().cast(pl.Int64).alias("n")
                    ),
                ]
            ),
        ]
    )
    n_repeats, n_repeated_lines = (int(x or 0) for x in counts["n"].to_list())
    return PreparedBatch(
        batch_id=batch_id,
        batch_key=batch_key,
        inputs=described,
        plan=plan,
        edition_hashes=edition_hashes,
        roster=roster,
        lists=lists,
        settlements=settlements,
        fee_lines=fee_lines,
        validation_quarantine=quarantine,
        shape=extract.shape,
        settlements_in=typed_settlements.height,
        fee_lines_in=typed_lines.height,
        identical_repeats=n_repeats,
        repeated_fee_lines=n_repeated_lines,
    )


def _collected(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    return [f.lazy() for f in pl.collect_all(frames)]


@dataclass(frozen=True)
class Adjudicated:
    """The engine's results for a prepared batch, collected, and the output files as bytes."""

    payouts: pl.DataFrame  # engine frame, fen
    quarantine: pl.DataFrame
    summary: BatchSummary
    files: dict[str, bytes]
    payout_file: pl.DataFrame
    costs: list[str]


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def adjudicate_prepared(
    batch: PreparedBatch, prior: PriorState | None, *, csv: bool
) -> Adjudicated:
    """Run the engine on a prepared batch and render the output files in memory."""
    plan = batch.plan
    years = plan_years(batch.settlements, prior)
    uncovered = [y for y in years if plan.for_year(y) is None]
    if uncovered and len(uncovered) == len(years):
        raise ConfigError(
            f"plan {plan.label} has no edition for plan year(s) {uncovered} "
            f"(it covers {plan.years}); give --plan with an edition id or file to apply one "
            "edition to every year"
        )
    result = adjudicate(
        batch.settlements.lazy(),
        batch.fee_lines.lazy(),
        batch.roster.lazy(),
        batch.lists.lazy(),
        plan,
        prior,
        years=years,
        materialize=_collected,
    )
    payouts, engine_q, lines_audit = pl.collect_all(
        [result.payouts, result.quarantine, result.lines]
    )
    _crash_point("compute")
    quarantine = pl.concat(
        [
            batch.validation_quarantine,
            quarantine_frame(
                engine_q.lazy(),
                batch.fee_lines.lazy().join(
                    engine_q.lazy().select("setl_id", REASONS, DETAIL), on="setl_id", how="inner"
                ),
            ).collect(),
        ],
        how="diagonal_relaxed",
    ).with_columns(pl.lit(batch.batch_id).alias("batch_id"))
    summary = summarise(
        batch_id=batch.batch_id,
        editions=sorted({e.id for y in years if (e := plan.for_year(y)) is not None}),
        shape=batch.shape,
        settlements_in=batch.settlements_in,
        fee_lines_in=batch.fee_lines_in,
        identical_repeats=batch.identical_repeats,
        repeated_fee_lines=batch.repeated_fee_lines,
        payouts=payouts,
        quarantine=quarantine,
    )
    payout_file = payouts_frame(payouts, result.costs, result.responsibilities)
    files = {
        "payouts.parquet": _parquet_bytes(payout_file),
        "quarantine.parquet": _parquet_bytes(quarantine),
        "lines.parquet": _parquet_bytes(lines_frame(lines_audit)),
    }
    if csv:
        buf = io.BytesIO()
        to_text_frame(payout_file).write_csv(buf)
        files["payouts.csv"] = buf.getvalue()
    return Adjudicated(payouts, quarantine, summary, files, payout_file, result.costs)


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
        written[name.split(".")[0] + ("_csv" if name.endswith(".csv") else "")] = target
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
) -> BatchResult:
    """Adjudicate one batch, apply it to the ledger (if any), write its files into ``out_dir``."""
    started = dt.datetime.now()
    clock = _Laps()
    if ledger_path is None:
        batch = prepare_batch(inputs)
        clock.lap("read_and_validate")
        done = adjudicate_prepared(batch, None, csv=csv)
        clock.lap("adjudicate")
        _check_balanced(done.summary)
        files = write_files(done.files, out_dir)
        clock.lap("write_outputs")
        manifest = _manifest(batch, done.summary, started, clock, None, None, replayed=False)
        _write_manifest(manifest, out_dir)
        return BatchResult(done.summary, files, done.payout_file, done.quarantine, False, manifest)

    with open_ledger(
        ledger_path, wait=wait, holder=f"batch of {inputs.extract}, pid {os.getpid()}"
    ) as ledger:
        clock.lap("lock")
        batch = prepare_batch(inputs)
        clock.lap("read_and_validate")
        before = _ledger_state(ledger)
        existing = ledger.find_batch(batch_key=batch.batch_key)
        if existing is not None:
            stored = ledger.batch_files(existing.batch_id)
            files = write_files(stored, out_dir)
            payout_file = pl.read_parquet(io.BytesIO(stored["payouts.parquet"]))
            quarantine = pl.read_parquet(io.BytesIO(stored["quarantine.parquet"]))
            summary = BatchSummary.from_json(ledger.batch_summary(existing.batch_id))
            manifest = _manifest(batch, summary, started, clock, before, before, replayed=True)
            _write_manifest(manifest, out_dir)
            return BatchResult(summary, files, payout_file, quarantine, True, manifest)
        batch = _unique_batch_id(ledger, batch, explicit=inputs.batch_id is not None)
        newest = ledger.max_setl_time()
        latest_here = batch.settlements["setl_time"].max() if batch.settlements.height else None
        if (
            not allow_out_of_order
            and newest is not None
            and latest_here is not None
            and latest_here < newest  # type: ignore[operator]
        ):
            raise LedgerError(
                f"batch {batch.batch_id} looks out of order: its latest settlement "
                f"({latest_here!s}) is earlier than the ledger's latest ({newest!s}). Run nightly "
                "extracts in order, or give --allow-out-of-order to take its settlements after "
                "everything already applied"
            )
        prior = ledger.prior_for(batch.settlements, cost_ids(batch.plan))
        clock.lap("ledger_read")
        done = adjudicate_prepared(batch, prior, csv=csv)
        clock.lap("adjudicate")
        seq = len(ledger.batches()) + 1
        record = {
            "batch_id": batch.batch_id,
            "seq": seq,
            "batch_key": batch.batch_key,
            "inputs": json.dumps(batch.inputs, ensure_ascii=False),
            "editions": json.dumps(batch.edition_hashes),
            "hmb_version": __version__,
            "started_at": started,
            "finished_at": dt.datetime.now(),
            "settlements_in": done.summary.settlements_in,
            "adjudicated": done.summary.adjudicated,
            "quarantined": done.summary.quarantined,
            "total_payout_fen": done.summary.total_payout_fen,
            "max_setl_time": done.payouts["setl_time"].max() if done.payouts.height else None,
            "summary": json.dumps(done.summary.to_json(), ensure_ascii=False),
        }
        _check_balanced(done.summary)
        ledger.apply(record, done.payouts, prior, done.costs, done.files, crash_hook=_crash_point)
        clock.lap("ledger_commit")
        after = _ledger_state(ledger)
        files = write_files(done.files, out_dir)
        clock.lap("write_outputs")
        manifest = _manifest(batch, done.summary, started, clock, before, after, replayed=False)
        _write_manifest(manifest, out_dir)
        return BatchResult(done.summary, files, done.payout_file, done.quarantine, False, manifest)


class _Laps:
    """Wall-clock seconds per stage, for the manifest."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 3)
        self.last = now


def _check_balanced(s: BatchSummary) -> None:
    """Refuse to apply a batch whose settlements are not all accounted for."""
    if not s.balanced:
        raise ReconciliationError(
            f"batch {s.batch_id} does not balance: {s.settlements_in:,} settlement rows in, but "
            f"{s.adjudicated:,} adjudicated + {s.quarantined:,} quarantined + "
            f"{s.identical_repeats:,} identical repeats = "
            f"{s.adjudicated + s.quarantined + s.identical_repeats:,}; nothing was applied"
        )


def _unique_batch_id(ledger: Ledger, batch: PreparedBatch, *, explicit: bool) -> PreparedBatch:
    """Keep batch ids unique: an explicit id in use is refused; a derived id in use (the same
    inputs applied, then reverted) gets a ``-rN`` suffix, so the reverted record stays."""
    taken = {b.batch_id for b in ledger.batches()}
    if batch.batch_id not in taken:
        return batch
    if explicit:
        raise LedgerError(
            f"batch id {batch.batch_id} is already in the ledger with other inputs; "
            "give another --batch-id"
        )
    n = 2
    while f"{batch.batch_id}-r{n}" in taken:
        n += 1
    new_id = f"{batch.batch_id}-r{n}"
    return replace(
        batch,
        batch_id=new_id,
        settlements=batch.settlements.with_columns(pl.lit(new_id).alias("batch_id")),
    )


def _manifest(
    batch: PreparedBatch,
    summary: BatchSummary,
    started: dt.datetime,
    clock: _Laps,
    before: list[dict[str, Any]] | None,
    after: list[dict[str, Any]] | None,
    *,
    replayed: bool,
) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        "batch_key": batch.batch_key,
        "replayed": replayed,
        "hmb_version": __version__,
        "inputs": batch.inputs,
        "editions": batch.edition_hashes,
        "ledger_before": before,
        "ledger_after": after,
        "counts": summary.to_json(),
        "started_at": started.isoformat(timespec="seconds"),
        "timings_seconds": clock.laps,
        "elapsed_seconds": round(time.monotonic() - clock.start, 3),
    }


def _write_manifest(manifest: dict[str, Any], out_dir: Path) -> None:
    write_files(
        {"manifest.json": json.dumps(manifest, ensure_ascii=False, indent=2, default=str).encode()},
        out_dir,
    )
