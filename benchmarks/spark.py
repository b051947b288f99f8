"""The Spark engine against the single-machine run on this machine (issue 17's scaling table).

    python benchmarks/spark.py [--lines 1000000] [--configs local,1x8,2x8,2x64]

Needs the spark extra and Java (``make test-spark`` installs both). Uses the benchmark year of
``benchmarks/run.py`` (generated once, cached under benchmarks/data). Each configuration is one
fresh ``hmb-batch adjudicate --no-ledger`` process: ``local`` the single-machine run, ``TxB``
``--engine spark --spark-master local[T] --buckets B``. Prints a Markdown table with the command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import ROOT, ensure_data  # the harness's data, generated once
from sweep import timed  # one fresh hmb-batch process: wall seconds, peak RSS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--configs", default="local,1x8,2x8,2x64")
    a = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    data = ensure_data(a.lines)
    work = ROOT / "benchmarks" / "data" / "work" / "spark"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    common = [
        "adjudicate",
        str(data / "settlements.parquet"),
        "--fees",
        str(data / "fees.parquet"),
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
