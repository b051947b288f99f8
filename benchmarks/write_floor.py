"""The write floor: what writing a finished batch's outputs and ledger rows costs, no rule run.

    python benchmarks/write_floor.py OUT_DIR LEDGER

OUT_DIR and LEDGER: a finished ``hmb-batch adjudicate`` run's output folder and ledger (one
batch). Times, each on its own, in this process:

- the fee-line audit and the payout file written again as they are (Polars' writer, zstd:
  the fastest way this machine writes them; hmb-batch writes them in pieces with pyarrow's);
- the batch's ledger rows (exported to Parquet first, not timed) inserted into a new empty
  ledger in one transaction, as a commit does, then its commit and the close's checkpoint.

With the read floor (floor.py) this bounds any engine that keeps a ledger and writes these
files: it cannot be faster than reading the input plus these writes.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

TABLES = (
    "settlements",
    "settlement_costs",
    "settlement_responsibilities",
    "accumulator_log",
    "payout_history",
)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(out_dir: Path, ledger: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix="write-floor-"))
    try:
        for name in ("lines.parquet", "payouts.parquet"):
            frame = pl.read_parquet(out_dir / name)
            found[name] = _timed(
                functools.partial(frame.write_parquet, scratch / name, compression="zstd")
            )
            del frame
        with duckdb.connect(str(ledger), read_only=True) as src:
            for table in TABLES:
                src.execute(
                    f"COPY (SELECT * FROM {table}) TO '{scratch / table}.parquet' "
                    "(FORMAT parquet, COMPRESSION lz4)"
                )
            ddl = [
                r[0]
                for r in src.execute(
                    "SELECT sql FROM duckdb_tables() WHERE table_name IN "
                    f"({', '.join(repr(t) for t in TABLES)})"
                ).fetchall()
            ]
        con = duckdb.connect(str(scratch / "ledger.duckdb"))
        con.execute("SET memory_limit = '256MiB'")  # hmb-batch's DuckDB share at 1 GiB
        for statement in ddl:
            con.execute(statement)
        con.execute("BEGIN TRANSACTION")
        for table in TABLES:
            found[f"insert {table}"] = _timed(
                functools.partial(
                    con.execute,
                    f"INSERT INTO {table} SELECT * FROM read_parquet('{scratch / table}.parquet')",
                )
            )
        found["commit"] = _timed(lambda: con.execute("COMMIT"))
        found["close (checkpoint)"] = _timed(con.close)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found["total"] = sum(found.values())
    return found


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps({k: round(v, 2) for k, v in result.items()}, indent=1))
