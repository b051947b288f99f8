"""Soak (issue 15 item 12): a generated year as 365 daily cron runs on one ledger — some runs
killed with SIGKILL at a random moment, a batch reverted and applied again every few weeks —
ends equal, settlement by settlement and accumulator by accumulator, to one run of the whole
year on a ledger of its own.

Slow (`make test-slow`): some 365 runs of the real CLI, each a subprocess without a terminal
(CI=true), as cron starts them. The random choices come from one seed, printed at the start;
``HMB_SOAK_SEED=N`` repeats a run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

HMB = Path(sys.executable).parent / "hmb-batch"
MEMBERS = 1000  # some five settlements a day
KILLS = 24  # nights with a killed run, about two a month
REVERT_EVERY = (14, 35)  # days between reverts


def _env() -> dict[str, str]:
    return {**os.environ, "CI": "true"}


def _hmb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HMB), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        env=_env(),
    )


def _ok(*args: str | Path) -> str:
    r = _hmb(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def _night(
    data: Path, folder: Path | str, fees: Path | str, ledger: Path, out: Path | str
) -> list[str]:
    return [
        "adjudicate",
        str(folder),
        "--fees",
        str(fees),
        "--roster",
        str(data / "roster.parquet"),
        "--lists",
        str(data / "lists.parquet"),
        "--plan",
        "zhelibao",
        "--ledger",
        str(ledger),
        "--out",
        str(out),
        "--json",
    ]


def _query(ledger: Path, sql: str) -> list[tuple[Any, ...]]:
    # read-only, with no hmb-batch running: what an analyst's DuckDB shell would see
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _batches(ledger: Path) -> list[tuple[Any, ...]]:
    return _query(ledger, "SELECT seq, batch_id, status FROM batches ORDER BY seq")


def _contents(ledger: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What a year's money is on the ledger: every settlement as adjudicated (its batch id
    aside, which differs between the ledgers), its costs and responsibilities, and every
    member's accumulators."""
    queries = {
        "settlements": "SELECT * EXCLUDE (batch_id) FROM settlements",
        "settlement_costs": "SELECT setl_id, cost, increment_fen, cum_fen FROM settlement_costs",
        "settlement_responsibilities": "SELECT * FROM settlement_responsibilities",
        "accumulators": "SELECT psn_no, plan_year, cost, amount_fen FROM accumulators",
    }
    return {name: sorted(_query(ledger, sql), key=str) for name, sql in queries.items()}


@pytest.mark.slow
def test_a_year_of_nightly_runs_killed_and_reverted_equals_one_whole_year_run(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("HMB_SOAK_SEED") or random.SystemRandom().randrange(1_000_000))
    print(f"\nsoak seed {seed} (HMB_SOAK_SEED={seed} repeats this run)")
    rnd = random.Random(seed)
    started = time.monotonic()
    data = tmp_path / "year"
    _ok("generate", "--members", MEMBERS, "--seed", seed, "--out", data, "--nights", "365")
    nights = sorted((data / "nightly").iterdir())
    assert len(nights) == 365
    ledger = tmp_path / "nightly.duckdb"
    _ok("ledger", "init", ledger)

    killed_on = set(rnd.sample(range(len(nights)), KILLS))
    revert_on = rnd.randint(*REVERT_EVERY)
    seen: Counter[str] = Counter()
    for n, folder in enumerate(nights):
        # each batch its own folder, as cron runs it (README: Running it nightly)
        args = _night(
            data,
            folder / "settlements.parquet",
            folder / "fees.parquet",
            ledger,
            tmp_path / "out" / "{batch_id}",
        )
        committed = False
        if n in killed_on:
            before = _batches(ledger)
            proc = subprocess.Popen(
                [str(HMB), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_env(),
            )
            time.sleep(rnd.uniform(0.0, 1.5))  # a run takes about a second
            proc.kill()
            rc = proc.wait()
            after = _batches(ledger)
            # before the batch or after it, never in between
            committed = after != before
            if committed:
                assert after[:-1] == before and after[-1][2] == "applied", (n, before, after)
            if rc == -9:
                seen["killed after its commit" if committed else "killed before its commit"] += 1
            else:
                assert rc == 0, (folder.name, rc)
                seen["finished before the kill"] += 1
        run = _hmb(*args)
        assert run.returncode == 0, (folder.name, run.stderr)
        result = json.loads(run.stdout)
        # a killed run that had committed: the run again is a replay, the ledger unchanged
        assert not committed or result["replayed"], folder.name
        seen["replayed"] += int(result["replayed"])
        if n >= revert_on and not result["replayed"]:
            batch_id = result["summary"]["batch_id"]
            before = _contents(ledger)
            _ok("ledger", "revert", batch_id, "--ledger", ledger)
            assert _batches(ledger)[-1][1:] == (batch_id, "reverted")
            again = json.loads(_ok(*args))
            assert not again["replayed"] and again["summary"]["batch_id"] == f"{batch_id}-r2"
            assert _contents(ledger) == before
            seen["reverted and applied again"] += 1
            revert_on = n + rnd.randint(*REVERT_EVERY)

    whole = tmp_path / "whole.duckdb"
    _ok("ledger", "init", whole)
    glob = data / "nightly" / "*"
    _ok(*_night(data, glob / "settlements.parquet", glob / "fees.parquet", whole, tmp_path / "w"))

    nightly, once = _contents(ledger), _contents(whole)
    assert len(nightly["settlements"]) > 365 * 3
    assert any(row[-1] for row in once["accumulators"])
    for table in nightly:
        assert nightly[table] == once[table], table
    applied = [b for b in _batches(ledger) if b[2] == "applied"]
    print(
        f"soak seed {seed}: {len(applied)} batches applied, {dict(seen)}, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert seen["reverted and applied again"] >= 365 // REVERT_EVERY[1]
    assert seen["killed before its commit"] > 0
