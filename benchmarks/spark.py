"""The Spark engine against the single-machine run on this machine (issue 17's scaling table).

    python benchmarks/spark.py [--lines 1000000] [--configs local,1x8,2x8,2x64]

Needs the spark extra and Java (``make test-spark`` installs both). Uses the benchmark year of
``benchmarks/run.py`` (generated once, cached under benchmarks/data). Each configuration is one
fresh ``hmb-batch adjudicate --no-ledger`` process: ``local`` the single-machine run, ``TxB``
``--engine spark --spark-master local[T] --buckets B``. Prints a Markdown table with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import (  # the harness's data, generated once
    DATA,
    ROOT,
    ensure_chunked_data,
    ensure_data,
    table_source,
)
from sweep import timed  # one fresh hmb-batch process: wall seconds, peak RSS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--configs", default="local,1x8,2x8,2x64")
    a = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    layout = DATA / f"lines-{a.lines}" / "layout.json"
    if layout.exists():  # a year generated in chunks (make bench's --huge): parts, as they are
        chunk_lines = json.loads(layout.read_text(encoding="utf-8"))["chunk_lines"]
        data = ensure_chunked_data(a.lines, chunk_lines)
    else:
        data = ensure_data(a.lines)
    work = ROOT / "benchmarks" / "data" / "work" / "spark"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    common = [
        "adjudicate",
        str(table_source(data, "settlements")),  # 50M and up: a folder of parts (a glob)
        "--fees",
        str(table_source(data, "fees")),
        "--roster",
        str(data / "roster.parquet"),
        "--lists",
        str(data / "lists.parquet"),
        "--plan",
        "zhelibao-2022",
        "--no-ledger",
        "--quiet",
    ]
    rows = []
    base = None
    for config in a.configs.split(","):
        out = work / config
        if config == "local":
            args = [*common, "--out", str(out)]
            label = "single machine (--engine local)"
        else:
            threads, buckets = config.split("x")
            args = [
                *common,
                "--out",
                str(out),
                "--engine",
                "spark",
                "--spark-master",
                f"local[{threads}]",
                "--buckets",
                buckets,
            ]
            label = f"Spark local[{threads}], {buckets} buckets"
        seconds, rss = timed(args)
        base = base or seconds
        rows.append((label, seconds, rss))
    command = " ".join(["python benchmarks/spark.py", *sys.argv[1:]])
    print(f"Produced by `{command}` ({a.lines:,} fee lines).\n")
    print("| run | seconds | peak RSS MiB (largest process) | ÷ first row |")
    print("|---|---:|---:|---:|")
    for label, seconds, rss in rows:
        print(f"| {label} | {seconds:.1f} | {rss:,} | {seconds / (base or 1):.2f} |")


if __name__ == "__main__":
    main()
