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
    assert r.exit_code == 2 and "without a ledger" in r.output, r.output
