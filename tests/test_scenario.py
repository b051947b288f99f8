"""Scenario editions (``--set PATH=VALUE``) and ``plan diff`` (issue 16, items 1 and 4).

Payouts under a scenario are hand-computed here; ``plan diff zhelibao-2022 zhelibao-2023`` is
checked against what the two TOML files say, read with tomllib.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import Extract, row, run_cli, standard_extract, yuan
from hmb_batch.errors import ConfigError
from hmb_batch.plan.catalog import PlanSelection, select_plan, shipped_edition_files
from hmb_batch.plan.check import check_data, load_edition
from hmb_batch.plan.diff import diff_editions
from hmb_batch.plan.scenario import (
    derive_edition,
    edition_to_raw,
    is_settlement_level,
    select_plan_with,
)
from hmb_batch.run.batch import run_batch
from hmb_batch.run.identity import BatchInputs

SRC = Path(__file__).parent.parent / "src"
EDITIONS = SRC / "hmb_batch" / "editions"
EXAMPLES = Path(__file__).parent.parent / "examples" / "plans"
FLOOR = "responsibilities.main.terms.0.floor"
BAND_1_RATE = "responsibilities.main.brackets.0.rate"


def hmb(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line in a subprocess, running the code of the checkout this file is in."""
    code = "import sys; from hmb_batch.cli.app import main; sys.argv[0] = 'hmb-batch'; main()"
    env = {**os.environ, "PYTHONPATH": str(SRC), "CI": "true"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )


def payouts_under(plan: PlanSelection, ex: Extract, tmp: Path) -> pl.DataFrame:
    """Adjudicate a tiny extract (no ledger) under ``plan``; the payouts file."""
    files = ex.write(tmp / "in")
    inputs = BatchInputs(
        extract=files["settlements"],
        fees=files["fees"],
        roster=files["roster"],
        lists=files["lists"],
        plan=plan,
    )
    result = run_batch(inputs, tmp / "out")
    assert result.manifest["editions"].keys() == {plan.editions[0].id}
    return pl.read_parquet(result.files["payouts"])


# --- payouts under a scenario, by hand ----------------------------------------------------


def test_floor_set_to_13000_pays_on_the_compliant_cost_above_13000(tmp_path: Path) -> None:
    ex = standard_extract()
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="20000")
    scenario = select_plan_with("zhelibao-2022", [f"{FLOOR}=13000"])
    p = payouts_under(scenario, ex, tmp_path / "scenario")
    # 20,000 − 13,000 = 7,000 payable, in band 1 at 75%: 5,250.00
    assert row(p, "S1")["payable_amt"] == yuan("7000.00")
    assert row(p, "S1")["payout_amt"] == yuan("5250.00")
    # the edition itself: 20,000 − 18,000 = 2,000 at 75%: 1,500.00
    shipped = payouts_under(select_plan("zhelibao-2022"), ex, tmp_path / "shipped")
    assert row(shipped, "S1")["payout_amt"] == yuan("1500.00")


def test_band_1_rate_set_to_80_percent(tmp_path: Path) -> None:
    ex = standard_extract()
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="118000")  # payable 100,000
    ex.claim("S2", "M1", "2022-04-01 10:00:00", reasonable="150000")  # payable 250,000 to date
    scenario = select_plan_with("zhelibao-2022", [f"{BAND_1_RATE}=0.80"])
    p = payouts_under(scenario, ex, tmp_path)
    # 100,000 at 80%
    assert row(p, "S1")["payout_amt"] == yuan("80000.00")
    # to date 200,000 at 80% + 50,000 at 85% = 160,000 + 42,500 = 202,500; less 80,000 paid
    assert row(p, "S2")["payout_amt"] == yuan("122500.00")
    assert row(p, "S2")["cum_payout_amt"] == yuan("202500.00")


