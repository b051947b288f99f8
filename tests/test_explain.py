"""The explanation of a member's statement (hmb_batch.report.explain), against hand computations.

Every expected figure below is worked out by hand from the rule text (DOMAIN.md section 3 for
浙丽保; the example 咸惠保 edition's parameters), not taken from the code.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch.plan.catalog import select_plan
from hmb_batch.plan.compiled import CompiledEdition
from hmb_batch.report.explain import (
    band_amount,
    explain_settlements,
    explanation_json,
    roster_facts,
    rule_text,
    term_reached,
)

EXAMPLES = Path(__file__).parent.parent / "examples" / "plans"


def edition(spec: str) -> CompiledEdition:
    return select_plan(spec).editions[0]


def y(amount: str) -> int:
    """Yuan to fen, for readability of the hand computations."""
    return int(Decimal(amount) * 100)


def settlement(
    setl_id: str,
    edition_id: str,
    costs: dict[str, tuple[str, str]],
    resps: dict[str, tuple[str, str, str, str]],
    plan_year: int = 2022,
) -> dict[str, Any]:
    """A statement row: costs as (increment, year to date after) and responsibilities as
    (payable, payout, year-to-date payable, year-to-date payout), all in yuan."""
    return {
        "setl_id": setl_id,
        "plan_year": plan_year,
        "edition": edition_id,
        "costs": [
            {"cost": c, "increment_fen": y(i), "cum_fen": y(a)} for c, (i, a) in costs.items()
        ],
        "responsibilities": [
            {
                "responsibility": r,
                "payable_fen": y(p),
                "payout_fen": y(b),
                "cum_payable_fen": y(cp),
                "cum_payout_fen": y(cb),
            }
            for r, (p, b, cp, cb) in resps.items()
        ],
    }


def statement(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(list(rows))


def one(frame: pl.DataFrame, setl_id: str) -> dict[str, Any]:
    rows = frame.filter(pl.col("setl_id") == setl_id).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_a_settlement_across_the_200000_band_bound() -> None:
    # reasonable to date 208,000 (P = 190,000) then +30,000: P 190,000 → 220,000.
    # B(190,000) = 142,500; B(220,000) = 150,000 + 20,000 × 85% = 167,000; payout 24,500:
    # 10,000 at 75% (7,500) and 20,000 at 85% (17,000)
    s = statement(
        settlement(
            "S1",
            "zhelibao-2022",
            {"compliant": ("0", "500"), "reasonable": ("30000", "238000")},
            {"main": ("30000", "24500", "220000", "167000")},
        )
    )
    r = one(explain_settlements(s, edition("zhelibao-2022")), "S1")
    assert [(b["from_fen"], b["to_fen"], b["rate_ppm"], b["payable_fen"]) for b in r["bands"]] == [
        (0, y("200000"), 750_000, y("10000")),
        (y("200000"), y("500000"), 850_000, y("20000")),
    ]
    assert [band_amount(b["payable_fen"], b["rate_ppm"]) for b in r["bands"]] == [
        Decimal("7500.00"),
        Decimal("17000.00"),
    ]
    compliant, reasonable = r["terms"]
    assert (compliant["kind"], compliant["threshold_fen"], term_reached(compliant)) == (
        "floor",
        y("18000"),
        "below",
    )
    assert (reasonable["counted_before_fen"], reasonable["counted_after_fen"]) == (
        y("190000"),
        y("220000"),
    )
    assert term_reached(reasonable) == "above"
    assert (r["payable_before_fen"], r["benefit_before_fen"]) == (y("190000"), y("142500"))
    assert r["reproduced"] and r["recomputed_payout_fen"] == y("24500")


def test_the_floor_is_the_edition_s_own() -> None:
    # compliant to date 10,000 → 15,000: under 2022's floor of 18,000 nothing counts;
    # under 2023's 13,000, 2,000 counts: P 0 → 2,000 at 75% = 1,500
    row = {"compliant": ("5000", "15000"), "reasonable": ("0", "0")}
    s22 = statement(settlement("S22", "zhelibao-2022", row, {"main": ("0", "0", "0", "0")}))
    r22 = one(explain_settlements(s22, edition("zhelibao-2022")), "S22")
    assert term_reached(r22["terms"][0]) == "below" and r22["bands"] == []
    assert r22["reproduced"]
    s23 = statement(
        settlement(
            "S23", "zhelibao-2023", row, {"main": ("2000", "1500", "2000", "1500")}, plan_year=2023
        )
    )
    r23 = one(explain_settlements(s23, edition("zhelibao-2023")), "S23")
    t = r23["terms"][0]
    assert (t["threshold_fen"], t["counted_after_fen"], term_reached(t)) == (
        y("13000"),
        y("2000"),
        "crossed",
    )
    assert [(b["rate_ppm"], b["payable_fen"]) for b in r23["bands"]] == [(750_000, y("2000"))]
    assert r23["reproduced"]


def test_a_reversal_takes_the_bands_back_and_a_wrong_payout_is_not_reproduced() -> None:
    # the reversal of a 30,000 reasonable settlement: P 220,000 → 190,000, payout −24,500
    rev = settlement(
        "R1",
        "zhelibao-2022",
        {"compliant": ("0", "500"), "reasonable": ("-30000", "208000")},
        {"main": ("-30000", "-24500", "190000", "142500")},
    )
    # the same, but the ledger says one fen less was taken back
    off = settlement(
        "R2",
        "zhelibao-2022",
        {"compliant": ("0", "500"), "reasonable": ("-30000", "208000")},
        {"main": ("-30000", "-24499.99", "190000", "142500.01")},
    )
    x = explain_settlements(statement(rev, off), edition("zhelibao-2022"))
    r = one(x, "R1")
    assert [(b["rate_ppm"], b["payable_fen"]) for b in r["bands"]] == [
        (750_000, -y("10000")),
        (850_000, -y("20000")),
    ]
    assert term_reached(r["terms"][1]) == "above" and r["reproduced"]
    wrong = one(x, "R2")
    assert not wrong["reproduced"] and wrong["recomputed_payout_fen"] == -y("24500")
    assert explanation_json([wrong])["reproduced"] is False


def test_a_shared_deductible_and_pre_existing_brackets() -> None:
    # 咸惠保 example: in-list and out-of-list share a 20,000 deductible, in-list first.
    # In-list to date 15,000 leaves 5,000 of it; out-of-list 0 → 10,000 counts 5,000.
    # Standard rate 70%: 3,500; a member with a pre-existing condition: 35%, 1,750
    e = edition(str(EXAMPLES / "xianhuibao-2024.toml"))
    costs = {
        "in_list": ("0", "15000"),
        "out_list": ("10000", "10000"),
        "special_drugs": ("0", "0"),
    }
    zero = ("0", "0", "0", "0")
    rows = statement(
        settlement(
            "STD",
            e.id,
            costs,
            {"in_list": zero, "out_list": ("5000", "3500", "5000", "3500"), "special_drugs": zero},
            plan_year=2024,
        )
    )
    standard = explain_settlements(rows, e)
    out_list = standard.filter(pl.col("responsibility") == "out_list").to_dicts()[0]
    term = out_list["terms"][0]
    assert (term["kind"], term["pool"], term["threshold_fen"]) == (
        "shared_deductible",
        "shared",
        y("5000"),
    )
    assert (term["counted_before_fen"], term["counted_after_fen"]) == (0, y("5000"))
    assert out_list["brackets"] == "standard" and out_list["reproduced"]
    assert [(b["rate_ppm"], b["payable_fen"]) for b in out_list["bands"]] == [(700_000, y("5000"))]

    pre = rows.with_columns(
        pl.col("responsibilities").list.eval(
            pl.when(pl.element().struct.field("responsibility") == "out_list")
            .then(
                pl.element().struct.with_fields(
                    pl.lit(y("1750")).alias("payout_fen"), pl.lit(y("1750")).alias("cum_payout_fen")
                )
            )
            .otherwise(pl.element())
        )
    )
    flags = pl.DataFrame({"plan_year": [2024], "pre_existing": [True], "consecutive_years": [0]})
    flagged = explain_settlements(pre, e, flags).filter(pl.col("responsibility") == "out_list")
    r = flagged.to_dicts()[0]
    assert r["brackets"] == "pre_existing" and r["reproduced"]
    assert [(b["rate_ppm"], b["payable_fen"]) for b in r["bands"]] == [(350_000, y("5000"))]
    # without the roster's flag the edition would pay 3,500, not the 1,750 the ledger holds
    assert (
        not explain_settlements(pre, e)
        .filter(pl.col("responsibility") == "out_list")["reproduced"]
        .item()
    )


def test_rows_of_other_editions_are_left_out() -> None:
    s = statement(
        settlement("A", "zhelibao-2022", {"compliant": ("0", "0")}, {"main": ("0",) * 4}),
        settlement(
            "B", "zhelibao-2023", {"compliant": ("0", "0")}, {"main": ("0",) * 4}, plan_year=2023
        ),
    )
    assert explain_settlements(s, edition("zhelibao-2022"))["setl_id"].to_list() == ["A"]


def roster(**rows: dict[str, Any]) -> pl.DataFrame:
    """Typed roster rows, one per member id given."""
    cols = {
        "pay_date": pl.Date,
        "basic_start_date": pl.Date,
        "special_event": pl.String,
        "event_date": pl.Date,
        "basic_suspended_from": pl.Date,
        "basic_suspended_to": pl.Date,
        "basic_restored_date": pl.Date,
        "pre_existing": pl.Boolean,
        "consecutive_years": pl.Int64,
    }
    return pl.DataFrame(
        [{"psn_no": k, "plan_year": v.pop("plan_year", 2022), **v} for k, v in rows.items()],
        schema={"psn_no": pl.String, "plan_year": pl.Int64, **cols},
    )


def test_roster_facts_name_the_rule_that_set_the_benefit_start() -> None:
    d = dt.date
    r = roster(
        ON_TIME={"pay_date": d(2021, 12, 31)},
        # newborn 90 days: born 1 Mar, paid 20 Mar → basic start 1 Mar
        NEWBORN={
            "pay_date": d(2022, 3, 20),
            "special_event": "newborn",
            "event_date": d(2022, 3, 1),
            "basic_start_date": d(2022, 3, 1),
        },
        # 31 May + 6 months clips to 30 Nov; the waiting period ends 29 Nov
        LATE={"pay_date": d(2022, 5, 31)},
        # paid on time, basic restored 15 Mar: benefits from 15 Sep
        RESTORED={"pay_date": d(2021, 11, 1), "basic_restored_date": d(2022, 3, 15)},
        SUSPENDED={
            "pay_date": d(2021, 11, 1),
            "basic_suspended_from": d(2022, 4, 1),
        },
        # launch year 2021: paid 10 Feb 2021 → the day after
        GRACE={"pay_date": d(2021, 2, 10), "plan_year": 2021},
    )
    e22, e21 = edition("zhelibao-2022"), edition("zhelibao-2021")
    facts = {f["psn_no"]: f for f in roster_facts(r, {2022: e22, 2021: e21}).iter_rows(named=True)}
    got = {
        k: (f["rule"], f["benefit_start"], f["waiting_period_last_day"], f["set_by_restoration"])
        for k, f in facts.items()
    }
    assert got == {
        "ON_TIME": (1, d(2022, 1, 1), None, False),
        "NEWBORN": (2, d(2022, 3, 1), d(2022, 2, 28), False),
        "LATE": (4, d(2022, 11, 30), d(2022, 11, 29), False),
        "RESTORED": (1, d(2022, 9, 15), d(2022, 9, 14), True),
        "SUSPENDED": (1, d(2022, 1, 1), None, False),
        "GRACE": (3, d(2021, 2, 11), d(2021, 2, 10), False),
    }
    assert facts["RESTORED"]["rule_start"] == d(2022, 1, 1)
    assert facts["SUSPENDED"]["basic_suspended_from"] == d(2022, 4, 1)
    assert "6 months" in rule_text(e22.edition, 2022, 4)
    assert "2021-12-31" in rule_text(e22.edition, 2022, 1)


def test_roster_facts_without_an_edition_for_the_year() -> None:
    r = roster(M={"pay_date": dt.date(2029, 1, 1), "plan_year": 2030})
    facts = roster_facts(r, {})
    assert facts["benefit_start"].to_list() == [None] and facts["rule"].to_list() == [None]
    assert "psn_name" not in facts.columns and "certno" not in facts.columns


def test_an_edition_is_used_only_if_its_hash_is_the_batch_s() -> None:
    from hmb_batch.report.member import edition_hash, explain_member

    row = settlement(
        "S1",
        "zhelibao-2022",
        {"compliant": ("0", "0"), "reasonable": ("20000", "20000")},
        {"main": ("2000", "1500", "2000", "1500")},
    ) | {
        "batch_id": "B1",
        "batch_seq": 1,
        "batch_started_at": dt.datetime(2022, 3, 2, 1, 0),
        "init_setl_id": None,
        "setl_time": dt.datetime(2022, 3, 1, 10, 0),
        "status": "paid",
        "reasons": [],
        "payable_fen": y("2000"),
        "payout_fen": y("1500"),
        "cum_payable_fen": y("2000"),
        "cum_payout_fen": y("1500"),
    }
    s = statement(row)
    recorded = edition_hash(edition("zhelibao-2022"))
    for hashed, explained in ((recorded, True), ("0" * 64, False)):
        prov = {"B1": {"editions": {"zhelibao-2022": hashed}, "inputs": {}}}
        m = explain_member("M1", None, s, prov, plan=None, roster=None)
        assert bool(m.rows_of("S1")) is explained
        doc = m.to_json()
        assert doc["roster"]["available"] is False
        assert doc["totals"][0]["payout"] == "1500.00"
        if explained:
            bands = doc["settlements"][0]["explanation"]["responsibilities"][0]["bands"]
            assert bands[0]["payable"] == "2000.00" and bands[0]["at_rate"] == "1500.00"
        else:
            assert "SHA-256" in m.unexplained["S1"]
            assert doc["settlements"][0]["explanation"] is None
