"""hmb-batch replay: a past batch run again from its manifest gives its payout file byte for
byte; a changed input or edition is named; the production ledger is never changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import GOLDEN

SRC = Path(__file__).parent.parent / "src"
NIGHTS = ("batch_00", "batch_01", "batch_02")
CLI = (
    "from hmb_batch.cli.app import main; import sys; "
    "sys.argv = ['hmb-batch', *sys.argv[1:]]; main()"
)


def hmb(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, as cron runs it (CI=true: no terminal, no colour)."""
    env = os.environ | {"PYTHONPATH": str(SRC), "CI": "true"}
    return subprocess.run(
        [sys.executable, "-c", CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def answer(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """A --json run's one document."""
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def inputs(root: Path) -> Path:
    """A copy of the golden year's inputs (tests change them)."""
    shutil.copytree(GOLDEN, root / "in", ignore=shutil.ignore_patterns("*.csv", "expected_*"))
    return root / "in"


def night(
    ledger: Path | None, data: Path, name: str, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    """Adjudicate one golden night from ``data`` into ``out/name``."""
    return hmb(
        "adjudicate",
        data / name / "settlements.parquet",
        "--fees",
        data / name / "fees.parquet",
        "--roster",
        data / "roster.parquet",
        "--lists",
        data / "lists.parquet",
        *(["--ledger", ledger] if ledger is not None else ["--no-ledger"]),
        "--out",
        out / name,
        "--quiet",
        *(extra or ("--plan", "zhelibao")),
    )


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A production ledger that applied the golden year's three nights."""
    root = tmp_path_factory.mktemp("production")
    data = inputs(root)
    ledger = root / "ledger.duckdb"
    assert hmb("ledger", "init", ledger).returncode == 0
    for name in NIGHTS:
        r = night(ledger, data, name, root / "out")
        assert r.returncode == 0, r.stderr
    return {"ledger": ledger, "data": data, "out": root / "out"}


def test_night_2_is_reproduced_byte_for_byte_and_the_ledger_is_untouched(
    year: dict[str, Path], tmp_path: Path
) -> None:
    ledger = year["ledger"]
    before = digest(ledger)
    batch = year["out"] / "batch_01"
    r = hmb("replay", batch / "manifest.json", "--out", tmp_path / "replay", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = answer(r)
    assert doc["identical"] is True and doc["exit_code"] == 0
    assert doc["payouts"]["original_sha256"] == doc["payouts"]["replay_sha256"]
    assert (tmp_path / "replay" / "payouts.parquet").read_bytes() == (
        batch / "payouts.parquet"
    ).read_bytes()
    # the other Parquet files too (the inputs are given by the paths the batch was given)
    assert doc["files"] == {
        "payouts.parquet": True,
        "quarantine.parquet": True,
        "lines.parquet": True,
        "reconciliation.json": True,
    }
    # the production ledger: not a byte changed, no log left; the scratch copy is gone
    assert digest(ledger) == before
    assert not ledger.with_name(ledger.name + ".wal").exists()
    assert [p.name for p in (tmp_path / "replay").iterdir() if p.name.startswith(".")] == []
    manifest = json.loads((tmp_path / "replay" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "replay" and manifest["ledger"] is None
    assert manifest["replay"]["identical"] is True
    # night 3 (the ledger's latest) too, given as its folder, for a person: one line says so
    r = hmb("replay", year["out"] / "batch_02", "--out", tmp_path / "replay3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "payouts.parquet reproduced byte for byte" in r.stdout
    assert digest(ledger) == before


def test_a_changed_input_file_is_named_with_both_hashes(
    year: dict[str, Path], tmp_path: Path
) -> None:
    ledger = year["ledger"]
    before = digest(ledger)
    settlements = year["data"] / "batch_01" / "settlements.parquet"
    kept = settlements.read_bytes()
    try:
        # one settlement's total one yuan more
        pl.read_parquet(settlements).with_columns(
            pl.when(pl.int_range(pl.len()) == 0)
            .then(pl.col("medfee_sumamt") + 1)
            .otherwise(pl.col("medfee_sumamt"))
            .alias("medfee_sumamt")
        ).write_parquet(settlements)
        r = hmb(
            "replay", year["out"] / "batch_01" / "manifest.json", "--out", tmp_path / "r", "--json"
        )
    finally:
        settlements.write_bytes(kept)
    assert r.returncode == 3, r.stdout + r.stderr
    error = answer(r)["error"]
    assert error["code"] == "INPUT_UNREADABLE"
    recorded = digest(settlements)  # the original bytes, put back
    assert str(settlements) in error["message"] and recorded in error["message"]
    assert "has changed" in error["message"]
    assert digest(ledger) == before
    assert not (tmp_path / "r" / "payouts.parquet").exists()


def test_a_missing_input_file_is_named(year: dict[str, Path], tmp_path: Path) -> None:
    roster = year["data"] / "roster.parquet"
    moved = roster.rename(roster.with_suffix(".away"))
    try:
        r = hmb("replay", year["out"] / "batch_00", "--out", tmp_path / "r")
    finally:
        moved.rename(roster)
    assert r.returncode == 3
    assert f"roster file {roster} is missing" in r.stderr


def test_a_replay_never_writes_into_the_batch_folder(year: dict[str, Path]) -> None:
    batch = year["out"] / "batch_00"
    before = digest(batch / "payouts.parquet")
    r = hmb("replay", batch / "manifest.json", "--out", batch)
    assert r.returncode == 2 and "the batch's own folder" in r.stderr
    assert digest(batch / "payouts.parquet") == before


def test_a_changed_edition_is_named(tmp_path: Path) -> None:
    data = inputs(tmp_path)
    edition = tmp_path / "my-edition.toml"
    shipped = SRC / "hmb_batch" / "editions" / "zhelibao-2022.toml"
    edition.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    ledger = tmp_path / "ledger.duckdb"
    assert hmb("ledger", "init", ledger).returncode == 0
    r = night(ledger, data, "batch_00", tmp_path / "out", "--plan", edition)
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "out" / "batch_00" / "manifest.json"
    # the edition file as it was: the batch is reproduced from it (the manifest knows the file)
    r = hmb("replay", manifest, "--out", tmp_path / "same")
    assert r.returncode == 0, r.stdout + r.stderr
    # one amount changed in the file's text: named, with the hash recorded and the hash now
    text = edition.read_text(encoding="utf-8")
    changed = text.replace('deductible = "18000.00"', 'deductible = "17000.00"', 1)
    assert changed != text, "the shipped edition's deductible line moved: update this test"
    edition.write_text(changed, encoding="utf-8")
    r = hmb("replay", manifest, "--out", tmp_path / "changed", "--json")
    assert r.returncode == 5, r.stdout + r.stderr
    error = answer(r)["error"]
    recorded = json.loads(manifest.read_text(encoding="utf-8"))["editions"]["zhelibao-2022"]
    assert "edition zhelibao-2022" in error["message"] and str(edition) in error["message"]
    assert recorded in error["message"] and "has changed" in error["message"]


def test_a_payout_file_changed_after_the_run_differs_and_is_listed(tmp_path: Path) -> None:
    data = inputs(tmp_path)
    # without a ledger, the batch's folder holds the only copy of its payout file
    assert night(None, data, "batch_00", tmp_path / "out").returncode == 0
    payouts = tmp_path / "out" / "batch_00" / "payouts.parquet"
    frame = pl.read_parquet(payouts)
    paid = frame.filter(pl.col("payout_amt") > 0)["setl_id"][0]
    frame.with_columns(
        pl.when(pl.col("setl_id") == paid)
        .then(pl.col("payout_amt") + 1)
        .otherwise(pl.col("payout_amt"))
        .alias("payout_amt")
    ).write_parquet(payouts)
    r = hmb("replay", tmp_path / "out" / "batch_00", "--out", tmp_path / "r", "--json")
    assert r.returncode == 11, r.stdout + r.stderr
    doc = answer(r)
    assert doc["identical"] is False and doc["exit_code"] == 11
    assert [d["setl_id"] for d in doc["differences"]] == [paid]
    assert doc["differences"][0]["columns"] == ["payout_amt"]
    values = doc["differences"][0]["values"]["payout_amt"]
    assert float(values["original"]) == float(values["replay"]) + 1
    # for a person: the settlement and the column
    r = hmb("replay", tmp_path / "out" / "batch_00", "--out", tmp_path / "r")
    assert r.returncode == 11
    assert "differs" in r.stdout and f"{paid}: payout_amt" in r.stdout


def test_a_batch_reverted_since_is_replayed_as_it_ran(tmp_path: Path) -> None:
    data = inputs(tmp_path)
    ledger = tmp_path / "ledger.duckdb"
    assert hmb("ledger", "init", ledger).returncode == 0
    for name in NIGHTS[:2]:
        assert night(ledger, data, name, tmp_path / "out").returncode == 0
    r = hmb("ledger", "revert", "--last", "--ledger", ledger, "--reason", "test")
    assert r.returncode == 0, r.stderr
    before = digest(ledger)
    r = hmb("replay", tmp_path / "out" / "batch_01", "--out", tmp_path / "r", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = answer(r)
    assert doc["identical"] is True
    assert any("reverted since" in n for n in doc["notes"])
    assert digest(ledger) == before


def test_a_dry_run_is_not_replayed(year: dict[str, Path], tmp_path: Path) -> None:
    data = year["data"]
    r = hmb(
        "adjudicate",
        data / "batch_02" / "settlements.parquet",
        "--fees",
        data / "batch_02" / "fees.parquet",
        "--roster",
        data / "roster.parquet",
        "--lists",
        data / "lists.parquet",
        "--plan",
        "zhelibao-2022",  # another batch key than the applied night's: a dry run, not a rerun
        "--ledger",
        year["ledger"],
        "--dry-run",
        "--out",
        tmp_path / "dry",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    r = hmb("replay", tmp_path / "dry", "--out", tmp_path / "r")
    assert r.returncode == 9 and "dry run" in r.stderr
