"""Claims operations through the installed command, as cron runs it: no terminal, CI=true.

Dry runs and --no-ledger, JSON answers and JSON errors, warnings and --fail-on, output folders
(placeholders, refusal, revert marks), full-width tables off a terminal, error messages, `show`
and the CSV encodings. The night data is sample_data's two nightly extracts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

SAMPLE = Path(__file__).parent.parent / "sample_data"
NIGHT1, NIGHT2 = SAMPLE / "nightly" / "01", SAMPLE / "nightly" / "02"
ROSTER, LISTS = SAMPLE / "roster.parquet", SAMPLE / "lists.parquet"
EXE = Path(sys.executable).with_name("hmb-batch")


def hmb(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script with no terminal, as cron runs it."""
    env = {**os.environ, "CI": "true", "COLUMNS": "80"}
    env.pop("HMB_TRACEBACK", None)
    return subprocess.run(
        [str(EXE), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


def answer(proc: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a --json command printed."""
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def night(folder: Path, ledger: Path | None, out: Path | str, *extra: str | Path) -> list[str]:
    ledger_args = ["--ledger", str(ledger)] if ledger is not None else []
    return [
        "adjudicate",
        str(folder),  # the generator's nightly/NN/ folder: settlements.* and fees.*
        "--roster",
        str(ROSTER),
        "--lists",
        str(LISTS),
        *ledger_args,
        "--out",
        str(out),
        *map(str, extra),
    ]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.duckdb"
    assert hmb("ledger", "init", path).returncode == 0
    return path


@pytest.fixture
def after_night1(tmp_path: Path, ledger: Path) -> Path:
    """A ledger with night 1 applied (its files in tmp/n1)."""
    proc = hmb(*night(NIGHT1, ledger, tmp_path / "n1", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    return ledger


# --- 1. dry run, --no-ledger -------------------------------------------------------------------


def test_a_dry_run_adjudicates_against_the_year_to_date_and_applies_nothing(
    tmp_path: Path, after_night1: Path
) -> None:
    before = sha(after_night1)
    dry = hmb(*night(NIGHT2, after_night1, tmp_path / "dry", "--dry-run", "--json"))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    doc = answer(dry)
    assert doc["status"] == "dry_run" and doc["dry_run"] is True
    manifest = json.loads((tmp_path / "dry" / "manifest.json").read_text())
    assert manifest["status"] == "dry_run" and manifest["ledger_after"] is None
    assert "DRY RUN" in (tmp_path / "dry" / "report.html").read_text()
    assert "DRY RUN" in (tmp_path / "dry" / "report.md").read_text()
    # the ledger is byte for byte as it was: one batch, nothing of night 2
    assert sha(after_night1) == before
    assert answer(hmb("ledger", "status", "--ledger", after_night1, "--json"))["applied"] == 1
    # and it computed what the real night computes: the same payout file, byte for byte
    real = hmb(*night(NIGHT2, after_night1, tmp_path / "real", "--quiet"))
    assert real.returncode == 0, real.stderr
    assert sha(tmp_path / "dry" / "payouts.parquet") == sha(tmp_path / "real" / "payouts.parquet")
    # a dry run's year to date included night 1: some member's cumulative payout exceeds the
    # night's own payout (it would not, adjudicated without the ledger)
    alone = hmb(*night(NIGHT2, None, tmp_path / "alone", "--quiet"))
    assert alone.returncode == 0, alone.stderr
    assert sha(tmp_path / "alone" / "payouts.parquet") != sha(tmp_path / "dry" / "payouts.parquet")


def test_no_ledger_ignores_the_ledger_hmb_toml_names(tmp_path: Path, after_night1: Path) -> None:
    (tmp_path / "hmb.toml").write_text(
        f'[adjudicate]\nroster = "{ROSTER}"\nlists = "{LISTS}"\nledger = "{after_night1}"\n'
    )
    before = sha(after_night1)
    proc = hmb("adjudicate", NIGHT2, "--no-ledger", "--out", "o", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert answer(proc)["ledger"] is None and answer(proc)["status"] == "no_ledger"
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["ledger"] is None
    assert sha(after_night1) == before


def test_dry_run_without_a_ledger_is_a_usage_error(tmp_path: Path) -> None:
    proc = hmb(*night(NIGHT1, None, tmp_path / "o", "--dry-run"))
    assert proc.returncode == 2 and "--dry-run" in proc.stderr and "--ledger" in proc.stderr


# --- 2. machine-readable answers and errors -----------------------------------------------------


def test_with_json_an_error_is_json_on_stdout_and_nothing_on_stderr(tmp_path: Path) -> None:
    cases = [
        (hmb(*night(tmp_path / "nowhere", None, tmp_path / "o", "--json")), 3),
        (hmb("ledger", "status", "--ledger", tmp_path / "none.duckdb", "--json"), 3),
        (hmb("adjudicate", NIGHT1, "--no-such-option", "--json"), 2),
        (hmb("plan", "show", "no-such-plan", "--json"), 5),
    ]
    for proc, code in cases:
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert proc.stderr == ""
        error = answer(proc)["error"]
        assert error["exit_code"] == code and error["code"] and error["message"]
    assert answer(cases[0][0])["error"]["code"] == "INPUT_UNREADABLE"
    assert answer(cases[2][0])["error"]["code"] == "USAGE"


def test_json_everywhere_and_the_loss_ratio_is_the_premium_pools(
    tmp_path: Path, after_night1: Path
) -> None:
    proc = hmb(*night(NIGHT2, after_night1, tmp_path / "n2", "--json"))
    doc = answer(proc)
    manifest = json.loads((tmp_path / "n2" / "manifest.json").read_text())
    recon = json.loads((tmp_path / "n2" / "reconciliation.json").read_text())
    assert doc["loss_ratios"] == manifest["loss_ratios"] == recon["loss_ratios"]
    assert manifest["ledger"] == str(after_night1.resolve())
    # only the edition the batch used, not every edition of the family
    assert list(manifest["editions"]) == doc["summary"]["editions"] == ["zhelibao-2022"]
    # the loss ratio from the edition's premium, worked out here from `plan show --json`
    (edition,) = answer(hmb("plan", "show", "zhelibao-2022", "--json"))
    premium = edition["premium"]
    (lr,) = doc["loss_ratios"]
    enrolled = doc["summary"]["enrolled_by_plan_year"]["2022"]
    gross = Decimal(enrolled * premium["amount"])
    pool = gross - (gross * premium["operating_cost_share"] / 10**6).quantize(
        Decimal(1), ROUND_HALF_UP
    )
    assert Decimal(lr["premium_pool_net"]) * 100 == pool
    status = answer(hmb("ledger", "status", "--ledger", after_night1, "--json"))
    (year,) = status["plan_years"]
    assert lr["payout"] == year["payout"]  # year to date: night 1 + night 2
    ratio = (Decimal(year["payout"]) / (pool / 100)).quantize(Decimal("0.0001"), ROUND_HALF_UP)
    assert Decimal(lr["loss_ratio"]) == ratio
    # the other commands answer in JSON too
    batches = answer(hmb("ledger", "batches", "--ledger", after_night1, "--json"))
    assert [b["status"] for b in batches] == ["applied", "applied"]
    assert Decimal(batches[1]["total_payout"]) == Decimal(doc["summary"]["total_payout"])
    codes = answer(hmb("codes", "--json"))
    assert {"code", "stage", "zh", "en"} <= set(codes[0]) and len(codes) > 20
    plans = answer(hmb("plan", "list", "--json"))
    assert "zhelibao-2022" in {p["edition"] for p in plans}
    report = answer(
        hmb("report", "--year", 2022, "--ledger", after_night1, "--out", tmp_path / "r", "--json")
    )
    assert report["loss_ratios"] == doc["loss_ratios"]
    assert Path(report["files"]["report"]).exists()


# --- 3. warnings and --fail-on -----------------------------------------------------------------


def test_a_roster_missing_most_members_warns_and_fail_on_warning_exits_10(tmp_path: Path) -> None:
    roster = tmp_path / "roster.parquet"
    pl.read_parquet(ROSTER).head(150).write_parquet(roster)  # a tenth of the members
    args = night(NIGHT1, None, tmp_path / "o", "--json")
    args[args.index(str(ROSTER))] = str(roster)
    plain = hmb(*args)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    codes = [w["code"] for w in answer(plain)["warnings"]]
    assert "ROSTER_MISSES_MEMBERS" in codes
    flagged = hmb(*args, "--fail-on", "warning", "--force")
    assert flagged.returncode == 10 and answer(flagged)["exit_code"] == 10
    text = hmb(*[a for a in args if a != "--json"], "--fail-on", "warning", "--force")
    assert text.returncode == 10
    assert "ROSTER_MISSES_MEMBERS" in text.stdout and "exit 10" in text.stderr


def test_quarantine_orphans_and_a_small_night_are_counted_and_flagged(
    tmp_path: Path, ledger: Path
) -> None:
    settlements = pl.read_parquet(NIGHT1 / "settlements.parquet").sort("setl_time")
    fees = pl.read_parquet(NIGHT1 / "fees.parquet")
    cuts = [(0, 500), (500, 500), (1000, 500), (1500, 20)]
    for k, (start, n) in enumerate(cuts):
        part = settlements.slice(start, n)
        folder = tmp_path / f"in{k}"
        folder.mkdir()
        lines = fees.join(part.select("setl_id"), on="setl_id", how="semi")
        if k == 3:  # a bad amount (quarantined) and two fee lines of no settlement (orphans)
            part = part.with_columns(
                pl.when(pl.int_range(pl.len()) < 2)
                .then(pl.lit(None))
                .otherwise(pl.col("medfee_sumamt"))
                .alias("medfee_sumamt")
            )
            orphans = lines.head(2).with_columns(pl.lit("S-NOWHERE").alias("setl_id"))
            lines = pl.concat([lines, orphans])
        part.write_parquet(folder / "settlements.parquet")
        lines.write_parquet(folder / "fees.parquet")
    for k in range(3):
        done = hmb(*night(tmp_path / f"in{k}", ledger, tmp_path / f"o{k}", "--quiet"))
        assert done.returncode == 0, done.stderr
    small = hmb(
        *night(tmp_path / "in3", ledger, tmp_path / "o3", "--json", "--fail-on", "quarantine")
    )
    assert small.returncode == 10, small.stdout + small.stderr
    doc = answer(small)
    assert doc["summary"]["quarantined"] == 2 and doc["summary"]["orphan_fee_lines"] == 2
    codes = {w["code"] for w in doc["warnings"]}
    assert {"UNUSUAL_BATCH_SIZE", "ORPHAN_FEE_LINES", "HIGH_QUARANTINE_RATE"} <= codes
    # it was applied all the same: exit 10 tells cron to look, it does not undo the night
    assert answer(hmb("ledger", "status", "--ledger", ledger, "--json"))["applied"] == 4
    assert "orphan fee lines" in (tmp_path / "o3" / "report.md").read_text()


def test_warning_limits_come_from_hmb_toml(tmp_path: Path) -> None:
    (tmp_path / "hmb.toml").write_text("[warnings]\ndenied_share = 0.01\n")
    proc = hmb(*night(NIGHT1, None, tmp_path / "o", "--json"), cwd=tmp_path)
    assert "HIGH_DENIAL_RATE" in {w["code"] for w in answer(proc)["warnings"]}
    default = hmb(*night(NIGHT1, None, tmp_path / "p", "--json"))
    assert "HIGH_DENIAL_RATE" not in {w["code"] for w in answer(default)["warnings"]}


# --- 4. output folders --------------------------------------------------------------------------


def test_placeholders_refusal_force_and_the_revert_mark(tmp_path: Path, ledger: Path) -> None:
    template = str(tmp_path / "out" / "{plan_year}" / "{date}")
    one = answer(hmb(*night(NIGHT1, ledger, template, "--json")))
    first = Path(one["out"])
    last_day = pl.read_parquet(first / "payouts.parquet")["setl_time"].max()
    assert first == tmp_path / "out" / "2022" / f"{last_day:%Y-%m-%d}"
    # a fixed folder: night 2 may not overwrite night 1's files
    fixed = tmp_path / "night"
    assert hmb(*night(NIGHT1, ledger, fixed, "--quiet")).returncode == 0  # a replay of night 1
    payouts = sha(fixed / "payouts.parquet")
    refused = hmb(*night(NIGHT2, ledger, fixed, "--quiet"))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert sha(fixed / "payouts.parquet") == payouts
    assert answer(hmb("ledger", "status", "--ledger", ledger, "--json"))["applied"] == 1
    forced = hmb(*night(NIGHT2, ledger, fixed, "--quiet", "--force"))
    assert forced.returncode == 0, forced.stderr
    # revert the last night: the ledger keeps who and why, the folder says so
    reverted = hmb("ledger", "revert", "--last", "--reason", "wrong roster", "--ledger", ledger)
    assert reverted.returncode == 0, reverted.stderr
    manifest = json.loads((fixed / "manifest.json").read_text())
    assert manifest["status"] == "reverted" and manifest["reverted"]["reason"] == "wrong roster"
    mark = (fixed / "REVERTED").read_text()
    assert manifest["batch_id"] in mark and "wrong roster" in mark
    batches = answer(hmb("ledger", "batches", "--ledger", ledger, "--json"))
    assert batches[-1]["status"] == "reverted"
    assert batches[-1]["reverted"]["reason"] == "wrong roster" and batches[-1]["reverted"]["by"]
    table = hmb("ledger", "batches", "--ledger", ledger)
    assert "wrong roster" in table.stdout
    # re-run the night after the fix: the folder is the reverted batch's, so it is refused
    # without --force, and with it the REVERTED mark goes
    again = hmb(*night(NIGHT2, ledger, fixed, "--quiet", "--force"))
    assert again.returncode == 0, again.stderr
    assert not (fixed / "REVERTED").exists()


def test_an_unknown_placeholder_and_revert_arguments_are_usage_errors(
    tmp_path: Path, ledger: Path
) -> None:
    proc = hmb(*night(NIGHT1, ledger, tmp_path / "{night}"))
    assert proc.returncode == 2 and "{night}" in proc.stderr and "{batch_id}" in proc.stderr
    assert hmb("ledger", "revert", "--ledger", ledger).returncode == 2
    nothing = hmb("ledger", "revert", "--last", "--ledger", ledger)
    assert nothing.returncode == 9 and "no applied batch" in nothing.stderr


# --- 5. full width off a terminal ---------------------------------------------------------------


def test_tables_are_not_cut_at_80_columns_off_a_terminal(after_night1: Path) -> None:
    codes = answer(hmb("codes", "--json"))
    table = hmb("codes").stdout
    for c in codes:  # every code and its whole English description, uncut
        assert c["code"] in table and c["en"] in table
    batches = hmb("ledger", "batches", "--ledger", after_night1).stdout
    latest = pl.read_parquet(NIGHT1 / "settlements.parquet")["setl_time"].max()
    assert "latest setl_time" in batches and f"{latest:%Y-%m-%d %H:%M:%S}" in batches


# --- 6. error messages --------------------------------------------------------------------------


def test_every_missing_option_is_named_at_once(tmp_path: Path) -> None:
    proc = hmb("adjudicate", cwd=tmp_path)  # no hmb.toml here
    assert proc.returncode == 2
    assert all(name in proc.stderr for name in ("EXTRACT", "--roster", "--lists"))
    new = hmb("plan", "new", cwd=tmp_path)
    assert new.returncode == 2 and "FILE" in new.stderr and "--from" in new.stderr


def test_a_settlements_file_without_fees_asks_about_fees(tmp_path: Path) -> None:
    proc = hmb(*night(NIGHT1 / "settlements.parquet", None, tmp_path / "o"))
    assert proc.returncode == 4 and "did you forget --fees" in proc.stderr


def test_a_mistyped_configuration_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "hmb.toml").write_text('[adjudicate]\nrooster = "r.parquet"\n[warnings]\nx = 1\n')
    proc = hmb("adjudicate", NIGHT1, cwd=tmp_path)
    assert proc.returncode == 5
    assert "[adjudicate] rooster" in proc.stderr and "did you mean roster?" in proc.stderr
    assert "[warnings] x" in proc.stderr


# --- 8. show ------------------------------------------------------------------------------------


def test_show_prints_an_output_file(tmp_path: Path) -> None:
    assert hmb(*night(NIGHT1, None, tmp_path / "o", "--quiet")).returncode == 0
    payouts = tmp_path / "o" / "payouts.parquet"
    frame = pl.read_parquet(payouts)
    paid = frame.filter(pl.col("payout_amt") > 1000)
    proc = hmb("show", payouts, "--where", "payout_amt > 1000", "--limit", 0, "--csv")
    assert proc.returncode == 0, proc.stderr
    shown = pl.read_csv(proc.stdout.encode(), infer_schema=False)
    assert shown["setl_id"].to_list() == paid["setl_id"].to_list()
    assert shown["payout_amt"].to_list() == [str(v) for v in paid["payout_amt"]]
    table = hmb("show", payouts, "--columns", "setl_id,status,payout_amt", "--limit", 3)
    assert f"3 row(s) of {frame.height:,}" in table.stdout
    assert frame["setl_id"][2] in table.stdout
    doc = answer(hmb("show", payouts, "--limit", 2, "--json"))
    assert doc["rows_in_file"] == doc["rows_matching"] == frame.height
    rows = doc["rows"]
    assert [r["setl_id"] for r in rows] == frame["setl_id"].head(2).to_list()
    assert rows[0]["payout_amt"] == str(frame["payout_amt"][0])
    bad = hmb("show", payouts, "--where", "no_such_column > 1")
    assert bad.returncode == 2 and "no_such_column" in bad.stderr
    assert hmb("show", tmp_path / "o" / "report.md").returncode == 3


# --- 10. CSV encodings --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk"])
def test_csv_copies_in_the_encoding_asked(tmp_path: Path, encoding: str) -> None:
    out = tmp_path / "o"
    proc = hmb(*night(NIGHT1, None, out, "--quiet", "--csv", "--csv-encoding", encoding))
    assert proc.returncode == 0, proc.stderr
    raw = (out / "payouts.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") == (encoding == "utf-8-sig")
    text = raw.decode(encoding)
    rows = pl.read_csv(text.encode(), infer_schema=False)
    payouts = pl.read_parquet(out / "payouts.parquet")
    assert rows["setl_id"].to_list() == payouts["setl_id"].to_list()
    assert rows["fixmedins_name"].to_list() == payouts["fixmedins_name"].to_list()  # 丽水…医院
    assert (out / "quarantine.csv").exists()


def test_a_character_gbk_cannot_hold_is_an_error_naming_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pl.read_parquet(NIGHT1 / "settlements.parquet").with_columns(
        pl.when(pl.int_range(pl.len()) == 5)
        .then(pl.lit("𠀀医院"))  # U+20000: in GB 18030, not in GBK
        .otherwise(pl.col("fixmedins_name"))
        .alias("fixmedins_name")
    ).write_parquet(folder / "settlements.parquet")
    (folder / "fees.parquet").write_bytes((NIGHT1 / "fees.parquet").read_bytes())
    gbk = hmb(*night(folder, None, tmp_path / "o", "--csv", "--csv-encoding", "gbk"))
    assert gbk.returncode == 3 and "U+20000" in gbk.stderr and "gb18030" in gbk.stderr
    ok = hmb(*night(folder, None, tmp_path / "p", "--quiet", "--csv", "--csv-encoding", "gb18030"))
    assert ok.returncode == 0, ok.stderr
    assert "𠀀医院" in (tmp_path / "p" / "payouts.csv").read_bytes().decode("gb18030")


# --- what the second reading found -------------------------------------------------------------


def test_a_what_if_may_not_overwrite_the_applied_files_of_the_same_night(
    tmp_path: Path, after_night1: Path
) -> None:
    applied = tmp_path / "n1"  # night 1's folder (after_night1)
    payouts = sha(applied / "payouts.parquet")
    alone = hmb(*night(NIGHT1, None, applied, "--quiet"))  # the same batch id, no ledger
    assert alone.returncode == 2 and "no ledger" in alone.stderr and "--force" in alone.stderr
    assert sha(applied / "payouts.parquet") == payouts


def test_a_forced_run_leaves_nothing_of_the_batch_it_replaces(tmp_path: Path, ledger: Path) -> None:
    folder = tmp_path / "f"
    assert hmb(*night(NIGHT1, ledger, folder, "--quiet", "--csv")).returncode == 0
    assert hmb("ledger", "revert", "--last", "--ledger", ledger).returncode == 0
    assert (folder / "REVERTED").exists() and (folder / "payouts.csv").exists()
    forced = hmb(*night(NIGHT2, ledger, folder, "--quiet", "--force"))
    assert forced.returncode == 0, forced.stderr
    assert not (folder / "REVERTED").exists() and not (folder / "payouts.csv").exists()
    assert not (folder / "quarantine.csv").exists()
    batch = json.loads((folder / "manifest.json").read_text())["batch_id"]
    assert set(pl.read_parquet(folder / "payouts.parquet")["batch_id"]) == {batch}


def test_a_revert_whose_folder_cannot_be_marked_still_succeeds_once(
    tmp_path: Path, after_night1: Path
) -> None:
    assert hmb(*night(NIGHT2, after_night1, tmp_path / "n2", "--quiet")).returncode == 0
    (tmp_path / "n2" / "REVERTED").mkdir()  # the mark cannot be written
    proc = hmb("ledger", "revert", "--last", "--ledger", after_night1, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = answer(proc)
    assert doc["folder_marked"] is False and "by hand" in doc["folder_note"]
    batches = answer(hmb("ledger", "batches", "--ledger", after_night1, "--json"))
    # night 2 only: a retry of `revert --last` would have reverted night 1 as well
    assert [b["status"] for b in batches] == ["applied", "reverted"]


def test_a_replay_writes_where_the_first_run_wrote(tmp_path: Path, ledger: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # one settlement of a year no edition covers: quarantined, so not one of the batch's years
    pl.read_parquet(NIGHT2 / "settlements.parquet").with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.col("setl_time").dt.offset_by("9y"))
        .otherwise(pl.col("setl_time"))
        .alias("setl_time")
    ).write_parquet(folder / "settlements.parquet")
    (folder / "fees.parquet").write_bytes((NIGHT2 / "fees.parquet").read_bytes())
    template = str(tmp_path / "out" / "{plan_year}" / "{date}")
    first = answer(hmb(*night(folder, ledger, template, "--json")))
    again = answer(hmb(*night(folder, ledger, template, "--json")))
    assert again["replayed"] is True and again["out"] == first["out"]
    assert Path(first["out"]).parent.name == "2022"


def test_a_formatted_placeholder_is_a_usage_error_before_anything_runs(tmp_path: Path) -> None:
    proc = hmb(*night(NIGHT1, None, tmp_path / "{date:%Y%m%d}"))
    assert proc.returncode == 2 and "no format" in proc.stderr


def test_a_dry_run_does_not_upgrade_an_older_ledger(tmp_path: Path, after_night1: Path) -> None:
    import duckdb

    con = duckdb.connect(str(after_night1))
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    for column in ("out_dir", "reverted_at", "reverted_by", "revert_reason"):
        con.execute(f"ALTER TABLE batches DROP COLUMN {column}")
    con.close()
    before = sha(after_night1)
    proc = hmb(*night(NIGHT2, after_night1, tmp_path / "dry", "--dry-run"))
    assert proc.returncode == 9 and "does not upgrade" in proc.stderr
    assert sha(after_night1) == before
