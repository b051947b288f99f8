"""A new ledger holding another ledger's state as of an earlier batch or date.

:func:`copy_as_of` is how ``replay`` rebuilds the year to date a past batch ran on, and how a
what-if (``simulate --from-ledger``) starts from production's state without touching it.

The source is only read: it is attached read-only (DuckDB's shared lock: it is never migrated,
checkpointed or written; a write-ahead log left beside it is read, not replayed into it), so its
file stays the same to the byte. Its writer lock ``PATH.lock`` is taken for the copy, as the
inspection commands take it, so a nightly batch started meanwhile waits (``--wait``) instead of
failing on DuckDB's own lock; a lock file that cannot be created (a read-only folder) is done
without. The copy is made in SQL, table to table between the two attached databases: nothing
goes through Python rows, so a province's ledger costs what DuckDB's scans cost.

**What "as of" keeps.** A cutoff ``C`` in the batches' application order (``seq``): the copy
holds every batch record with ``seq < C``, as the ledger held them when batch ``C`` was about
to run — the batches then in effect ``applied`` with their registry rows (settlements, costs,
responsibilities), accumulator log, payout history and file digests; batches reverted before
``C`` ran as ``reverted`` records with their log and payout history (marked reverted), as a
revert leaves them. ``member_state`` is recomputed from the log: each member, plan year and
cost's ``after_fen`` of the latest batch in effect. ``member_keys`` keeps the keys of the
members those batches recorded. The next batch applied to the copy therefore gets ``seq = C``
and reads the year to date batch ``C`` read.

A batch in effect when ``C`` ran but reverted since has lost its registry rows (a revert removes
them): that state cannot be rebuilt and is refused, naming the batch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from hmb_batch.ledger.store import (
    _WRITE_WORDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    FileArchive,
    LedgerBusy,
    LedgerDamaged,
    LedgerError,
    LedgerMissing,
    LedgerUnwritable,
    _cause,
    _expected_columns,
    _lock,
    _quote,
    ledger_failure,
    open_ledger,
)

__all__ = ["BatchFacts", "LedgerCopy", "batch_facts", "copy_as_of", "parse_as_of"]

# how often a copy retries DuckDB's own lock, held by a program other than hmb-batch
_LOCK_RETRY_SECONDS = 0.2


@dataclass(frozen=True)
class LedgerCopy:
    """What :func:`copy_as_of` made."""

    path: Path
    before_seq: int  # the copy holds the batch records with seq < before_seq
    applied: tuple[str, ...]  # ids of the batches in effect in the copy, in order
    reverted: tuple[str, ...]  # ids of the batches kept as reverted records
    files_linked: int  # archived output files linked (or copied) into PATH.files/


def parse_as_of(text: str) -> str | dt.date:
    """``--as-of`` as given: an ISO date (``2022-03-01``) is a date, anything else a batch id."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return text


