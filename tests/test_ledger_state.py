"""member_state, the ledger's per-member year to date (issue 14, item 5): kept by apply and
revert equal to what the accumulator log says, filled by the migration from schema 5, and still
checked against the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import Extract, adjudicate_args, new_ledger, run_cli, standard_extract
from hmb_batch.ledger.store import MIGRATIONS, SCHEMA_VERSION

COLS = ["setl_id", "psn_no", "plan_year", "status", "reasons", "payout_amt", "cum_payout_amt"]

# the year to date per key as the accumulator log defines it: the latest after_fen of the
# applied batches
FROM_LOG = """
    SELECT l.psn_no, l.plan_year, l.cost, arg_max(l.after_fen, b.seq) AS amount_fen
    FROM accumulator_log l JOIN batches b USING (batch_id)
    WHERE b.status = 'applied'
    GROUP BY ALL
"""


def _query(ledger: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        return sorted(con.execute(sql).fetchall(), key=str)
    finally:
        con.close()


def _state(ledger: Path) -> list[tuple[Any, ...]]:
    return _query(ledger, "SELECT psn_no, plan_year, cost, amount_fen FROM member_state")


def _assert_state_is_the_log(ledger: Path) -> list[tuple[Any, ...]]:
    state = _state(ledger)
    assert state == _query(ledger, FROM_LOG)
    # exactly one row per member, plan year and cost
    assert len({r[:3] for r in state}) == len(state)
    # the accumulators view reads the same year to date
    assert _query(ledger, "SELECT * FROM accumulators") == state
    return state


# Four nights of three members over two plan years: new members, members seen before, a
# reversal of an earlier night's claim, and a member who appears first in the night reverted.
NIGHTS: list[list[tuple[str, ...]]] = [
    [("A1", "M1", "2022-03-01 10:00:00", "30000"), ("A2", "M2", "2022-03-01 11:00:00", "8000")],
    [("B1", "M1", "2022-04-01 10:00:00", "20000"), ("B2", "M2", "2022-04-02 10:00:00", "500")],
    [
        ("C1", "M3", "2022-05-01 10:00:00", "12000"),
        ("C2", "M1", "2022-05-02 10:00:00", "9000"),
        ("RA2", "M2", "2022-05-03 10:00:00", "A2"),  # reverses night 1's A2
    ],
    # (M3 claims in 2022 too: a member with a year to date in one plan year who claims only in
    # another is refused today by the ledger.after check, see the report of issue 14 item 5)
    [
        ("D1", "M3", "2023-01-10 10:00:00", "40000"),
        ("D2", "M2", "2022-06-01 10:00:00", "700"),
        ("D3", "M3", "2022-06-02 10:00:00", "100"),
    ],
]


def _extract(claims: list[tuple[str, ...]]) -> Extract:
    ex = standard_extract()
    for psn in ("M1", "M2", "M3"):
        ex.member(psn, plan_year=2022)
        ex.member(psn, plan_year=2023)
    for setl_id, psn, when, amount in claims:
        if setl_id.startswith("R"):
            ex.reversal(setl_id, amount, psn, when)
        else:
            ex.claim(setl_id, psn, when, compliant=amount, reasonable=amount)
    return ex


def _night(ledger: Path, tmp: Path, name: str, claims: list[tuple[str, ...]]) -> pl.DataFrame:
    files = _extract(claims).write(tmp / name / "in")
    out = tmp / name / "out"
    r = run_cli(adjudicate_args(files, out, "--ledger", str(ledger), "--quiet"))
    assert r.exit_code == 0, r.output
    return pl.read_parquet(out / "payouts.parquet").select(COLS)


def _last_batch(ledger: Path) -> str:
    rows = _query(ledger, "SELECT batch_id, seq FROM batches WHERE status = 'applied'")
    return str(max(rows, key=lambda r: r[1])[0])


def test_member_state_follows_nights_a_revert_and_a_reapply(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    payouts = {}
    states = []
    for i, claims in enumerate(NIGHTS[:3]):
        payouts[i] = _night(ledger, tmp_path, f"n{i}", claims)
        states.append(_assert_state_is_the_log(ledger))
    assert states[2] != states[1] and len(states[2]) > len(states[1])  # M3 is new in night 3

    # revert night 3: M3's rows go, M1's and M2's go back to night 2's
    r = run_cli(["ledger", "revert", _last_batch(ledger), "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    assert _assert_state_is_the_log(ledger) == states[1]

    # the same night again, then the last night
    payouts[2] = _night(ledger, tmp_path, "n2-again", NIGHTS[2])
    again = _assert_state_is_the_log(ledger)
    assert again == states[2]
    payouts[3] = _night(ledger, tmp_path, "n3", NIGHTS[3])
    nightly_state = _assert_state_is_the_log(ledger)

    # the nights equal one run of the whole period, payouts and year to date alike
    whole_ledger = new_ledger(tmp_path / "whole.duckdb")
    whole = _night(whole_ledger, tmp_path, "whole", [c for n in NIGHTS for c in n])
    assert_frame_equal(pl.concat(payouts.values()).sort("setl_id"), whole.sort("setl_id"))
    assert whole.filter(pl.col("status") == "reversal").height == 1
    assert nightly_state == _state(whole_ledger)


def _as_schema_7(ledger: Path) -> None:
    """Turn a ledger back into what schema 7 was: batches without their output folder and
    the revert's who, when and why."""
    assert SCHEMA_VERSION == 8
    con = duckdb.connect(str(ledger))
    try:
        for column in ("out_dir", "reverted_at", "reverted_by", "revert_reason"):
            con.execute(f"ALTER TABLE batches DROP COLUMN {column}")
        con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    finally:
        con.close()


