"""A ledger's state as of an earlier batch or date (copy_as_of): equal to a ledger that applied
only those batches, and made without changing a byte of the source."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from conftest import golden_batch, ledger_snapshot, new_ledger, run_cli
from hmb_batch.errors import ExitCode
from hmb_batch.ledger.asof import copy_as_of, parse_as_of
from hmb_batch.ledger.store import LedgerBusy, LedgerError, open_ledger

NIGHTS = ("batch_00", "batch_01", "batch_02")


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(ledger: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table a later batch reads or a person queries, without run-specific columns (when
    a batch ran and the folder its files went to differ between two ledgers)."""
    snap = ledger_snapshot(ledger)
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        snap["batches"] = sorted(
            con.execute(
                "SELECT * EXCLUDE (started_at, finished_at, out_dir) FROM batches"
            ).fetchall(),
            key=str,
        )
        for table, cols in (
            ("member_state", "*"),
            ("member_keys", "*"),
            ("settlement_responsibilities", "*"),
            # reports carry the time they were made; the Parquet files are the same bytes
            (
                "batch_files",
                "batch_id, name, CASE WHEN name LIKE '%.parquet' THEN sha256 END",
            ),
            ("meta", "*"),
        ):
            snap[table] = sorted(con.execute(f"SELECT {cols} FROM {table}").fetchall(), key=str)
    finally:
        con.close()
    return snap


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ledger A: the golden year's three nights; ledger B: its first two, the same inputs."""
    root = tmp_path_factory.mktemp("ledgers")
    a = new_ledger(root / "a" / "ledger.duckdb")
    b = new_ledger(root / "b" / "ledger.duckdb")
    for ledger, nights in ((a, NIGHTS), (b, NIGHTS[:2])):
        for name in nights:
            r = golden_batch(ledger, ledger.parent / "out", name)
            assert r.exit_code == 0, r.output
    return {"a": a, "b": b}


def batch_ids(ledger: Path) -> list[str]:
    """The ledger's batch ids in order."""
    with open_ledger(ledger) as lg:
        return [b.batch_id for b in lg.batches()]


