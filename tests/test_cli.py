"""The command line: every command has help with an example; a real subprocess run works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import GOLDEN, Extract, adjudicate_args, golden_args, run_cli

COMMANDS = [
    [],
    ["adjudicate"],
    ["generate"],
    ["codes"],
    ["plan"],
    ["plan", "list"],
    ["plan", "show"],
    ["plan", "diff"],
    ["plan", "check"],
    ["ledger"],
    ["ledger", "init"],
    ["ledger", "status"],
    ["ledger", "batches"],
    ["ledger", "member"],
    ["ledger", "revert"],
]


def test_readme_lists_every_command() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for command in COMMANDS[1:]:
        if command[0] in ("plan", "ledger") and len(command) == 1:
            continue
        assert f"hmb-batch {' '.join(command)}" in readme, command


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "hmb-batch")
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    r = run_cli([*command, "--help"])
    assert r.exit_code == 0
    assert "Example" in r.output
    assert "hmb-batch" in r.output


def test_codes_have_chinese_and_english_descriptions() -> None:
    r = run_cli(["codes"])
    assert r.exit_code == 0
    for code in (
        "NOT_ENROLLED",
        "WAITING_PERIOD",
        "BASIC_SUSPENDED",
        "NEGATIVE_LIST",
        "NOT_ADMITTED",
        "ORPHAN_REVERSAL",
        "未参保",
        "待遇等待期内",
    ):
        assert code in r.output


def test_adjudicate_in_a_subprocess_with_json_summary(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "hmb-batch"
    proc = subprocess.run(
        [str(exe), *golden_args("batch_00", tmp_path, "--json", "--csv", ext="csv", quiet=False)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    expected = pl.read_parquet(GOLDEN / "expected_payouts.parquet").filter(
        pl.col("batch") == "batch_00"
    )
    assert summary["adjudicated"] == expected.height
    assert summary["quarantined"] == 3 and summary["balanced"] is True
    assert summary["total_payout"] == str(expected["payout_amt"].sum())
    csv = pl.read_csv(tmp_path / "payouts.csv", infer_schema=False)
    parquet = pl.read_parquet(tmp_path / "payouts.parquet")
    assert csv["payout_amt"].to_list() == [str(x) for x in parquet["payout_amt"]]
    # personal data is masked in payout files (tests/test_privacy.py has the details)
    assert all(name.endswith("*") for name in csv["psn_name"].drop_nulls())


def test_missing_input_file_is_exit_code_3(tmp_path: Path) -> None:
    r = run_cli(
        [
            "adjudicate",
            str(tmp_path / "nope.parquet"),
            "--roster",
            str(GOLDEN / "roster.parquet"),
            "--lists",
            str(GOLDEN / "lists.parquet"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert r.exit_code == 3
    assert "nope.parquet: no such file" in r.output


def test_bad_roster_row_stops_the_run_with_the_rows_named(tmp_path: Path) -> None:
    ex = Extract()
    ex.on_list("negative", "NEG1", "2021-01-01")
    ex.on_list("admission", "ADM1", "2021-01-01")
    ex.member("M1", pay_date="2021-13-01")
    ex.member("M1")  # and a second row for the same member and year
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="100")
    files = ex.write(tmp_path / "in")
    r = run_cli(adjudicate_args(files, str(tmp_path / "out")))
    assert r.exit_code == 8
    assert "roster.csv row 1: column pay_date" in r.output and "'2021-13-01'" in r.output
    assert "more than one roster row" in r.output
    assert not (tmp_path / "out").exists()


def test_plan_without_an_edition_for_the_year(tmp_path: Path) -> None:
    ex = Extract()
    ex.on_list("negative", "NEG1", "2021-01-01")
    ex.on_list("admission", "SV1", "2021-01-01")
    ex.member("M1", plan_year=2030)
    ex.claim("S1", "M1", "2030-03-01 10:00:00", reasonable="100")
    files = ex.write(tmp_path / "in")
    args = adjudicate_args(files, str(tmp_path / "out"), "--quiet")
    r = run_cli(args)
    assert r.exit_code == 5 and "no edition for plan year(s) [2030]" in r.output
    # one covered year in the batch: the uncovered settlements are quarantined, not dropped
    ex.member("M1", plan_year=2022)
    ex.claim("S2", "M1", "2022-03-01 10:00:00", reasonable="100")
    files = ex.write(tmp_path / "in")
    assert run_cli(args).exit_code == 0
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    s = q.filter(pl.col("record") == "settlement")
    assert s["setl_id"].to_list() == ["S1"] and s["reasons"].to_list() == [["NO_PLAN_EDITION"]]
    assert q.filter(pl.col("record") == "fee_line")["setl_id"].unique().to_list() == ["S1"]


def test_a_run_under_cron_writes_nothing_to_stderr_and_summarises_on_stdout(
    tmp_path: Path,
) -> None:
    # stderr is a pipe here, as under cron: no progress display, only the summary on stdout
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "hmb-batch"),
            *golden_args("batch_00", tmp_path, quiet=False),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "reconciled 对账" in proc.stdout and "identities hold" in proc.stdout
    assert str(tmp_path / "report.html") in proc.stdout