def copy_as_of(
    source: Path,
    target: Path,
    *,
    before: int | str | None = None,
    after: str | None = None,
    through: dt.date | None = None,
    wait: float = 30.0,
    files: bool = True,
    memory_limit: int | None = None,
) -> LedgerCopy:
    """Create the ledger ``target`` holding ``source``'s state as of a point in its history.

    Give one of:

    - ``before``: a batch id, or a ``seq``: the state just before that batch ran (every batch
      with a lower ``seq``). A ``seq`` one past the last batch means the state now; so
      ``before=batch.seq + 1`` is the state just after ``batch``.
    - ``after``: a batch id: the state just after that batch (``before`` its ``seq`` + 1); the
      batch must still be applied (a reverted batch's registry rows are gone).
    - ``through``: a date: the batches applied, in order, until the first applied batch whose
      latest settlement (``max_setl_time``) falls after that date. The cutoff is a point in the
      application order, found from the date: a batch applied later with older settlements
      (``--allow-out-of-order``) is not taken.

    ``target`` must not exist (nor ``target.wal`` or a non-empty ``target.files/``). ``files``:
    hard-link (copy, across file systems) the archived output files of the batches kept into
    the copy's archive; without, the archive is left empty, and re-running one of those batches'
    inputs on the copy (the idempotent rewrite of its files) is refused for want of its files.
    ``memory_limit`` (bytes) bounds DuckDB during the copy (it spills to ``target.tmp``).

    The source is read only, its bytes never change (see the module). It must be of this
    hmb-batch's schema version (an older one is refused: upgrading it would change it).
    Errors: :class:`LedgerMissing` (exit 3), :class:`LedgerBusy` (exit 7: a run holds it past
    ``wait`` seconds), :class:`LedgerError` / :class:`LedgerDamaged` (exit 9).
    """
    if sum(x is not None for x in (before, after, through)) != 1:
        raise ValueError("give exactly one of before=, after= and through=")
    if not source.is_file():
        raise LedgerMissing(source)
    _refuse_existing(target)
    point = f"before {before}" if before is not None else f"after {after or through}"
    holder = f"copy of the ledger {point}, pid {os.getpid()}"
    with _read_lock(source, wait, holder):
        made: list[Path] = []
        try:
            copy = _copy(source, target, (before, after, through), wait, files, memory_limit, made)
        except BaseException:
            _remove(made)
            raise
    # the copy opens as any ledger does: schema version and every table and column checked
    with open_ledger(copy.path, wait=wait, upgrade=False):
        pass
    return copy


def _refuse_existing(target: Path) -> None:
    archive = FileArchive(target).root
    for existing in (target, target.with_name(target.name + ".wal")):
        if existing.exists() or existing.is_symlink():
            raise LedgerError(
                f"{existing} already exists: a copy of a ledger is always a new file; give a "
                "path that does not exist"
            )
    if archive.exists() and (not archive.is_dir() or any(archive.iterdir())):
        raise LedgerError(f"{archive} already exists and is not empty: give another path")


@contextlib.contextmanager
def _read_lock(source: Path, wait: float, holder: str) -> Iterator[None]:
    """The source's writer lock, if its lock file can be opened at all (a read-only folder:
    DuckDB's own shared lock still keeps writers out while the copy reads)."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(LedgerUnwritable):
            stack.enter_context(_lock(source, wait, holder))
        yield


def _attach_source(con: duckdb.DuckDBPyConnection, source: Path, wait: float) -> None:
    """Attach ``source`` read-only as ``src``, waiting ``wait`` seconds for a program that
    holds DuckDB's own lock on it (a DuckDB shell open on it for writing)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            con.execute(f"ATTACH {_quote(str(source))} AS src (READ_ONLY)")
            return
        except duckdb.Error as exc:
            failure = ledger_failure(source, exc)
            if not isinstance(failure, LedgerBusy):
                raise failure from exc
            if time.monotonic() >= deadline:
                raise LedgerBusy(
                    f"ledger {source} is open for writing in another program ({_cause(exc)}); "
                    f"waited {wait:g} s (--wait)"
                ) from None
            time.sleep(_LOCK_RETRY_SECONDS)


@dataclass(frozen=True)
class _Batch:
    seq: int
    batch_id: str
    status: str
    started_at: dt.datetime | None
    reverted_at: dt.datetime | None
    max_setl_time: dt.datetime | None


def _cutoff(
    batches: list[_Batch], before: int | str | None, after: str | None, through: dt.date | None
) -> int:
    """The ``seq`` the copy stops before (see :func:`copy_as_of`)."""
    last = batches[-1].seq if batches else 0
    if after is not None:
        named = next((b for b in batches if b.batch_id == after), None)
        if named is None:
            raise LedgerError(
                f"no batch has the id {after}; `hmb-batch ledger batches` lists the batch ids"
            )
        if named.status != "applied":
            raise LedgerError(
                f"batch {after} has been reverted: a revert removes a batch's registry rows, so "
                f"the ledger as it was just after {after} cannot be rebuilt (the state before "
                "it can)"
            )
        return named.seq + 1
    if through is not None:
        later = [
            b.seq
            for b in batches
            if b.status == "applied"
            and b.max_setl_time is not None
            and b.max_setl_time.date() > through
        ]
        return min(later, default=last + 1)
    if isinstance(before, int):
        if not 1 <= before <= last + 1:
            raise LedgerError(
                f"no batch has seq {before}: the ledger's batches run from 1 to {last} "
                f"(give {last + 1} for its state now)"
            )
        return before
    found = next((b for b in batches if b.batch_id == before), None)
    if found is None:
        raise LedgerError(
            f"no batch has the id {before}; `hmb-batch ledger batches` lists the batch ids"
        )
    return found.seq


