"""A sweep of one parameter against one adjudicate of the same year (issue 16's target: ten
values in at most twice the time of one run).

    python benchmarks/sweep.py [--lines 10000000] [--values 10] [--memory-limit 1GiB]

Uses the benchmark year of ``benchmarks/run.py`` (generated once, cached under
benchmarks/data). Times, in fresh processes: ``hmb-batch adjudicate`` of the year on a new
ledger, then ``hmb-batch simulate`` of the same extract with ``--sweep`` over ten rates of the
first bracket; prints a Markdown table for BENCHMARKS.md with the command line that made it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import ROOT, ensure_data  # the harness's data, generated once

HMB = Path(sys.executable).with_name("hmb-batch")


def timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one hmb-batch process."""
    probe = (
        "import resource, subprocess, sys;"
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(HMB), *args], capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: hmb-batch {' '.join(args)}\n{proc.stderr}")
    return seconds, int(proc.stdout.strip().splitlines()[-1]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--values", type=int, default=10)
    ap.add_argument("--memory-limit", default="1GiB")
    a = ap.parse_args()
    data = ensure_data(a.lines)
    work = ROOT / "benchmarks" / "data" / "work" / "sweep"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    common = [
        "--roster",
        str(data / "roster.parquet"),
        "--lists",
        str(data / "lists.parquet"),
        "--memory-limit",
        a.memory_limit,
    ]
    ledger = work / "ledger.duckdb"
    subprocess.run([str(HMB), "ledger", "init", str(ledger)], check=True, capture_output=True)
    one, one_rss = timed(
        [
            "adjudicate",
            str(data / "settlements.parquet"),
            "--fees",
            str(data / "fees.parquet"),
            "--plan",
            "zhelibao-2022",
            "--ledger",
            str(ledger),
            "--out",
            str(work / "adjudicate"),
            "--quiet",
            *common,
        ]
    )
    rates = ",".join(f"0.{70 + i:02d}" for i in range(a.values))
    sweep, sweep_rss = timed(
        [
            "simulate",
            str(data / "settlements.parquet"),
            "--fees",
            str(data / "fees.parquet"),
            "--plan",
            "zhelibao-2022",
            "--sweep",
            f"responsibilities.main.brackets.0.rate={rates}",
            "--out",
            str(work / "sweep"),
            "--quiet",
            *common,
        ]
    )
    values = json.loads((work / "sweep" / "sweep.json").read_text())["values"]
    command = " ".join(["python benchmarks/sweep.py", *sys.argv[1:]])
    print(f"Produced by `{command}` ({a.lines:,} fee lines, memory limit {a.memory_limit}).\n")
    print("| run | seconds | peak RSS MiB | × one adjudicate |")
    print("|---|---:|---:|---:|")
    print(f"| adjudicate, one run | {one:.1f} | {one_rss:,} | 1.00 |")
    print(
        f"| simulate --sweep, {len(values)} values | {sweep:.1f} | {sweep_rss:,} | "
        f"{sweep / one:.2f} |"
    )
    print()
    print("| value | payout (yuan) | members paid |")
    print("|---|---:|---:|")
    for v in values:
        print(f"| {v['value']} | {v['payout']} | {v['members_paid']:,} |")


if __name__ == "__main__":
    main()
