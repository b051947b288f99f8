"""Benchmarks: hmb-batch against the read floor and a plain DuckDB SQL baseline (issue 14).

    python benchmarks/run.py [--sizes 10000000,50000000] [--repeat 3] [--repeat-large 1]
        [--memory-limit 1GiB] [--huge 200000000] [--huge-chunk-lines 10000000]
        [--nightly-members 2000000] [--out BENCHMARKS.md]

For each size (fee lines), generates an extract (cached under benchmarks/data/, ignored by git)
with the generator's realistic ratio of lines to settlements to members, then runs — each in a
fresh process, median of ``--repeat`` runs, peak RSS from the OS (GNU time):

1. the read floor (benchmarks/floor.py), Parquet and CSV;
2. ``hmb-batch adjudicate --memory-limit 1GiB`` on the extract with a fresh ledger (line audit,
   reconciliation and reports included), Parquet and CSV input;
3. ``hmb-batch adjudicate`` with its default memory limit (a quarter of RAM), Parquet;
4. the DuckDB SQL baseline (benchmarks/baseline.sql), unlimited and with
   ``memory_limit='1GB'``, each checked against hmb-batch to the fen.

The 1 GiB Parquet run's manifest.json (last repeat) gives a per-stage table against the floor.

``--huge N`` adds one size that is never held in memory: generated as chunks of
``--huge-chunk-lines`` (one ``hmb-batch generate`` each, ids prefixed per chunk), kept as a
folder of Parquet parts per table, and run only through the 1 GiB hmb-batch run and the 1GB
DuckDB baseline. ``--nightly-members`` adds a ~500k-line night against a ledger holding the rest
of a year of that many members. Results are written as Markdown; everything from
ANALYSIS_MARKER on in the existing file (or in BENCHMARKS.md) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent
HMB = str(BIN / "hmb-batch")
PY = str(BIN / "python")
ANALYSIS_MARKER = "<!-- analysis: kept by benchmarks/run.py -->"
LINES_PER_MEMBER = 10  # the generator's ratio: ~2 settlements and ~10 fee lines per member
HMB_LIMIT = "1GiB"  # issue 14's bound for hmb-batch
DUCKDB_LIMIT = "1GB"  # and the same bound for the DuckDB baseline (its own spelling)
REFERENCE_LINES = 10_000_000  # the size the huge run's peak is compared with
CHUNK_SEED = 2022  # chunk k of the huge extract uses seed CHUNK_SEED + k
CHUNK_IDS = {
    "settlements": ("setl_id", "init_setl_id", "psn_no"),
    "fees": ("setl_id",),
    "roster": ("psn_no",),
}


@dataclass
class Run:
    """One measured command (and, for hmb-batch, the manifest of its last repeat)."""

    label: str
    seconds: float
    peak_rss_mb: float
    ok: bool
    note: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class SizeResult:
    """Everything measured at one size."""

    requested: int
    lines: int
    settlements: int
    parquet_mb: float
    runs: dict[str, Run]
    check: str
    huge: bool = False


def measure(
    label: str,
    cmd: list[str],
    repeat: int,
    before: list[str] | None = None,
    manifest: Path | None = None,
) -> Run:
    """Median wall time and the largest peak RSS over ``repeat`` fresh processes.

    GNU time reports the command's own peak RSS (a child forked from this harness would also
    count the harness's pages). ``before`` runs untimed ahead of every repeat; ``manifest`` is
    read after the last one. Commands run in the work folder so that no hmb.toml of the
    checkout changes their defaults.
    """
    times, peaks = [], []
    for _ in range(repeat):
        if before:
            subprocess.run(before, check=True, capture_output=True)
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "HMB_PEAK_KB %M", *cmd],
            cwd=DATA / "work",
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        marks = [ln for ln in proc.stderr.splitlines() if ln.startswith("HMB_PEAK_KB ")]
        peak = int(marks[-1].split()[1]) / 1024 if marks else float("nan")
        if proc.returncode != 0:
            tail = " ".join(ln for ln in proc.stderr.splitlines() if "HMB_PEAK_KB" not in ln)
            return Run(label, elapsed, peak, False, tail.strip()[-300:])
        times.append(elapsed)
        peaks.append(peak)
    run = Run(label, statistics.median(times), max(peaks), True)
    if manifest is not None and manifest.exists():
        run.manifest = json.loads(manifest.read_text(encoding="utf-8"))
    return run


def generate(members: int, seed: int, out: Path, *extra: str) -> None:
    """One ``hmb-batch generate`` call (it writes in chunks of members, so memory is bounded)."""
    cmd = [HMB, "generate", "--members", str(members), "--year", "2022", "--seed", str(seed)]
    subprocess.run(
        [*cmd, "--out", str(out), *extra],
        check=True,
        capture_output=True,
    )


def ensure_data(lines: int) -> Path:
    """A generated extract with about ``lines`` fee lines (and a CSV copy)."""
    folder = DATA / f"lines-{lines}"
    if not (folder / "fees.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        generate(max(1000, lines // LINES_PER_MEMBER), 2022, folder)
    for name in ("settlements", "fees"):
        csv = folder / f"{name}.csv"
        if not csv.exists():
            pl.scan_parquet(folder / f"{name}.parquet").sink_csv(csv)
    return folder


def _sink_atomic(lf: pl.LazyFrame, target: Path) -> None:
    """Stream ``lf`` to ``target`` through a temporary name, so an interrupted run never leaves
    a part that looks finished."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    lf.sink_parquet(tmp)
    tmp.replace(target)


