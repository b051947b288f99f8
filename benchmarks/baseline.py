"""Run the DuckDB SQL baseline (baseline.sql) on a generated extract; print the payout total.

    python benchmarks/baseline.py DATA_DIR [OUT.parquet]

DATA_DIR holds settlements.parquet, fees.parquet, roster.parquet, lists.parquet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

SQL = (Path(__file__).parent / "baseline.sql").read_text(encoding="utf-8")


def run(data: Path, out: Path | None = None, memory_limit: str | None = None) -> int:
    """Run the baseline; return the total payout in fen (and write the payouts if ``out``)."""
    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    for name in ("settlements", "fees", "roster", "lists"):
        con.execute(f"SET VARIABLE {name} = '{data / (name + '.parquet')}'")
    con.execute(SQL)
    total = con.execute("SELECT coalesce(sum(payout_fen), 0) FROM baseline_payouts").fetchall()[0][
        0
    ]
    if out is not None:
        con.execute(f"COPY baseline_payouts TO '{out}' (FORMAT parquet)")
    con.close()
    return int(total)


if __name__ == "__main__":
    data_dir = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    print(run(data_dir, target))