def test_copy_before_night_3_equals_a_ledger_of_nights_1_and_2(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    a, b = ledgers["a"], ledgers["b"]
    before = digest(a)
    third = batch_ids(a)[2]
    copy = copy_as_of(a, tmp_path / "copy.duckdb", before=third)
    # the source is not changed by a byte, and no write-ahead log was left beside it
    assert digest(a) == before
    assert not a.with_name(a.name + ".wal").exists()
    assert copy.before_seq == 3
    assert list(copy.applied) == batch_ids(b)
    assert snapshot(copy.path) == snapshot(b)
    # the same copy by seq, and by the date of night 2's latest settlement
    by_seq = copy_as_of(a, tmp_path / "seq.duckdb", before=3)
    with open_ledger(b) as lg:
        night2 = lg.batches()[1].max_setl_time
    assert night2 is not None
    by_date = copy_as_of(a, tmp_path / "date.duckdb", through=night2.date())
    after_2 = copy_as_of(a, tmp_path / "after.duckdb", after=batch_ids(a)[1])
    assert snapshot(by_seq.path) == snapshot(by_date.path) == snapshot(after_2.path) == snapshot(b)
    # the archive holds the kept batches' files, and only theirs
    with open_ledger(copy.path) as lg:
        kept = [lg.batch_files(i) for i in copy.applied]
    assert copy.files_linked == len({d for files in kept for d in files.values()})
    with open_ledger(copy.path) as lg:
        assert all(lg.archive.find(str(d)) is not None for f in kept for d in f.values())
    assert digest(a) == before


def test_night_3_applied_to_the_copy_pays_what_it_paid_on_the_ledger(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    a = ledgers["a"]
    copy = copy_as_of(a, tmp_path / "copy.duckdb", before=3, files=False)
    assert copy.files_linked == 0
    r = golden_batch(copy.path, tmp_path, "batch_02")
    assert r.exit_code == 0, r.output
    original = a.parent / "out" / "batch_02" / "payouts.parquet"
    assert (tmp_path / "batch_02" / "payouts.parquet").read_bytes() == original.read_bytes()
    # and the copy is then the ledger A, table by table
    assert snapshot(copy.path) == snapshot(a)


def test_the_state_now_and_the_state_before_the_first_batch(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    a = ledgers["a"]
    now = copy_as_of(a, tmp_path / "now.duckdb", before=4)
    assert snapshot(now.path) == snapshot(a)
    empty = copy_as_of(a, tmp_path / "empty.duckdb", through=dt.date(2000, 1, 1))
    assert empty.before_seq == 1 and empty.applied == ()
    assert all(rows == [] for t, rows in snapshot(empty.path).items() if t != "meta")


def test_a_copy_refuses_an_existing_target_and_an_unknown_batch(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    a = ledgers["a"]
    taken = tmp_path / "taken.duckdb"
    taken.write_bytes(b"not mine")
    with pytest.raises(LedgerError, match="already exists"):
        copy_as_of(a, taken, before=2)
    assert taken.read_bytes() == b"not mine"
    with pytest.raises(LedgerError, match="no batch has the id nope"):
        copy_as_of(a, tmp_path / "x.duckdb", before="nope")
    with pytest.raises(LedgerError, match="no batch has seq 9"):
        copy_as_of(a, tmp_path / "x.duckdb", before=9)
    assert not (tmp_path / "x.duckdb").exists()


def test_a_source_held_by_another_writer_is_busy_not_a_traceback(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    a = ledgers["a"]
    before = digest(a)
    # a running batch holds the lock file and DuckDB's own lock
    with open_ledger(a, wait=0), pytest.raises(LedgerBusy) as caught:
        copy_as_of(a, tmp_path / "copy.duckdb", before=2, wait=0.3)
    assert caught.value.exit_code == ExitCode.LEDGER_BUSY
    assert not (tmp_path / "copy.duckdb").exists()
    assert digest(a) == before


def test_a_source_open_for_writing_in_a_duckdb_shell_is_busy(
    ledgers: dict[str, Path], tmp_path: Path
) -> None:
    a = ledgers["a"]
    before = digest(a)
    # another program (not hmb-batch: no lock file) holding DuckDB's own lock on the file
    shell = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(a)], stdout=subprocess.PIPE, stdin=subprocess.PIPE
    )
    try:
        assert shell.stdout is not None and shell.stdout.readline().strip() == b"open"
        with pytest.raises(LedgerBusy, match="open for writing in another program"):
            copy_as_of(a, tmp_path / "copy.duckdb", before=2, wait=0.5)
    finally:
        shell.communicate(b"\n", timeout=30)
    assert not (tmp_path / "copy.duckdb").exists()
    assert digest(a) == before


HOLD = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('open', flush=True); input()"


def test_a_reverted_batch_stays_a_reverted_record_in_a_later_copy(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for name in NIGHTS[:2]:
        assert golden_batch(ledger, tmp_path / "out", name).exit_code == 0
    r = run_cli(["ledger", "revert", "--last", "--ledger", str(ledger), "--reason", "test"])
    assert r.exit_code == 0, r.output
    assert golden_batch(ledger, tmp_path / "out", NIGHTS[1], "--force").exit_code == 0
    first, reverted, again = batch_ids(ledger)
    # before the re-run: night 1 in effect, night 2 (reverted before the re-run) a record
    copy = copy_as_of(ledger, tmp_path / "copy.duckdb", before=again)
    assert copy.applied == (first,) and copy.reverted == (reverted,)
    # before the reverted batch itself: night 1 only
    copy2 = copy_as_of(ledger, tmp_path / "copy2.duckdb", before=reverted)
    assert copy2.applied == (first,) and copy2.reverted == ()
    with pytest.raises(LedgerError, match=f"batch {reverted} has been reverted"):
        copy_as_of(ledger, tmp_path / "copy4.duckdb", after=reverted)
    # a copy before the re-run pays the re-run what it paid
    rerun = tmp_path / "rerun"
    assert golden_batch(copy.path, rerun, NIGHTS[1]).exit_code == 0
    original = tmp_path / "out" / NIGHTS[1] / "payouts.parquet"
    assert (rerun / NIGHTS[1] / "payouts.parquet").read_bytes() == original.read_bytes()
    # night 1 reverted after the re-run ran: the state before the re-run is gone
    for _ in range(2):
        r = run_cli(["ledger", "revert", "--last", "--ledger", str(ledger)])
        assert r.exit_code == 0, r.output
    with pytest.raises(LedgerError, match=f"batch {first} was in effect .* cannot be rebuilt"):
        copy_as_of(ledger, tmp_path / "copy3.duckdb", before=again)
    assert not (tmp_path / "copy3.duckdb").exists()


def test_parse_as_of() -> None:
    assert parse_as_of("2022-03-01") == dt.date(2022, 3, 1)
    assert parse_as_of("batch_00-0123456789ab") == "batch_00-0123456789ab"
