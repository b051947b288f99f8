"""Benchmarks: hmb-batch against the read floor and a plain DuckDB SQL baseline.

    python benchmarks/run.py [--sizes 10000000,50000000] [--repeat 3] [--repeat-large 1]
        [--memory-limit 1GiB] [--in-memory-up-to 10000000] [--out BENCHMARKS.md]

For each size (fee lines), generates an extract (cached under benchmarks/data/, ignored by git)
with the generator's realistic ratio of lines to settlements to members, then runs — each in a
fresh process, median of ``--repeat`` runs, peak RSS from the OS (``wait4``):

1. the read floor (benchmarks/floor.py), Parquet and CSV;
2. ``hmb-batch adjudicate --memory-limit`` on the extract with a fresh ledger, Parquet and CSV
   input (and, up to ``--in-memory-up-to`` lines, an in-memory run for comparison);
3. the DuckDB SQL baseline (benchmarks/baseline.sql), checked against hmb-batch to the fen;
4. (``--nightly``) a nightly batch of ~500k lines against a ledger already holding the year.

Results are written as a Markdown table with the ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent
ANALYSIS_MARKER = "<!-- analysis: kept by benchmarks/run.py -->"
LINES_PER_MEMBER = 10  # the generator's ratio: ~2 settlements and ~10 fee lines per member


@dataclass
class Run:
    """One measured command."""

    label: str
    seconds: float
    peak_rss_mb: float
    ok: bool
    note: str = ""


def measure(
    label: str,
    cmd: list[str],
    repeat: int,
    cwd: Path | None = None,
    before: list[str] | None = None,
) -> Run:
    """Median wall time and the largest peak RSS over ``repeat`` fresh processes.

    GNU time reports the command's own peak RSS (a child forked from this harness would also
    count the harness's pages).
    """
    times, peaks = [], []
    for _ in range(repeat):
        if before:
            subprocess.run(before, check=True, capture_output=True)
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "HMB_PEAK_KB %M", *cmd],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        marks = [ln for ln in proc.stderr.splitlines() if ln.startswith("HMB_PEAK_KB ")]
        peak = int(marks[-1].split()[1]) / 1024 if marks else float("nan")
        if proc.returncode != 0:
            return Run(label, elapsed, peak, False, proc.stderr.strip()[-300:])
        times.append(elapsed)
        peaks.append(peak)
    return Run(label, statistics.median(times), max(peaks), True)


def ensure_data(lines: int) -> Path:
    """A generated extract with about ``lines`` fee lines (and a CSV copy)."""
    folder = DATA / f"lines-{lines}"
    if not (folder / "fees.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        members = max(1000, lines // LINES_PER_MEMBER)
        subprocess.run(
            [
                str(BIN / "hmb-batch"),
                "generate",
                "--members",
                str(members),
                "--year",
                "2022",
                "--seed",
                "2022",
                "--out",
                str(folder),
            ],
            check=True,
        )
    for name in ("settlements", "fees"):
        csv = folder / f"{name}.csv"
        if not csv.exists():
            pl.scan_parquet(folder / f"{name}.parquet").sink_csv(csv)
    return folder


def bench_size(
    lines: int, repeat: int, work: Path, memory_limit: str, in_memory: bool
) -> dict[str, object]:
    data = ensure_data(lines)
    n_lines = pl.scan_parquet(data / "fees.parquet").select(pl.len()).collect().item()
    n_settlements = pl.scan_parquet(data / "settlements.parquet").select(pl.len()).collect().item()
    parquet_mb = (
        sum((data / f"{n}.parquet").stat().st_size for n in ("settlements", "fees")) / 2**20
    )
    py = str(BIN / "python")
    hmb = str(BIN / "hmb-batch")
    out = work / f"out-{lines}"
    ledger = work / f"ledger-{lines}.duckdb"
    # each timed run starts from a fresh, empty ledger (adjudicate refuses a missing one)
    clean = [
        "sh",
        "-c",
        'rm -rf "$1" "$1.lock" "$1.wal" "$1.files" "$2" && "$3" ledger init "$1"',
        "clean",
        str(ledger),
        str(out),
        hmb,
    ]

    def adjudicate(ext: str, *extra: str) -> list[str]:
        return [
            hmb,
            "adjudicate",
            str(data / f"settlements.{ext}"),
            "--fees",
            str(data / f"fees.{ext}"),
            "--roster",
            str(data / "roster.parquet"),
            "--lists",
            str(data / "lists.parquet"),
            "--ledger",
            str(ledger),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]

    limit = ("--memory-limit", memory_limit)
    runs = {
        "floor_parquet": measure(
            "read floor (Parquet)", [py, str(HERE / "floor.py"), str(data)], repeat
        ),
        "floor_csv": measure(
            "read floor (CSV)", [py, str(HERE / "floor.py"), str(data), "csv"], repeat
        ),
        "hmb_parquet": measure(
            f"hmb-batch adjudicate --memory-limit {memory_limit} (Parquet)",
            adjudicate("parquet", *limit),
            repeat,
            before=clean,
        ),
    }
    hmb_payouts = out / "payouts.parquet"
    check = "not checked"
    if runs["hmb_parquet"].ok:
        kept = work / f"hmb-payouts-{lines}.parquet"
        shutil.copy(hmb_payouts, kept)
    runs["hmb_csv"] = measure(
        f"hmb-batch adjudicate --memory-limit {memory_limit} (CSV)",
        adjudicate("csv", *limit),
        repeat,
        before=clean,
    )
    if in_memory:
        runs["hmb_memory"] = measure(
            "hmb-batch adjudicate in memory (Parquet)", adjudicate("parquet"), repeat, before=clean
        )
    baseline_out = work / f"baseline-{lines}.parquet"
    runs["duckdb"] = measure(
        "DuckDB SQL baseline", [py, str(HERE / "baseline.py"), str(data), str(baseline_out)], repeat
    )
    if runs["hmb_parquet"].ok and runs["duckdb"].ok:
        ours = pl.read_parquet(work / f"hmb-payouts-{lines}.parquet").select(
            "setl_id", (pl.col("payout_amt") * 100).cast(pl.Int64).alias("payout_fen")
        )
        theirs = pl.read_parquet(baseline_out).select("setl_id", "payout_fen")
        joined = ours.join(theirs, on="setl_id", how="full", suffix="_sql")
        differ = joined.filter(
            (pl.col("payout_fen") != pl.col("payout_fen_sql")).fill_null(True)
        ).height
        check = "equal to the fen" if differ == 0 else f"{differ} settlements differ"
    return {
        "lines": n_lines,
        "settlements": n_settlements,
        "parquet_mb": parquet_mb,
        "runs": runs,
        "check": check,
    }


def bench_nightly(repeat: int, work: Path, members: int) -> dict[str, object]:
    """A ~500k-line night against a ledger already holding the rest of the year."""
    folder = DATA / f"nightly-{members}"
    nights = max(2, members * LINES_PER_MEMBER // 500_000)
    if not (folder / "nightly").exists():
        subprocess.run(
            [
                str(BIN / "hmb-batch"),
                "generate",
                "--members",
                str(members),
                "--year",
                "2022",
                "--seed",
                "7",
                "--out",
                str(folder),
                "--nights",
                str(nights),
            ],
            check=True,
        )
    hmb = str(BIN / "hmb-batch")
    ledger = work / "nightly.duckdb"
    night_dirs = sorted((folder / "nightly").iterdir())

    def night(d: Path) -> list[str]:
        return [
            hmb,
            "adjudicate",
            str(d / "settlements.parquet"),
            "--fees",
            str(d / "fees.parquet"),
            "--roster",
            str(folder / "roster.parquet"),
            "--lists",
            str(folder / "lists.parquet"),
            "--ledger",
            str(ledger),
            "--out",
            str(work / "nightly-out"),
            "--quiet",
            "--json",
        ]

    if not ledger.exists():
        subprocess.run([hmb, "ledger", "init", str(ledger)], check=True, capture_output=True)
        for d in night_dirs[:-1]:
            subprocess.run(night(d), check=True, capture_output=True)
    last = night_dirs[-1]
    lines = pl.scan_parquet(last / "fees.parquet").select(pl.len()).collect().item()

    def revert_last() -> list[str]:
        return [
            str(BIN / "python"),
            "-c",
            (
                "import sys, duckdb; from hmb_batch.ledger import open_ledger\n"
                f"from pathlib import Path\nwith open_ledger(Path({str(ledger)!r})) as lg:\n"
                "    b = [x for x in lg.batches() if x.status == 'applied']\n"
                "    last = b[-1] if b else None\n"
                f"    if last and last.batch_id.startswith({last.name!r}):\n"
                "        lg.revert(last.batch_id)\n"
            ),
        ]

    run = measure("nightly batch on a year's ledger", night(last), repeat, before=revert_last())
    return {"members": members, "lines": lines, "run": run}


def write_report(
    results: list[dict[str, object]], nightly: dict[str, object] | None, command: str, out: Path
) -> None:
    versions = {m: __import__(m).__version__ for m in ("polars", "duckdb", "pyarrow")}
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"Python {platform.python_version()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        "Each figure: median wall time of fresh processes, peak RSS from the OS (largest run).",
        "",
        "| fee lines | settlements | Parquet MB | what | seconds | peak RSS MB | note |",
        "|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        runs = r["runs"]
        assert isinstance(runs, dict)
        for run in runs.values():
            note = "" if run.ok else f"failed: {run.note}"
            lines.append(
                f"| {r['lines']:,} | {r['settlements']:,} | {r['parquet_mb']:.0f} | "
                f"{run.label} | {run.seconds:.1f} | {run.peak_rss_mb:,.0f} | {note} |"
            )
    lines += [
        "",
        "| fee lines | hmb ÷ floor | hmb ÷ DuckDB | peak RSS ÷ Parquet | CSV ÷ Parquet | "
        "payouts vs DuckDB |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        runs = r["runs"]
        assert isinstance(runs, dict)
        h, f, d, c = runs["hmb_parquet"], runs["floor_parquet"], runs["duckdb"], runs["hmb_csv"]
        lines.append(
            f"| {r['lines']:,} | {h.seconds / f.seconds:.1f} | {h.seconds / d.seconds:.2f} | "
            f"{h.peak_rss_mb / float(r['parquet_mb']):.1f} | "  # type: ignore[arg-type]
            f"{c.seconds / h.seconds:.2f} | {r['check']} |"
        )
    if len(results) >= 2:
        a, b = results[0]["runs"], results[-1]["runs"]
        assert isinstance(a, dict) and isinstance(b, dict)
        lines += [
            "",
            f"Peak RSS at the largest size ÷ at the smallest: "
            f"{b['hmb_parquet'].peak_rss_mb / a['hmb_parquet'].peak_rss_mb:.2f}.",
        ]
    if nightly:
        run = nightly["run"]
        assert isinstance(run, Run)
        lines += [
            "",
            f"Nightly batch: {nightly['lines']:,} fee lines against a ledger holding the "
            f"rest of a {nightly['members']:,}-member year: {run.seconds:.1f} s, "
            f"peak RSS {run.peak_rss_mb:,.0f} MB"
            + ("" if run.ok else f" (failed: {run.note})")
            + ".",
        ]
    # keep the hand-written analysis (everything from the marker on) across re-runs
    kept = ""
    if out.exists():
        text = out.read_text(encoding="utf-8")
        if ANALYSIS_MARKER in text:
            kept = "\n" + text[text.index(ANALYSIS_MARKER) :]
    out.write_text("\n".join(lines) + "\n" + kept, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000000,50000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--repeat-large", type=int, default=1, help="repeats for sizes above 10M lines")
    ap.add_argument("--memory-limit", default="1GiB", help="hmb-batch's --memory-limit")
    ap.add_argument(
        "--in-memory-up-to",
        type=int,
        default=10_000_000,
        help="also run hmb-batch in memory up to this many lines",
    )
    ap.add_argument(
        "--nightly-members",
        type=int,
        default=0,
        help="also run the nightly benchmark against a year of this many members",
    )
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    work = DATA / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = [
        bench_size(
            int(s),
            args.repeat if int(s) <= 10_000_000 else args.repeat_large,
            work,
            args.memory_limit,
            int(s) <= args.in_memory_up_to,
        )
        for s in args.sizes.split(",")
    ]
    nightly = (
        bench_nightly(args.repeat, work, args.nightly_members) if args.nightly_members else None
    )
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    write_report(results, nightly, command.strip(), Path(args.out))
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