def _in_effect(batches: list[_Batch], cutoff: int) -> tuple[list[str], list[str]]:
    """The batches before ``cutoff`` in effect when it ran, and those reverted by then.

    A batch reverted now was reverted before ``cutoff`` ran when a batch after it (up to
    ``cutoff`` itself) is applied now — reverts go newest first, so that batch could only be
    applied once it was gone — or when its revert is older than ``cutoff``'s start. Otherwise
    it was in effect then and its registry rows are gone: refused.
    """
    by_seq = {b.seq: b for b in batches}
    reference = by_seq.get(cutoff)
    applied: list[str] = []
    reverted: list[str] = []
    for b in batches:
        if b.seq >= cutoff:
            break
        if b.status == "applied":
            applied.append(b.batch_id)
            continue
        later_applied = any(
            by_seq[s].status == "applied" for s in range(b.seq + 1, cutoff + 1) if s in by_seq
        )
        reverted_earlier = (
            reference is not None
            and b.reverted_at is not None
            and reference.started_at is not None
            and b.reverted_at < reference.started_at
        )
        if reference is None or later_applied or reverted_earlier:
            reverted.append(b.batch_id)
            continue
        raise LedgerError(
            f"batch {b.batch_id} was in effect when batch {reference.batch_id} ran, and has "
            "been reverted since (or its revert time is not recorded): a revert removes a "
            f"batch's registry rows, so the ledger as it was before {reference.batch_id} "
            "cannot be rebuilt"
        )
    return applied, reverted


def _copy(
    source: Path,
    target: Path,
    point: tuple[int | str | None, str | None, dt.date | None],
    wait: float,
    files: bool,
    memory_limit: int | None,
    made: list[Path],
) -> LedgerCopy:
    target.parent.mkdir(parents=True, exist_ok=True)
    made += [target, target.with_name(target.name + ".wal")]
    try:
        con = duckdb.connect(str(target))
    except duckdb.Error as exc:
        raise ledger_failure(target, exc) from exc
    try:
        con.execute("SET enable_progress_bar = false")
        if memory_limit is not None:
            con.execute(f"SET memory_limit = '{max(memory_limit >> 20, 64)}MiB'")
        _attach_source(con, source, wait)
        try:
            _check_source(con, source)
            batches = [
                _Batch(*r)
                for r in con.execute(
                    "SELECT seq, batch_id, status, started_at, reverted_at, max_setl_time "
                    "FROM src.batches ORDER BY seq"
                ).fetchall()
            ]
            cutoff = _cutoff(batches, *point)
            applied, reverted = _in_effect(batches, cutoff)
            _copy_tables(con, cutoff, applied)
            digests = [
                str(r[0])
                for r in con.execute(
                    "SELECT DISTINCT sha256 FROM main.batch_files WHERE sha256 IS NOT NULL"
                ).fetchall()
            ]
        except duckdb.Error as exc:
            raise _failure(source, target, exc) from exc
    finally:
        try:
            con.close()
        except duckdb.Error as exc:
            raise ledger_failure(target, exc) from exc
    linked = _link_archive(source, target, digests, made) if files else 0
    return LedgerCopy(target, cutoff, tuple(applied), tuple(reverted), linked)


def _failure(source: Path, target: Path, exc: duckdb.Error) -> Exception:
    """A DuckDB error during the copy: writing the copy failed, or reading the source."""
    if any(words in str(exc) for words in _WRITE_WORDS):
        return LedgerUnwritable(target, _cause(exc), "Nothing was copied")
    return ledger_failure(source, exc)


