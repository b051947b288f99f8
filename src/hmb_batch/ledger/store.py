"""The ledger: an embedded DuckDB file holding the year to date between nightly batches.

Tables (schema version 7; analysts may open the file with DuckDB and query them):

``meta``             key/value: ``schema_version``.
``batches``          one row per batch: ``batch_id``, ``seq`` (application order), ``batch_key``
                     (hash of every input file's content and every plan edition used),
                     ``inputs`` and ``editions`` (JSON with their hashes), ``hmb_version``,
                     ``started_at``, ``finished_at``, ``status`` (``applied`` | ``reverted``),
                     counts, ``total_payout_fen``, ``max_setl_time``, ``summary`` (JSON).
``settlements``      the registry of adjudicated settlements (denied included): status, reasons,
                     member, plan year, edition, payable/payout and year-to-date after it, in fen;
                     med_type, district and hospital (for reports from the ledger alone).
``settlement_costs`` each settlement's increment of each cost (e.g. compliant, reasonable) and the
                     year to date after it, in fen, with the settlement's member and plan year
                     and ``member_key`` (a night reads its members' increments from this table
                     alone, joined by the integer key).
``member_keys``      psn_no and ``member_key``: a dense integer per member ever recorded (kept
                     when a batch is reverted), for integer joins over the year's cost rows.
``settlement_responsibilities`` each settlement's payable and payout per responsibility (责任) and
                     the responsibility's year to date after it, in fen.
``accumulator_log``  per batch, each touched accumulator before and after, in fen.
``member_state``     the current year to date: one row per member, plan year and cost that an
                     applied batch accumulated, ``amount_fen`` (the latest ``after_fen`` of the
                     applied batches).
``accumulators``     (a view of ``member_state``) psn_no, plan_year, cost, amount_fen.
``payout_history``   every payout ever decided, per batch; ``reverted`` marks undone batches.
``batch_files``      the output files each batch wrote: name and SHA-256 (the bytes are in the
                     file archive beside the ledger, ``PATH.files/``, so a retry rewrites them
                     identically; ledgers written before it kept them in ``content``).

Money is BIGINT fen. A batch is applied in one transaction; a process killed at any moment leaves
the ledger as before the batch or as after it. The ledger is append-only (a revert marks its batch
``reverted`` and removes that batch's registry rows) except ``member_state``, which the batch's
transaction updates in place from its accumulator log rows (a revert restores it from the log):
appends keep DuckDB's checkpoints cheap, where primary-key indexes made every nightly commit
rewrite most of the file; ``member_state`` has no index and is the size of the year's
member-years, so a night reads its members' year to date without scanning the year's log.
Uniqueness of ``setl_id`` is checked inside each batch's transaction instead.
Output files live outside the DuckDB file on purpose: DuckDB rewrites a table's last row group
at each checkpoint, and a BLOB column holding every night's files made each nightly commit
rewrite the whole history of files (1.3 s and growing after 47 nights of a 2M-member year).

One writer at a time: a lock file beside the ledger (``PATH.lock``) is held for the whole run; a
second run waits, then fails naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl
import pyarrow.parquet as pq

from hmb_batch.errors import ConfigError, ExitCode, HmbError
from hmb_batch.rules.engine import (
    HEADER_FEN,
    MEMBER_YEAR,
    RESPONSIBILITY_VALUES,
    PriorState,
    cum,
    inc,
)
from hmb_batch.rules.validation import IS_REVERSAL

SCHEMA_VERSION = 8

MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR)",
        """CREATE TABLE batches(
            batch_id VARCHAR PRIMARY KEY, seq INTEGER NOT NULL, batch_key VARCHAR NOT NULL,
            inputs JSON, editions JSON, hmb_version VARCHAR,
            started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR NOT NULL,
            settlements_in BIGINT, adjudicated BIGINT, quarantined BIGINT,
            total_payout_fen BIGINT, max_setl_time TIMESTAMP, summary JSON)""",
        """CREATE TABLE settlements(
            setl_id VARCHAR NOT NULL, batch_id VARCHAR NOT NULL, psn_no VARCHAR NOT NULL,
            plan_year INTEGER NOT NULL, status VARCHAR NOT NULL, reasons VARCHAR[],
            is_reversal BOOLEAN NOT NULL, init_setl_id VARCHAR, setl_time TIMESTAMP,
            edition VARCHAR, payable_fen BIGINT, payout_fen BIGINT,
            cum_payable_fen BIGINT, cum_payout_fen BIGINT)""",
        """CREATE TABLE settlement_costs(
            setl_id VARCHAR NOT NULL, cost VARCHAR NOT NULL, increment_fen BIGINT NOT NULL,
            cum_fen BIGINT NOT NULL)""",
        """CREATE TABLE accumulator_log(
            batch_id VARCHAR NOT NULL, psn_no VARCHAR NOT NULL, plan_year INTEGER NOT NULL,
            cost VARCHAR NOT NULL, before_fen BIGINT, after_fen BIGINT NOT NULL)""",
        """CREATE TABLE payout_history(
            batch_id VARCHAR NOT NULL, setl_id VARCHAR NOT NULL, psn_no VARCHAR NOT NULL,
            plan_year INTEGER NOT NULL, status VARCHAR NOT NULL, payout_fen BIGINT NOT NULL,
            reverted BOOLEAN NOT NULL DEFAULT FALSE)""",
        """CREATE TABLE batch_files(
            batch_id VARCHAR NOT NULL, name VARCHAR NOT NULL, content BLOB NOT NULL)""",
        """CREATE VIEW accumulators AS
            SELECT l.psn_no, l.plan_year, l.cost, arg_max(l.after_fen, b.seq) AS amount_fen
            FROM accumulator_log l JOIN batches b USING (batch_id)
            WHERE b.status = 'applied'
            GROUP BY l.psn_no, l.plan_year, l.cost""",
    ],
    # bounded-memory batches keep their output files' digests, not their bytes
    2: [
        "ALTER TABLE batch_files ADD COLUMN sha256 VARCHAR",
        "ALTER TABLE batch_files ALTER COLUMN content DROP NOT NULL",
    ],
    # reports from the ledger alone: where each settlement was treated
    3: [
        "ALTER TABLE settlements ADD COLUMN med_type VARCHAR",
        "ALTER TABLE settlements ADD COLUMN insu_admdvs VARCHAR",
        "ALTER TABLE settlements ADD COLUMN fixmedins_code VARCHAR",
        "ALTER TABLE settlements ADD COLUMN fixmedins_name VARCHAR",
    ],
    # each responsibility's payable and payout per settlement, and its year to date after it
    4: [
        """CREATE TABLE settlement_responsibilities(
            setl_id VARCHAR NOT NULL, responsibility VARCHAR NOT NULL,
            payable_fen BIGINT NOT NULL, payout_fen BIGINT NOT NULL,
            cum_payable_fen BIGINT NOT NULL, cum_payout_fen BIGINT NOT NULL)""",
    ],
    # a settlement's header amounts (fen, contract order): a later reversal must negate them
    5: ["ALTER TABLE settlements ADD COLUMN header_fen BIGINT[]"],
    # each member's current year to date, so a night reads O(batch) rows, not the year's log;
    # filled from the log as the accumulators view defined it, then the view reads it
    6: [
        """CREATE TABLE member_state(
            psn_no VARCHAR NOT NULL, plan_year INTEGER NOT NULL, cost VARCHAR NOT NULL,
            amount_fen BIGINT NOT NULL)""",
        """INSERT INTO member_state
            SELECT l.psn_no, l.plan_year, l.cost, arg_max(l.after_fen, b.seq)
            FROM accumulator_log l JOIN batches b USING (batch_id)
            WHERE b.status = 'applied'
            GROUP BY l.psn_no, l.plan_year, l.cost
            ORDER BY l.plan_year, l.psn_no, l.cost""",
        """CREATE OR REPLACE VIEW accumulators AS
            SELECT psn_no, plan_year, cost, amount_fen FROM member_state""",
    ],
    # each cost row names its member and plan year, and carries the member's key: a dense
    # integer from member_keys (one row per member ever recorded, never removed), so a night
    # finds its members' cost rows by an integer join instead of a string join over the
    # year's rows. The table is rebuilt (not altered and updated) so the copy is one pass
    # over each table, its rows kept in their order
    7: [
        """CREATE TABLE member_keys(
            psn_no VARCHAR NOT NULL, member_key INTEGER NOT NULL)""",
        """INSERT INTO member_keys
            SELECT psn_no, row_number() OVER (ORDER BY psn_no)
            FROM (SELECT DISTINCT psn_no FROM settlements)""",
        """CREATE TABLE settlement_costs_v7(
            setl_id VARCHAR NOT NULL, cost VARCHAR NOT NULL, increment_fen BIGINT NOT NULL,
            cum_fen BIGINT NOT NULL, psn_no VARCHAR, plan_year INTEGER, member_key INTEGER)""",
        """INSERT INTO settlement_costs_v7
            SELECT c.setl_id, c.cost, c.increment_fen, c.cum_fen, s.psn_no, s.plan_year,
                   k.member_key
            FROM settlement_costs c LEFT JOIN settlements s USING (setl_id)
                 LEFT JOIN member_keys k USING (psn_no)
            ORDER BY c.rowid""",
        "DROP TABLE settlement_costs",
        "ALTER TABLE settlement_costs_v7 RENAME TO settlement_costs",
    ],
    # where a batch's files went (a revert marks that folder), and who reverted it, when, why
    8: [
        "ALTER TABLE batches ADD COLUMN out_dir VARCHAR",
        "ALTER TABLE batches ADD COLUMN reverted_at TIMESTAMP",
        "ALTER TABLE batches ADD COLUMN reverted_by VARCHAR",
        "ALTER TABLE batches ADD COLUMN revert_reason VARCHAR",
    ],
}

# The batch's accumulator_log rows ({log}: a registered frame or read_parquet) become its
# members' current state. MERGE updates in place: keeping one row per key keeps the table the
# size of the year's member-years, so every night's reads of it cost the same.
_APPLY_STATE = """
    MERGE INTO member_state AS m
    USING (SELECT psn_no, plan_year, cost, after_fen FROM {log}) AS l
    ON m.psn_no = l.psn_no AND m.plan_year = l.plan_year AND m.cost = l.cost
    WHEN MATCHED THEN UPDATE SET amount_fen = l.after_fen
    WHEN NOT MATCHED THEN INSERT (psn_no, plan_year, cost, amount_fen)
        VALUES (l.psn_no, l.plan_year, l.cost, l.after_fen)