def test_band_1_bound_and_a_cap_set_together(tmp_path: Path) -> None:
    ex = standard_extract()
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="268000")  # payable 250,000
    scenario = select_plan_with(
        "zhelibao-2022",
        ["responsibilities.main.brackets.0.up_to=100000", "responsibilities.main.cap=190000"],
    )
    p = payouts_under(scenario, ex, tmp_path)
    # 100,000 at 75% + 150,000 at 85% = 75,000 + 127,500 = 202,500, capped at 190,000
    assert row(p, "S1")["payout_amt"] == yuan("190000.00")


def test_a_scenario_batch_records_its_edition_and_changes(tmp_path: Path) -> None:
    ex = standard_extract()
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="20000")
    files = ex.write(tmp_path / "in")
    scenario = select_plan_with("zhelibao-2022", [f"{FLOOR}=13000"])
    inputs = BatchInputs(
        extract=files["settlements"],
        fees=files["fees"],
        roster=files["roster"],
        lists=files["lists"],
        plan=scenario,
    )
    manifest = run_batch(inputs, tmp_path / "out").manifest
    [(edition_id, edition_hash)] = manifest["editions"].items()
    assert edition_id.startswith("zhelibao-2022+s")
    shipped_hash = hashlib.sha256(
        load_edition(EDITIONS / "zhelibao-2022.toml").model_dump_json().encode()
    ).hexdigest()
    assert edition_hash != shipped_hash
    assert manifest["scenarios"][edition_id]["source"] == "zhelibao-2022"
    assert manifest["scenarios"][edition_id]["changes"] == [
        {"path": FLOOR, "old": "18000.00", "new": "13000.00"}
    ]


def test_a_scenario_edition_reading_a_list_the_lists_file_lacks_is_refused(
    tmp_path: Path,
) -> None:
    ex = Extract()  # no lists at all: zhelibao reads negative and admission
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", compliant="20000")
    with pytest.raises(ConfigError, match="admission, negative"):
        payouts_under(select_plan_with("zhelibao-2022", [f"{FLOOR}=13000"]), ex, tmp_path)


# --- the scenario's edition ----------------------------------------------------------------


def test_the_scenario_edition_has_its_own_id_records_its_changes_and_checks_like_a_file() -> None:
    base = load_edition(EDITIONS / "zhelibao-2022.toml")
    v = derive_edition(base, [f"{FLOOR}=13000", "responsibilities.0.brackets.1.rate=0.88"])
    assert v.id.startswith("zhelibao-2022+s") and len(v.id) == len("zhelibao-2022+s") + 6
    assert v.variant is not None and v.variant.source == "zhelibao-2022"
    assert [(c.path, c.old, c.new) for c in v.variant.changes] == [
        (FLOOR, "18000.00", "13000.00"),
        ("responsibilities.main.brackets.1.rate", "0.85", "0.88"),  # by id, not position
    ]
    assert v.responsibilities[0].terms[0].floor == 1_300_000  # fen
    assert v.responsibilities[0].brackets[1].rate == 880_000  # ppm
    # the same changes, in another order and spelling: the same scenario
    again = derive_edition(
        base, ['responsibilities.main.brackets.1.rate="0.880"', f"{FLOOR}=13000.00"]
    )
    assert again.id == v.id
    # other changes: another id
    assert derive_edition(base, [f"{FLOOR}=13000.01"]).id != v.id
    # the scenario's parameters read back from its file form as a file's would
    checked, problems = check_data(edition_to_raw(v))
    assert problems == [] and checked == v.model_copy(update={"variant": None})


def test_setting_the_value_an_edition_has_is_no_change() -> None:
    base = load_edition(EDITIONS / "zhelibao-2022.toml")
    assert derive_edition(base, [f"{FLOOR}=18000"]) == base
    assert derive_edition(base, [f"{FLOOR}=13000", f"{FLOOR}=18000"]).id == "zhelibao-2022"


def test_a_scenario_of_a_scenario_keeps_the_first_source_and_adds_its_changes() -> None:
    base = load_edition(EDITIONS / "zhelibao-2022.toml")
    once = derive_edition(base, [f"{FLOOR}=13000"])
    twice = derive_edition(once, [f"{FLOOR}=15000", f"{BAND_1_RATE}=0.8"])
    assert twice.variant is not None and twice.variant.source == "zhelibao-2022"
    assert [(c.path, c.old, c.new) for c in twice.variant.changes] == [
        (FLOOR, "18000.00", "15000.00"),
        (BAND_1_RATE, "0.75", "0.8"),
    ]
    assert twice.id == derive_edition(base, [f"{FLOOR}=15000", f"{BAND_1_RATE}=0.8"]).id


