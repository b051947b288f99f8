"""``--engine spark`` without pyspark or Java: exit 2, naming how to install them (no JVM
started, so this runs in the default test run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GOLDEN, run_cli


def test_spark_without_java_or_pyspark_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    b = GOLDEN / "batch_00"
    r = run_cli(
        [
            "adjudicate",
            str(b / "settlements.parquet"),
            "--fees",
            str(b / "fees.parquet"),
            "--roster",
            str(GOLDEN / "roster.parquet"),
            "--lists",
            str(GOLDEN / "lists.parquet"),
            "--no-ledger",
            "--engine",
            "spark",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert r.exit_code == 2, r.output
    assert "pip install 'hmb-batch[spark]'" in r.output or "scripts/ensure-java" in r.output
    assert not (tmp_path / "out" / "payouts").exists()


def test_spark_refuses_a_ledger(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    r = run_cli(
        [
            "adjudicate",
            str(b / "settlements.parquet"),
            "--fees",
            str(b / "fees.parquet"),
            "--roster",
            str(GOLDEN / "roster.parquet"),
            "--lists",
            str(GOLDEN / "lists.parquet"),
            "--ledger",
            str(tmp_path / "ledger.duckdb"),
            "--engine",
            "spark",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert r.exit_code == 2 and "without a DuckDB ledger" in r.output, r.output
    assert "--prior" in r.output and "ledger export" in r.output  # how to carry a year to date


def test_a_failed_spark_job_says_what_to_do_and_quotes_no_data() -> None:
    """A Spark job that fails (a worker out of memory) is exit 5 with what to change, and never
    the Java error's text, which may quote the row being written."""
    from hmb_batch.errors import ExitCode
    from hmb_batch.run.spark import SparkJobFailed, _job_failure

    row = "certno 330102199001011234"
    oom = _job_failure(RuntimeError(f"writing {row}: java.lang.OutOfMemoryError: Java heap"))
    assert "--buckets" in oom and "HMB_SPARK_DRIVER_MEMORY" in oom and row not in oom
    other = _job_failure(ConnectionRefusedError(f"lost the JVM while writing {row}"))
    assert "ConnectionRefusedError" in other and row not in other
    assert SparkJobFailed.exit_code == ExitCode.CONFIG


def test_a_killed_spark_runs_work_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """A Spark run's work folder holds input rows as blobs: one left by a run that is gone (a
    killed driver) is removed; one of a running driver (here: this process) is not."""
    import os
    import subprocess

    from hmb_batch.run.spark import SPARK_WORK_PREFIX
    from hmb_batch.run.spill import remove_stale_folders

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that has exited
    dead = tmp_path / f"{SPARK_WORK_PREFIX}{gone.pid}-0badc0de"
    live = tmp_path / f"{SPARK_WORK_PREFIX}{os.getpid()}-c0ffee00"
    for folder in (dead, live):
        (folder / "settle").mkdir(parents=True)
        (folder / "settle" / "part-0.parquet").write_bytes(b"rows")
    remove_stale_folders(tmp_path, SPARK_WORK_PREFIX)
    assert not dead.exists() and live.exists()