"""

# Back to the state before batch $b, the latest applied one: its before_fen is that state
# (NULL: the key was new in the batch). Read from the batch's own log rows only, so a revert
# costs what the batch did.
_REVERT_STATE = """
    MERGE INTO member_state AS m
    USING (SELECT psn_no, plan_year, cost, before_fen FROM accumulator_log WHERE batch_id = $b) r
    ON m.psn_no = r.psn_no AND m.plan_year = r.plan_year AND m.cost = r.cost
    WHEN MATCHED AND r.before_fen IS NULL THEN DELETE
    WHEN MATCHED THEN UPDATE SET amount_fen = r.before_fen
    WHEN NOT MATCHED AND r.before_fen IS NOT NULL THEN INSERT (psn_no, plan_year, cost,
        amount_fen) VALUES (r.psn_no, r.plan_year, r.cost, r.before_fen)
"""

# A before_fen of 0 may also be a cost the member-year had no row of (the prior state is read
# with 0 for a cost not yet accumulated, e.g. a cost an edition added): such a key goes unless
# an earlier applied batch accumulated it. Only these keys are looked up in the year's log.
_REVERT_UNSEEN = """
    DELETE FROM member_state m USING (
        WITH zero AS (
            SELECT psn_no, plan_year, cost FROM accumulator_log
            WHERE batch_id = $b AND before_fen = 0
        ), seen AS (  -- the year's log probed with the few zero keys, not correlated per key
            SELECT DISTINCT l.psn_no, l.plan_year, l.cost
            FROM accumulator_log l SEMI JOIN zero USING (psn_no, plan_year, cost)
            JOIN batches b USING (batch_id)
            WHERE b.status = 'applied' AND l.batch_id <> $b
        )
        SELECT * FROM zero ANTI JOIN seen USING (psn_no, plan_year, cost)
    ) u
    WHERE m.psn_no = u.psn_no AND m.plan_year = u.plan_year AND m.cost = u.cost
