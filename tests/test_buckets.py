"""Member buckets: a batch cut into B buckets gives exactly what one bucket gives."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import (
    GOLDEN,
    Extract,
    adjudicate_args,
    golden_args,
    golden_batch,
    ledger_snapshot,
    new_ledger,
    run_cli,
)
from hmb_batch.crash import CRASH_ENV
from hmb_batch.errors import ConfigError
from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS
from hmb_batch.ledger.store import FileArchive
from hmb_batch.run.buckets import GiB, MiB, bucket_count, parse_size
from hmb_batch.run.worker import one_ahead

NIGHTS = ("batch_00", "batch_01", "batch_02")


def _same_outputs(a: Path, b: Path) -> None:
    """Every output file of two runs holds the same rows (the payout file in the same order)."""
    assert_frame_equal(
        pl.read_parquet(a / "payouts.parquet"), pl.read_parquet(b / "payouts.parquet")
    )
    lines_key = ["setl_id", "feedetl_sn"]
    assert_frame_equal(
        pl.read_parquet(a / "lines.parquet").sort(lines_key),
        pl.read_parquet(b / "lines.parquet").sort(lines_key),
    )
    q_key = ["record", "_file", "_row"]
    qa, qb = pl.read_parquet(a / "quarantine.parquet"), pl.read_parquet(b / "quarantine.parquet")
    assert_frame_equal(qa.sort(q_key), qb.select(qa.columns).sort(q_key))
    if (a / "payouts.csv").exists():
        assert (a / "payouts.csv").read_bytes() == (b / "payouts.csv").read_bytes()
    counts = [json.loads((d / "manifest.json").read_text())["counts"] for d in (a, b)]
    assert counts[0] == counts[1]
    # the reconciliation adds buckets up to the same totals; the reports show the same tables
    recon = [json.loads((d / "reconciliation.json").read_text()) for d in (a, b)]
    assert recon[0] == recon[1] and recon[0]["passed"]
    reports = [(d / "report.md").read_text().splitlines() for d in (a, b)]
    assert [x for x in reports[0] if "generated" not in x] == [
        x for x in reports[1] if "generated" not in x
    ]


def _golden_year_twice(tmp_path: Path, ext: str = "parquet") -> None:
    """The golden nights run on two ledgers, in one bucket (``memory``) and in five (``parts``);
    every night's files and the two ledgers must then agree."""
    for mode, extra in (("memory", ("--buckets", "1")), ("parts", ("--buckets", "5"))):
        new_ledger(tmp_path / f"{mode}.duckdb")
        for name in NIGHTS:
            r = run_cli(
                golden_args(
                    name,
                    tmp_path / mode / name,
                    "--csv",
                    *extra,
                    ledger=tmp_path / f"{mode}.duckdb",
                    ext=ext,
                )
            )
            assert r.exit_code == 0, r.output
    for name in NIGHTS:
        _same_outputs(tmp_path / "memory" / name, tmp_path / "parts" / name)


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_golden_year_in_buckets_equals_one_bucket(
    tmp_path: Path, ext: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmb_batch.run.buckets as cut

    # facts and decisions written in many goes (a city-year's are), not one
    monkeypatch.setattr(cut, "FACTS_PER_WRITE", 50)
    monkeypatch.setattr(cut, "DECISIONS_PER_WRITE", 10)
    _golden_year_twice(tmp_path, ext)
    for name in NIGHTS:
        manifest = json.loads((tmp_path / "parts" / name / "manifest.json").read_text())
        assert manifest["buckets"] == 5
        assert not list((tmp_path / "parts" / name).glob(".hmb-spill-*"))  # spill cleaned up
    # quarantines of both kinds came through: validation's (the line stage) and the engine's
    # (the member stage), the engine's with their fee lines (the audit settled), which are
    # then in no line audit
    reasons = pl.concat(
        pl.read_parquet(tmp_path / "parts" / n / "quarantine.parquet").select("reasons")
        for n in NIGHTS
    )["reasons"].explode()
    assert {"DUPLICATE_SETTLEMENT", "AMOUNT_IDENTITY"} <= set(reasons.to_list())
    for n in NIGHTS:
        q = pl.read_parquet(tmp_path / "parts" / n / "quarantine.parquet")
        dup = q.filter(pl.col("reasons").list.contains("DUPLICATE_SETTLEMENT"))
        ids = dup.filter(pl.col("record") == "settlement")["setl_id"]
        with_lines = dup.filter(pl.col("record") == "fee_line")["setl_id"].unique()
        audited = pl.read_parquet(tmp_path / "parts" / n / "lines.parquet")["setl_id"]
        assert not audited.is_in(ids.implode()).any(), n
        if ids.len():
            assert with_lines.is_in(ids.implode()).all() and with_lines.len() > 0, n
    memory, parts = (ledger_snapshot(tmp_path / f"{m}.duckdb") for m in ("memory", "parts"))
    for table in ("settlements", "settlement_costs", "accumulators", "payout_history"):
        assert memory[table] == parts[table], table


@pytest.mark.parametrize("groups", [1, 3])
def test_the_cut_puts_each_settlement_whole_in_one_part_and_each_member_in_one_bucket(
    tmp_path: Path, groups: int
) -> None:
    # validation needs every row and fee line of a settlement together (copies, conflicting
    # duplicates, the header against its lines): the extract is cut by setl_id; the roster by
    # member, the same hash the facts are sent to their member buckets by. Small queries (700
    # rows) cut each file in several chunks: nothing is lost or doubled. In two levels (groups
    # of parts first) each part is one file per table, and holds the same rows
    import hmb_batch.run.buckets as cut

    b = GOLDEN / "batch_01"
    batch = cut.cut_into_buckets(
        [b / "settlements.parquet"],
        [b / "fees.parquet"],
        GOLDEN / "roster.parquet",
        7,
        3,
        tmp_path / "cut",
        column_map={},
        encoding="utf-8",
        timezone="Asia/Shanghai",
        rows_per_query=700,
        groups=groups,
    )
    parts = list(batch.line_parts())
    assert len(parts) == 7
    files = list((tmp_path / "cut" / "fee_lines").glob(f"*/{cut.BUCKET}=0/*.parquet"))
    assert len(files) == 1 if groups > 1 else len(files) > 1
    assert not (tmp_path / "cut" / "groups").exists()
    settlements = pl.concat([p.settlements.with_columns(part=pl.lit(k)) for k, p in parts])
    lines = pl.concat([p.fee_lines.with_columns(part=pl.lit(k)) for k, p in parts])
    s_in = pl.read_parquet(b / "settlements.parquet")
    f_in = pl.read_parquet(b / "fees.parquet")
    assert settlements.height == s_in.height and lines.height == f_in.height
    both = pl.concat([settlements.select("setl_id", "part"), lines.select("setl_id", "part")])
    assert both.group_by("setl_id").agg(pl.col("part").n_unique())["part"].max() == 1
    for k, p in parts:  # each part keeps its rows in input order
        assert p.fee_lines["_row"].is_sorted() and p.settlements["_row"].is_sorted(), k
    rosters = [batch.roster(m).with_columns(bucket=pl.lit(m)) for m in range(3)]
    roster = pl.concat(rosters)
    assert roster.height == pl.read_parquet(GOLDEN / "roster.parquet").height
    assert roster.group_by("psn_no").agg(pl.col("bucket").n_unique())["bucket"].max() == 1
    expected = roster.select("psn_no", cut.bucket_of("psn_no", 3).alias("want"), "bucket")
    assert (expected["want"] == expected["bucket"]).all()


def test_a_batch_cut_in_two_levels_gives_what_one_bucket_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a city-year in hundreds of parts is cut into groups of parts first (cut_groups): forced
    # here on a golden night, the outputs must be those of one bucket
    import hmb_batch.run.buckets as cut

    # the rule itself, at 1 GiB: a 10M-line batch in 30 parts is cut straight, a 200M-line one
    # in 600 parts in two levels (groups of at most 16 parts)
    assert cut.cut_groups(30, 10_000_000, 2_000_000, GiB) == 1
    assert cut.cut_groups(600, 200_000_000, 40_000_000, GiB) == 38
    seen: list[int] = []
    second_level = cut._cut_groups

    def spied(folder: Path, groups: int, parts: int) -> None:
        seen.append(groups)
        second_level(folder, groups, parts)

    monkeypatch.setattr(cut, "_cut_groups", spied)
    for mode, extra in (("memory", ("--buckets", "1")), ("parts", ("--buckets", "7"))):
        if mode == "parts":
            monkeypatch.setattr(cut, "MAX_CUT_FILES", 0)
            monkeypatch.setattr(cut, "PARTS_PER_GROUP", 2)
        r = run_cli(golden_args("batch_01", tmp_path / mode, "--csv", *extra))
        assert r.exit_code == 0, r.output
    assert seen == [4]  # the second run went through 4 groups of at most 2 of its 7 parts
    _same_outputs(tmp_path / "memory", tmp_path / "parts")


def test_a_wide_extract_in_buckets(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    s = pl.read_parquet(b / "settlements.parquet")
    f = pl.read_parquet(b / "fees.parquet")
    shared = set(SETTLEMENTS.names) & set(FEE_LINES.names) - {"setl_id"}
    wide = f.join(s.rename({c: f"setl_{c}" for c in shared}), on="setl_id", how="inner")
    wide.write_parquet(tmp_path / "wide.parquet")
    for mode, extra in (("memory", ("--buckets", "1")), ("parts", ("--buckets", "3"))):
        r = run_cli(
            [
                "adjudicate",
                str(tmp_path / "wide.parquet"),
                "--roster",
                str(GOLDEN / "roster.parquet"),
                "--lists",
                str(GOLDEN / "lists.parquet"),
                "--plan",
                "zhelibao",
                "--out",
                str(tmp_path / mode),
                "--quiet",
                *extra,
            ]
        )
        assert r.exit_code == 0, r.output
    _same_outputs(tmp_path / "memory", tmp_path / "parts")
    assert pl.read_parquet(tmp_path / "parts" / "payouts.parquet").height > 100


def test_a_bucketed_batch_replays_without_touching_the_ledger(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert golden_batch(ledger, tmp_path, "batch_00", "--buckets", "4").exit_code == 0
    before = ledger_snapshot(ledger)
    payouts = (tmp_path / "batch_00" / "payouts.parquet").read_bytes()
    again = golden_batch(ledger, tmp_path, "batch_00", "--buckets", "4", "--json")
    assert again.exit_code == 0 and json.loads(again.output)["replayed"] is True
    assert (tmp_path / "batch_00" / "payouts.parquet").read_bytes() == payouts
    # a lost payout file comes back from the ledger's archive, byte for byte
    (tmp_path / "batch_00" / "payouts.parquet").unlink()
    assert golden_batch(ledger, tmp_path, "batch_00", "--buckets", "4").exit_code == 0
    assert (tmp_path / "batch_00" / "payouts.parquet").read_bytes() == payouts
    # with the archived copy damaged as well, the replay is refused and says what is missing
    archived = FileArchive(ledger).path_of(hashlib.sha256(payouts).hexdigest())
    archived.chmod(0o644)
    archived.write_bytes(payouts[:-1])
    (tmp_path / "batch_00" / "payouts.parquet").unlink()
    refused = golden_batch(ledger, tmp_path, "batch_00", "--buckets", "4")
    assert refused.exit_code == 9
    assert "applied before" in refused.output and "ledger is unchanged" in refused.output
    assert "payouts.parquet" in refused.output and "archive" in refused.output
    assert ledger_snapshot(ledger) == before


def test_memory_limits_are_parsed_and_checked(tmp_path: Path) -> None:
    assert parse_size("1GiB") == GiB == parse_size("1g") == parse_size("1024MB")
    assert parse_size("1.5G") == GiB * 3 // 2 and parse_size("123") == 123
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("lots")
    assert bucket_count(1000, GiB) == 1
    assert bucket_count(50_000_000, GiB) > bucket_count(10_000_000, GiB) > 1
    with pytest.raises(ConfigError, match="too small"):
        bucket_count(1000, 100 * MiB)
    ledger = new_ledger(tmp_path / "l.duckdb")
    r = golden_batch(ledger, tmp_path, "batch_00", "--memory-limit", "100MB")
    assert r.exit_code == 5 and "--memory-limit 100 MiB is too small" in r.output
    assert (
        not (tmp_path / "l.duckdb").exists()
        or ledger_snapshot(tmp_path / "l.duckdb")["batches"] == []
    )


_PEAK = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("PEAK_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
"""


@pytest.mark.slow
def test_a_tiny_memory_limit_holds_and_changes_nothing(tmp_path: Path) -> None:
    """~1M fee lines under a 600 MiB limit: buckets, peak RSS under the limit, same results."""
    hmb = str(Path(sys.executable).parent / "hmb-batch")
    data = tmp_path / "data"
    subprocess.run(
        [
            hmb,
            "generate",
            "--members",
            "100000",
            "--year",
            "2022",
            "--seed",
            "3",
            "--out",
            str(data),
        ],
        check=True,
        capture_output=True,
    )
    base = [
        hmb,
        "adjudicate",
        str(data / "settlements.parquet"),
        "--fees",
        str(data / "fees.parquet"),
        "--roster",
        str(data / "roster.parquet"),
        "--lists",
        str(data / "lists.parquet"),
        "--plan",
        "zhelibao",
        "--csv",
        "--quiet",
    ]
    peaks = {}
    for mode, extra in (("memory", ["--buckets", "1"]), ("bounded", ["--memory-limit", "600MiB"])):
        out = tmp_path / mode
        new_ledger(out / "l.duckdb")
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _PEAK,
                *base,
                "--out",
                str(out),
                "--ledger",
                str(out / "l.duckdb"),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        assert proc.returncode == 0, proc.stderr
        peaks[mode] = int(proc.stdout.split("PEAK_KB")[1]) * 1024
    _same_outputs(tmp_path / "memory", tmp_path / "bounded")
    manifest = json.loads((tmp_path / "bounded" / "manifest.json").read_text())
    assert manifest["buckets"] > 1
    assert peaks["bounded"] < 600 * MiB < peaks["memory"], peaks
    # the manifest's stage peaks are the process's own: the largest is the run's peak
    stage_peak = max(manifest["peak_rss_mib"].values()) * MiB
    assert peaks["bounded"] * 0.8 < stage_peak <= peaks["bounded"], (manifest, peaks)
    memory, bounded = (ledger_snapshot(tmp_path / m / "l.duckdb") for m in ("memory", "bounded"))
    for table in ("settlements", "settlement_costs", "accumulators", "payout_history"):
        assert memory[table] == bounded[table], table


def test_an_empty_batch_in_buckets_writes_empty_files_with_their_columns(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    files = ex.write(tmp_path / "in")
    for mode, extra in (("memory", ("--buckets", "1")), ("parts", ("--buckets", "3"))):
        r = run_cli(adjudicate_args(files, tmp_path / mode, "--quiet", *extra))
        assert r.exit_code == 0, r.output
    _same_outputs(tmp_path / "memory", tmp_path / "parts")
    assert pl.read_parquet(tmp_path / "parts" / "payouts.parquet").height == 0


def _golden_cli(ledger: Path, out: Path, name: str, env: dict[str, str] | None = None) -> Any:
    args = golden_args(name, out / name, "--buckets", "3", ledger=ledger)
    return subprocess.run(
        [str(Path(sys.executable).parent / "hmb-batch"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("stage", ["read", "compute", "commit", "outputs"])
def test_a_bucketed_run_killed_at_any_stage_completes_on_retry(tmp_path: Path, stage: str) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    assert _golden_cli(ledger, tmp_path, "batch_00").returncode == 0
    before = ledger_snapshot(ledger)
    killed = _golden_cli(ledger, tmp_path, "batch_01", {CRASH_ENV: stage})
    assert killed.returncode == -9
    if stage == "outputs":  # after the commit: the files wait in the ledger's archive
        assert len(ledger_snapshot(ledger)["batches"]) == 2
    else:
        assert ledger_snapshot(ledger) == before
    retry = _golden_cli(ledger, tmp_path, "batch_01")
    assert retry.returncode == 0, retry.stderr
    assert not list((tmp_path / "batch_01").glob(".hmb-spill-*"))
    reference = new_ledger(tmp_path / "reference.duckdb")
    for name in ("batch_00", "batch_01"):
        assert _golden_cli(reference, tmp_path / "ref", name).returncode == 0
    got, want = ledger_snapshot(ledger), ledger_snapshot(reference)
    for table in ("settlements", "settlement_costs", "accumulators", "payout_history"):
        assert got[table] == want[table], table
    assert (tmp_path / "batch_01" / "payouts.parquet").read_bytes() == (
        tmp_path / "ref" / "batch_01" / "payouts.parquet"
    ).read_bytes()


def test_an_output_written_bucket_by_bucket_keeps_every_row_when_buckets_differ_in_columns(
    tmp_path: Path,
) -> None:
    # lines.parquet is written straight from the buckets; a bucket whose audit has other
    # columns (a plan year under another edition, whose costs differ) must lose nothing
    from hmb_batch.run.buckets import _Streamed

    (tmp_path / "parts").mkdir()
    out = _Streamed(tmp_path / "lines.parquet", tmp_path / "parts")
    a = pl.DataFrame({"setl_id": ["S1", "S2"], "reasonable_counted": [1, 2]})
    b = pl.DataFrame({"setl_id": ["S3"], "special_counted": [3]})
    empty = pl.DataFrame(schema={"setl_id": pl.String})
    for frame in [empty, a, b, a.head(1)]:
        out.add(frame)
    out.finish()
    got = pl.read_parquet(tmp_path / "lines.parquet").sort("setl_id")
    assert got["setl_id"].to_list() == ["S1", "S1", "S2", "S3"]
    assert got["reasonable_counted"].to_list() == [1, 1, 2, None]
    assert got["special_counted"].to_list() == [None, None, None, 3]


def test_the_payout_file_sorted_out_of_core_is_the_file_sorted_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a batch too big to sort in memory is cut into ranges of setl_time, each sorted on its
    # own; the file must hold the same bytes as one in-memory sort of every row, however the
    # rows were cut into parts, chunks and ranges
    import datetime as dt

    from hmb_batch.run import sorted_file

    monkeypatch.setattr(sorted_file, "ROW_GROUP_ROWS", 64)
    n = 3_000
    start = dt.datetime(2022, 1, 1)
    rows = pl.DataFrame(
        {
            "setl_id": [f"S{(i * 7919) % n:05d}" for i in range(n)],
            # several settlements an hour, some at the same second (setl_id decides)
            "setl_time": [start + dt.timedelta(minutes=(i * 37) % 2_500) for i in range(n)],
            "payout_amt": [i % 97 for i in range(n)],
        }
    ).with_columns(
        pl.when(pl.col("payout_amt") == 5).then(None).otherwise("setl_time").alias("setl_time")
    )
    whole = tmp_path / "whole.parquet"
    sorted_file.write_sorted(rows, whole, 10**9)
    expected = rows.sort("setl_time", "setl_id", nulls_last=True)
    assert_frame_equal(pl.read_parquet(whole), expected)
    for cut in (1, 3, 7, 40):  # 40 parts: chunks of several parts
        parts = []
        for k in range(cut):
            part = tmp_path / f"cut{cut}-{k}.parquet"
            sorted_file.write_part(rows.filter(pl.col("payout_amt") % cut == k), part)
            parts.append(part)
        ranged = tmp_path / f"cut{cut}.parquet"
        # ranges of at most 64 rows, chunks of at most 128
        sorted_file.write_sorted(parts, ranged, 64 * sorted_file.BYTES_PER_PAYOUT_ROW)
        assert ranged.read_bytes() == whole.read_bytes(), cut
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []  # no scratch left


def test_the_stages_worker_gives_results_in_order_and_stops_at_a_failure() -> None:
    """The kernel runs in a worker one item ahead of the writes (run/batch.py): the caller gets
    the results in the items' order whatever each item's time, and a failing item's error
    reaches the caller, with no item after the next one started."""
    seen: list[int] = []
    threads: set[str] = set()

    def slow_first(i: int) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(0.05 if i % 2 == 0 else 0)
        seen.append(i)
        return i * i

    assert list(one_ahead(range(6), slow_first)) == [0, 1, 4, 9, 16, 25]
    assert seen == list(range(6))
    assert threads and threading.current_thread().name not in threads

    started: list[int] = []

    def fails_at_two(i: int) -> int:
        started.append(i)
        if i == 2:
            raise ValueError("item 2 is bad")
        return i

    got: list[int] = []
    with pytest.raises(ValueError, match="item 2 is bad"):
        for value in one_ahead(range(10), fails_at_two):
            got.append(value)
    assert got == [0, 1]
    assert max(started) <= 3  # read one ahead at most: nothing after it was started


def test_a_batch_applied_to_the_ledger_in_groups_records_what_one_group_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big batch's ledger rows are applied in groups of member buckets (each check and join
    of the commit holds one group, within DuckDB's memory limit). Forced here to one bucket a
    group: the ledger holds the same rows as the batch applied whole, and every member has one
    key of its own (the keys' numbers follow the groups, and mean nothing else)."""
    import hmb_batch.ledger.store as store

    monkeypatch.setattr(store, "MIN_ROWS_PER_GROUP", 1)
    monkeypatch.setattr(store, "BYTES_PER_GROUPED_ROW", 1 << 40)
    groups: list[int] = []
    original = store.Ledger._apply_group

    def counted(self: Any, batch_id: str, rows: Any) -> None:
        groups.append(len(rows["settlements"]) if isinstance(rows["settlements"], list) else 0)
        original(self, batch_id, rows)

    monkeypatch.setattr(store.Ledger, "_apply_group", counted)
    _golden_year_twice(tmp_path)
    assert groups.count(1) >= 5 * len(NIGHTS) - 2  # the 5-bucket nights: a group per bucket
    memory, parts = (ledger_snapshot(tmp_path / f"{m}.duckdb") for m in ("memory", "parts"))
    for table in ("settlements", "accumulators", "accumulator_log", "payout_history"):
        assert memory[table] == parts[table], table

    def costs(ledger: Path) -> tuple[list[tuple[Any, ...]], int, int]:
        with duckdb.connect(str(ledger), read_only=True) as con:
            rows = con.execute(
                "SELECT * EXCLUDE (member_key) FROM settlement_costs ORDER BY ALL"
            ).fetchall()
            per_member = con.execute(
                "SELECT max(n) FROM (SELECT count(DISTINCT member_key) n FROM settlement_costs "
                "GROUP BY psn_no)"
            ).fetchall()[0][0]
            shared = con.execute(
                "SELECT max(n) FROM (SELECT count(DISTINCT psn_no) n FROM member_keys "
                "GROUP BY member_key)"
            ).fetchall()[0][0]
        return rows, per_member, shared

    (mem_rows, *_), (part_rows, per_member, shared) = (
        costs(tmp_path / f"{m}.duckdb") for m in ("memory", "parts")
    )
    assert mem_rows == part_rows
    assert per_member == 1 and shared == 1