def test_none_removes_an_optional_parameter_and_a_missing_one_can_be_set() -> None:
    base = load_edition(EXAMPLES / "jinhuibao-2024.toml")
    v = derive_edition(base, ["plan_cap=none", "responsibilities.in_list.cap=800000"])
    assert v.plan_cap is None and base.plan_cap is not None
    assert v.responsibilities[0].cap == 80_000_000


def test_a_family_scenario_changes_every_edition_of_the_family() -> None:
    s = select_plan_with("zhelibao", [f"{BAND_1_RATE}=0.8"])
    assert not s.fixed
    assert [e.edition.responsibilities[0].brackets[0].rate for e in s.editions] == [800_000] * 3
    assert [e.id.split("+")[0] for e in s.editions] == [
        "zhelibao-2021",
        "zhelibao-2022",
        "zhelibao-2023",
    ]
    assert s.label.startswith("zhelibao+s")
    assert s.for_year(2023) is not None and s.for_year(2023).id.startswith("zhelibao-2023+s")


def test_shipped_editions_serialise_as_before_scenarios_existed() -> None:
    """Batches and the ledger name an edition by the hash of its serialisation: a shipped
    edition's must not change because the model learned about scenarios."""
    e = load_edition(EDITIONS / "zhelibao-2022.toml")
    assert "variant" not in e.model_dump_json()
    assert (
        hashlib.sha256(e.model_dump_json().encode()).hexdigest()
        == "45367136ea62efc91ef932fa5b4246f34654a1ff20ca2d343cc8ed76d63e684f"
    )


def test_an_edition_file_cannot_declare_itself_a_scenario(tmp_path: Path) -> None:
    raw = tomllib.loads((EDITIONS / "zhelibao-2022.toml").read_text(encoding="utf-8"))
    raw["variant"] = {"source": "zhelibao-2022", "changes": [], "tag": "s000000"}
    edition, problems = check_data(raw)
    assert edition is None
    assert [p.path for p in problems] == ["variant"]


@pytest.mark.parametrize(
    "path",
    [
        "premium.amount",
        "plan_cap",
        "deductibles.shared",
        "responsibilities.main.cap",
        "responsibilities.0.consecutive_cap.cap",
        "responsibilities.main.terms.1.deductible",
        FLOOR,
        "responsibilities.main.brackets.3.up_to",
        "responsibilities.in_list.pre_existing_brackets.0.rate",
    ],
)
def test_settlement_level_parameters(path: str) -> None:
    assert is_settlement_level(path)


@pytest.mark.parametrize(
    "path",
    [
        "costs.reasonable.exclude_lists.0",
        "costs.reasonable.settlement_parts.0.factor",
        "eligibility.waiting_months",
        "responsibilities.main.terms.0.cost",
        "responsibilities.main.terms.0.shared_deductible",
        "responsibilities.main.name",
        "responsibilities.main.brackets",
        "responsibilities.main.brackets.x.rate",
        "plan",
        "edition",
    ],
)
def test_not_settlement_level(path: str) -> None:
    assert not is_settlement_level(path)


def test_every_shipped_and_example_edition_reads_back_from_its_file_form() -> None:
    files = [*shipped_edition_files().values(), *sorted(EXAMPLES.glob("*.toml"))]
    for f in files:
        e = load_edition(f)
        checked, problems = check_data(edition_to_raw(e))
        assert problems == [] and checked == e, f.name