"""

# The most setl_ids a run keeps from prior_for's lookups for the commit's guard (see
# Ledger._already_recorded); beyond it the guard reads the registry.
_LOOKUPS_KEPT = 1_000_000

# A batch given as files is applied in groups of member buckets of at most (DuckDB's memory
# limit ÷ this) settlements: the commit's checks and joins hold a group's rows at once.
# Measured: the cost rows' check against the registry (an anti join) ran out of a 256 MiB limit
# at 40M settlements, and passed at 10M (BENCHMARKS.md, session 11); 128 bytes gives 2M.
BYTES_PER_GROUPED_ROW = 128
MIN_ROWS_PER_GROUP = 100_000
DEFAULT_ROWS_PER_GROUP = 2_000_000  # DuckDB's default limit is most of the machine's memory

# What one batch inserts, in this order (see :func:`batch_rows`).
BATCH_TABLES = (
    "settlements",
    "settlement_costs",
    "settlement_responsibilities",
    "accumulator_log",
    "payout_history",
    "batch_files",
)
TABLE_COLUMNS = {
    "settlements": [
        "setl_id",
        "batch_id",
        "psn_no",
        "plan_year",
        "status",
        "reasons",
        "is_reversal",
        "init_setl_id",
        "setl_time",
        "edition",
        "payable_fen",
        "payout_fen",
        "cum_payable_fen",
        "cum_payout_fen",
        "med_type",
        "insu_admdvs",
        "fixmedins_code",
        "fixmedins_name",
        "header_fen",
    ],
    "settlement_costs": ["setl_id", "cost", "increment_fen", "cum_fen", "psn_no", "plan_year"],
    "settlement_responsibilities": [
        "setl_id",
        "responsibility",
        "payable_fen",
        "payout_fen",
        "cum_payable_fen",
        "cum_payout_fen",
    ],
    "accumulator_log": ["batch_id", "psn_no", "plan_year", "cost", "before_fen", "after_fen"],
    "payout_history": [
        "batch_id",
        "setl_id",
        "psn_no",
        "plan_year",
        "status",
        "payout_fen",
        "reverted",
    ],
    "batch_files": ["batch_id", "name", "content", "sha256"],
}


class FileArchive:
    """The ledger's output files, content-addressed: ``PATH.files/<sha256[:2]>/<sha256>``.

    Files are written (and synced) before the batch's transaction commits, so every committed
    batch's files are there; a run killed before its commit leaves at most an unreferenced file,
    which a later batch with the same content reuses. Archived files are read-only.
    """

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self.root = ledger_path.with_name(ledger_path.name + ".files")

    def check(self) -> None:
        """Refuse an archive path that is there but is not a folder (a damaged ledger)."""
        if self.root.exists() and not self.root.is_dir():
            raise LedgerDamaged(self.ledger_path, f"its file archive {self.root} is not a folder")

    def path_of(self, digest: str) -> Path:
        """Where the file with this SHA-256 is (or would be) kept."""
        return self.root / digest[:2] / digest

    def keep(self, content: bytes | Path) -> str:
        """Archive bytes or a file's content; returns its SHA-256 (hex).

        A full disk or a read-only archive is :class:`LedgerUnwritable` (exit 3), an archive
        path that is not a folder :class:`LedgerDamaged`: both before the batch's commit, so
        nothing is applied.
        """
        try:
            return self._keep(content)
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS:
                raise LedgerUnwritable(
                    self.ledger_path, f"its file archive {self.root}: {exc.strerror}"
                ) from exc
            if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise LedgerDamaged(
                    self.ledger_path, f"its file archive {self.root} is not a folder of files"
                ) from exc
            raise

    def _keep(self, content: bytes | Path) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".incoming.{os.getpid()}"
        h = hashlib.sha256()
        with tmp.open("wb") as out:
            if isinstance(content, bytes):
                h.update(content)
                out.write(content)
            else:
                with content.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        target = self.path_of(digest)
        if target.exists():
            tmp.unlink()
        else:
            target.parent.mkdir(exist_ok=True)
            tmp.chmod(0o444)
            os.replace(tmp, target)
        return digest

    def find(self, digest: str) -> Path | None:
        """The archived file with this SHA-256, if it is there and intact."""
        path = self.path_of(digest)
        if not path.exists():
            return None
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        return path if h.hexdigest() == digest else None


class LedgerBusy(HmbError):
    """Another hmb-batch holds the ledger."""

    exit_code = ExitCode.LEDGER_BUSY


class LedgerError(HmbError):
    """The ledger refuses an operation (out-of-order batch, revert of an older batch ...)."""

    exit_code = ExitCode.LEDGER_REFUSED


class LedgerMissing(HmbError):
    """No ledger at the path given: a mistyped path must not start the year from zero."""

    exit_code = ExitCode.INPUT_UNREADABLE

    def __init__(self, path: Path) -> None:
        what = "is a folder, not a ledger file" if path.is_dir() else "does not exist"
        super().__init__(
            f"the ledger {path} {what}. Check --ledger (or adjudicate.ledger in hmb.toml); "
            f"to start a new ledger, whose members all begin the year at zero, run: "
            f"hmb-batch ledger init {path}"
        )


class LedgerDamaged(LedgerError):
    """The ledger file (or its file archive) is not what hmb-batch wrote: exit 9."""

    def __init__(self, path: Path, cause: str) -> None:
        super().__init__(f"the ledger at {path} is damaged: {cause}, restore it from backup")


class LedgerOutOfMemory(ConfigError):
    """DuckDB needed more memory than its share of ``--memory-limit`` (exit 5, like a limit
    too small to run at all): the file is fine, the transaction rolled back."""

    def __init__(self, path: Path, cause: str) -> None:
        super().__init__(
            f"the ledger {path} needed more memory than its share of --memory-limit ({cause}); "
            "nothing was applied and the ledger is as before. Give a larger --memory-limit, "
            "or split the batch"
        )


class LedgerUnwritable(HmbError):
    """The ledger cannot be written (disk full, read-only, no permission): exit 3."""

    exit_code = ExitCode.INPUT_UNREADABLE

    def __init__(self, path: Path, cause: str, consequence: str = "") -> None:
        super().__init__(
            f"the ledger at {path} cannot be written: {cause}. "
            + (
                consequence
                or "A batch is applied whole or not at all (hmb-batch ledger batches shows "
                "which were); free space or fix permissions, then run again"
            )
        )


# errno values (and DuckDB's words for them) that mean "cannot write here", not "damaged"
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
_WRITE_WORDS = tuple(os.strerror(e) for e in _WRITE_ERRNOS)


def _cause(exc: BaseException) -> str:
    """DuckDB's message, first line, without its trailing '!' (the full text can be long)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip("!. ")


def ledger_failure(path: Path, exc: duckdb.Error, consequence: str = "") -> HmbError:
    """What a DuckDB error on the ledger means to a person.

    A full disk, a read-only file or a missing permission is :class:`LedgerUnwritable` (exit 3);
    DuckDB's own file lock held by another program (e.g. an analyst's DuckDB shell) is
    :class:`LedgerBusy`; anything else from the ledger's fixed, tested SQL means the file is not
    what hmb-batch wrote — truncated, a block overwritten, a table dropped — and is
    :class:`LedgerDamaged`. (DuckDB reports a checksum mismatch as a plain ``duckdb.Error``,
    truncation as ``IOException``, a dropped table as ``CatalogException``.)
    """
    cause = _cause(exc)
    if any(words in str(exc) for words in _WRITE_WORDS):
        return LedgerUnwritable(path, cause, consequence)
    if "Could not set lock on file" in str(exc):
        return LedgerBusy(f"ledger {path} is open in another program: {cause}")
    return LedgerDamaged(path, cause)


_T = TypeVar("_T")