def _check_source(con: duckdb.DuckDBPyConnection, source: Path) -> None:
    """The source is a ledger of this schema version with every table and column."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src'"
        ).fetchall()
    }
    rows = (
        con.execute("SELECT value FROM src.meta WHERE key = 'schema_version'").fetchall()
        if "meta" in tables
        else []
    )
    try:
        version = int(rows[0][0]) if rows else 0
    except ValueError:
        version = 0
    if version == 0:
        raise LedgerDamaged(source, "it has no schema version (or it is not an hmb-batch ledger)")
    if version != SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {source} has schema version {version} and this hmb-batch copies ledgers "
            f"of version {SCHEMA_VERSION} only (a copy reads its source without changing it, "
            "so it does not upgrade it). "
            + (
                f"Run `hmb-batch ledger status --ledger {source}` once to upgrade it (back it "
                "up first if an older hmb-batch must still read it)"
                if version < SCHEMA_VERSION
                else "Upgrade hmb-batch"
            )
        )
    found = set(
        con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = 'src' AND schema_name = 'main'"
        ).fetchall()
    )
    missing = sorted(_expected_columns() - found)
    if missing:
        table, column, data_type = missing[0]
        raise LedgerDamaged(source, f"its table {table} has no column {column} of type {data_type}")


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> str:
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = $t ORDER BY column_index",
        {"t": table},
    ).fetchall()
    return ", ".join(f'"{r[0]}"' for r in rows)


def _copy_tables(con: duckdb.DuckDBPyConnection, cutoff: int, applied: list[str]) -> None:
    """Create the schema in the target and fill it from ``src`` (see the module)."""
    for v in range(1, SCHEMA_VERSION + 1):
        for ddl in MIGRATIONS[v]:
            con.execute(ddl)
    con.execute("BEGIN TRANSACTION")
    con.execute(
        "CREATE TEMP TABLE kept AS SELECT batch_id, seq, status = 'applied' AS in_effect "
        "FROM src.batches WHERE seq < $c",
        {"c": cutoff},
    )
    # the rows of the batches in effect: the registry holds no other batch's rows (a revert
    # removed them), so the registry of a later batch is what is left out. Whichever side is
    # smaller is the one joined on: early in the year the batches kept, late the batches not
    counts = con.execute(
        "SELECT count(*) FILTER (WHERE k.batch_id IS NOT NULL), "
        "count(*) FILTER (WHERE k.batch_id IS NULL) "
        "FROM src.settlements s LEFT JOIN kept k USING (batch_id)"
    ).fetchall()
    kept_rows, other_rows = counts[0]
    if kept_rows <= other_rows:
        registry = (
            "SEMI JOIN (SELECT setl_id FROM src.settlements SEMI JOIN kept USING (batch_id)) "
            "USING (setl_id)"
        )
    else:
        registry = (
            "ANTI JOIN (SELECT setl_id FROM src.settlements ANTI JOIN kept USING (batch_id)) "
            "USING (setl_id)"
        )
    fills = {
        "meta": "SELECT {cols} FROM src.meta",
        "batches": "SELECT {cols} FROM src.batches WHERE seq < $c ORDER BY seq",
        "settlements": "SELECT {cols} FROM src.settlements SEMI JOIN kept USING (batch_id)",
        "settlement_costs": "SELECT {cols} FROM src.settlement_costs " + registry,
        "settlement_responsibilities": (
            "SELECT {cols} FROM src.settlement_responsibilities " + registry
        ),
        "accumulator_log": "SELECT {cols} FROM src.accumulator_log SEMI JOIN kept USING (batch_id)",
        "payout_history": "SELECT {cols} FROM src.payout_history SEMI JOIN kept USING (batch_id)",
        "batch_files": "SELECT {cols} FROM src.batch_files SEMI JOIN kept USING (batch_id)",
        # keys are never reused or removed: those of the members the kept batches recorded
        "member_keys": (
            "SELECT {cols} FROM src.member_keys SEMI JOIN (SELECT psn_no FROM src.payout_history "
            "SEMI JOIN kept USING (batch_id)) USING (psn_no) ORDER BY member_key"
        ),
        # the year to date as the batches in effect left it: the latest after_fen of each key,
        # as migration 6 first filled it
        "member_state": """
            SELECT l.psn_no, l.plan_year, l.cost, arg_max(l.after_fen, k.seq)
            FROM src.accumulator_log l JOIN kept k USING (batch_id)
            WHERE k.in_effect
            GROUP BY l.psn_no, l.plan_year, l.cost
            ORDER BY l.plan_year, l.psn_no, l.cost""",
    }
    try:
        for table, select in fills.items():
            cols = _columns(con, table)
            params = {"c": cutoff} if "$c" in select else None
            con.execute(f"INSERT INTO main.{table} ({cols}) " + select.format(cols=cols), params)
        found = con.execute(
            "SELECT count(DISTINCT batch_id) FROM main.settlements WHERE batch_id NOT IN "
            "(SELECT unnest($a::VARCHAR[]))",
            {"a": applied},
        ).fetchall()
        if found[0][0]:  # a reverted batch's registry rows: the source is not what a ledger is
            raise LedgerError("the source ledger holds registry rows of a reverted batch")
        con.execute("DROP TABLE kept")
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    con.execute("CHECKPOINT")


def _link_archive(source: Path, target: Path, digests: list[str], made: list[Path]) -> int:
    """Put the kept batches' archived files into the copy's archive: a hard link where the file
    system allows it (archived files are read-only and named by their content, so sharing them
    is safe), else a copy. A file missing from the source's archive is missing from the copy's
    too, as it was."""
    src, dst = FileArchive(source), FileArchive(target)
    if not dst.root.exists():
        made.append(dst.root)
    linked = 0
    for digest in digests:
        found = src.path_of(digest)
        if not found.is_file():
            continue
        to = dst.path_of(digest)
        try:
            to.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(found, to)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(found, to)
                to.chmod(0o444)
        except OSError as exc:
            raise LedgerUnwritable(
                target, f"its file archive {dst.root}: {exc.strerror}", "Nothing was copied"
            ) from exc
        linked += 1
    return linked


def _remove(paths: list[Path]) -> None:
    """Undo a copy that failed: what it made, nothing else."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