# --- invalid --set through the command line: exit 5, the parameter and the problem named ---


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        (
            "responsibilities.main.bracket.0.rate=0.8",
            [
                "unknown parameter responsibilities.main.bracket.0.rate",
                "did you mean responsibilities.main.brackets.0.rate?",
            ],
        ),
        (
            "responsibilities.main.terms.0.floor=abc",
            [FLOOR, "expected an amount in yuan", "'abc'"],
        ),
        (f"{BAND_1_RATE}=1.2", [BAND_1_RATE, "rate 1.2 is outside 0..1"]),
        (
            "responsibilities.main.brackets.1.up_to=100000",
            ["responsibilities.main.brackets.1.up_to", "brackets are out of order"],
        ),
        (
            "costs.reasonable.exclude_lists.0=admission",
            ["costs.reasonable.exclude_lists.0 cannot be set", "costs decide", "plan new"],
        ),
        (
            "responsibilities.main.terms.0.cost=reasonable",
            ["responsibilities.main.terms.0.cost cannot be set", "a rule, not a parameter"],
        ),
        ("responsibilities.main.brackets.7.rate=0.5", ["has no bracket 7", "0–3"]),
        ("responsibilities.main.brackets.0.rate", ["write PATH=VALUE"]),
    ],
)
def test_an_invalid_set_is_exit_5_naming_the_parameter_and_the_problem(
    setting: str, said: list[str]
) -> None:
    r = hmb("plan", "show", "zhelibao-2022", "--set", setting)
    assert r.returncode == 5, r.stderr
    assert r.stdout == ""
    message = " ".join(r.stderr.split())  # as printed, wrapped or not
    assert f"--set {setting}" in message
    for text in said:
        assert " ".join(text.split()) in message


def test_an_invalid_set_with_json_is_a_json_error() -> None:
    r = hmb("plan", "show", "zhelibao-2022", "--set", f"{BAND_1_RATE}=2", "--json")
    assert r.returncode == 5 and r.stderr == ""
    error = json.loads(r.stdout)["error"]
    assert error["code"] == "CONFIG" and BAND_1_RATE in error["message"]


def test_plan_show_set_shows_the_scenario_id_changes_and_rules() -> None:
    r = hmb("plan", "show", "zhelibao-2022", "--set", f"{FLOOR}=13000")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "zhelibao-2022+s" in lines[0] and "(scenario)" in lines[0]
    assert f"{FLOOR}: 18000.00 → 13000.00" in r.stdout
    assert "above the floor 起付 13,000.00" in r.stdout  # the rules are the scenario's

    r = hmb("plan", "show", "zhelibao-2022", "--set", f"{FLOOR}=13000", "--json")
    [edition] = json.loads(r.stdout)
    assert edition["responsibilities"][0]["terms"][0]["floor"] == 1_300_000
    assert edition["variant"]["source"] == "zhelibao-2022"
    assert edition["variant"]["changes"] == [{"path": FLOOR, "old": "18000.00", "new": "13000.00"}]


# --- plan diff -----------------------------------------------------------------------------


def _toml(name: str) -> dict[str, Any]:
    return tomllib.loads((EDITIONS / name).read_text(encoding="utf-8"))


def test_what_the_2022_and_2023_files_differ_in() -> None:
    """The premise of the diff test below, from the files themselves: beside the year and the
    source text, only the compliant floor differs (18,000 → 13,000)."""
    a, b = _toml("zhelibao-2022.toml"), _toml("zhelibao-2023.toml")
    for key in ("edition", "source"):
        del a[key], b[key]
    assert a["responsibilities"][0]["terms"][0]["floor"] == "18000.00"
    assert b["responsibilities"][0]["terms"][0]["floor"] == "13000.00"
    a["responsibilities"][0]["terms"][0]["floor"] = "13000.00"
    assert a == b


def test_plan_diff_2022_2023_names_the_compliant_floor_and_nothing_else() -> None:
    r = hmb("plan", "diff", "zhelibao-2022", "zhelibao-2023")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "zhelibao-2022 → zhelibao-2023: 1 difference(s)"
    assert len(lines) == 2
    assert lines[1].strip().startswith("responsibility main (住院及门诊个人负担医疗费用")
    assert lines[1].endswith("floor 起付 on compliant cost 18,000.00 → 13,000.00 yuan")

    r = hmb("plan", "diff", "zhelibao-2022", "zhelibao-2023", "--json")
    doc = json.loads(r.stdout)
    assert (doc["a"], doc["b"], doc["equal"]) == ("zhelibao-2022", "zhelibao-2023", False)
    [d] = doc["differences"]
    assert (d["path"], d["a_value"], d["b_value"]) == (FLOOR, "18000.00", "13000.00")
    assert (d["a"], d["b"], d["unit"]) == ("18,000.00", "13,000.00", "yuan")


