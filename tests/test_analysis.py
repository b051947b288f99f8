"""Analysts' runs through the CLI, as an analyst runs them (no terminal, CI=true): a year
simulated under another edition, a comparison checked against the rule change worked out by
hand, and the production ledger left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

EXE = Path(sys.executable).with_name("hmb-batch")
# 浙丽保 (丽政办发〔2020〕80号 三(五)): the compliant cost counts above the floor (18,000 yuan in
# 2022, 13,000 in 2023), the reasonable cost above its 18,000 deductible; their sum is paid in
# brackets of the year to date: 75% to 200,000, 85% to 500,000, 90% to 1,000,000, then 95%
FLOOR = {"zhelibao-2022": Decimal(18000), "zhelibao-2023": Decimal(13000)}
DEDUCTIBLE = Decimal(18000)
BANDS = [
    (Decimal(0), Decimal("0.75")),
    (Decimal(200000), Decimal("0.85")),
    (Decimal(500000), Decimal("0.90")),
    (Decimal(1000000), Decimal("0.95")),
]


def hmb(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": "true"}
    return subprocess.run(
        [str(EXE), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


def ok(*args: str | Path, cwd: Path | None = None) -> Any:
    proc = hmb(*args, "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def benefit(payable: Decimal) -> Decimal:
    """B(P) by hand: the brackets on the year to date, half up to the fen."""
    total = Decimal(0)
    for i, (low, rate) in enumerate(BANDS):
        high = BANDS[i + 1][0] if i + 1 < len(BANDS) else None
        part = (payable if high is None else min(payable, high)) - low
        total += rate * max(Decimal(0), part)
    return total.quantize(Decimal("0.01"), ROUND_HALF_UP)


def year_end_costs(ledger: Path) -> dict[str, tuple[Decimal, Decimal]]:
    """Each member's compliant and reasonable cost for 2022 at the end of the scenario."""
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        rows = con.execute(
            "SELECT psn_no, cost, amount_fen FROM member_state WHERE plan_year = 2022"
        ).fetchall()
    finally:
        con.close()
    costs: dict[str, dict[str, Decimal]] = {}
    for psn, cost, fen in rows:
        costs.setdefault(psn, {})[cost] = Decimal(fen) / 100
    return {
        p: (c.get("compliant", Decimal(0)), c.get("reasonable", Decimal(0)))
        for p, c in costs.items()
    }


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 浙丽保 year in two nights, and a production ledger with its first night."""
    root = tmp_path_factory.mktemp("analysis")
    gen = root / "gen"
    assert (
        hmb("generate", "--members", 3000, "--seed", 5, "--out", gen, "--nights", 2).returncode == 0
    )
    (root / "hmb.toml").write_text(
        f'[adjudicate]\nroster = "{gen / "roster.parquet"}"\nlists = "{gen / "lists.parquet"}"\n'
        f'ledger = "{root / "production.duckdb"}"\nplan = "zhelibao"\n'
    )
    assert hmb("ledger", "init", cwd=root).returncode == 0
    assert (
        hmb(
            "adjudicate", gen / "nightly" / "01", "--out", root / "n01", "--quiet", cwd=root
        ).returncode
        == 0
    )
    return root


def test_2022_under_2023_rules_pays_the_floor_change_and_compare_says_how_much(year: Path) -> None:
    production = year / "production.duckdb"
    before = sha(production)
    nights = [year / "gen" / "nightly" / n for n in ("01", "02")]
    a = ok("simulate", *nights, "--plan", "zhelibao-2022", "--out", year / "a", cwd=year)
    b = ok("simulate", *nights, "--plan", "zhelibao-2023", "--out", year / "b", cwd=year)
    (ya,), (yb,) = a["plan_years"], b["plan_years"]
    assert (ya["plan_year"], yb["plan_year"]) == (2022, 2022)
    # the same costs either way: the floor is applied to the year to date, not to the lines
    costs = year_end_costs(year / "a" / "scenario.duckdb")
    assert costs == year_end_costs(year / "b" / "scenario.duckdb")
    by_hand = {}
    for edition, floor in FLOOR.items():
        by_hand[edition] = {
            psn: benefit(max(Decimal(0), c - floor) + max(Decimal(0), r - DEDUCTIBLE))
            for psn, (c, r) in costs.items()
        }
    total = {e: sum(v.values(), Decimal(0)) for e, v in by_hand.items()}
    assert Decimal(ya["payout"]) == total["zhelibao-2022"]
    assert Decimal(yb["payout"]) == total["zhelibao-2023"]
    assert total["zhelibao-2023"] > total["zhelibao-2022"]  # 13,000–18,000 now counted

    doc = ok("compare", year / "a", year / "b", "--out", year / "cmp")
    assert Decimal(doc["difference"]) == total["zhelibao-2023"] - total["zhelibao-2022"]
    gainers = {p for p in costs if by_hand["zhelibao-2023"][p] > by_hand["zhelibao-2022"][p]}
    assert doc["members"]["gained"] == len(gainers) and doc["members"]["lost"] == 0
    newly = {p for p in gainers if by_hand["zhelibao-2022"][p] == 0}
    assert doc["members"]["newly_paid"] == len(newly)
    gain = {p: by_hand["zhelibao-2023"][p] - by_hand["zhelibao-2022"][p] for p in gainers}
    top = min(gainers, key=lambda p: (-gain[p], p))  # ties in psn_no order
    assert doc["members"]["largest_gains"][0]["psn_no"] == top
    assert Decimal(doc["members"]["largest_gains"][0]["change"]) == gain[top]
    by_month = doc["by"]["month"]
    assert sum(Decimal(r["change"]) for r in by_month) == Decimal(doc["difference"])
    for name in ("compare.html", "compare.md", "members.parquet"):
        assert (year / "cmp" / name).exists()
    # the production ledger was never opened for writing
    assert sha(production) == before


def test_compare_reads_a_production_ledger_without_changing_it(year: Path) -> None:
    production = year / "production.duckdb"
    before = sha(production)
    night = year / "gen" / "nightly" / "01"
    ok("simulate", night, "--plan", "zhelibao-2022", "--out", year / "same", cwd=year)
    doc = ok("compare", production, year / "same", "--out", year / "cmp-prod")
    # night 1 under the same edition: nothing changes
    assert Decimal(doc["difference"]) == 0 and doc["members"]["changed"] == 0
    assert doc["a"]["payout"] == doc["b"]["payout"]
    assert sha(production) == before


def test_a_scenario_folder_is_not_overwritten_without_force(year: Path) -> None:
    night = year / "gen" / "nightly" / "02"
    ok("simulate", night, "--plan", "zhelibao-2022", "--out", year / "again", cwd=year)
    refused = hmb("simulate", night, "--out", year / "again", cwd=year)
    assert refused.returncode == 2 and "--force" in refused.stderr
    ok("simulate", night, "--out", year / "again", "--force", cwd=year)


FLOOR_PATH = "responsibilities.main.terms.0.floor"


def test_set_the_floor_pays_what_the_edition_with_that_floor_pays(year: Path) -> None:
    """zhelibao-2023 differs from 2022 only in that floor (plan diff says so): 2022 with the
    floor set to 13,000 must pay, settlement by settlement, what 2023 pays."""
    night = year / "gen" / "nightly" / "02"
    diff = hmb("plan", "diff", "zhelibao-2022", "zhelibao-2023")
    assert diff.returncode == 0 and "13,000.00" in diff.stdout
    doc = ok(
        "simulate",
        night,
        "--plan",
        "zhelibao-2022",
        "--set",
        f"{FLOOR_PATH}=13000",
        "--out",
        year / "set",
        cwd=year,
    )
    assert doc["changes"] == [f"{FLOOR_PATH}=13000"]
    (edition,) = doc["editions"]
    assert edition.startswith("zhelibao-2022+")  # its own id, not the shipped edition's
    ok("simulate", night, "--plan", "zhelibao-2023", "--out", year / "e23", cwd=year)
    diff_doc = ok("compare", year / "set", year / "e23", "--out", year / "set-vs-2023")
    assert Decimal(diff_doc["difference"]) == 0 and diff_doc["members"]["changed"] == 0
    assert diff_doc["status_changes"] == []
    # the scenario's own edition (not shipped) is rebuilt from simulation.json for its premium
    ratio_a, ratio_b = diff_doc["a"]["loss_ratio"], diff_doc["b"]["loss_ratio"]
    assert ratio_a is not None and ratio_a["loss_ratio"] == ratio_b["loss_ratio"]


def test_an_invalid_set_is_exit_5_naming_it(year: Path) -> None:
    night = year / "gen" / "nightly" / "02"
    proc = hmb(
        "simulate",
        night,
        "--set",
        "responsibilities.main.brackets.0.rate=1.5",
        "--out",
        year / "bad",
        cwd=year,
    )
    assert proc.returncode == 5 and "brackets.0.rate" in proc.stderr
    assert not (year / "bad" / "scenario.duckdb").exists()


def test_a_sweep_equals_separate_runs_to_the_fen(year: Path) -> None:
    nights = [year / "gen" / "nightly" / n for n in ("01", "02")]
    production = year / "production.duckdb"  # named by hmb.toml here: a sweep never opens it
    before = sha(production)
    floors = ["9000", "13000", "18000"]
    swept = ok(
        "simulate",
        *nights,
        "--plan",
        "zhelibao-2022",
        "--sweep",
        f"{FLOOR_PATH}={','.join(floors)}",
        "--out",
        year / "sweep",
        cwd=year,
    )["sweep"]
    assert swept["parameter"] == FLOOR_PATH
    assert [v["value"] for v in swept["values"]] == floors
    for floor, value in zip(floors, swept["values"], strict=True):
        alone = ok(
            "simulate",
            *nights,
            "--plan",
            "zhelibao-2022",
            "--set",
            f"{FLOOR_PATH}={floor}",
            "--out",
            year / f"alone-{floor}",
            cwd=year,
        )
        (y,) = alone["plan_years"]
        assert value["payout"] == y["payout"]
        assert value["members_paid"] == y["members_paid"]
        assert value["loss_ratios"][0]["loss_ratio"] == y["loss_ratio"]["loss_ratio"]
    payouts = [Decimal(v["payout"]) for v in swept["values"]]
    assert payouts == sorted(payouts, reverse=True)  # a lower floor pays more
    for name in ("sweep.json", "sweep.md", "sweep.html"):
        assert (year / "sweep" / name).exists()
    assert sha(production) == before
    # replaced by a scenario without a sweep: no sweep file of the old one is left beside it
    ok("simulate", *nights, "--plan", "zhelibao-2023", "--out", year / "sweep", "--force", cwd=year)
    assert not any((year / "sweep" / n).exists() for n in ("sweep.json", "sweep.md", "sweep.html"))


def test_a_what_if_for_the_rest_of_the_year_starts_from_the_ledger_as_of_a_batch(
    year: Path,
) -> None:
    """The production ledger holds night 1. Night 2 simulated from a copy of it as of night 1
    pays what night 2 pays when it is applied: no settlement is a duplicate."""
    production = year / "production.duckdb"
    batches = ok("ledger", "batches", cwd=year)
    night1 = batches[0]["batch_id"]
    before = sha(production)
    night2 = year / "gen" / "nightly" / "02"
    what_if = ok(
        "simulate",
        night2,
        "--plan",
        "zhelibao",
        "--from-ledger",
        production,
        "--as-of",
        night1,
        "--out",
        year / "rest",
        cwd=year,
    )
    assert sha(production) == before
    real = hmb("adjudicate", night2, "--out", year / "real-n02", "--quiet", cwd=year)
    assert real.returncode == 0, real.stderr
    import polars as pl

    simulated = pl.read_parquet(year / "rest" / "batches" / "01" / "payouts.parquet")
    applied = pl.read_parquet(year / "real-n02" / "payouts.parquet")
    assert simulated.height == applied.height and "DUPLICATE_SETTLEMENT" not in str(
        simulated["reasons"].to_list()
    )
    assert simulated["payout_amt"].to_list() == applied["payout_amt"].to_list()
    (y,) = what_if["plan_years"]
    assert Decimal(y["payout"]) == applied["payout_amt"].sum()
    # a capped sweep from the ledger as of night 1 equals separate runs from the same state
    caps = ["3000", "50000"]
    capped = ok(
        "simulate",
        night2,
        "--plan",
        "zhelibao",
        "--from-ledger",
        production,
        "--as-of",
        night1,
        "--sweep",
        f"responsibilities.main.cap={','.join(caps)}",
        "--out",
        year / "caps",
        cwd=year,
    )["sweep"]["values"]
    for cap, value in zip(caps, capped, strict=True):
        alone = ok(
            "simulate",
            night2,
            "--plan",
            "zhelibao",
            "--from-ledger",
            production,
            "--as-of",
            night1,
            "--set",
            f"responsibilities.main.cap={cap}",
            "--out",
            year / f"cap-{cap}",
            cwd=year,
        )
        (y,) = alone["plan_years"]
        assert (value["payout"], value["members_paid"]) == (y["payout"], y["members_paid"])
    # night 1 again is in the copy already: refused, not counted as the scenario's
    again = hmb(
        "simulate",
        year / "gen" / "nightly" / "01",
        "--plan",
        "zhelibao",
        "--from-ledger",
        production,
        "--as-of",
        night1,
        "--out",
        year / "twice",
        cwd=year,
    )
    assert again.returncode == 9 and "already in the scenario's ledger" in again.stderr
    assert sha(production) != before  # night 2 was applied above, for real
    # put the production ledger back as the other tests expect it
    assert hmb("ledger", "revert", "--last", cwd=year).returncode == 0


def test_an_extract_spanning_two_plan_years_is_reported_per_year_side_by_side(
    tmp_path: Path,
) -> None:
    import polars as pl

    gen = tmp_path / "gen"
    made = hmb("generate", "--members", 1500, "--seed", 3, "--years", 2, "--out", gen)
    assert made.returncode == 0, made.stderr
    doc = ok(
        "simulate",
        gen / "settlements.parquet",
        "--fees",
        gen / "fees.parquet",
        "--roster",
        gen / "roster.parquet",
        "--lists",
        gen / "lists.parquet",
        "--plan",
        "zhelibao",
        "--out",
        tmp_path / "two",
    )
    assert sorted(doc["editions"]) == ["zhelibao-2022", "zhelibao-2023"]  # the ones used
    years = {y["plan_year"]: y for y in doc["plan_years"]}
    assert sorted(years) == [2022, 2023]
    payouts = pl.read_parquet(tmp_path / "two" / "batches" / "01" / "payouts.parquet")
    for year, y in years.items():
        rows = payouts.filter(pl.col("plan_year") == year)
        assert Decimal(y["payout"]) == rows["payout_amt"].sum()
        assert y["settlements"] == rows.height
        assert (tmp_path / "two" / f"report-{year}.html").exists()
    table = (tmp_path / "two" / "simulation.md").read_text()
    assert "| | 2022 | 2023 |" in table
    swept = ok(
        "simulate",
        gen / "settlements.parquet",
        "--fees",
        gen / "fees.parquet",
        "--roster",
        gen / "roster.parquet",
        "--lists",
        gen / "lists.parquet",
        "--plan",
        "zhelibao",
        "--sweep",
        f"{FLOOR_PATH}=12000,16000",
        "--out",
        tmp_path / "sw",
    )["sweep"]["values"]
    assert [lr["plan_year"] for lr in swept[0]["loss_ratios"]] == [2022, 2023]
    page = (tmp_path / "sw" / "sweep.md").read_text()
    assert "loss ratio 2022" in page and "loss ratio 2023" in page


def test_a_scenario_batch_can_be_replayed(year: Path) -> None:
    night = year / "gen" / "nightly" / "02"
    ok(
        "simulate",
        night,
        "--plan",
        "zhelibao-2022",
        "--set",
        f"{FLOOR_PATH}=15000",
        "--out",
        year / "to-replay",
        cwd=year,
    )
    manifest = year / "to-replay" / "batches" / "01" / "manifest.json"
    proc = hmb(
        "replay",
        manifest,
        "--ledger",
        year / "to-replay" / "scenario.duckdb",
        "--out",
        year / "replayed",
        cwd=year,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "payouts.parquet reproduced byte for byte" in proc.stdout
