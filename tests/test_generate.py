"""The generator: deterministic for a seed, realistic shape, identities exact."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from conftest import run_cli
from hmb_batch.io.contracts import COMPONENT_PAIRS, LINE_COMPONENTS, SETTLEMENT_COMPONENTS
from hmb_batch.io.extract import read_extract
from hmb_batch.rules.validation import validate


def _generate(out: Path, seed: int, **extra: str) -> None:
    args = [
        "generate",
        "--members",
        "1500",
        "--year",
        "2022",
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    r = run_cli(args)
    assert r.exit_code == 0, r.output


def test_same_seed_same_data_whatever_the_chunk_size(tmp_path: Path) -> None:
    _generate(tmp_path / "a", 7)
    _generate(tmp_path / "b", 7, chunk_members="10000")
    _generate(tmp_path / "c", 8)
    for name in ("settlements", "fees", "roster", "lists"):
        a = pl.read_parquet(tmp_path / "a" / f"{name}.parquet")
        assert a.equals(pl.read_parquet(tmp_path / "b" / f"{name}.parquet")), name
    assert not pl.read_parquet(tmp_path / "a" / "fees.parquet").equals(
        pl.read_parquet(tmp_path / "c" / "fees.parquet")
    )


def test_identities_hold_and_everything_validates(tmp_path: Path) -> None:
    _generate(tmp_path, 11)
    e = read_extract(tmp_path / "settlements.parquet", tmp_path / "fees.parquet")
    s = e.settlements.collect()
    lines = e.fee_lines.collect()
    assert s.select(
        (pl.col("medfee_sumamt") == pl.sum_horizontal(SETTLEMENT_COMPONENTS)).all()
    ).item()
    assert lines.select(
        (pl.col("det_item_fee_sumamt") == pl.sum_horizontal(LINE_COMPONENTS)).all()
    ).item()
    sums = lines.group_by("setl_id").agg([pl.col(c).sum() for c in LINE_COMPONENTS])
    joined = s.filter(pl.col("refd_setl_flag") == "0").join(sums, on="setl_id", suffix="_l")
    for sc, lc in COMPONENT_PAIRS.items():
        other = lc if lc != sc else f"{lc}_l"
        assert (joined[sc] == joined[other]).all(), sc
    v = validate(e)
    assert v.quarantine.collect().height == 0


def test_realistic_shape(tmp_path: Path) -> None:
    _generate(tmp_path, 3)
    s = pl.read_parquet(tmp_path / "settlements.parquet")
    roster = pl.read_parquet(tmp_path / "roster.parquet")
    lists = pl.read_parquet(tmp_path / "lists.parquet")
    lines = pl.read_parquet(tmp_path / "fees.parquet")
    claimants = s["psn_no"].n_unique()
    assert claimants < 0.6 * 1500  # most members never claim
    inpatient = s.filter(pl.col("med_type") == "21")
    outpatient = s.filter(pl.col("med_type") != "21")
    assert outpatient.height > 3 * inpatient.height
    assert inpatient["medfee_sumamt"].median() > 10 * outpatient["medfee_sumamt"].median()
    assert (s["refd_setl_flag"] == "1").sum() > 0  # some reversals
    assert set(roster["special_event"].unique()) >= {"", "newborn"}
    assert roster["basic_suspended_from"].is_not_null().sum() > 0
    assert roster.height < 1500  # some claimants are not enrolled
    assert set(lists["list"].unique()) == {"negative", "admission", "special_drug"}
    assert lists["valid_to"].is_not_null().any()  # a mid-year removal
    assert set(lines["chrgitm_lv"].unique()) == {"01", "02", "03"}
    assert {t[0] for t in lines["list_type"].unique().to_list()} == {"1", "2", "3"}
    assert (s["refl_selfpay_amt"] > 0).sum() > 0


# --- through the CLI, as cron runs it: a subprocess without a terminal, CI=true ---------------


def _hmb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hmb-batch"
    return subprocess.run(
        [str(exe), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CI": "true"},
    )


def _hmb_ok(*args: str | Path) -> str:
    r = _hmb(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _loss_ratios(data: Path, out: Path, plan: str) -> dict[int, Decimal]:
    """Adjudicate a generated extract in one batch; each plan year's loss ratio (%) as the
    batch's report states it."""
    _hmb_ok(
        "adjudicate",
        data / "settlements.parquet",
        "--fees",
        data / "fees.parquet",
        "--roster",
        data / "roster.parquet",
        "--lists",
        data / "lists.parquet",
        "--plan",
        plan,
        "--out",
        out,
        "--quiet",
    )
    report = (out / "report.md").read_text(encoding="utf-8")
    # the ratio's cell may carry emphasis and a mark after it (above 100%)
    rows = re.findall(r"^\| (\d{4}) \| [\d,]+ \| [\d,.]+ \| [\d,.]+ \| \**([\d.]+)%", report, re.M)
    return {int(year): Decimal(ratio) for year, ratio in rows}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_generated_year_pays_a_real_plans_loss_ratio(tmp_path: Path, seed: int) -> None:
    """Issue 15 item 11: under its edition (浙丽保 2022) a generated year's payouts are 85–105%
    of the premium pool net of operating cost (a real plan runs near 95%)."""
    data = tmp_path / "data"
    _hmb_ok("generate", "--members", "30000", "--year", "2022", "--seed", seed, "--out", data)
    ratios = _loss_ratios(data, tmp_path / "out", "zhelibao")
    assert list(ratios) == [2022]
    assert Decimal(85) <= ratios[2022] <= Decimal(105), ratios