def test_plan_diff_of_equal_editions_says_so() -> None:
    # 2022 keeps the 2021 parameters (its file says so)
    r = run_cli(["plan", "diff", "zhelibao-2021", "zhelibao-2022"])
    assert r.exit_code == 0
    assert "zhelibao-2021 and zhelibao-2022: the same parameters" in r.output
    r = run_cli(["plan", "diff", "zhelibao-2021", "zhelibao-2022", "--json"])
    assert json.loads(r.output) == {
        "a": "zhelibao-2021",
        "b": "zhelibao-2022",
        "equal": True,
        "differences": [],
    }


def test_plan_diff_against_a_scenario_names_the_band_and_its_rates() -> None:
    r = run_cli(
        [
            "plan",
            "diff",
            "zhelibao-2022",
            "zhelibao-2022",
            "--set-b",
            "responsibilities.main.brackets.1.rate=0.88",
            "--set-b",
            "plan_cap=3000000",
        ]
    )
    assert r.exit_code == 0
    assert "2 difference(s)" in r.output
    assert "brackets 分段 band 2 (200,000.00–500,000.00): rate 85% → 88%" in r.output
    assert "plan-wide cap 总封顶 — → 3,000,000.00" in r.output


def test_plan_diff_names_a_band_added() -> None:
    """咸惠保 and 金惠保 (examples): 金惠保's in-list responsibility adds a 0–100,000 band at 70%
    below the 80% open band both have (asserted from the files first)."""
    xian = tomllib.loads((EXAMPLES / "xianhuibao-2024.toml").read_text(encoding="utf-8"))
    jin = tomllib.loads((EXAMPLES / "jinhuibao-2024.toml").read_text(encoding="utf-8"))
    assert xian["responsibilities"][0]["brackets"] == [{"rate": "0.80"}]
    assert jin["responsibilities"][0]["brackets"] == [
        {"up_to": "100000.00", "rate": "0.70"},
        {"rate": "0.80"},
    ]
    r = run_cli(
        [
            "plan",
            "diff",
            str(EXAMPLES / "xianhuibao-2024.toml"),
            str(EXAMPLES / "jinhuibao-2024.toml"),
            "--json",
        ]
    )
    texts = [d["text"] for d in json.loads(r.output)["differences"]]
    assert (
        "responsibility in_list (目录内自付 (in-list)): brackets 分段: band 0.00–100,000.00 "
        "added; rate — → 70%"
    ) in texts
    assert not any(t.startswith("other:") for t in texts)


def test_plan_diff_of_a_family_is_a_usage_error() -> None:
    r = run_cli(["plan", "diff", "zhelibao", "zhelibao-2023"])
    assert r.exit_code == 2
    assert "zhelibao is a family" in r.output


def test_every_difference_between_shipped_and_example_editions_is_named_in_rule_terms() -> None:
    """No difference between any two of them falls through to the by-path listing ("other"),
    and an edition never differs from itself."""
    files = [*shipped_edition_files().values(), *sorted(EXAMPLES.glob("*.toml"))]
    editions = [load_edition(f) for f in files]
    for a in editions:
        assert diff_editions(a, a) == []
        for b in editions:
            assert [str(d) for d in diff_editions(a, b) if d.where == "other"] == [], (a.id, b.id)


def test_a_threshold_that_changes_kind_is_named_with_both_kinds() -> None:
    z = load_edition(EDITIONS / "zhouhuibao-2024.toml")
    v = derive_edition(z, ["responsibilities.catastrophic_supplement.terms.0.floor=1000"])
    [d] = diff_editions(z, v)
    assert str(d).endswith(
        "term 1: threshold on catastrophic_left cost no threshold → floor 起付 1,000.00 yuan"
    )