def _as_schema_6(ledger: Path) -> None:
    """Turn a ledger back into what schema 6 was: cost rows without member and plan year."""
    _as_schema_7(ledger)
    con = duckdb.connect(str(ledger))
    try:
        con.execute("ALTER TABLE settlement_costs DROP COLUMN psn_no")
        con.execute("ALTER TABLE settlement_costs DROP COLUMN plan_year")
        con.execute("ALTER TABLE settlement_costs DROP COLUMN member_key")
        con.execute("DROP TABLE member_keys")
        con.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    finally:
        con.close()


def _as_schema_5(ledger: Path) -> None:
    """Turn a ledger back into what schema 5 was: no member_state, the view over the log."""
    _as_schema_6(ledger)
    view_v1 = next(ddl for ddl in MIGRATIONS[1] if "VIEW accumulators" in ddl)
    con = duckdb.connect(str(ledger))
    try:
        con.execute("DROP VIEW accumulators")
        con.execute("DROP TABLE member_state")
        con.execute(view_v1)
        con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    finally:
        con.close()


def test_a_schema_5_ledger_migrates_with_its_year_to_date(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for i, claims in enumerate(NIGHTS[:3]):
        _night(ledger, tmp_path, f"n{i}", claims)
    # a reverted batch's log rows stay in the log: the migration must leave them out
    r = run_cli(["ledger", "revert", _last_batch(ledger), "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    expected = _assert_state_is_the_log(ledger)
    _as_schema_5(ledger)
    assert "member_state" not in {
        t for (t,) in _query(ledger, "SELECT table_name FROM duckdb_tables()")
    }
    assert _query(ledger, "SELECT * FROM accumulators") == expected

    status = run_cli(["ledger", "status", "--ledger", str(ledger)])  # opening migrates
    assert status.exit_code == 0, status.output
    assert _query(ledger, "SELECT value FROM meta WHERE key = 'schema_version'") == [("8",)]
    assert _assert_state_is_the_log(ledger) == expected
    # and the migrated ledger carries on
    _night(ledger, tmp_path, "n2-again", NIGHTS[2])
    _assert_state_is_the_log(ledger)


# each cost row's member and plan year, as the registry's settlements say, and the member's key
COST_MEMBERS = """
    SELECT c.setl_id, c.cost, s.psn_no, s.plan_year, k.member_key FROM settlement_costs c
    JOIN settlements s USING (setl_id) JOIN member_keys k ON k.psn_no = s.psn_no
"""
COSTS = "SELECT setl_id, cost, psn_no, plan_year, member_key FROM settlement_costs"


def _assert_keys_are_dense_and_unique(ledger: Path) -> None:
    keys = _query(ledger, "SELECT psn_no, member_key FROM member_keys")
    assert len({p for p, _ in keys}) == len(keys)
    assert sorted(k for _, k in keys) == list(range(1, len(keys) + 1))


def test_a_schema_6_ledger_migrates_its_cost_rows_with_their_members(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for i, claims in enumerate(NIGHTS[:3]):
        _night(ledger, tmp_path, f"n{i}", claims)
    costs = _query(ledger, COSTS)
    assert costs == _query(ledger, COST_MEMBERS) and len(costs) > 0
    _as_schema_6(ledger)

    status = run_cli(["ledger", "status", "--ledger", str(ledger)])  # opening migrates
    assert status.exit_code == 0, status.output
    assert _query(ledger, "SELECT value FROM meta WHERE key = 'schema_version'") == [("8",)]
    migrated = _query(ledger, COSTS)
    assert migrated == _query(ledger, COST_MEMBERS)
    assert [r[:4] for r in migrated] == [r[:4] for r in costs]
    _assert_keys_are_dense_and_unique(ledger)
    # and the migrated ledger carries on, its new cost rows named and keyed too (M3's 2023
    # claim is a new member-year of a member already keyed)
    _night(ledger, tmp_path, "n3", NIGHTS[3])
    after = _query(ledger, COSTS)
    assert after == _query(ledger, COST_MEMBERS) and len(after) > len(costs)
    _assert_keys_are_dense_and_unique(ledger)
    _assert_state_is_the_log(ledger)


def test_member_keys_survive_a_revert_and_new_members_get_the_next(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    _night(ledger, tmp_path, "n0", NIGHTS[0])  # M1, M2
    assert _query(ledger, "SELECT psn_no, member_key FROM member_keys") == [("M1", 1), ("M2", 2)]
    _night(ledger, tmp_path, "n2", NIGHTS[2])  # M3 is new
    r = run_cli(["ledger", "revert", _last_batch(ledger), "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    # a key is never taken back: M3 keeps 3 for when its claims come again
    keys = [("M1", 1), ("M2", 2), ("M3", 3)]
    assert _query(ledger, "SELECT psn_no, member_key FROM member_keys") == keys
    _night(ledger, tmp_path, "n2-again", NIGHTS[2])
    assert _query(ledger, "SELECT psn_no, member_key FROM member_keys") == keys
    assert _query(ledger, COSTS) == _query(ledger, COST_MEMBERS)


def test_a_registry_cost_row_edited_by_hand_is_refused(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    _night(ledger, tmp_path, "n0", NIGHTS[0])
    con = duckdb.connect(str(ledger))
    try:  # a settlement's increment edited by hand between nights: the accumulator is intact
        con.execute(
            "UPDATE settlement_costs SET increment_fen = increment_fen + 1 "
            "WHERE setl_id = 'A1' AND cost = 'compliant'"
        )
    finally:
        con.close()
    before = _state(ledger)
    files = _extract(NIGHTS[1]).write(tmp_path / "n1" / "in")
    r = run_cli(adjudicate_args(files, tmp_path / "n1" / "out", "--ledger", str(ledger)))
    assert r.exit_code == 6, r.output
    assert "ledger.before" in r.output and "M1 2022 compliant" in r.output
    assert _state(ledger) == before


def test_a_member_state_that_disagrees_with_the_registry_is_refused(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    _night(ledger, tmp_path, "n0", NIGHTS[0])
    con = duckdb.connect(str(ledger))
    try:  # an accumulator edited by hand between nights
        con.execute("UPDATE member_state SET amount_fen = amount_fen + 1 WHERE psn_no = 'M1'")
    finally:
        con.close()
    before = _state(ledger)
    files = _extract(NIGHTS[1]).write(tmp_path / "n1" / "in")
    r = run_cli(adjudicate_args(files, tmp_path / "n1" / "out", "--ledger", str(ledger)))
    assert r.exit_code == 6, r.output
    assert "does not reconcile" in r.output and "M1 2022" in r.output
    assert _state(ledger) == before


def _log_only_batch(batch_id: str, seq: int, log: list[tuple[Any, ...]]) -> tuple[Any, Any]:
    """A batch record and rows whose only rows are accumulator log rows
    (psn_no, plan_year, cost, before_fen, after_fen)."""
    from hmb_batch.ledger.store import BATCH_TABLES, TABLE_COLUMNS, file_rows

    record = {
        "batch_id": batch_id,
        "seq": seq,
        "batch_key": f"k{seq}",
        "inputs": "{}",
        "editions": "{}",
        "hmb_version": "t",
        "started_at": None,
        "finished_at": None,
        "settlements_in": 0,
        "adjudicated": 0,
        "quarantined": 0,
        "total_payout_fen": 0,
        "max_setl_time": None,
        "summary": "{}",
    }
    con = duckdb.connect()  # the tables' own column types, for empty frames of them
    for ddl in [d for v in range(1, SCHEMA_VERSION + 1) for d in MIGRATIONS[v]]:
        con.execute(ddl)
    rows: dict[str, Any] = {}
    for table in BATCH_TABLES:
        cols = ", ".join(TABLE_COLUMNS[table])
        rows[table] = pl.from_arrow(con.sql(f"SELECT {cols} FROM {table}").to_arrow_table())
    con.close()
    rows["accumulator_log"] = pl.DataFrame(
        [(batch_id, *r) for r in log],
        schema=rows["accumulator_log"].schema,
        orient="row",
    )
    rows["batch_files"] = file_rows(batch_id, {})
    return record, rows


def test_a_revert_drops_a_cost_first_accumulated_by_the_reverted_batch(tmp_path: Path) -> None:
    from hmb_batch.ledger.store import open_ledger

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    first = [("M1", 2022, "compliant", None, 500)]
    # the second batch's plan has a cost more: read as 0 before it, not as absent
    second = [("M1", 2022, "compliant", 500, 700), ("M1", 2022, "reasonable", 0, 300)]
    with open_ledger(ledger) as lg:
        lg.apply(*_log_only_batch("b1", 1, first))
    after_first = _assert_state_is_the_log(ledger)
    with open_ledger(ledger) as lg:
        lg.apply(*_log_only_batch("b2", 2, second))
    assert _assert_state_is_the_log(ledger) == [
        ("M1", 2022, "compliant", 700),
        ("M1", 2022, "reasonable", 300),
    ]
    with open_ledger(ledger) as lg:
        lg.revert("b2")
    assert _assert_state_is_the_log(ledger) == after_first == [("M1", 2022, "compliant", 500)]


def _cost_row(rows: dict[str, pl.DataFrame], *values: Any) -> pl.DataFrame:
    """One settlement_costs row (setl_id, cost, increment_fen, cum_fen, psn_no, plan_year)."""
    return pl.DataFrame([values], schema=rows["settlement_costs"].schema, orient="row")


def test_cost_rows_of_a_settlement_the_batch_does_not_record_are_refused(tmp_path: Path) -> None:
    from hmb_batch.ledger.store import LedgerError, open_ledger

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    record, rows = _log_only_batch("b1", 1, [("M1", 2022, "compliant", None, 500)])
    # a cost row without its settlement would name no member: no night's check could see it
    rows["settlement_costs"] = _cost_row(rows, "X9", "compliant", 500, 500, "M1", 2022)
    refused = pytest.raises(LedgerError, match=r"\(X9\); nothing was applied")
    with open_ledger(ledger) as lg, refused:
        lg.apply(record, rows)
    assert _query(ledger, "SELECT count(*) FROM batches") == [(0,)]
    assert _state(ledger) == []


def test_cost_rows_under_another_member_or_plan_year_are_refused(tmp_path: Path) -> None:
    # a cost row carries its settlement's member and plan year (every later night sums the
    # registry by them): one that disagrees with the settlement it names is refused
    from hmb_batch.ledger.store import LedgerError, open_ledger

    ledger = new_ledger(tmp_path / "ledger.duckdb")
    record, rows = _log_only_batch("b1", 1, [("M1", 2022, "compliant", None, 500)])
    settlement = {c: None for c in rows["settlements"].columns} | {
        "setl_id": "S1",
        "batch_id": "b1",
        "psn_no": "M1",
        "plan_year": 2022,
        "status": "paid",
        "is_reversal": False,
    }
    rows["settlements"] = pl.DataFrame([settlement], schema=rows["settlements"].schema)
    for psn_no, year in (("M2", 2022), ("M1", 2023)):
        rows["settlement_costs"] = _cost_row(rows, "S1", "compliant", 500, 500, psn_no, year)
        refused = pytest.raises(LedgerError, match=r"another member or plan year \(S1\)")
        with open_ledger(ledger) as lg, refused:
            lg.apply(record, rows)
    assert _query(ledger, "SELECT count(*) FROM batches") == [(0,)]
    rows["settlement_costs"] = _cost_row(rows, "S1", "compliant", 500, 500, "M1", 2022)
    with open_ledger(ledger) as lg:
        lg.apply(record, rows)
    assert _query(ledger, "SELECT psn_no, plan_year FROM settlement_costs") == [("M1", 2022)]


def test_a_schema_7_ledger_migrates_and_then_keeps_the_reason_of_a_revert(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "ledger.duckdb")
    for i, claims in enumerate(NIGHTS[:2]):
        _night(ledger, tmp_path, f"n{i}", claims)
    registry = "SELECT batch_id, seq, status, summary FROM batches"
    batches = {r[1]: r for r in _query(ledger, registry)}
    _as_schema_7(ledger)

    last = _last_batch(ledger)
    r = run_cli(["ledger", "revert", "--last", "--reason", "late fix", "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    assert _query(ledger, "SELECT value FROM meta WHERE key = 'schema_version'") == [("8",)]
    after = {r[1]: r for r in _query(ledger, registry)}
    assert after[1] == batches[1] and after[2][0] == batches[2][0] == last
    assert after[2][2] == "reverted"
    assert _query(
        ledger, "SELECT batch_id, revert_reason FROM batches WHERE reverted_at IS NOT NULL"
    ) == [(last, "late fix")]
