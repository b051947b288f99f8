"""README's exit-code table, code by code, through the CLI (issue 13 items 16 and 18).

A cron job and an on-call engineer act on the code alone, so each one is tested at least once
here with the message it comes with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import Extract, adjudicate_args, ledger_snapshot, run_cli, standard_extract
from hmb_batch.ledger.store import open_ledger


def _extract() -> Extract:
    e = standard_extract()
    e.member("P1")
    e.claim("S1", "P1", "2022-03-01 10:00:00", reasonable="20000")
    return e


def _files(tmp_path: Path) -> dict[str, Path]:
    return _extract().write(tmp_path / "in")


def _ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.duckdb"
    assert run_cli(["ledger", "init", str(path)]).exit_code == 0
    return path


def _hmb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as cron runs it."""
    exe = Path(sys.executable).with_name("hmb-batch")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_exit_0_success(tmp_path: Path) -> None:
    r = run_cli(adjudicate_args(_files(tmp_path), tmp_path / "out", "--quiet"))
    assert r.exit_code == 0 and r.output == ""


def test_exit_1_internal_error_names_no_data_and_shows_no_traceback(tmp_path: Path) -> None:
    """A bug (here: a settlement id that crashes a monkeypatched stage) is exit 1 with the
    exception's type and place — not its message, which may quote a certno."""
    files = _files(tmp_path)
    code = (
        "import sys\n"
        "import hmb_batch.rules.kernel as p\n"
        "def boom(*a, **k):\n"
        "    raise ValueError('certno 330102199001011234 broke it')\n"
        "p.check_extract = boom\n"
        "from hmb_batch.cli.app import main\n"
        "sys.argv = ['hmb-batch', *sys.argv[1:]]\n"
        "main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *adjudicate_args(files, tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "internal error: ValueError" in r.stderr and "please report it" in r.stderr
    assert "Traceback" not in r.stderr and "330102199001011234" not in r.stderr + r.stdout


def test_exit_2_usage_unknown_option_and_missing_roster(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert run_cli(adjudicate_args(files, tmp_path / "out", "--no-such-option")).exit_code == 2
    args = adjudicate_args(files, tmp_path / "out")
    i = args.index("--roster")
    del args[i : i + 2]
    r = run_cli(args)
    assert r.exit_code == 2, r.output  # was 5, as if hmb.toml were invalid
    assert "missing: --roster (required" in r.output


def test_exit_3_missing_input_file(tmp_path: Path) -> None:
    files = _files(tmp_path)
    files["fees"] = tmp_path / "in" / "no-such-fees.csv"
    r = run_cli(adjudicate_args(files, tmp_path / "out"))
    assert r.exit_code == 3 and "no-such-fees.csv" in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only folder")
def test_item16_unwritable_output_folder_is_exit_3_before_the_commit(tmp_path: Path) -> None:
    _item16(tmp_path)


def test_item16_output_path_that_is_a_file_is_exit_3_before_the_commit(tmp_path: Path) -> None:
    """The output folder cannot be created (its path is a file): the batch used to be applied
    first, then the run crashed writing its files."""
    ledger = _ledger(tmp_path)
    before = ledger_snapshot(ledger)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    r = run_cli(adjudicate_args(_files(tmp_path), blocker, "--ledger", str(ledger)))
    assert r.exit_code == 3, r.output
    assert "cannot be written" in r.output and "nothing was read or applied" in r.output
    assert ledger_snapshot(ledger) == before


def _item16(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    before = ledger_snapshot(ledger)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = run_cli(adjudicate_args(_files(tmp_path), out, "--ledger", str(ledger)))
    finally:
        out.chmod(0o755)
    assert r.exit_code == 3, r.output
    assert "cannot be written" in r.output
    assert ledger_snapshot(ledger) == before


def test_exit_4_missing_required_column(tmp_path: Path) -> None:
    files = _files(tmp_path)
    pl.read_csv(files["fees"], infer_schema=False).drop("med_list_codg").write_csv(files["fees"])
    r = run_cli(adjudicate_args(files, tmp_path / "out"))
    assert r.exit_code == 4 and "med_list_codg" in r.output
    assert not (tmp_path / "out" / "payouts.parquet").exists()


def test_exit_5_invalid_configuration_and_hints_print_as_written(tmp_path: Path) -> None:
    cfg = tmp_path / "hmb.toml"
    cfg.write_text('[adjudicate]\nno_such_key = 1\n[columns]\nJSID = "nonsense"\n')
    r = run_cli([*adjudicate_args(_files(tmp_path), tmp_path / "out"), "--config", str(cfg)])
    assert r.exit_code == 5 and "no_such_key" in r.output
    # a schema error's hint names [columns]: rich markup used to swallow it ("under .")
    files = _files(tmp_path)
    pl.read_csv(files["fees"], infer_schema=False).drop("med_list_codg").write_csv(files["fees"])
    r = run_cli(adjudicate_args(files, tmp_path / "out"))
    assert "map it in hmb.toml under [columns]" in r.output


def test_exit_6_does_not_reconcile(tmp_path: Path) -> None:
    """A member's year to date edited in the ledger between nights fails ledger.before: exit 6,
    only reconciliation.json written, nothing applied."""
    ledger = _ledger(tmp_path)
    assert (
        run_cli(
            adjudicate_args(_files(tmp_path), tmp_path / "o1", "--ledger", str(ledger))
        ).exit_code
        == 0
    )
    con = duckdb.connect(str(ledger))
    con.execute("UPDATE member_state SET amount_fen = amount_fen + 100 WHERE psn_no = 'P1'")
    con.close()
    night2 = _extract()
    night2.settlements[0]["setl_id"] = "S2"
    night2.settlements[0]["setl_time"] = "2022-03-02 10:00:00"
    for ln in night2.lines:
        ln["setl_id"] = "S2"
    files = night2.write(tmp_path / "night2")
    before = ledger_snapshot(ledger)
    r = run_cli(adjudicate_args(files, tmp_path / "o2", "--ledger", str(ledger)))
    assert r.exit_code == 6, r.output
    assert "ledger.before" in r.output
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["reconciliation.json"]
    assert ledger_snapshot(ledger) == before


def test_exit_7_ledger_busy_names_the_holder(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    with open_ledger(ledger, holder="batch night-42 (pid 4242)"):
        r = run_cli(
            adjudicate_args(
                _files(tmp_path), tmp_path / "out", "--ledger", str(ledger), "--wait", "0.2"
            )
        )
    assert r.exit_code == 7 and "night-42" in r.output


def test_exit_8_bad_roster_row(tmp_path: Path) -> None:
    e = _extract()
    e.roster[0]["pay_date"] = "2021-13-45"
    files = e.write(tmp_path / "in")
    r = run_cli(adjudicate_args(files, tmp_path / "out"))
    assert r.exit_code == 8 and "pay_date" in r.output


def test_exit_9_out_of_order_batch(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    later = _extract()
    later.settlements[0]["setl_time"] = "2022-06-01 10:00:00"
    files = later.write(tmp_path / "later")
    assert run_cli(adjudicate_args(files, tmp_path / "o1", "--ledger", str(ledger))).exit_code == 0
    earlier = _extract()
    earlier.settlements[0]["setl_id"] = "S0"
    for ln in earlier.lines:
        ln["setl_id"] = "S0"
    files = earlier.write(tmp_path / "earlier")
    r = run_cli(adjudicate_args(files, tmp_path / "o2", "--ledger", str(ledger)))
    assert r.exit_code == 9 and "out of order" in r.output
    con = duckdb.connect(str(ledger), read_only=True)
    assert con.execute("SELECT count(*) FROM batches").fetchone() == (1,)
    con.close()


def test_console_script_exit_codes_match_in_process(tmp_path: Path) -> None:
    """The installed `hmb-batch` returns the same codes as the in-process runner (cron sees
    the console script)."""
    files = _files(tmp_path)
    r = _hmb(*adjudicate_args(files, tmp_path / "out", "--quiet"))
    assert r.returncode == 0, r.stderr
    r = _hmb("ledger", "status", "--ledger", str(tmp_path / "typo.duckdb"))
    assert r.returncode == 3 and "ledger init" in r.stderr