def _guard_duckdb(cls: type[_T]) -> type[_T]:
    """Every method of ``cls`` turns a DuckDB error into :func:`ledger_failure`'s error.

    One place instead of a try around each query: every query of the ledger may be the first to
    read a damaged block, and none may end in a traceback.
    """

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def run(self: Ledger, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except duckdb.InterruptException:
                raise  # not the file's fault: the person stopped the run
            except duckdb.OutOfMemoryException as exc:
                raise LedgerOutOfMemory(self.path, _cause(exc)) from exc
            except duckdb.Error as exc:
                raise ledger_failure(self.path, exc) from exc

        return run

    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("__"):
            setattr(cls, name, guarded(member))
    return cls


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, if DuckDB has not already: a failed COMMIT (e.g. disk full) ends the
    transaction itself, and a ROLLBACK then raises "no transaction is active", which would
    hide the real cause."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


@contextlib.contextmanager
def _lock(path: Path, wait: float, holder: str) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerUnwritable(path, f"its lock file {lock_path}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    with contextlib.suppress(OSError):
                        current = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                    raise LedgerBusy(
                        f"ledger {path} is in use by another hmb-batch "
                        f"({current or 'holder unknown'}); waited {wait:g} s (--wait)"
                    ) from None
                time.sleep(0.1)
        # the holder's name only serves a second run's message: a full disk must not stop the
        # run here, before it can say what is full
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class BatchRecord:
    """What the ledger keeps about one batch."""

    batch_id: str
    seq: int
    batch_key: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    settlements_in: int
    adjudicated: int
    quarantined: int
    total_payout_fen: int
    max_setl_time: dt.datetime | None
    out_dir: str | None = None  # the folder its files were written to
    reverted_at: dt.datetime | None = None
    reverted_by: str | None = None
    revert_reason: str | None = None


@_guard_duckdb
class Ledger:
    """An open ledger (hold it through :func:`open_ledger`)."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self.con = con
        self.archive = FileArchive(path)
        # the members the last prior_for read and their registry increments (increments_of)
        self._increments: tuple[pl.DataFrame, pl.DataFrame] | None = None
        # the setl_ids each prior_for since the last write looked up, and those it found
        self._looked_up: list[tuple[pl.DataFrame, pl.DataFrame]] | None = None
        # settlements per group of a batch's row files (see limit_memory, apply)
        self._rows_per_group = DEFAULT_ROWS_PER_GROUP

    # --- schema ------------------------------------------------------------------------
    def _migrate(self, *, create: bool = False, upgrade: bool = True) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, then check it is all there.

        Only ``create`` (``ledger init``) starts from an empty file: an existing file without a
        schema version lost its ``meta`` table or is not a ledger at all. Without ``upgrade``
        (a dry run, which must not change a byte) an older schema is refused instead.
        """
        tables = {
            r[0] for r in self.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        version = 0
        if "meta" in tables:
            rows = self.con.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchall()
            try:
                version = int(rows[0][0]) if rows else 0
            except ValueError:
                raise LedgerDamaged(self.path, f"its schema version reads {rows[0][0]!r}") from None
        if version == 0 and not create:
            raise LedgerDamaged(
                self.path,
                "it has no schema version (its meta table is gone, or it is not an hmb-batch "
                "ledger)",
            )
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, newer than this hmb-batch "
                f"understands ({SCHEMA_VERSION}); upgrade hmb-batch"
            )
        if version < SCHEMA_VERSION and not upgrade:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, older than this hmb-batch's "
                f"({SCHEMA_VERSION}), and a dry run changes nothing, so it does not upgrade it. "
                f"Run `hmb-batch ledger status --ledger {self.path}` once to upgrade it (back it "
                "up first if an older hmb-batch must still read it), then the dry run"
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            self.con.execute("BEGIN TRANSACTION")
            try:
                for ddl in MIGRATIONS[v]:
                    self.con.execute(ddl)
                self.con.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(v)]
                )
                self.con.execute("COMMIT")
            except BaseException:
                _rollback(self.con)
                raise
        self._check_schema()

    def _check_schema(self) -> None:
        """Every table, column and view of the schema is there (a dropped or altered table is
        found now, not half-way through a batch). Reads the catalog only: cheap at any size."""
        found = set(
            self.con.execute(
                "SELECT table_name, column_name, data_type FROM duckdb_columns() "
                "WHERE database_name = current_database() AND schema_name = 'main'"
            ).fetchall()
        )
        for table, column, data_type in sorted(_expected_columns()):
            if (table, column, data_type) in found:
                continue
            if not any(t == table for t, _, _ in found):
                raise LedgerDamaged(self.path, f"its table or view {table} is missing")
            raise LedgerDamaged(
                self.path, f"its table {table} has no column {column} of type {data_type}"
            )
        # (a truncated file or an overwritten block is found by the first query that reads the
        # lost block: DuckDB checksums every block it reads; its block count cannot tell, since
        # an open database may count blocks its file does not hold yet)
        self.archive.check()

    # --- reading ------------------------------------------------------------------------
    def batches(self) -> list[BatchRecord]:
        """Every batch, in application order."""
        rows = self.con.execute(
            "SELECT batch_id, seq, batch_key, status, started_at, finished_at, settlements_in, "
            "adjudicated, quarantined, total_payout_fen, max_setl_time, out_dir, reverted_at, "
            "reverted_by, revert_reason FROM batches ORDER BY seq"
        ).fetchall()
        return [BatchRecord(*r) for r in rows]

    def find_batch(
        self, *, batch_key: str | None = None, batch_id: str | None = None
    ) -> BatchRecord | None:
        """The applied batch with this content key or id, if any."""
        for b in self.batches():
            if b.status == "applied" and (b.batch_key == batch_key or b.batch_id == batch_id):
                return b
        return None

    def batch_summary(self, batch_id: str) -> dict[str, Any]:
        """The summary a batch recorded (JSON)."""
        rows = self.con.execute(
            "SELECT summary FROM batches WHERE batch_id = ?", [batch_id]
        ).fetchall()
        summary: dict[str, Any] = json.loads(rows[0][0])
        return summary

    def batch_files(self, batch_id: str) -> dict[str, bytes | str]:
        """The output files a batch wrote, by file name: the SHA-256 as a hex string (the file
        is in :attr:`archive`), or the bytes (ledgers written before the archive)."""
        rows = self.con.execute(
            "SELECT name, content, sha256 FROM batch_files WHERE batch_id = ?", [batch_id]
        ).fetchall()
        return {
            name: bytes(content) if content is not None else str(digest)
            for name, content, digest in rows
        }

    def batch_accumulators(self, batch_id: str) -> pl.DataFrame:
        """The year to date a batch's accumulator log rows set, summed by plan year and cost
        (plan_year, cost, amount_fen)."""
        return _frame(
            self.con.sql(
                """
            SELECT plan_year::BIGINT AS plan_year, cost, sum(after_fen)::BIGINT AS amount_fen
            FROM accumulator_log WHERE batch_id = $b GROUP BY plan_year, cost
            """,
                params={"b": batch_id},
            )
        )

    def batch_payout_fen(self, batch_id: str) -> int:
        """The sum of the payouts the payout history holds for a batch."""
        rows = self.con.execute(
            "SELECT coalesce(sum(payout_fen), 0)::BIGINT FROM payout_history WHERE batch_id = ?",
            [batch_id],
        ).fetchall()
        return int(rows[0][0])

    def year_settlements(self, plan_year: int) -> pl.DataFrame:
        """The applied settlements of a plan year, as reports read them (money in fen)."""
        return _frame(
            self.con.sql(
                """
            SELECT s.plan_year::BIGINT AS plan_year, s.status, s.reasons, s.setl_time,
                   s.insu_admdvs, s.fixmedins_code, s.fixmedins_name, s.edition,
                   s.payable_fen, s.payout_fen, s.cum_payable_fen
            FROM settlements s WHERE s.plan_year = $y
            """,
                params={"y": plan_year},
            )
        )

    def year_responsibilities(self, plan_year: int) -> pl.DataFrame:
        """(responsibility, payout_fen) per applied settlement of a plan year and responsibility."""
        return _frame(
            self.con.sql(
                """
            SELECT r.responsibility, r.payout_fen
            FROM settlement_responsibilities r JOIN settlements s USING (setl_id)
            WHERE s.plan_year = $y
            """,
                params={"y": plan_year},
            )
        )

    def year_batches(self, plan_year: int) -> list[dict[str, Any]]:
        """The summaries of the applied batches with settlements in a plan year, in order."""
        rows = self.con.execute(
            """SELECT summary FROM batches b WHERE status = 'applied' AND EXISTS
               (SELECT 1 FROM settlements s WHERE s.batch_id = b.batch_id AND s.plan_year = ?)
               ORDER BY seq""",
            [plan_year],
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def knows_roster(self, digest: str) -> bool:
        """Whether a batch (applied or since reverted) read a roster file with this SHA-256 —
        and so checked all of it."""
        rows = self.con.execute(
            "SELECT 1 FROM batches WHERE json_extract_string(inputs, '$.roster[0].sha256') = ? "
            "LIMIT 1",
            [digest],
        ).fetchall()
        return bool(rows)

    def roster_enrolment(self, digest: str) -> dict[int, int] | None:
        """Members per plan year of the roster file with this SHA-256, as the latest batch that
        read it counted them (None: no batch recorded a count for it)."""
        rows = self.con.execute(
            "SELECT json_extract(summary, '$.enrolled_by_plan_year') FROM batches "
            "WHERE json_extract_string(inputs, '$.roster[0].sha256') = ? "
            "AND json_extract(summary, '$.enrolled_by_plan_year') IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1",
            [digest],
        ).fetchall()
        if not rows:
            return None
        return {int(k): int(v) for k, v in json.loads(rows[0][0]).items()}

    def max_setl_time(self) -> dt.datetime | None:
        """The latest settlement time of any applied batch."""
        rows = self.con.execute(
            "SELECT max(max_setl_time) FROM batches WHERE status = 'applied'"
        ).fetchall()
        latest: dt.datetime | None = rows[0][0] if rows else None
        return latest

    def prior_for(self, settlements: pl.DataFrame, costs: list[str]) -> PriorState:
        """The registry and year to date that a batch touches — and nothing more.

        Registry rows: the batch's setl_ids and the originals its reversals name. Accumulators:
        the members of the batch and of those originals. The same pass over the registry's
        costs also sums these members' increments, which :meth:`increments_of` then answers
        from (until the ledger is next written).
        """
        self._increments = None
        ids = (
            pl.concat(
                [
                    settlements.select("setl_id"),
                    settlements.select(pl.col("init_setl_id").alias("setl_id")),
                ]
            )
            .drop_nulls()
            .unique()
        )
        # the registry's rows with the batch's ids (``hit``), and the reversals that name one of
        # them (the originals they name are ``reversed``): two semi joins on the batch's ids,
        # not a correlated EXISTS, which DuckDB runs as a second join over every settlement
        self.con.register("ids", ids.to_arrow())
        try:
            found = _frame(
                self.con.sql(
                    """
                SELECT s.setl_id, s.psn_no, s.plan_year::BIGINT AS plan_year, s.is_reversal,
                       s.init_setl_id, s.header_fen, TRUE AS hit
                FROM settlements s SEMI JOIN ids USING (setl_id)
                UNION ALL
                SELECT r.setl_id, r.psn_no, r.plan_year::BIGINT, r.is_reversal, r.init_setl_id,
                       r.header_fen, FALSE
                FROM settlements r SEMI JOIN ids ON r.init_setl_id = ids.setl_id
                WHERE r.is_reversal
                """
                )
            )
        finally:
            self.con.unregister("ids")
        reversed_ids = found.filter(~pl.col("hit"))["init_setl_id"]
        looked_up = [*(self._looked_up or []), (ids, found.filter(pl.col("hit")).select("setl_id"))]
        # a batch of many buckets would hold every id it looked up until its commit: past a
        # bound the lookups are let go, and the guard then reads the registry itself
        kept = sum(i.height for i, _ in looked_up) <= _LOOKUPS_KEPT
        self._looked_up = looked_up if kept else None
        registry = (
            found.filter(pl.col("hit"))
            .drop("hit")
            .with_columns(pl.col("setl_id").is_in(reversed_ids.implode()).alias("reversed"))
        )
        members = (
            pl.concat([settlements.select("psn_no"), registry.select("psn_no")])
            .drop_nulls()
            .unique()
        )
        costs_long, sums = self._costs_of(registry.select("setl_id"), members)
        registry = _widen(registry, costs_long, "setl_id", "increment_fen", inc, costs)
        self._increments = (members, sums)
        acc_long = self.year_to_date(members)
        keys = acc_long.select(MEMBER_YEAR).unique()
        accumulators = _widen(keys, acc_long, MEMBER_YEAR, "amount_fen", cum, costs)
        self._release_cache()
        return PriorState(registry.lazy(), accumulators.lazy())

    def _release_cache(self) -> None:
        """Hand back the memory of the blocks DuckDB kept from reading the year's tables.

        DuckDB keeps what it read cached up to its memory limit; the kernel, which runs next,
        would otherwise reach its peak on top of that cache. Lowering the limit for a moment
        evicts the unpinned blocks; if DuckDB cannot go that low, the limit stays as it was.
        """
        rows = self.con.execute("SELECT current_setting('memory_limit')").fetchall()
        with contextlib.suppress(duckdb.Error):
            self.con.execute("SET memory_limit = '32MiB'")
        self.con.execute(f"SET memory_limit = {_quote(str(rows[0][0]))}")

    def _costs_of(
        self, found: pl.DataFrame, members: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """In one pass over ``settlement_costs``: the cost rows of the settlements ``found`` (of
        ``members``): setl_id, cost, increment_fen; and the sum of the increments of ``members``'
        settlements per plan year and cost: psn_no, plan_year, cost, amount_fen.

        The members' keys are looked up in ``member_keys`` (a string join over the members
        ever recorded); the year's cost rows are then joined and grouped by the integer key.
        """
        self.con.register("found", found.to_arrow())
        self.con.register("members", members.select("psn_no").to_arrow())
        try:
            # a found settlement's rows keep their setl_id, the others are summed
            groups = _frame(
                self.con.sql(
                    """
                WITH k AS MATERIALIZED (
                    SELECT psn_no, member_key FROM member_keys SEMI JOIN members USING (psn_no)
                ), g AS (
                    SELECT CASE WHEN f.setl_id IS NOT NULL THEN c.setl_id END AS setl_id,
                           c.member_key, c.plan_year, c.cost, sum(c.increment_fen) AS amount_fen
                    FROM settlement_costs c SEMI JOIN k USING (member_key)
                         LEFT JOIN found f USING (setl_id)
                    GROUP BY ALL
                )
                SELECT g.setl_id, k.psn_no, g.plan_year::BIGINT AS plan_year, g.cost,
                       g.amount_fen::BIGINT AS amount_fen
                FROM g JOIN k USING (member_key)
                """
                )
            )
        finally:
            self.con.unregister("found")
            self.con.unregister("members")
        rows = groups.filter(pl.col("setl_id").is_not_null()).select(
            "setl_id", "cost", pl.col("amount_fen").alias("increment_fen")
        )
        sums = groups.group_by("psn_no", "plan_year", "cost").agg(pl.col("amount_fen").sum())
        return rows, sums

    def year_to_date(self, members: pl.DataFrame) -> pl.DataFrame:
        """The accumulators of these members (``psn_no``): psn_no, plan_year, cost, amount_fen.

        Read from ``member_state`` (one row per member, plan year and cost), so the cost is
        that of the state table's rows, not of the year's accumulator log.
        """
        self.con.register("members", members.select("psn_no").unique().to_arrow())
        try:
            return _frame(
                self.con.sql(
                    """
                SELECT m.psn_no, m.plan_year::BIGINT AS plan_year, m.cost, m.amount_fen
                FROM member_state m JOIN members USING (psn_no)
                """
                )
            )
        finally:
            self.con.unregister("members")

    def increments_of(self, members: pl.DataFrame) -> pl.DataFrame:
        """What the registry holds for these members: the sum of their applied settlements'
        increments per plan year and cost (psn_no, plan_year, cost, amount_fen).

        Members that the last :meth:`prior_for` read are answered from that read of the
        registry (nothing has written the ledger since: the run holds its lock); others are
        read now.
        """
        wanted = members.select("psn_no").unique()
        if self._increments is not None:
            read, sums = self._increments
            if wanted.join(read, on="psn_no", how="anti").is_empty():
                return sums.join(wanted, on="psn_no", how="semi")
        self.con.register("members", wanted.to_arrow())
        try:
            return _frame(
                self.con.sql(
                    """
                SELECT c.psn_no, c.plan_year::BIGINT AS plan_year, c.cost,
                       sum(c.increment_fen)::BIGINT AS amount_fen
                FROM settlement_costs c JOIN members USING (psn_no)
                GROUP BY c.psn_no, c.plan_year, c.cost
                """
                )
            )
        finally:
            self.con.unregister("members")

    def limit_memory(self, limit: int) -> None:
        """Keep DuckDB within ``limit`` bytes (it spills to ``<ledger>.tmp`` beyond that); a
        batch's rows are then applied in groups that fit it (:meth:`apply`)."""
        self.con.execute(f"SET memory_limit = '{max(limit >> 20, 64)}MiB'")
        self._rows_per_group = max(limit // BYTES_PER_GROUPED_ROW, MIN_ROWS_PER_GROUP)

    # --- writing ------------------------------------------------------------------------
    def apply(
        self,
        record: dict[str, Any],
        rows: Mapping[str, pl.DataFrame | str],
        crash_hook: Any = None,
        verify: Callable[[Ledger], None] | None = None,
    ) -> None:
        """Apply one adjudicated batch in a single transaction.

        ``rows``: for each of :data:`BATCH_TABLES`, the rows to insert — a frame (see
        :func:`batch_rows`) or the glob of Parquet files holding them, one file per member
        bucket named alike in every table's folder (runs build them bucket by bucket). Files
        are applied in groups of member buckets (:func:`_groups`): each check and join of the
        commit then holds one group's rows, not the batch's, within DuckDB's memory limit.
        ``verify`` is called after the inserts, before the commit (see run/batch.py: the ledger
        after must equal the ledger before plus the batch); if it raises, nothing is applied.
        """
        batch_id = record["batch_id"]
        con = self.con
        self._increments = None
        # once, before the transaction: DuckDB holds what is registered in a transaction until
        # it ends, so registering the lookups for each group held one copy a group
        lookups = self._register_lookups()
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                """INSERT INTO batches VALUES ($batch_id, $seq, $batch_key, $inputs, $editions,
                   $hmb_version, $started_at, $finished_at, 'applied', $settlements_in,
                   $adjudicated, $quarantined, $total_payout_fen, $max_setl_time, $summary,
                   $out_dir, NULL, NULL, NULL)""",
                {"out_dir": None} | record,
            )
            for group in _groups(rows, self._rows_per_group):
                self._apply_group(batch_id, group)
            if verify is not None:  # inside the transaction: raising rolls everything back
                verify(self)
            if crash_hook is not None:
                crash_hook("commit")
            try:
                con.execute("COMMIT")
            except duckdb.Error as exc:  # e.g. no space for the write-ahead log
                raise ledger_failure(
                    self.path,
                    exc,
                    f"Batch {batch_id} was not applied: the ledger is as before it; free space "
                    "or fix permissions, then run the batch again",
                ) from exc
        except BaseException:
            _rollback(con)
            raise
        finally:
            for view in lookups:
                with contextlib.suppress(Exception):
                    con.unregister(view)
            self._looked_up = None

    def _register_lookups(self) -> list[str]:
        """Register what :meth:`prior_for` looked up (``_looked_up``: the ids, ``_hits``: those
        the ledger held) for :meth:`_already_recorded`; the views registered."""
        if self._looked_up is None:
            return []
        ids, hits = (pl.concat(frames) for frames in zip(*self._looked_up, strict=True))
        self.con.register("_looked_up", ids.to_arrow())
        self.con.register("_hits", hits.to_arrow())
        return ["_looked_up", "_hits"]

    def _apply_group(self, batch_id: str, rows: Mapping[str, pl.DataFrame | list[str]]) -> None:
        """Insert one group of the batch's rows (members of a group have no rows in another),
        inside :meth:`apply`'s transaction."""
        con = self.con
        registered: list[str] = []

        def source(table: str) -> str:
            value = rows[table]
            if isinstance(value, list):
                return "read_parquet([" + ", ".join(_quote(f) for f in value) + "])"
            view = f"_{table}"
            con.register(view, value.to_arrow())
            registered.append(view)
            return view

        def member_keys(registry: str) -> str:
            """The keys of the group's members (a subquery): new members get the next ones,
            in psn_no order. In SQL, not in frames registered with DuckDB: DuckDB holds what
            was registered during a transaction until it ends, so every group's keys stayed in
            memory until the commit (some 50 MiB a group of 2M settlements)."""
            last = con.execute("SELECT coalesce(max(member_key), 0) FROM member_keys").fetchall()
            con.execute(
                "INSERT INTO member_keys SELECT psn_no, "
                f"CAST({int(last[0][0])} + row_number() OVER (ORDER BY psn_no) AS INTEGER) "
                f"FROM (SELECT DISTINCT psn_no FROM {registry} WHERE psn_no IS NOT NULL) "
                "ANTI JOIN member_keys USING (psn_no)"
            )
            return (
                "(SELECT psn_no, member_key FROM member_keys "
                f"SEMI JOIN (SELECT psn_no FROM {registry}) USING (psn_no))"
            )

        try:
            registry = source("settlements")
            seen = self._already_recorded(registry)
            if seen:  # the engine quarantines these; this guards the ledger itself
                raise LedgerError(
                    f"batch {batch_id} would record settlements already in the ledger "
                    f"({', '.join(r[0] for r in seen)}); nothing was applied"
                )
            sources = {"settlements": registry}
            for table in BATCH_TABLES:
                if table not in rows:
                    continue
                src = sources[table] = sources.get(table) or source(table)
                cols = ", ".join(TABLE_COLUMNS[table])
                if table == "settlement_costs":
                    # each cost row names its settlement's member and plan year, as the
                    # batch's own registry rows do (one join of the group with itself checks
                    # it): a row that did not would be summed under the wrong member by every
                    # later night's check, or under none
                    wrong = con.execute(
                        f"SELECT DISTINCT c.setl_id FROM {src} c ANTI JOIN {registry} s "
                        "ON c.setl_id = s.setl_id AND c.psn_no = s.psn_no "
                        "AND c.plan_year = s.plan_year ORDER BY 1 LIMIT 5"
                    ).fetchall()
                    if wrong:
                        raise LedgerError(
                            f"batch {batch_id} has cost rows of settlements it does not record, "
                            "or under another member or plan year "
                            f"({', '.join(r[0] for r in wrong)}); nothing was applied"
                        )
                    keys = member_keys(registry)
                    con.execute(
                        f"INSERT INTO {table} ({cols}, member_key) "
                        f"SELECT {', '.join('c.' + c for c in TABLE_COLUMNS[table])}, "
                        f"k.member_key FROM {src} c LEFT JOIN {keys} k USING (psn_no)"
                    )
                    continue
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {src}")
            # from the group's own rows, not the log table: reading these back out of the
            # log would scan the year's log
            if "accumulator_log" in rows:
                con.execute(_APPLY_STATE.format(log=sources["accumulator_log"]))
        finally:
            for view in registered:
                with contextlib.suppress(Exception):
                    con.unregister(view)

    def _already_recorded(self, registry: str) -> list[str]:
        """Up to five setl_ids of the batch's registry rows (``registry``: a view or
        ``read_parquet``) that the ledger already holds.

        Ids that :meth:`prior_for` looked up since the ledger was last written are answered
        from what it found there (the run holds the lock, so the registry is as it was then):
        a join of the batch with its own lookups instead of another pass over the year's
        registry. Only if some id was not looked up is the registry read.
        """
        con = self.con
        if self._looked_up is not None:  # registered by apply (_register_lookups)
            rows = con.execute(
                f"""
                SELECT r.setl_id, h.setl_id IS NOT NULL AS hit
                FROM {registry} r LEFT JOIN _looked_up l USING (setl_id)
                     LEFT JOIN _hits h USING (setl_id)
                WHERE h.setl_id IS NOT NULL OR l.setl_id IS NULL
                ORDER BY hit DESC, r.setl_id
                LIMIT 5
                """
            ).fetchall()
            if all(hit for _, hit in rows):
                return [r[0] for r in rows]
        seen = con.execute(
            f"SELECT s.setl_id FROM settlements s JOIN {registry} r USING (setl_id) LIMIT 5"
        ).fetchall()
        return [r[0] for r in seen]

    def revert(
        self, batch_id: str, *, by: str | None = None, reason: str | None = None
    ) -> BatchRecord:
        """Undo the most recent applied batch exactly; refuse any other. ``by`` and ``reason``
        (who asked, why) are kept in the batch's record with the time."""
        applied = [b for b in self.batches() if b.status == "applied"]
        target = next((b for b in applied if b.batch_id == batch_id), None)
        if target is None:
            known = next((b for b in self.batches() if b.batch_id == batch_id), None)
            why = f"it is already {known.status}" if known else "no batch has this id"
            raise LedgerError(f"cannot revert batch {batch_id}: {why}")
        latest = applied[-1]
        if latest.batch_id != batch_id:
            later = [b.batch_id for b in applied if b.seq > target.seq]
            raise LedgerError(
                f"cannot revert batch {batch_id}: later batches ({', '.join(later)}) were "
                "computed on top of it; revert them first, newest first"
            )
        con = self.con
        self._increments = self._looked_up = None
        con.execute("BEGIN TRANSACTION")
        try:
            # the batch's accumulator_log rows stay as history (marked by the batch's status);
            # member_state goes back to what the log held before the batch
            con.execute(_REVERT_STATE, {"b": batch_id})
            zeros = con.execute(
                "SELECT count(*) FROM accumulator_log WHERE batch_id = $b AND before_fen = 0",
                {"b": batch_id},
            ).fetchall()
            if zeros[0][0]:
                con.execute(_REVERT_UNSEEN, {"b": batch_id})
            for table in ("settlement_costs", "settlement_responsibilities"):
                con.execute(
                    f"DELETE FROM {table} WHERE setl_id IN "
                    "(SELECT setl_id FROM settlements WHERE batch_id = $b)",
                    {"b": batch_id},
                )
            con.execute("DELETE FROM settlements WHERE batch_id = $b", {"b": batch_id})
            con.execute(
                "UPDATE payout_history SET reverted = TRUE WHERE batch_id = $b", {"b": batch_id}
            )
            con.execute(
                "UPDATE batches SET status = 'reverted', reverted_at = $at, reverted_by = $by, "
                "revert_reason = $why WHERE batch_id = $b",
                {"b": batch_id, "at": dt.datetime.now(), "by": by, "why": reason},
            )
            try:
                con.execute("COMMIT")
            except duckdb.Error as exc:
                raise ledger_failure(
                    self.path,
                    exc,
                    f"Batch {batch_id} was not reverted: the ledger is as before; free space "
                    "or fix permissions, then run the revert again",
                ) from exc
        except BaseException:
            _rollback(con)
            raise
        return next((b for b in self.batches() if b.batch_id == batch_id), target)

    def last_applied(self) -> BatchRecord | None:
        """The most recent applied batch (the only one a revert may undo), if any."""
        applied = [b for b in self.batches() if b.status == "applied"]
        return applied[-1] if applied else None

    # --- inspection ---------------------------------------------------------------------
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
        """A read query's rows as a frame (analyses built on the ledger's tables)."""
        return _frame(self.con.sql(sql, params=dict(params or {})))

    def state(self) -> pl.DataFrame:
        """Per plan year: members, settlements, year-to-date payable and payout (fen).

        Members are the member-years an applied batch touched (every adjudicated settlement
        touches one), counted in :data:`member_state` rows of one cost; plain aggregates, no
        DISTINCT, so this stays fast on a province's ledger.
        """
        return _frame(
            self.con.sql(
                """
                WITH s AS (
                    SELECT plan_year, count(*) AS settlements,
                           coalesce(sum(payable_fen), 0)::BIGINT AS payable_fen,
                           coalesce(sum(payout_fen), 0)::BIGINT AS payout_fen
                    FROM settlements GROUP BY plan_year
                ), m AS (
                    SELECT plan_year, count(*) AS members
                    FROM member_state
                    WHERE cost = (SELECT min(cost) FROM member_state)
                    GROUP BY plan_year
                )
                SELECT s.plan_year::BIGINT AS plan_year, coalesce(m.members, 0) AS members,
                       s.settlements, s.payable_fen, s.payout_fen
                FROM s LEFT JOIN m USING (plan_year) ORDER BY plan_year
                """
            )
        )

    def member_statement(self, psn_no: str, year: int | None = None) -> pl.DataFrame:
        """A member's settlements with increments, year to date and payouts, in order.

        Per settlement also its batch's ``batch_seq`` and ``batch_started_at``, ``costs``
        (cost, increment_fen, cum_fen) and ``responsibilities`` (responsibility, payable_fen,
        payout_fen, cum_payable_fen, cum_payout_fen; empty for settlements applied before
        schema 4).
        """
        where = "psn_no = $p" + (" AND plan_year = $y" if year is not None else "")
        params: dict[str, Any] = {"p": psn_no}
        if year is not None:
            params["y"] = year
        # costs and responsibilities aggregated apart: one join of both would pair every cost
        # row with every responsibility row of a settlement before the lists are built
        return _frame(
            self.con.sql(
                f"""
            WITH s AS (SELECT * FROM settlements WHERE {where}),
            c AS (
                SELECT setl_id,
                       list(struct_pack(cost := cost, increment_fen := increment_fen,
                                        cum_fen := cum_fen) ORDER BY cost) AS costs
                FROM settlement_costs WHERE setl_id IN (SELECT setl_id FROM s) GROUP BY setl_id
            ),
            r AS (
                SELECT setl_id,
                       list(struct_pack(responsibility := responsibility,
                                        payable_fen := payable_fen, payout_fen := payout_fen,
                                        cum_payable_fen := cum_payable_fen,
                                        cum_payout_fen := cum_payout_fen)
                            ORDER BY responsibility) AS responsibilities
                FROM settlement_responsibilities
                WHERE setl_id IN (SELECT setl_id FROM s) GROUP BY setl_id
            )
            SELECT s.plan_year::BIGINT AS plan_year, b.seq AS batch_seq, s.batch_id, s.setl_id,
                   s.setl_time, s.status, s.reasons, s.init_setl_id, s.edition, c.costs,
                   s.payable_fen, s.payout_fen, s.cum_payable_fen, s.cum_payout_fen,
                   b.started_at AS batch_started_at, r.responsibilities
            FROM s JOIN batches b USING (batch_id)
            LEFT JOIN c USING (setl_id) LEFT JOIN r USING (setl_id)
            ORDER BY plan_year, batch_seq, setl_time, setl_id
            """,  # only the fixed WHERE shape varies; values are bound
                params=params,
            )
        )

    def batch_provenance(self, batch_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per batch id: the ``inputs`` (kind → files with path and sha256) and ``editions``
        (edition id → hash) its record names."""
        rows = self.con.execute(
            "SELECT batch_id, inputs::VARCHAR, editions::VARCHAR FROM batches "
            "WHERE list_contains($ids, batch_id)",
            {"ids": batch_ids},
        ).fetchall()
        return {
            b: {"inputs": json.loads(i or "{}"), "editions": json.loads(e or "{}")}
            for b, i, e in rows
        }


def batch_rows(
    batch_id: str, payouts: pl.DataFrame, accumulators_before: pl.DataFrame, costs: list[str]
) -> dict[str, pl.DataFrame]:
    """The ledger rows of one batch (or one member bucket of it), except ``batch_files``.

    ``payouts``: the engine's payout frame (fen). ``accumulators_before``: the year to date
    before the batch of the members it touches (:attr:`PriorState.accumulators`).
    """
    registry = payouts.select(
        "setl_id",
        pl.lit(batch_id).alias("batch_id"),
        "psn_no",
        pl.col("plan_year").cast(pl.Int32),
        "status",
        pl.col("reasons"),
        pl.col(IS_REVERSAL),
        "init_setl_id",
        "setl_time",
        "edition",
        pl.col("payable").alias("payable_fen"),
        pl.col("payout").alias("payout_fen"),
        pl.col("cum_payable").alias("cum_payable_fen"),
        pl.col("cum_payout").alias("cum_payout_fen"),
        "med_type",
        "insu_admdvs",
        "fixmedins_code",
        "fixmedins_name",
        HEADER_FEN,
    )
    setl_costs = pl.concat(
        [
            payouts.select(
                "setl_id",
                pl.lit(c).alias("cost"),
                pl.col(inc(c)).alias("increment_fen"),
                pl.col(cum(c)).alias("cum_fen"),
                "psn_no",
                pl.col("plan_year").cast(pl.Int32),
            )
            for c in costs
        ]
    )
    # the engine's resp__<id>__payout columns (an id may itself contain "__")
    resps = sorted(
        c.removeprefix("resp__").removesuffix("__payout")
        for c in payouts.columns
        if c.startswith("resp__") and c.endswith("__payout") and not c.endswith("__cum_payout")
    )
    setl_resps = (
        pl.concat(
            [
                payouts.select(
                    "setl_id",
                    pl.lit(r).alias("responsibility"),
                    *[pl.col(f"resp__{r}__{k}").alias(f"{k}_fen") for k in RESPONSIBILITY_VALUES],
                )
                for r in resps
            ]
        )
        if resps
        else pl.DataFrame(
            schema={"setl_id": pl.String, "responsibility": pl.String}
            | {f"{k}_fen": pl.Int64 for k in RESPONSIBILITY_VALUES}
        )
    )
    # only the columns it reads are sorted, not every payout column
    after = (
        payouts.select(*MEMBER_YEAR, "batch_seq", "setl_time", "setl_id", *map(cum, costs))
        .sort("batch_seq", "setl_time", "setl_id")
        .group_by(MEMBER_YEAR, maintain_order=True)
        .agg([pl.col(cum(c)).last() for c in costs])
    )
    after_long = _lengthen(after, cum, costs, "after_fen")
    before_long = _lengthen(accumulators_before, cum, costs, "before_fen")
    log = after_long.join(before_long, on=[*MEMBER_YEAR, "cost"], how="left").select(
        pl.lit(batch_id).alias("batch_id"),
        "psn_no",
        pl.col("plan_year").cast(pl.Int32),
        "cost",
        "before_fen",
        "after_fen",
    )
    history = payouts.select(
        pl.lit(batch_id).alias("batch_id"),
        "setl_id",
        "psn_no",
        pl.col("plan_year").cast(pl.Int32),
        "status",
        pl.col("payout").alias("payout_fen"),
        pl.lit(False).alias("reverted"),
    )
    return {
        "settlements": registry,
        "settlement_costs": setl_costs,
        "settlement_responsibilities": setl_resps,
        "accumulator_log": log,
        "payout_history": history,
    }


def _groups(
    rows: Mapping[str, pl.DataFrame | str], rows_per_group: int
) -> Iterator[dict[str, pl.DataFrame | list[str]]]:
    """A batch's rows for :meth:`Ledger.apply`, in groups: frames are one group; the globs of
    a run's row files (one file per member bucket, the same names in every table's folder)
    are cut into runs of consecutive buckets of at most ``rows_per_group`` settlements, in
    bucket order (so the members' keys are given in the same order for the same groups).
    Frames given with globs (``batch_files``) go with the first group."""
    globs = {t: v for t, v in rows.items() if isinstance(v, str)}
    frames = {t: v for t, v in rows.items() if not isinstance(v, str)}
    if not globs:
        yield dict(frames)
        return
    files = {t: sorted(glob.glob(g)) for t, g in globs.items()}
    names = {t: [Path(f).name for f in fs] for t, fs in files.items()}
    first = next(iter(names.values()))
    if not first or "settlements" not in files or any(n != first for n in names.values()):
        # not one file per bucket in every table: one group, as the globs say
        yield {**{t: [g] for t, g in globs.items()}, **frames}
        return
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files["settlements"]]
    start, held = 0, 0
    extra: dict[str, pl.DataFrame] = dict(frames)
    for i, size in enumerate(sizes):
        if held and held + size > rows_per_group:
            yield {**{t: fs[start:i] for t, fs in files.items()}, **extra}
            extra, start, held = {}, i, 0
        held += size
    yield {**{t: fs[start:] for t, fs in files.items()}, **extra}


def file_rows(batch_id: str, digests: Mapping[str, str]) -> pl.DataFrame:
    """``batch_files`` rows: each output file's name and SHA-256 (the bytes are archived with
    :meth:`FileArchive.keep`)."""
    return pl.DataFrame(
        {
            "batch_id": [batch_id] * len(digests),
            "name": list(digests),
            "content": [None] * len(digests),
            "sha256": list(digests.values()),
        },
        schema={
            "batch_id": pl.String,
            "name": pl.String,
            "content": pl.Binary,
            "sha256": pl.String,
        },
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _frame(result: Any) -> pl.DataFrame:
    """A DuckDB relation as a Polars frame."""
    frame = pl.from_arrow(result.to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _widen(
    base: pl.DataFrame,
    long: pl.DataFrame,
    key: str | list[str],
    value: str,
    name: Any,
    costs: list[str],
) -> pl.DataFrame:
    """Long (key, cost, value) rows to one column per cost named ``name(cost)``; 0 if absent."""
    keys = [key] if isinstance(key, str) else key
    out = base
    for c in costs:
        part = long.filter(pl.col("cost") == c).select(*keys, pl.col(value).alias(name(c)))
        out = out.join(part, on=keys, how="left").with_columns(pl.col(name(c)).fill_null(0))
    return out


def _lengthen(frame: pl.DataFrame, name: Any, costs: list[str], value: str) -> pl.DataFrame:
    return (
        pl.concat(
            [
                frame.select(*MEMBER_YEAR, pl.lit(c).alias("cost"), pl.col(name(c)).alias(value))
                for c in costs
            ]
        )
        if costs
        else pl.DataFrame()
    )


@functools.cache
def _expected_columns() -> frozenset[tuple[str, str, str]]:
    """(table, column, type) of every table and view a ledger of :data:`SCHEMA_VERSION` has:
    the migrations run on an in-memory database, so the check cannot drift from them."""
    con = duckdb.connect()
    try:
        for v in range(1, SCHEMA_VERSION + 1):
            for ddl in MIGRATIONS[v]:
                con.execute(ddl)
        return frozenset(
            con.execute(
                "SELECT table_name, column_name, data_type FROM duckdb_columns() "
                "WHERE database_name = current_database() AND schema_name = 'main'"
            ).fetchall()
        )
    finally:
        con.close()


@contextlib.contextmanager
def _connected(path: Path, *, create: bool = False, upgrade: bool = True) -> Iterator[Ledger]:
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:  # truncated, overwritten header, locked by another program ...
        raise ledger_failure(path, exc) from exc
    try:
        # DuckDB draws a progress bar on stdout for a long query (a migration of a big ledger),
        # which would garble --json output
        con.execute("SET enable_progress_bar = false")
        ledger = Ledger(path, con)
        ledger._migrate(create=create, upgrade=upgrade)
        yield ledger
    finally:
        try:
            con.close()  # checkpoints: may be the first write to hit a full disk
        except duckdb.Error as exc:
            raise ledger_failure(path, exc) from exc


@contextlib.contextmanager
def open_ledger(
    path: Path, *, wait: float = 30.0, holder: str = "", upgrade: bool = True
) -> Iterator[Ledger]:
    """Open (and migrate, unless not ``upgrade``) an existing ledger under its writer lock.

    A ledger is never created here: a path that is not there is :class:`LedgerMissing`
    (``hmb-batch ledger init`` creates one), so a mistyped ``--ledger`` cannot start every
    member's year at zero. A file that is not the ledger hmb-batch wrote is
    :class:`LedgerDamaged`.
    """
    if not path.is_file():
        raise LedgerMissing(path)
    who = holder or f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}"
    with _lock(path, wait, who), _connected(path, upgrade=upgrade) as ledger:
        yield ledger


def create_ledger(path: Path, *, wait: float = 30.0) -> None:
    """Create an empty ledger at ``path`` (and its parent folders); refuse an existing one.

    Refused too: a write-ahead log ``PATH.wal`` left by an earlier ledger at this path, which
    DuckDB would replay into the new file.
    """
    who = f"ledger init, pid {os.getpid()}"
    wal = path.with_name(path.name + ".wal")
    with _lock(path, wait, who):  # two inits at once: one creates, the other is refused
        for existing in (path, wal):
            if existing.exists() or existing.is_symlink():
                raise LedgerError(
                    f"{existing} already exists: ledger init never overwrites a ledger. "
                    "Use it with --ledger, or give ledger init a new path"
                )
        with _connected(path, create=True):
            pass
