"""Rules and input checks that had no test, or a weak one (issue 13 item 20).

Each case runs through the CLI on a tiny extract; every expected amount is computed by hand in a
comment from the 浙丽保 2022 edition (deductible 18,000 on reasonable cost, floor 18,000 on
compliant cost, brackets 75% to 200,000 / 85% to 500,000 / 90% to 1,000,000 / 95% above).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import Extract, adjudicate, adjudicate_args, new_ledger, row, run_cli, yuan

# --- lists are looked up at each line's fee date, not at the settlement date -------------------


def _line(code: str, list_type: str, fee_day: str, amount: str = "100.00") -> dict[str, Any]:
    return {
        "list_type": list_type,
        "chrgitm_lv": "03",
        "fulamt_ownpay_amt": amount,
        "code": code,
        "fee_ocur_time": f"{fee_day} 09:00:00",
    }


def test_item20_lists_are_looked_up_at_the_fee_date_not_the_settlement_date(
    ex: Extract, tmp_path: Path
) -> None:
    # both lists hold their item from 10 to 20 March only
    ex.on_list("negative", "NEG-W", "2022-03-10", "2022-03-20")
    ex.on_list("admission", "ADM-W", "2022-03-10", "2022-03-20")
    ex.member("M1")
    # a stay admitted 5 March, settled 25 March: the line of 15 March is inside the window while
    # the settlement date is outside it …
    for sid, code, lt in (("NEG-IN", "NEG-W", "101"), ("ADM-IN", "ADM-W", "201")):
        ex.claim(
            sid,
            "M1",
            "2022-03-25 10:00:00",
            begndate="2022-03-05",
            extra_lines=[_line(code, lt, "2022-03-15")],
        )
    # … and a settlement of 15 March (inside) whose line is of 5 March (outside)
    for sid, code, lt in (("NEG-OUT", "NEG-W", "101"), ("ADM-OUT", "ADM-W", "201")):
        ex.claim(
            sid,
            "M1",
            "2022-03-15 10:00:00",
            begndate="2022-03-05",
            extra_lines=[_line(code, lt, "2022-03-05")],
        )
    p = adjudicate(ex, tmp_path)
    # self-paid drug of 100.00 on the negative list at its fee date: counts 0
    assert row(p, "NEG-IN")["reasonable_amt"] == yuan("0")
    # self-paid service of 100.00 on the admission list at its fee date: counts 100.00
    assert row(p, "ADM-IN")["reasonable_amt"] == yuan("100.00")
    # off the negative list at its fee date: the self-paid drug counts 100.00
    assert row(p, "NEG-OUT")["reasonable_amt"] == yuan("100.00")
    # off the admission list at its fee date: the self-paid service counts 0
    assert row(p, "ADM-OUT")["reasonable_amt"] == yuan("0")
    audit = pl.read_parquet(tmp_path / "out" / "lines.parquet").filter(
        pl.col("feedetl_sn") == "0003"
    )
    reasons = dict(zip(audit["setl_id"], audit["reasons"].to_list(), strict=True))
    assert reasons["NEG-IN"] == ["NEGATIVE_LIST"]
    assert reasons["ADM-OUT"] == ["NOT_ADMITTED"]
    assert reasons["ADM-IN"] == reasons["NEG-OUT"] == ["COUNTED_REASONABLE"]


# --- compliant cost: which funds are subtracted, and the floor at zero ------------------------

SUBTRACTED_FUNDS = ["hifp_pay", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay"]


def test_item20_each_listed_fund_is_subtracted_and_othfund_pay_is_not(
    ex: Extract, tmp_path: Path
) -> None:
    # DOMAIN.md: X = max(0, inscp_amt − hifp − cvlserv − hifes − hifmi − hifob − maf) − refl;
    # othfund_pay (其他基金) is not in the edition's less_funds
    ex.member("M1")
    for fund in SUBTRACTED_FUNDS:
        ex.claim(f"S-{fund}", "M1", "2022-03-01 10:00:00", compliant="1000")
        ex.settlements[-1][fund] = "300.00"
    ex.claim("S-othfund", "M1", "2022-03-01 10:00:00", compliant="1000", othfund_pay="300.00")
    p = adjudicate(ex, tmp_path)
    for fund in SUBTRACTED_FUNDS:
        assert row(p, f"S-{fund}")["compliant_amt"] == yuan("700.00"), fund  # 1,000 − 300
    assert row(p, "S-othfund")["compliant_amt"] == yuan("1000.00")  # 1,000 − 0


def test_item20_compliant_cost_is_floored_at_zero(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    # funds above inscp_amt: in-policy 300.00, basic fund 500.00 and medical aid 200.00 →
    # max(0, 300 − 700) = 0 (not −400)
    ex.claim("FUNDS", "M1", "2022-03-01 10:00:00", compliant="300")
    ex.settlements[-1].update(hifp_pay="500.00", maf_pay="200.00")
    # referral self-pay above what the funds left: in-policy 1,000.00, basic fund 600.00 leaves
    # 400.00; referral self-pay 500.00 → max(0, 400 − 500) = 0 (not −100);
    # reasonable gains 500.00 × 50% = 250.00
    ex.claim("REFL", "M1", "2022-03-02 10:00:00", compliant="400", hifp="600", refl="500")
    # a later settlement is not reduced by the earlier ones: compliant 20,000.00 → YTD 20,000.00
    ex.claim("LATER", "M1", "2022-03-03 10:00:00", compliant="20000")
    p = adjudicate(ex, tmp_path)
    assert row(p, "FUNDS")["compliant_amt"] == yuan("0")
    assert (row(p, "REFL")["compliant_amt"], row(p, "REFL")["reasonable_amt"]) == (
        yuan("0"),
        yuan("250.00"),
    )
    later = row(p, "LATER")
    # P = (20,000 − 18,000) + max(0, 250 − 18,000) = 2,000 → B = 1,500.00
    assert later["cum_compliant_amt"] == yuan("20000.00")
    assert (later["payable_amt"], later["payout_amt"]) == (yuan("2000.00"), yuan("1500.00"))


# --- eligibility ------------------------------------------------------------------------------


def test_item20_service_date_falls_back_to_setl_time_without_begndate(
    ex: Extract, tmp_path: Path
) -> None:
    # paid 15 Jan 2022 (late): benefit start 15 Jul 2022
    ex.member("M1", pay_date="2022-01-15")
    cases = {
        "BEFORE": "2022-07-14 23:59:59",  # service date 14 Jul → waiting
        "ON": "2022-07-15 00:00:01",  # service date 15 Jul → covered
    }
    for sid, when in cases.items():
        ex.claim(sid, "M1", when, reasonable="20000")
        ex.settlements[-1]["begndate"] = ""  # empty in the file
    # with a begndate, it wins over setl_time (admitted 14 Jul, settled 16 Jul)
    ex.claim("ADMITTED", "M1", "2022-07-16 10:00:00", reasonable="20000", begndate="2022-07-14")
    p = adjudicate(ex, tmp_path)
    assert (row(p, "BEFORE")["status"], row(p, "BEFORE")["reasons"]) == (
        "denied",
        ["WAITING_PERIOD"],
    )
    # reasonable 20,000 − 18,000 = 2,000 → 1,500.00
    assert row(p, "ON")["payout_amt"] == yuan("1500.00")
    assert row(p, "ADMITTED")["reasons"] == ["WAITING_PERIOD"]


# (case, roster fields, claim time, reasons): every window is 30 days (transfer_in, released)
SPECIAL_EVENTS: list[tuple[str, dict[str, str], str, list[str]]] = [
    (
        "transfer_in paid on day 30: from basic start",
        {
            "pay_date": "2022-05-01",
            "special_event": "transfer_in",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-04-01 08:00:00",
        [],
    ),
    (
        "transfer_in paid on day 31: waits 6 months (to 2 Nov)",
        {
            "pay_date": "2022-05-02",
            "special_event": "transfer_in",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-11-01 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "transfer_in paid on day 31: 2 Nov is covered",
        {
            "pay_date": "2022-05-02",
            "special_event": "transfer_in",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-11-02 08:00:00",
        [],
    ),
    (
        "transfer_in: claim before basic start",
        {
            "pay_date": "2022-04-10",
            "special_event": "transfer_in",
            "event_date": "2022-04-01",
            "basic_start_date": "2022-04-01",
        },
        "2022-03-31 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "released paid on day 30: from basic start",
        {
            "pay_date": "2022-07-31",
            "special_event": "released",
            "event_date": "2022-07-01",
            "basic_start_date": "2022-07-01",
        },
        "2022-07-01 08:00:00",
        [],
    ),
    (
        "released paid on the event day",
        {
            "pay_date": "2022-07-01",
            "special_event": "released",
            "event_date": "2022-07-01",
            "basic_start_date": "2022-07-01",
        },
        "2022-07-02 08:00:00",
        [],
    ),
    (
        "released paid the day before the event: not in the window, waits to 30 Dec",
        {
            "pay_date": "2022-06-30",
            "special_event": "released",
            "event_date": "2022-07-01",
            "basic_start_date": "2022-07-01",
        },
        "2022-12-29 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "newborn paid before the birth: not in the window",
        {
            "pay_date": "2022-02-28",
            "special_event": "newborn",
            "event_date": "2022-03-01",
            "basic_start_date": "2022-03-01",
        },
        "2022-03-02 08:00:00",
        ["WAITING_PERIOD"],
    ),
]


def test_item20_transfer_in_and_released_windows_and_payment_before_the_event(
    ex: Extract, tmp_path: Path
) -> None:
    for i, (_case, roster, when, _reasons) in enumerate(SPECIAL_EVENTS):
        ex.member(f"M{i}", **roster)
        ex.claim(f"S{i}", f"M{i}", when, reasonable="20000")
    p = adjudicate(ex, tmp_path)
    wrong = []
    for i, (case, _roster, _when, reasons) in enumerate(SPECIAL_EVENTS):
        r = row(p, f"S{i}")
        # covered: reasonable 20,000 − 18,000 = 2,000 → 1,500.00; denied: nothing
        payout = yuan("0") if reasons else yuan("1500.00")
        if r["reasons"] != reasons or r["payout_amt"] != payout:
            wrong.append(f"{case}: got {r['reasons']} {r['payout_amt']}, expected {reasons}")
    assert not wrong, "\n".join(wrong)


# (case, plan year, roster fields, claim time, reasons); month ends clip to the shorter month
LEAP_DAYS: list[tuple[str, int, dict[str, str], str, list[str]]] = [
    (
        "restored 31 Aug 2023 + 6 months = 29 Feb 2024 (leap): 28 Feb waits",
        2024,
        {"pay_date": "2023-11-01", "basic_restored_date": "2023-08-31"},
        "2024-02-28 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "restored 31 Aug 2023 + 6 months = 29 Feb 2024 (leap): 29 Feb is covered",
        2024,
        {"pay_date": "2023-11-01", "basic_restored_date": "2023-08-31"},
        "2024-02-29 08:00:00",
        [],
    ),
    (
        "paid 29 Feb 2024 (late) + 6 months = 29 Aug: 28 Aug waits",
        2024,
        {"pay_date": "2024-02-29"},
        "2024-08-28 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "paid 29 Feb 2024 (late) + 6 months = 29 Aug: 29 Aug is covered",
        2024,
        {"pay_date": "2024-02-29"},
        "2024-08-29 08:00:00",
        [],
    ),
    (
        "paid 31 Aug 2024 (late) + 6 months = 28 Feb 2025: beyond the plan year",
        2024,
        {"pay_date": "2024-08-31"},
        "2024-12-31 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "restored 29 Feb 2024 + 6 months = 29 Aug 2024: 28 Aug waits",
        2024,
        {"pay_date": "2023-11-01", "basic_restored_date": "2024-02-29"},
        "2024-08-28 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "restored 31 Aug 2022 + 6 months = 28 Feb 2023 (not leap): 27 Feb waits",
        2023,
        {"pay_date": "2022-11-01", "basic_restored_date": "2022-08-31"},
        "2023-02-27 08:00:00",
        ["WAITING_PERIOD"],
    ),
    (
        "restored 31 Aug 2022 + 6 months = 28 Feb 2023 (not leap): 28 Feb is covered",
        2023,
        {"pay_date": "2022-11-01", "basic_restored_date": "2022-08-31"},
        "2023-02-28 08:00:00",
        [],
    ),
]


def test_item20_six_months_from_month_ends_and_leap_days(ex: Extract, tmp_path: Path) -> None:
    # the 2022 edition applied to every plan year (an analyst's run): 2024 has a 29 February
    for i, (_case, year, roster, when, _reasons) in enumerate(LEAP_DAYS):
        ex.member(f"M{i}", plan_year=year, **roster)
        ex.claim(f"S{i}", f"M{i}", when, reasonable="20000")
    p = adjudicate(ex, tmp_path, plan="zhelibao-2022")
    wrong = []
    for i, (case, year, _roster, _when, reasons) in enumerate(LEAP_DAYS):
        r = row(p, f"S{i}")
        payout = yuan("0") if reasons else yuan("1500.00")  # (20,000 − 18,000) × 75%
        if (r["plan_year"], r["reasons"], r["payout_amt"]) != (year, reasons, payout):
            wrong.append(f"{case}: got {r['reasons']} {r['payout_amt']}, expected {reasons}")
    assert not wrong, "\n".join(wrong)


# --- bad input ---------------------------------------------------------------------------------


def _quarantine(ex: Extract, tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    p = adjudicate(ex, tmp_path)
    return p, pl.read_parquet(tmp_path / "out" / "quarantine.parquet")


def _settlement_q(q: pl.DataFrame, setl_id: str) -> dict[str, Any]:
    rows = q.filter((pl.col("setl_id") == setl_id) & (pl.col("record") == "settlement"))
    assert rows.height == 1, f"{setl_id}: {rows.height} settlement rows in the quarantine"
    return rows.to_dicts()[0]


def test_item20_a_fee_line_whose_total_is_not_its_four_components(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    ex.claim("OK", "M1", "2022-03-01 10:00:00", reasonable="100")
    ex.claim("LINE", "M1", "2022-03-02 10:00:00", reasonable="100")
    bad = next(ln for ln in ex.lines if ln["setl_id"] == "LINE" and ln["feedetl_sn"] == "0002")
    bad["det_item_fee_sumamt"] = "150.00"  # its components add up to 100.00
    p, q = _quarantine(ex, tmp_path)
    assert p["setl_id"].to_list() == ["OK"]
    hit = _settlement_q(q, "LINE")
    assert hit["reasons"] == ["AMOUNT_IDENTITY"]
    assert "det_item_fee_sumamt" in hit["detail"] and "150.00" in hit["detail"]
    # its lines go to the quarantine with it
    lines = q.filter((pl.col("setl_id") == "LINE") & (pl.col("record") == "fee_line"))
    assert lines.height == 2


def test_item20_bad_refd_setl_flag_and_a_reversal_without_its_original(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="20000")
    ex.claim("FLAG", "M1", "2022-03-02 10:00:00", reasonable="100", refd_setl_flag="2")
    ex.reversal("NOINIT", "", "M1", "2022-03-03 10:00:00")  # init_setl_id empty
    p, q = _quarantine(ex, tmp_path)
    flag = _settlement_q(q, "FLAG")
    assert flag["reasons"] == ["BAD_VALUE"]
    assert "refd_setl_flag" in flag["detail"] and "'2'" in flag["detail"]
    noinit = _settlement_q(q, "NOINIT")
    assert noinit["reasons"] == ["BAD_VALUE"] and "init_setl_id" in noinit["detail"]
    # S1 stands: nothing reversed it; reasonable 20,000 − 18,000 = 2,000 → 1,500.00
    assert p["setl_id"].to_list() == ["S1"]
    assert row(p, "S1")["cum_payout_amt"] == yuan("1500.00")


def test_item20_conflicting_duplicate_fee_lines(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("SAME", "M1", "2022-03-01 10:00:00", reasonable="20000")
    ex.lines.append(dict(ex.lines[-1]))  # line 0002 sent twice, identical: one copy counts
    ex.claim("DIFF", "M1", "2022-03-02 10:00:00", reasonable="0")
    # line 0002 of DIFF (all amounts 0) sent twice, once under another name: which is right?
    ex.lines.append({**ex.lines[-1], "hilist_name": "another item"})
    p, q = _quarantine(ex, tmp_path)
    # SAME counts its 20,000.00 once: 20,000 − 18,000 = 2,000 → 1,500.00
    assert row(p, "SAME")["reasonable_amt"] == yuan("20000.00")
    assert row(p, "SAME")["payout_amt"] == yuan("1500.00")
    assert "DIFF" not in p["setl_id"].to_list()
    assert _settlement_q(q, "DIFF")["reasons"] == ["CONFLICTING_DUPLICATE"]
    assert "0002" in _settlement_q(q, "DIFF")["detail"]
    copies = q.filter(
        (pl.col("setl_id") == "DIFF")
        & (pl.col("record") == "fee_line")
        & (pl.col("feedetl_sn") == "0002")
    )
    assert copies.height == 2  # both copies kept for the operator, nothing dropped


# --- brackets across several settlements of one member ----------------------------------------


def test_item20_brackets_above_200000_across_several_settlements(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-02-01 10:00:00", reasonable="118000")
    ex.claim("S2", "M1", "2022-03-01 10:00:00", reasonable="200000")
    ex.claim("S3", "M1", "2022-04-01 10:00:00", reasonable="300000", compliant="18000")
    ex.claim("S4", "M1", "2022-05-01 10:00:00", compliant="500000")
    p = adjudicate(ex, tmp_path)
    # S1: R 118,000 → P 100,000 → B = 100,000 × 75% = 75,000.00
    # S2: R 318,000 → P 300,000 → B = 150,000 + 100,000 × 85% = 235,000.00; payout 160,000.00
    # S3: R 618,000, X 18,000 (at the floor, adds 0) → P 600,000
    #     → B = 150,000 + 255,000 + 100,000 × 90% = 495,000.00; payout 260,000.00
    # S4: X 518,000 → P = 600,000 + 500,000 = 1,100,000
    #     → B = 150,000 + 255,000 + 450,000 + 100,000 × 95% = 950,000.00; payout 455,000.00
    expected = {
        "S1": ("100000.00", "75000.00", "75000.00"),
        "S2": ("300000.00", "160000.00", "235000.00"),
        "S3": ("600000.00", "260000.00", "495000.00"),
        "S4": ("1100000.00", "455000.00", "950000.00"),
    }
    for sid, (cum_payable, payout, cum_payout) in expected.items():
        r = row(p, sid)
        assert (r["cum_payable_amt"], r["payout_amt"], r["cum_payout_amt"]) == (
            yuan(cum_payable),
            yuan(payout),
            yuan(cum_payout),
        ), sid


def test_item20_brackets_across_two_nights_on_a_ledger(ex: Extract, tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    ex.member("M1")
    ex.claim("S1", "M1", "2022-02-01 10:00:00", reasonable="218000")  # P 200,000
    night1 = adjudicate(ex, tmp_path / "n1", "--ledger", str(ledger))
    # the whole of P 200,000 in the first band: 150,000.00
    assert row(night1, "S1")["payout_amt"] == yuan("150000.00")
    ex.settlements.clear()
    ex.lines.clear()
    ex.claim("S2", "M1", "2022-06-01 10:00:00", reasonable="400000.02")
    night2 = adjudicate(ex, tmp_path / "n2", "--ledger", str(ledger))
    # P 600,000.02 → B = 150,000 + 255,000 + 100,000.02 × 90% = 495,000.018 → 495,000.02;
    # payout 495,000.02 − 150,000.00 = 345,000.02
    s2 = row(night2, "S2")
    assert s2["cum_payable_amt"] == yuan("600000.02")
    assert (s2["payout_amt"], s2["cum_payout_amt"]) == (yuan("345000.02"), yuan("495000.02"))


# --- the loss ratio itself ----------------------------------------------------------------------


def test_item20_loss_ratio_from_premium_members_and_operating_cost(
    ex: Extract, tmp_path: Path
) -> None:
    for i in range(7):
        ex.member(f"M{i}")
    ex.member("OLD", plan_year=2021)  # another plan year's row: not a 2022 member
    ex.claim("S1", "M0", "2022-03-01 10:00:00", reasonable="18100")  # P 100 → B 75.00
    adjudicate(ex, tmp_path)
    # 7 members × 100.00 = 700.00, less 5% operating cost (35.00) = 665.00;
    # 75.00 ÷ 665.00 = 11.278% → shown 11.3%; target 95%
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| 2022 | 7 | 665.00 | 75.00 | 11.3% | 95% |" in md, md
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "665.00" in html and "11.3%" in html


# --- encodings --------------------------------------------------------------------------------


def _gbk_copies(files: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The four CSV files re-encoded as GBK (as a Windows export writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, path in files.items():
        out[name] = folder / path.name
        out[name].write_bytes(path.read_text(encoding="utf-8").encode("gbk"))
    return out


def _chinese_extract(ex: Extract) -> Extract:
    ex.member("M1", hardship="低保", admdvs="331102")  # Chinese text in the roster too
    ex.member("M2", pay_date="2022-01-15")  # late: waits to 15 Jul
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="20000", psn_name="张三")
    ex.claim("S2", "M2", "2022-03-02 10:00:00", reasonable="20000", psn_name="李四")
    ex.settlements[-1]["fixmedins_name"] = "丽水市人民医院"
    return ex


def _check_gbk_run(out: Path) -> None:
    p = pl.read_parquet(out / "payouts.parquet")
    # S1: 20,000 − 18,000 = 2,000 → 1,500.00; S2: waiting period
    assert row(p, "S1")["payout_amt"] == yuan("1500.00")
    assert row(p, "S2")["reasons"] == ["WAITING_PERIOD"]
    assert row(p, "S2")["fixmedins_name"] == "丽水市人民医院"
    assert row(p, "S1")["psn_name"] == "张*"  # masked, read right


def test_item20_gbk_files_through_the_command_line(ex: Extract, tmp_path: Path) -> None:
    files = _gbk_copies(_chinese_extract(ex).write(tmp_path / "utf8"), tmp_path / "gbk")
    assert "低保".encode("gbk") in files["roster"].read_bytes()  # really GBK
    assert "丽水市人民医院".encode("gbk") in files["settlements"].read_bytes()
    r = run_cli(adjudicate_args(files, tmp_path / "out", "--encoding", "gbk", "--quiet"))
    assert r.exit_code == 0, r.output
    _check_gbk_run(tmp_path / "out")


def test_item20_gbk_files_through_hmb_toml(ex: Extract, tmp_path: Path) -> None:
    files = _gbk_copies(_chinese_extract(ex).write(tmp_path / "utf8"), tmp_path / "gbk")
    config = tmp_path / "hmb.toml"
    config.write_text('[adjudicate]\nencoding = "gbk"\n', encoding="utf-8")
    r = run_cli(adjudicate_args(files, tmp_path / "out", "--config", str(config), "--quiet"))
    assert r.exit_code == 0, r.output
    _check_gbk_run(tmp_path / "out")


def _names_the_fix(output: str) -> bool:
    """The message names the byte and the option to use (issue 13 item 13)."""
    return "byte" in output and ("--encoding gbk" in output or "--encoding gb18030" in output)


@pytest.mark.parametrize("which", ["roster", "lists"])
def test_item20_a_gbk_reference_file_read_as_utf8_is_a_clear_error(
    ex: Extract, tmp_path: Path, which: str
) -> None:
    ex.on_list("admission", "中药饮片", "2021-01-01")  # Chinese text in the lists file
    files = _chinese_extract(ex).write(tmp_path / "utf8")
    gbk = _gbk_copies({which: files[which]}, tmp_path / "gbk")[which]
    r = run_cli(adjudicate_args({**files, which: gbk}, tmp_path / "out", "--quiet"))
    assert r.exit_code == 3, r.output
    assert gbk.name in r.output and _names_the_fix(r.output)
    assert not (tmp_path / "out" / "payouts.parquet").exists()