def ensure_chunked_data(lines: int, chunk_lines: int) -> Path:
    """An extract of about ``lines`` fee lines built from chunks, never whole in memory.

    Each chunk is its own ``hmb-batch generate`` call (seed CHUNK_SEED + k). The generator
    numbers members and settlements from 0 in every call, so each chunk's psn_no, setl_id and
    init_setl_id get the prefix ``Ckkk`` in a streaming rewrite; a reversal keeps pointing at its
    original because both ids get the same prefix. Layout: ``settlements/``, ``fees/`` and
    ``roster/`` folders of ``part-kkk.parquet``, plus ``roster.parquet`` (hmb-batch takes one
    roster file: the parts concatenated by a streaming sink) and the first chunk's
    ``lists.parquet`` (the item catalogue is the same in every chunk, so one list set applies to
    all). Finished parts are kept, so an interrupted generation resumes at the missing chunk.
    """
    folder = DATA / f"lines-{lines}"
    chunks = max(1, -(-lines // chunk_lines))
    layout = {"lines": lines, "chunks": chunks, "chunk_lines": chunk_lines, "seed": CHUNK_SEED}
    marker = folder / "layout.json"
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) != layout:
        shutil.rmtree(folder)  # parts of another chunking would mix two extracts
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(layout), encoding="utf-8")
    members = max(1000, chunk_lines // LINES_PER_MEMBER)
    for k in range(chunks):
        parts = {t: folder / t / f"part-{k:03d}.parquet" for t in CHUNK_IDS}
        if all(p.exists() for p in parts.values()):
            continue
        scratch = folder / f".chunk-{k:03d}"
        shutil.rmtree(scratch, ignore_errors=True)
        generate(members, CHUNK_SEED + k, scratch)
        if not (folder / "lists.parquet").exists():
            shutil.copy(scratch / "lists.parquet", folder / "lists.parquet")
        prefix = pl.lit(f"C{k:03d}")
        for table, ids in CHUNK_IDS.items():
            rewritten = pl.scan_parquet(scratch / f"{table}.parquet").with_columns(
                (prefix + pl.col(c)).alias(c) for c in ids
            )
            _sink_atomic(rewritten, parts[table])
        shutil.rmtree(scratch)
        (folder / "roster.parquet").unlink(missing_ok=True)  # now stale: a part was added
        print(f"huge extract: chunk {k + 1}/{chunks} written", file=sys.stderr)
    if not (folder / "roster.parquet").exists():
        _sink_atomic(pl.scan_parquet(folder / "roster" / "*.parquet"), folder / "roster.parquet")
    return folder


def table_source(data: Path, name: str) -> Path:
    """The file, or the glob of the folder's parts, holding table ``name`` (Parquet)."""
    single = data / f"{name}.parquet"
    return single if single.exists() else data / name / "*.parquet"


def compare_payouts(hmb_payouts: Path, baseline: Path) -> int:
    """Settlements whose payout differs in fen between hmb-batch and the baseline (either side
    missing counts as differing); streamed, so the 200M-line check fits in memory too."""
    ours = pl.scan_parquet(hmb_payouts).select(
        "setl_id", (pl.col("payout_amt") * 100).cast(pl.Int64).alias("payout_fen")
    )
    theirs = pl.scan_parquet(baseline).select("setl_id", "payout_fen")
    return int(
        ours.join(theirs, on="setl_id", how="full", suffix="_sql")
        .filter((pl.col("payout_fen") != pl.col("payout_fen_sql")).fill_null(True))
        .select(pl.len())
        .collect(engine="streaming")
        .item()
    )


def bench_size(
    lines: int, repeat: int, work: Path, *, memory_limit: str, huge: bool, chunk_lines: int
) -> SizeResult:
    """Run every benchmark of one size (for ``huge``: only the two 1 GiB/1GB runs)."""
    data = ensure_chunked_data(lines, chunk_lines) if huge else ensure_data(lines)
    fees, settlements = table_source(data, "fees"), table_source(data, "settlements")
    n_lines = pl.scan_parquet(fees).select(pl.len()).collect().item()
    n_settlements = pl.scan_parquet(settlements).select(pl.len()).collect().item()
    parquet_mb = (
        sum(p.stat().st_size for src in (fees, settlements) for p in src.parent.glob(src.name))
        / 2**20
    )
    runs: dict[str, Run] = {}

    def hmb_run(key: str, label: str, ext: str, *extra: str) -> Run:
        """hmb-batch adjudicate with its own fresh ledger and output folder per repeat."""
        out, ledger = work / f"out-{lines}-{key}", work / f"ledger-{lines}-{key}.duckdb"
        # adjudicate refuses a missing ledger, and a ledger that already holds the batch would
        # replay it instead of adjudicating: so every repeat starts from a new, empty one
        fresh = ["sh", "-c", 'rm -rf "$1" "$1".* "$2" && "$3" ledger init "$1"']
        fresh += ["fresh", str(ledger), str(out), HMB]
        if huge:
            extract, fee_arg = str(data / "settlements"), str(data / "fees")
        else:
            extract, fee_arg = str(data / f"settlements.{ext}"), str(data / f"fees.{ext}")
        cmd = [HMB, "adjudicate", extract, "--fees", fee_arg]
        cmd += ["--roster", str(data / "roster.parquet"), "--lists", str(data / "lists.parquet")]
        cmd += ["--ledger", str(ledger), "--out", str(out), "--quiet", *extra]
        run = measure(label, cmd, repeat, before=fresh, manifest=out / "manifest.json")
        # the ledger (and its file archive, copies of the outputs) is not needed afterwards
        subprocess.run(["sh", "-c", 'rm -rf "$1" "$1".*', "rm", str(ledger)], check=True)
        if key != "hmb_parquet":
            shutil.rmtree(out, ignore_errors=True)  # only the 1 GiB Parquet run's are read
        return run

    def duckdb_run(key: str, label: str, *extra: str) -> Run:
        target = work / f"baseline-{lines}-{key}.parquet"
        spill = work / "duckdb-spill"
        cmd = [PY, str(HERE / "baseline.py"), str(data), str(target), "--temp-directory"]
        run = measure(label, [*cmd, str(spill), *extra], repeat)
        shutil.rmtree(spill, ignore_errors=True)
        return run

    limit = ("--memory-limit", memory_limit)
    if not huge:
        floor = [PY, str(HERE / "floor.py"), str(data)]
        runs["floor_parquet"] = measure("read floor (Parquet)", floor, repeat)
        runs["floor_csv"] = measure("read floor (CSV)", [*floor, "csv"], repeat)
    runs["hmb_parquet"] = hmb_run(
        "hmb_parquet",
        f"hmb-batch adjudicate --memory-limit {memory_limit} (Parquet)",
        "parquet",
        *limit,
    )
    if not huge:
        runs["hmb_csv"] = hmb_run(
            "hmb_csv", f"hmb-batch adjudicate --memory-limit {memory_limit} (CSV)", "csv", *limit
        )
        runs["hmb_default"] = hmb_run(
            "hmb_default", "hmb-batch adjudicate, default memory limit (Parquet)", "parquet"
        )
        runs["duckdb"] = duckdb_run("duckdb", "DuckDB SQL baseline, unlimited")
    runs["duckdb_limited"] = duckdb_run(
        "duckdb_limited",
        f"DuckDB SQL baseline, memory_limit='{DUCKDB_LIMIT}'",
        "--memory-limit",
        DUCKDB_LIMIT,
    )
    checks = []
    ours = work / f"out-{lines}-hmb_parquet" / "payouts.parquet"
    for key, name in (("duckdb", "unlimited"), ("duckdb_limited", DUCKDB_LIMIT)):
        if key in runs and runs["hmb_parquet"].ok and runs[key].ok:
            differ = compare_payouts(ours, work / f"baseline-{lines}-{key}.parquet")
            checks.append(
                f"equal to the fen ({name})" if differ == 0 else f"{differ:,} differ ({name})"
            )
    return SizeResult(
        lines,
        n_lines,
        n_settlements,
        parquet_mb,
        runs,
        "; ".join(checks) or "not checked",
        huge,
    )


def bench_nightly(repeat: int, work: Path, members: int) -> dict[str, Any]:
    """A ~500k-line night against a ledger already holding the rest of the year.

    The ledger is rebuilt every harness run, night by night with the current code, so it never
    carries a layout of an older hmb-batch.
    """
    folder = DATA / f"nightly-{members}"
    nights = max(2, members * LINES_PER_MEMBER // 500_000)
    if not (folder / "nightly").exists():
        generate(members, 7, folder, "--nights", str(nights))
    ledger = work / f"nightly-{members}.duckdb"
    night_dirs = sorted((folder / "nightly").iterdir())
    out = work / "nightly-out"

    def night(d: Path) -> list[str]:
        cmd = [HMB, "adjudicate", str(d / "settlements.parquet"), "--fees", str(d / "fees.parquet")]
        cmd += ["--roster", str(folder / "roster.parquet")]
        cmd += ["--lists", str(folder / "lists.parquet"), "--ledger", str(ledger)]
        return [*cmd, "--out", str(out), "--quiet", "--json"]

    subprocess.run(["sh", "-c", 'rm -rf "$1" "$1".*', "rm", str(ledger)], check=True)
    subprocess.run([HMB, "ledger", "init", str(ledger)], check=True, capture_output=True)
    for d in night_dirs[:-1]:
        subprocess.run(night(d), check=True, capture_output=True, cwd=work)
    last = night_dirs[-1]
    lines = pl.scan_parquet(last / "fees.parquet").select(pl.len()).collect().item()
    # undo the last night before each repeat after the first: applied again unchanged, the
    # same inputs would be replayed from the ledger instead of adjudicated
    revert_last = [
        PY,
        "-c",
        "from pathlib import Path\nfrom hmb_batch.ledger.store import open_ledger\n"
        f"with open_ledger(Path({str(ledger)!r})) as lg:\n"
        "    b = [x for x in lg.batches() if x.status == 'applied']\n"
        f"    if len(b) == {len(night_dirs)}:\n"
        "        lg.revert(b[-1].batch_id)\n",
    ]
    run = measure(
        "nightly batch on a year's ledger (default memory limit)",
        night(last),
        repeat,
        before=revert_last,
        manifest=out / "manifest.json",
    )
    return {"members": members, "lines": lines, "run": run}


def _ratio(a: Run | None, b: Run | None, digits: int = 2) -> str:
    """``a`` ÷ ``b`` in seconds, or a dash when either is missing or failed."""
    if a is None or b is None or not (a.ok and b.ok) or b.seconds <= 0:
        return "—"
    return f"{a.seconds / b.seconds:.{digits}f}"


def _buckets(manifest: dict[str, Any]) -> str:
    """'1 bucket' or 'N buckets' (a run of one bucket records no count)."""
    n = int(manifest.get("buckets", 1))
    return f"{n} bucket" + ("" if n == 1 else "s")


def _stage_table(r: SizeResult) -> list[str]:
    """Stage, seconds, peak MiB and seconds ÷ read floor of the 1 GiB Parquet run's manifest."""
    run = r.runs["hmb_parquet"]
    manifest = run.manifest
    if not run.ok or not manifest:
        return []
    floor = r.runs.get("floor_parquet")
    floor_s = floor.seconds if floor is not None and floor.ok else None
    times: dict[str, float] = manifest.get("timings_seconds", {})
    peaks: dict[str, float] = manifest.get("peak_rss_mib", {})
    out = [
        "",
        f"Stages of {run.label} at {r.lines:,} fee lines ({_buckets(manifest)}; "
        "manifest.json of the last repeat).",
        "",
        "| stage | seconds | peak MiB | seconds ÷ read floor |",
        "|---|---:|---:|---:|",
    ]
    for stage, seconds in times.items():
        ratio = f"{seconds / floor_s:.1f}" if floor_s else "—"
        peak = peaks.get(stage)
        peak_text = f"{peak:,.0f}" if peak is not None else "—"
        out.append(f"| {stage} | {seconds:.1f} | {peak_text} | {ratio} |")
    total = manifest.get("elapsed_seconds", sum(times.values()))
    whole = f"{total / floor_s:.1f}" if floor_s else "—"
    out.append(
        f"| whole run (manifest) | {total:.1f} | {max(peaks.values(), default=0):,.0f} | {whole} |"
    )
    if floor is not None:
        out.append(
            f"| read floor (Parquet), for comparison | {floor.seconds:.1f} | "
            f"{floor.peak_rss_mb:,.0f} | 1.0 |"
        )
    return out


def write_report(
    results: list[SizeResult], nightly: dict[str, Any] | None, command: str, out: Path
) -> None:
    """The Markdown tables, followed by the kept hand-written analysis."""
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
        for run in r.runs.values():
            note = f"failed: {run.note}" if not run.ok else ""
            if run.ok and run.manifest:
                note = _buckets(run.manifest)
            lines.append(
                f"| {r.lines:,} | {r.settlements:,} | {r.parquet_mb:.0f} | "
                f"{run.label} | {run.seconds:.1f} | {run.peak_rss_mb:,.0f} | {note} |"
            )
    lines += [
        "",
        f"hmb = {results[0].runs['hmb_parquet'].label}." if results else "",
        "",
        f"| fee lines | hmb ÷ DuckDB ({DUCKDB_LIMIT}) | hmb ÷ DuckDB unlimited | hmb ÷ floor | "
        "hmb peak RSS MB | CSV ÷ Parquet | payouts vs DuckDB |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        g = r.runs.get
        h = r.runs["hmb_parquet"]
        lines.append(
            f"| {r.lines:,} | {_ratio(h, g('duckdb_limited'))} | {_ratio(h, g('duckdb'))} | "
            f"{_ratio(h, g('floor_parquet'), 1)} | {h.peak_rss_mb:,.0f} | "
            f"{_ratio(g('hmb_csv'), h)} | {r.check} |"
        )
    regular = [r for r in results if not r.huge and r.runs["hmb_parquet"].ok]
    if len(regular) >= 2:
        a, b = regular[0].runs["hmb_parquet"], regular[-1].runs["hmb_parquet"]
        lines += [
            "",
            f"Peak RSS at {regular[-1].lines:,} lines ÷ at {regular[0].lines:,}: "
            f"{b.peak_rss_mb / a.peak_rss_mb:.2f}.",
        ]
    for r in results:
        if not r.huge or not r.runs["hmb_parquet"].ok:
            continue
        # compare with the 10M-line run when it was measured, else with the nearest size below
        below = [x for x in regular if x.requested <= REFERENCE_LINES] or regular
        if below:
            ref = next((x for x in below if x.requested == REFERENCE_LINES), below[-1])
            ratio = r.runs["hmb_parquet"].peak_rss_mb / ref.runs["hmb_parquet"].peak_rss_mb
            lines += [
                "",
                f"Peak RSS at {r.lines:,} lines ÷ at {ref.lines:,} (1 GiB, Parquet): {ratio:.2f}.",
            ]
    for r in results:
        lines += _stage_table(r)
    if nightly:
        run = nightly["run"]
        buckets = f", {_buckets(run.manifest)}" if run.manifest else ""
        lines += [
            "",
            f"Nightly batch: {nightly['lines']:,} fee lines against a ledger holding the "
            f"rest of a {nightly['members']:,}-member year (default memory limit{buckets}): "
            f"{run.seconds:.1f} s, peak RSS {run.peak_rss_mb:,.0f} MB"
            + ("" if run.ok else f" (failed: {run.note})")
            + ".",
        ]
    out.write_text("\n".join(lines) + "\n" + kept_analysis(out), encoding="utf-8")


def kept_analysis(out: Path) -> str:
    """The hand-written analysis (from ANALYSIS_MARKER on) of ``out``, else of BENCHMARKS.md,
    so a report written elsewhere (``--out /tmp/…``) still carries it."""
    for source in (out, ROOT / "BENCHMARKS.md"):
        if source.exists():
            text = source.read_text(encoding="utf-8")
            if ANALYSIS_MARKER in text:
                return "\n" + text[text.index(ANALYSIS_MARKER) :]
    return ""


def main() -> None:
    """Parse the options, run every benchmark, write the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000000,50000000", help="fee lines, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--repeat-large", type=int, default=1, help="repeats for sizes above 10M lines")
    ap.add_argument(
        "--memory-limit", default=HMB_LIMIT, help="hmb-batch's --memory-limit for the bounded runs"
    )
    ap.add_argument(
        "--huge",
        type=int,
        default=0,
        help="also run a chunked extract of this many fee lines (1 GiB hmb, 1GB DuckDB only)",
    )
    ap.add_argument(
        "--huge-chunk-lines",
        type=int,
        default=10_000_000,
        help="fee lines per generated chunk of the --huge extract",
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
            args.repeat if int(s) <= REFERENCE_LINES else args.repeat_large,
            work,
            memory_limit=args.memory_limit,
            huge=False,
            chunk_lines=args.huge_chunk_lines,
        )
        for s in args.sizes.split(",")
    ]
    if args.huge:
        results.append(
            bench_size(
                args.huge,
                1,
                work,
                memory_limit=args.memory_limit,
                huge=True,
                chunk_lines=args.huge_chunk_lines,
            )
        )
    nightly = (
        bench_nightly(args.repeat, work, args.nightly_members) if args.nightly_members else None
    )
    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    if os.environ.get("MAKELEVEL"):  # make exports it to its recipes: say which target ran
        command = f"make bench` → `{command}"
    write_report(results, nightly, command, Path(args.out))
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
