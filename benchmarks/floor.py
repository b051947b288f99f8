"""The read floor: a streaming scan that reduces every input column the adjudication reads.

    python benchmarks/floor.py DATA_DIR [csv]

No engine can adjudicate faster than it can read its input; this is that bound for Polars'
streaming engine on this machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl


def scan(path: Path) -> pl.LazyFrame:
    if path.suffix == ".csv":
        return pl.scan_csv(path, infer_schema=False)
    return pl.scan_parquet(path)


def reduce_all(lf: pl.LazyFrame) -> pl.LazyFrame:
    """One value per column that depends on every row: string lengths, numeric sums."""
    exprs = []
    for name, dtype in lf.collect_schema().items():
        col = pl.col(name)
        if dtype == pl.String:
            exprs.append(col.str.len_bytes().sum().alias(name))
        elif dtype.is_temporal():
            exprs.append(col.max().cast(pl.String).alias(name))
        else:
            exprs.append(col.cast(pl.Float64).sum().alias(name))
    return lf.select(exprs)


if __name__ == "__main__":
    data = Path(sys.argv[1])
    ext = sys.argv[2] if len(sys.argv) > 2 else "parquet"
    frames = [reduce_all(scan(data / f"{n}.{ext}")) for n in ("settlements", "fees")]
    results = pl.collect_all(frames, engine="streaming")
    print(sum(r.width for r in results), "columns reduced")
