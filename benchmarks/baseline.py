"""Run the DuckDB SQL baseline (baseline.sql) on a generated extract; print the payout total.

    python benchmarks/baseline.py DATA_DIR [OUT.parquet] [--memory-limit 1GB]
        [--temp-directory DIR]

DATA_DIR holds settlements, fees, roster and lists, each either as ``NAME.parquet`` or as a
folder ``NAME/`` of Parquet chunks (the chunked 200M-line extract), read as one table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

SQL = (Path(__file__).parent / "baseline.sql").read_text(encoding="utf-8")
TABLES = ("settlements", "fees", "roster", "lists")


def table_path(data: Path, name: str) -> str:
    """The file, or the glob of a folder's chunks, that holds table ``name`` of the extract.

    DuckDB's ``read_parquet`` takes a glob string as it takes a path, so baseline.sql reads
    both layouts unchanged.
    """
    single = data / f"{name}.parquet"
    if single.exists():
        return str(single)
    folder = data / name
    if folder.is_dir():
        return str(folder / "*.parquet")
    raise FileNotFoundError(f"{data} has neither {single.name} nor a folder {name}/")


def run(
    data: Path,
    out: Path | None = None,
    memory_limit: str | None = None,
    temp_directory: Path | None = None,
) -> int:
    """Run the baseline; return the total payout in fen (and write the payouts if ``out``)."""
    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_directory is not None:
        # where DuckDB spills what does not fit the limit; the default (.tmp in the working
        # directory) would leave spill files wherever the harness happens to run
        con.execute(f"SET temp_directory = '{temp_directory}'")
    for name in TABLES:
        con.execute(f"SET VARIABLE {name} = '{table_path(data, name)}'")
    con.execute(SQL)
    total = con.execute("SELECT coalesce(sum(payout_fen), 0) FROM baseline_payouts").fetchall()[0][
        0
    ]
    if out is not None:
        con.execute(f"COPY baseline_payouts TO '{out}' (FORMAT parquet)")
    con.close()
    return int(total)


def main() -> None:
    """Command line: run the baseline once in this (fresh) process."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", type=Path, help="the extract's folder")
    ap.add_argument("out", type=Path, nargs="?", help="write the payouts here (Parquet)")
    ap.add_argument("--memory-limit", help="DuckDB's memory_limit, e.g. 1GB (default: DuckDB's)")
    ap.add_argument("--temp-directory", type=Path, help="DuckDB's temp_directory for spilling")
    args = ap.parse_args()
    print(run(args.data, args.out, args.memory_limit, args.temp_directory))


if __name__ == "__main__":
    main()
