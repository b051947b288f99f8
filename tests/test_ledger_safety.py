"""The ledger on a mistyped path, a damaged file and a full disk (issue 13, items 8, 15, 17, 18)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from conftest import GOLDEN, golden_args, golden_batch, ledger_snapshot, new_ledger, run_cli
from hmb_batch.ledger.store import Ledger


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger (made by ``ledger init``) holding golden batch_00, to copy and damage."""
    root = tmp_path_factory.mktemp("base")
    ledger = new_ledger(root / "ledger.duckdb")
    r = golden_batch(ledger, root / "out", "batch_00")
    assert r.exit_code == 0, r.output
    return ledger


def _copy(base: Path, folder: Path) -> Path:
    """The base ledger and its file archive, copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / base.name
    shutil.copy2(base, ledger)
    shutil.copytree(f"{base}.files", f"{ledger}.files")
    return ledger


def _batch_id(ledger: Path) -> str:
    batch_id: str = ledger_snapshot(ledger)["batches"][0][0]
    return batch_id


# What each command is given; `adjudicate` runs the next golden night on the ledger.
COMMANDS: dict[str, Callable[[Path, Path, str], list[str]]] = {
    "ledger status": lambda lg, tmp, b: ["ledger", "status", "--ledger", str(lg)],
    "ledger batches": lambda lg, tmp, b: ["ledger", "batches", "--ledger", str(lg)],
    "ledger member": lambda lg, tmp, b: ["ledger", "member", "P0001", "--ledger", str(lg)],
    "ledger revert": lambda lg, tmp, b: ["ledger", "revert", b, "--ledger", str(lg)],
    "report": lambda lg, tmp, b: [
        "report",
        "--year",
        "2022",
        "--ledger",
        str(lg),
        "--out",
        str(tmp / "report"),
    ],
    "adjudicate": lambda lg, tmp, b: golden_args("batch_01", tmp / "out", ledger=lg),
}


# --- item 8: a ledger is created by `ledger init` only --------------------------------------


def test_item8_adjudicate_refuses_a_ledger_that_does_not_exist(tmp_path: Path) -> None:
    typo = tmp_path / "ledgr" / "ledger.duckdb"
    r = golden_batch(typo, tmp_path, "batch_00")
    assert r.exit_code == 3, r.output
    assert f"hmb-batch ledger init {typo}" in r.output and "does not exist" in r.output
    # nothing was created on the way: no parent folder, no lock file, no payouts
    assert not (tmp_path / "ledgr").exists()
    assert not (tmp_path / "batch_00" / "payouts.parquet").exists()


def test_item8_a_ledger_in_hmb_toml_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "hmb.toml"
    config.write_text(
        "[adjudicate]\n"
        f'roster = "{GOLDEN / "roster.parquet"}"\n'
        f'lists = "{GOLDEN / "lists.parquet"}"\n'
        'plan = "zhelibao"\n'
        'ledger = "nightly/ledger.duckdb"\n',
        encoding="utf-8",
    )
    b = GOLDEN / "batch_00"
    r = run_cli(
        [
            "adjudicate",
            str(b / "settlements.parquet"),
            "--fees",
            str(b / "fees.parquet"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert r.exit_code == 3, r.output
    assert "hmb-batch ledger init" in r.output and "nightly/ledger.duckdb" in r.output
    assert not (tmp_path / "nightly").exists()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "adjudicate"])
def test_item8_every_ledger_command_and_report_refuse_a_missing_ledger(
    tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "nowhere" / "ledger.duckdb"
    r = run_cli(COMMANDS[command](missing, tmp_path, "batch_00"))
    assert r.exit_code == 3, r.output
    assert f"hmb-batch ledger init {missing}" in r.output
    assert not (tmp_path / "nowhere").exists()


def test_item8_ledger_init_creates_an_empty_ledger_and_refuses_an_existing_one(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "new" / "folder" / "ledger.duckdb"
    created = run_cli(["ledger", "init", str(ledger)])
    assert created.exit_code == 0, created.output
    assert ledger.is_file()
    assert all(rows == [] for rows in ledger_snapshot(ledger).values())
    status = run_cli(["ledger", "status", "--ledger", str(ledger)])
    assert status.exit_code == 0 and "0 batch(es) applied" in status.output
    assert golden_batch(ledger, tmp_path, "batch_00").exit_code == 0
    before = ledger_snapshot(ledger)
    again = run_cli(["ledger", "init", str(ledger)])
    assert again.exit_code == 9, again.output
    assert "already exists" in again.output and "never overwrites" in again.output
    assert ledger_snapshot(ledger) == before
    # the write-ahead log of an earlier ledger at a path would be replayed into a new one
    stale = tmp_path / "old.duckdb"
    Path(f"{stale}.wal").write_bytes(b"left over")
    refused = run_cli(["ledger", "init", str(stale)])
    assert refused.exit_code == 9 and f"{stale}.wal already exists" in refused.output
    assert not stale.exists()


def test_item8_ledger_init_takes_the_path_from_hmb_toml(tmp_path: Path) -> None:
    config = tmp_path / "hmb.toml"
    config.write_text('[adjudicate]\nledger = "data/ledger.duckdb"\n', encoding="utf-8")
    r = run_cli(["ledger", "init", "--config", str(config)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data" / "ledger.duckdb").is_file()


# --- item 15: a damaged ledger is exit 9, never a traceback ---------------------------------


def _batches_block(ledger: Path) -> int:
    """Where the block holding the batches table (which every command reads) starts."""
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        block_id = con.execute(
            "SELECT min(block_id) FROM pragma_storage_info('batches') WHERE block_id >= 0"
        ).fetchall()[0][0]
        block_size = con.execute("PRAGMA database_size").fetchall()[0][2]
    finally:
        con.close()
    # DuckDB's file: three 4 KiB headers, then blocks, each starting with its checksum
    offset: int = 3 * 4096 + block_id * block_size
    return offset


def _truncate(ledger: Path) -> None:
    """Cut the file where the batches table's block starts (a cut elsewhere is found by the
    commands that read past it)."""
    os.truncate(ledger, _batches_block(ledger))


def _garbage_in_a_block(ledger: Path) -> None:
    """Overwrite the start of the block holding the batches table."""
    offset = _batches_block(ledger)
    with ledger.open("r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\xa5" * 512)
    # the damage is real: DuckDB itself cannot read the table now
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        with pytest.raises(duckdb.Error, match="checksum"):
            con.execute("SELECT * FROM batches").fetchall()
    finally:
        con.close()


def _drop_table(ledger: Path) -> None:
    con = duckdb.connect(str(ledger))
    con.execute("DROP TABLE settlement_costs")
    con.close()


def _drop_member_state(ledger: Path) -> None:
    con = duckdb.connect(str(ledger))
    con.execute("DROP TABLE member_state")  # the accumulators view over it stays, broken
    con.close()


def _drop_meta(ledger: Path) -> None:
    con = duckdb.connect(str(ledger))
    con.execute("DROP TABLE meta")
    con.close()


def _archive_is_a_file(ledger: Path) -> None:
    shutil.rmtree(f"{ledger}.files")
    Path(f"{ledger}.files").write_text("not a folder\n", encoding="utf-8")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "garbage_in_a_block": _garbage_in_a_block,
    "dropped_table": _drop_table,
    "dropped_member_state": _drop_member_state,
    "dropped_meta": _drop_meta,
    "archive_is_a_file": _archive_is_a_file,
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_item15_a_damaged_ledger_is_refused_with_exit_9(
    base: Path, tmp_path: Path, damage: str, command: str
) -> None:
    ledger = _copy(base, tmp_path / "ledger")
    batch_id = _batch_id(ledger)
    DAMAGES[damage](ledger)
    r = run_cli(COMMANDS[command](ledger, tmp_path, batch_id))
    assert r.exit_code == 9, r.output
    assert f"the ledger at {ledger} is damaged: " in r.output
    assert "restore it from backup" in r.output
    assert not (tmp_path / "out" / "payouts.parquet").exists()
    assert not (tmp_path / "report" / "report.html").exists()


# --- item 17: a full disk during the commit is named, and the ledger is unchanged -----------


class _DiskFullAtCommit:
    """A DuckDB connection whose COMMIT fails as DuckDB's does when the write-ahead log cannot
    be written: DuckDB ends the transaction itself, then raises."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql == "COMMIT":
            self._con.execute("ROLLBACK")
            raise duckdb.TransactionException(
                'TransactionContext Error: Failed to commit: Could not write file "'
                'ledger.duckdb.wal": No space left on device'
            )
        return self._con.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def test_item17_a_commit_failing_for_lack_of_space_names_it_and_changes_nothing(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _copy(base, tmp_path / "ledger")
    before = ledger_snapshot(ledger)
    real_init = Ledger.__init__

    def init(self: Ledger, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        real_init(self, path, _DiskFullAtCommit(con))  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "__init__", init)
    r = golden_batch(ledger, tmp_path, "batch_01")
    assert r.exit_code == 3, r.output
    assert "No space left on device" in r.output and "cannot rollback" not in r.output
    assert "was not applied" in r.output
    monkeypatch.undo()
    assert ledger_snapshot(ledger) == before
    assert not (tmp_path / "batch_01" / "payouts.parquet").exists()


@contextlib.contextmanager
def _small_disk(where: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only; the test is skipped otherwise)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", f"hmb-{uuid.uuid4().hex[:8]}", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Write to a file on ``disk`` until no space is left; return the file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:  # unbuffered: nothing is left to fail at close
            fh.write(b"\0" * (1 << 16))
    return filler


def test_item17_disk_full_during_the_commit_on_a_real_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _small_disk(tmp_path / "disk") as disk:
        ledger = new_ledger(disk / "ledger.duckdb")
        assert golden_batch(ledger, tmp_path / "out", "batch_00").exit_code == 0
        before = ledger_snapshot(ledger)
        real_apply = Ledger.apply
        fillers: list[Path] = []

        def apply(self: Ledger, record: Any, rows: Any, crash_hook: Any = None, **kw: Any) -> None:
            # the archive is written; the disk fills up just before the COMMIT
            real_apply(self, record, rows, crash_hook=lambda _: fillers.append(_fill(disk)), **kw)

        monkeypatch.setattr(Ledger, "apply", apply)
        r = golden_batch(ledger, tmp_path / "out", "batch_01")
        monkeypatch.undo()
        assert fillers, "the commit was not reached"
        assert r.exit_code == 3, r.output
        assert "No space left on device" in r.output and "cannot rollback" not in r.output
        fillers[0].unlink()
        assert ledger_snapshot(ledger) == before
        # with space again the same night applies
        assert golden_batch(ledger, tmp_path / "out", "batch_01").exit_code == 0


def test_item17_disk_full_before_the_commit_on_a_real_file_system(tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk") as disk:
        ledger = new_ledger(disk / "ledger.duckdb")
        assert golden_batch(ledger, tmp_path / "out", "batch_00").exit_code == 0
        before = ledger_snapshot(ledger)
        filler = _fill(disk)
        r = golden_batch(ledger, tmp_path / "out", "batch_01")
        assert r.exit_code == 3, r.output
        assert "No space left on device" in r.output
        filler.unlink()
        assert ledger_snapshot(ledger) == before


# --- item 18: a member without settlements ---------------------------------------------------


def test_item18_ledger_member_without_settlements_is_an_empty_answer(base: Path) -> None:
    r = run_cli(["ledger", "member", "NOBODY", "--ledger", str(base)])
    assert r.exit_code == 0, r.output
    assert "no settlements for member NOBODY" in r.stdout
    r = run_cli(["ledger", "member", "NOBODY", "--year", "2022", "--ledger", str(base)])
    assert r.exit_code == 0 and "no settlements for member NOBODY in 2022" in r.stdout


def test_the_ledger_running_out_of_its_memory_share_is_a_clear_error(tmp_path: Path) -> None:
    """DuckDB out of memory within its share of --memory-limit is exit 5 naming the remedy,
    not an internal error (a 200M-line batch's commit found it)."""
    from hmb_batch.ledger.store import LedgerOutOfMemory, create_ledger, open_ledger

    path = tmp_path / "ledger.duckdb"
    create_ledger(path)
    with open_ledger(path) as ledger:
        ids = pl.DataFrame({"setl_id": [f"S{i:09d}" for i in range(200_000)]})
        ledger.con.register("batch_ids", ids.to_arrow())
        ledger._looked_up = [(ids, ids)]  # the commit's guard joins the batch with these
        ledger._register_lookups()  # as apply does before its transaction
        ledger.con.execute("SET memory_limit = '1MB'")
        with pytest.raises(LedgerOutOfMemory) as caught:
            ledger._already_recorded("batch_ids")
    assert int(caught.value.exit_code) == 5
    assert "--memory-limit" in str(caught.value) and "nothing was applied" in str(caught.value)