@dataclass(frozen=True)
class BatchFacts:
    """What a ledger recorded about one batch (see :func:`batch_facts`)."""

    batch_id: str
    seq: int
    status: str  # applied | reverted
    batch_key: str
    inputs: dict[str, Any]  # kind -> [{path, sha256}]
    editions: dict[str, str]  # every edition of the plan it ran under -> hash
    summary: dict[str, Any]
    files: dict[str, str | None]  # output file name -> SHA-256 (None: kept in the ledger)


def batch_facts(source: Path, batch_id: str, *, wait: float = 30.0) -> BatchFacts:
    """A batch's record in ``source``, read as :func:`copy_as_of` reads (read-only, under the
    lock file if it can be had, waiting for DuckDB's own lock): :class:`LedgerError` if no batch
    has this id."""
    if not source.is_file():
        raise LedgerMissing(source)
    with _read_lock(source, wait, f"replay reading batch {batch_id}, pid {os.getpid()}"):
        con = duckdb.connect(":memory:")
        try:
            _attach_source(con, source, wait)
            try:
                _check_source(con, source)
                rows = con.execute(
                    "SELECT batch_id, seq, status, batch_key, inputs::VARCHAR, "
                    "editions::VARCHAR, summary::VARCHAR FROM src.batches WHERE batch_id = $b",
                    {"b": batch_id},
                ).fetchall()
                files = con.execute(
                    "SELECT name, sha256 FROM src.batch_files WHERE batch_id = $b", {"b": batch_id}
                ).fetchall()
            except duckdb.Error as exc:
                raise ledger_failure(source, exc) from exc
        finally:
            con.close()
    if not rows:
        raise LedgerError(
            f"the ledger {source} has no batch {batch_id}: is it the ledger the batch was applied "
            "to? (give it with --ledger)"
        )
    b, seq, status, key, inputs, editions, summary = rows[0]
    return BatchFacts(
        b,
        int(seq),
        status,
        key,
        json.loads(inputs or "{}"),
        json.loads(editions or "{}"),
        json.loads(summary or "{}"),
        {str(name): digest for name, digest in files},
    )
