"""Issue 13 items 9, 10 and 12: personal data in the quarantine, the archive, replays and
temporary copies."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from conftest import Extract, adjudicate_args, new_ledger, run_cli, standard_extract

NAME, CERTNO = "欧阳文华", "331102199001011234"


def _extract() -> Extract:
    """S1 paid, S2 quarantined (unreadable hifp_pay); both carry a name and an ID number."""
    e = standard_extract()
    e.member("P1")
    for sid in ("S1", "S2"):
        e.claim(sid, "P1", "2022-03-01 10:00:00", reasonable="20000", psn_name=NAME, certno=CERTNO)
    e.settlements[1]["hifp_pay"] = "12,5"
    return e


def _values(path: Path) -> set[str]:
    frame = pl.read_parquet(path)
    out: set[str] = set()
    for col in frame.columns:
        out |= {v if isinstance(v, str) else str(v) for v in frame[col].to_list()}
    return out


def _archived(ledger: Path) -> set[str]:
    found: set[str] = set()
    for path in ledger.with_name(ledger.name + ".files").rglob("*"):
        if path.is_file() and path.read_bytes().startswith(b"PAR1"):
            found |= _values(path)
    return found


def test_item09_quarantine_and_archive_mask_personal_data(tmp_path: Path) -> None:
    files = _extract().write(tmp_path / "in")
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    r = run_cli(adjudicate_args(files, tmp_path / "out", "--ledger", str(ledger), "--quiet"))
    assert r.exit_code == 0, r.output
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    s2 = q.filter(pl.col("record") == "settlement").row(0, named=True)
    assert s2["setl_id"] == "S2" and s2["psn_no"] == "P1"  # what an operator needs
    assert s2["psn_name"] == "欧***" and s2["certno"] == "331***********1234"
    assert NAME not in _archived(ledger) and CERTNO not in _archived(ledger)
    # asked for, the quarantine carries them in full (and so does its archived copy)
    ledger2 = new_ledger(tmp_path / "ledger2.duckdb")
    args = adjudicate_args(files, tmp_path / "out2", "--ledger", str(ledger2), "--unmasked")
    assert run_cli(args).exit_code == 0
    q = pl.read_parquet(tmp_path / "out2" / "quarantine.parquet")
    assert q.filter(pl.col("record") == "settlement")["certno"].to_list() == [CERTNO]


def test_item10_replay_writes_what_was_asked_or_refuses(tmp_path: Path) -> None:
    files = _extract().write(tmp_path / "in")
    for first, retry in ((["--unmasked"], []), ([], ["--unmasked"])):
        ledger = new_ledger(tmp_path / f"l{len(first)}.duckdb")
        base = adjudicate_args(files, tmp_path / f"o{len(first)}", "--ledger", str(ledger))
        assert run_cli([*base, *first, "--quiet"]).exit_code == 0
        out = tmp_path / f"retry{len(first)}"
        r = run_cli([*adjudicate_args(files, out, "--ledger", str(ledger)), *retry])
        assert r.exit_code == 9, r.output
        assert "applied before with psn_name and certno" in r.output
        assert not (out / "payouts.parquet").exists()  # nothing written that was not asked
        # the same ask as the first run replays as before
        r = run_cli([*adjudicate_args(files, out, "--ledger", str(ledger)), *first, "--quiet"])
        assert r.exit_code == 0, r.output
        certnos = pl.read_parquet(out / "payouts.parquet")["certno"].to_list()
        assert certnos == ([CERTNO] if first else ["331***********1234"])


def _hmb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("hmb-batch")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def _gbk(files: dict[str, Path]) -> dict[str, Path]:
    """The settlements file re-encoded as GBK (its names are GBK-encodable)."""
    gbk = files["settlements"].with_name("settlements-gbk.csv")
    gbk.write_bytes(files["settlements"].read_text(encoding="utf-8").encode("gbk"))
    return {**files, "settlements": gbk}


def test_item12_no_copy_of_personal_data_outlives_a_killed_run(tmp_path: Path) -> None:
    """A GBK run killed after reading leaves its UTF-8 copy (names, ID numbers) only in the
    output folder's spill area — not in the system temp folder — and the next run of any kind
    there (here an in-memory run) removes it."""
    files = _gbk(_extract().write(tmp_path / "in"))
    out = tmp_path / "out"
    system_tmp = set(Path(tempfile.gettempdir()).glob("hmb-batch-*"))
    killed = _hmb(
        *adjudicate_args(files, out, "--encoding", "gbk"), env={"HMB_TEST_CRASH_AT": "read"}
    )
    assert killed.returncode == -9, killed.stderr
    left = [p for p in out.rglob("*") if p.is_file()]
    assert left and all(".hmb-spill-" in str(p) for p in left)
    assert set(Path(tempfile.gettempdir()).glob("hmb-batch-*")) == system_tmp
    r = run_cli(adjudicate_args(files, out, "--encoding", "gbk", "--quiet"))
    assert r.exit_code == 0, r.output
    assert not list(out.glob(".hmb-spill-*"))
    assert set(Path(tempfile.gettempdir()).glob("hmb-batch-*")) == system_tmp


def test_item12_bounded_run_spill_is_removed_by_a_later_in_memory_run(tmp_path: Path) -> None:
    files = _extract().write(tmp_path / "in")
    out = tmp_path / "out"
    killed = _hmb(*adjudicate_args(files, out, "--buckets", "2"), env={"HMB_TEST_CRASH_AT": "read"})
    assert killed.returncode == -9, killed.stderr
    assert list(out.glob(".hmb-spill-*"))
    r = run_cli(adjudicate_args(files, out, "--quiet"))  # in memory
    assert r.exit_code == 0, r.output
    assert not list(out.glob(".hmb-spill-*"))