@pytest.mark.slow
def test_each_of_consecutive_generated_years_pays_a_real_plans_loss_ratio(tmp_path: Path) -> None:
    """Every year of ``--years``, under one edition (2023's rules pay more by design)."""
    data = tmp_path / "data"
    _hmb_ok(
        "generate",
        "--members",
        "30000",
        "--year",
        "2022",
        "--years",
        "2",
        "--seed",
        "4",
        "--out",
        data,
    )
    ratios = _loss_ratios(data, tmp_path / "out", "zhelibao-2022")
    assert list(ratios) == [2022, 2023]
    assert all(Decimal(85) <= r <= Decimal(105) for r in ratios.values()), ratios


def test_consecutive_years_keep_most_members(tmp_path: Path) -> None:
    """``--years 3``: a roster row per member and plan year; most members re-enrol, some leave,
    some join; a member's consecutive years grow by one a year on the roster; each year has
    its own settlements, and the three years adjudicate as one batch under each year's
    edition."""
    data = tmp_path / "data"
    out = _hmb_ok(
        "generate",
        "--members",
        "1500",
        "--year",
        "2021",
        "--years",
        "3",
        "--seed",
        "5",
        "--out",
        data,
    )
    assert "plan years 2021–2023" in " ".join(out.split())  # rich wraps at 80 columns
    roster = pl.read_parquet(data / "roster.parquet")
    assert sorted(roster["plan_year"].unique()) == [2021, 2022, 2023]
    assert roster.select(pl.struct("psn_no", "plan_year").is_unique().all()).item()
    years = [set(roster.filter(pl.col("plan_year") == y)["psn_no"]) for y in (2021, 2022, 2023)]
    for before, after in itertools.pairwise(years):
        stayed = before & after
        assert 0.8 * len(before) < len(stayed) < len(before)  # most stay, some leave
        assert after - before  # some join
        assert 0.8 * len(before) < len(after) < 1.2 * len(before)
    pairs = roster.join(
        roster.with_columns(pl.col("plan_year") + 1), on=["psn_no", "plan_year"], suffix="_before"
    )
    assert pairs.height > 2000
    assert (pairs["consecutive_years"] == pairs["consecutive_years_before"] + 1).all()
    newcomers = roster.filter(~pl.col("psn_no").is_in(list(years[0])))
    assert (
        newcomers.group_by("psn_no").agg(pl.col("consecutive_years").min())["consecutive_years"]
        == 1
    ).all()
    # three years on the roster: what 舟惠保's higher cap after 3 consecutive years needs
    assert (
        roster.filter((pl.col("plan_year") == 2023) & (pl.col("consecutive_years") >= 3)).height
        > 1000
    )
    s = pl.read_parquet(data / "settlements.parquet")
    per_year = s.group_by(pl.col("setl_time").dt.year()).len()
    assert sorted(per_year["setl_time"]) == [2021, 2022, 2023]
    assert per_year["len"].min() > 2000
    assert s["setl_id"].is_unique().all()
    summary = json.loads(
        _hmb_ok(
            "adjudicate",
            data / "settlements.parquet",
            "--fees",
            data / "fees.parquet",
            "--roster",
            data / "roster.parquet",
            "--lists",
            data / "lists.parquet",
            "--plan",
            "zhelibao",
            "--out",
            tmp_path / "out",
            "--json",
        )
    )["summary"]
    assert summary["editions"] == ["zhelibao-2021", "zhelibao-2022", "zhelibao-2023"]
    assert summary["quarantined"] == 0
    assert sorted(summary["enrolled_by_plan_year"]) == ["2021", "2022", "2023"]
    assert all(Decimal(v) > 0 for v in summary["payout_by_plan_year"].values())


def test_nights_365_is_one_extract_a_calendar_day(tmp_path: Path) -> None:
    """``--nights 365``: one extract per calendar day (366 in a leap year), in folders whose
    names sort in date order; together they are the year, settlements and fee lines."""
    data = tmp_path / "data"
    out = _hmb_ok(
        "generate",
        "--members",
        "400",
        "--year",
        "2024",
        "--seed",
        "6",
        "--out",
        data,
        "--nights",
        "365",
    )
    assert "366 nightly extracts" in " ".join(out.split())
    nights = sorted((data / "nightly").iterdir())
    assert [n.name for n in nights] == [f"{d:03d}" for d in range(1, 367)]
    days = []
    for n, folder in enumerate(nights):
        night = pl.read_parquet(folder / "settlements.parquet")
        days.append(night)
        assert (night["setl_time"].dt.date() == dt.date(2024, 1, 1) + dt.timedelta(n)).all()
    whole = pl.read_parquet(data / "settlements.parquet")
    split = pl.concat(days)
    assert split.height == whole.height > 365
    assert sorted(split["setl_id"]) == sorted(whole["setl_id"])
    lines = pl.concat([pl.read_parquet(f / "fees.parquet") for f in nights])
    assert lines.sort("setl_id", "feedetl_sn").equals(
        pl.read_parquet(data / "fees.parquet").sort("setl_id", "feedetl_sn")
    )


def test_a_few_nights_keep_two_digit_folders(tmp_path: Path) -> None:
    """``--nights 2`` (sample_data's layout): nightly/01/ and nightly/02/, halves of the year."""
    data = tmp_path / "data"
    _hmb_ok("generate", "--members", "300", "--seed", "6", "--out", data, "--nights", "2")
    first, second = sorted((data / "nightly").iterdir())
    assert (first.name, second.name) == ("01", "02")
    a = pl.read_parquet(first / "settlements.parquet")["setl_time"]
    b = pl.read_parquet(second / "settlements.parquet")["setl_time"]
    assert a.max() < dt.datetime(2022, 7, 3) <= b.min()
