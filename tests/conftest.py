"""Shared helpers: tiny extracts written as CSV, and running the CLI on them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from hmb_batch.cli.app import app
from hmb_batch.io.contracts import FEE_LINES, LISTS, ROSTER, SETTLEMENTS

GOLDEN = Path(__file__).parent / "golden" / "zhelibao-2022"
MONEY_COLS = [
    "compliant_amt",
    "reasonable_amt",
    "payable_amt",
    "payout_amt",
    "cum_payable_amt",
    "cum_payout_amt",
]


def yuan(x: str | int) -> Decimal:
    """A Decimal amount with two places, as payout files hold it."""
    return Decimal(str(x)).quantize(Decimal("0.01"))


@dataclass
class Extract:
    """A tiny batch built in a test: settlements, fee lines, roster and lists."""

    settlements: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    roster: list[dict[str, Any]] = field(default_factory=list)
    lists: list[dict[str, Any]] = field(default_factory=list)

    def member(
        self, psn_no: str, *, plan_year: int = 2022, pay_date: str | None = None, **extra: Any
    ) -> None:
        """A roster row; by default paid on time (before 31 Dec of the year before)."""
        self.roster.append(
            {
                "psn_no": psn_no,
                "plan_year": str(plan_year),
                "pay_date": pay_date or f"{plan_year - 1}-11-01",
                "basic_start_date": "2017-01-01",
                **extra,
            }
        )

    def claim(
        self,
        setl_id: str,
        psn_no: str,
        when: str,
        *,
        compliant: str = "0",
        reasonable: str = "0",
        refl: str = "0",
        hifp: str = "0",
        med_type: str = "21",
        begndate: str | None = None,
        extra_lines: list[dict[str, Any]] | None = None,
        **header: Any,
    ) -> None:
        """A settlement whose compliant cost is ``compliant`` (in-policy, nothing paid by funds
        unless ``hifp``) and whose reasonable cost is ``reasonable`` (one out-of-list drug line).
        """
        c, r, f = yuan(compliant), yuan(reasonable), yuan(hifp)
        lines = [
            {"list_type": "101", "chrgitm_lv": "01", "inscp_scp_amt": c + f, "code": "D-A"},
            {"list_type": "101", "chrgitm_lv": "03", "fulamt_ownpay_amt": r, "code": "D-C"},
            *(extra_lines or []),
        ]
        day = when[:10]
        totals = {
            "fulamt_ownpay_amt": Decimal(0),
            "overlmt_amt": Decimal(0),
            "preselfpay_amt": Decimal(0),
            "inscp_scp_amt": Decimal(0),
        }
        for i, ln in enumerate(lines, start=1):
            amounts = {k: yuan(ln.get(k, 0)) for k in totals}
            for k, v in amounts.items():
                totals[k] += v
            self.lines.append(
                {
                    "setl_id": setl_id,
                    "feedetl_sn": f"{i:04d}",
                    "fee_ocur_time": ln.get("fee_ocur_time", f"{day} 09:00:00"),
                    "med_list_codg": ln.get("code", f"X{i}"),
                    "hilist_name": "item",
                    "list_type": ln["list_type"],
                    "chrgitm_lv": ln["chrgitm_lv"],
                    "det_item_fee_sumamt": str(sum(amounts.values())),
                    **{k: str(v) for k, v in amounts.items()},
                }
            )
        total = sum(totals.values())
        self.settlements.append(
            {
                "setl_id": setl_id,
                "refd_setl_flag": "0",
                "psn_no": psn_no,
                "insutype": "390",
                "med_type": med_type,
                "insu_admdvs": "331102",
                "fixmedins_code": "H0001",
                "fixmedins_name": "医院",
                "begndate": begndate or day,
                "enddate": day,
                "setl_time": when,
                "medfee_sumamt": str(total),
                "fulamt_ownpay_amt": str(totals["fulamt_ownpay_amt"]),
                "overlmt_selfpay": str(totals["overlmt_amt"]),
                "preselfpay_amt": str(totals["preselfpay_amt"]),
                "inscp_amt": str(totals["inscp_scp_amt"]),
                "hifp_pay": str(f),
                "refl_selfpay_amt": str(yuan(refl)),
                **header,
            }
        )

    def reversal(self, setl_id: str, original: str, psn_no: str, when: str) -> None:
        """A reversal row (no fee lines) of ``original``."""
        self.settlements.append(
            {
                "setl_id": setl_id,
                "init_setl_id": original,
                "refd_setl_flag": "1",
                "psn_no": psn_no,
                "med_type": "21",
                "setl_time": when,
                "medfee_sumamt": "0",
                "fulamt_ownpay_amt": "0",
                "overlmt_selfpay": "0",
                "preselfpay_amt": "0",
                "inscp_amt": "0",
                "hifp_pay": "0",
            }
        )

    def on_list(self, list_name: str, code: str, valid_from: str, valid_to: str = "") -> None:
        """A list entry."""
        self.lists.append(
            {
                "list": list_name,
                "code": code,
                "name": code,
                "item_kind": "drug",
                "valid_from": valid_from,
                "valid_to": valid_to,
            }
        )

    def write(self, folder: Path) -> dict[str, Path]:
        """Write the four files as CSV (all text, as a platform export would be)."""
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, rows, contract in (
            ("settlements", self.settlements, SETTLEMENTS),
            ("fees", self.lines, FEE_LINES),
            ("roster", self.roster, ROSTER),
            ("lists", self.lists, LISTS),
        ):
            # union_aid_pay is optional: written only when a row sets it (舟惠保 tests)
            cols = [c for c in contract.names if c != "union_aid_pay" or any(c in r for r in rows)]
            df = pl.DataFrame(
                [{c: r.get(c) for c in cols} for r in rows] if rows else None,
                schema={c: pl.String for c in cols},
                orient="row",
            )
            out[name] = folder / f"{name}.csv"
            df.write_csv(out[name])
        return out


runner = CliRunner()


def adjudicate_args(files: dict[str, Path], out: str | Path, *extra: str) -> list[str]:
    """The ``adjudicate`` command line for the files :meth:`Extract.write` wrote."""
    return [
        "adjudicate",
        str(files["settlements"]),
        "--fees",
        str(files["fees"]),
        "--roster",
        str(files["roster"]),
        "--lists",
        str(files["lists"]),
        "--out",
        str(out),
        *extra,
    ]


def run_cli(args: list[str]) -> Any:
    """Run the CLI in-process; return typer's Result."""
    return runner.invoke(app, args, catch_exceptions=False)


def adjudicate(ex: Extract, tmp: Path, *extra: str, plan: str = "zhelibao") -> pl.DataFrame:
    """Adjudicate a tiny extract through the CLI; the payouts file, keyed by setl_id."""
    files = ex.write(tmp / "in")
    result = run_cli(adjudicate_args(files, str(tmp / "out"), "--plan", plan, "--quiet", *extra))
    assert result.exit_code == 0, result.output
    return pl.read_parquet(tmp / "out" / "payouts.parquet")


def row(payouts: pl.DataFrame, setl_id: str) -> dict[str, Any]:
    """One settlement's payout row as a dict."""
    rows = payouts.filter(pl.col("setl_id") == setl_id).to_dicts()
    assert len(rows) == 1, f"{setl_id}: {len(rows)} rows"
    return rows[0]


def responsibility_payouts(r: dict[str, Any]) -> dict[str, Decimal]:
    """A payout row's payout per responsibility id."""
    return {x["id"]: x["payout_amt"] for x in r["responsibilities"]}


def special_drug_line(amount: str) -> dict[str, Any]:
    """A fee line of the special-drug list's drug SPD, self-paid in full."""
    return {"list_type": "101", "chrgitm_lv": "03", "fulamt_ownpay_amt": amount, "code": "SPD"}


def extract_with_special_drugs() -> Extract:
    """An empty tiny extract with a negative list (NEG1) and a special-drug list (SPD)."""
    e = Extract()
    e.on_list("negative", "NEG1", "2021-01-01")
    e.on_list("special_drug", "SPD", "2021-01-01")
    return e


def standard_extract() -> Extract:
    """An empty tiny extract with the standard lists (negative NEG1, admission SV-ADM)."""
    e = Extract()
    e.on_list("negative", "NEG1", "2021-01-01")
    e.on_list("admission", "SV-ADM", "2021-01-01")
    return e


@pytest.fixture
def ex() -> Extract:
    """An empty tiny extract with the standard lists."""
    return standard_extract()


def date(s: str) -> dt.date:
    """ISO date."""
    return dt.date.fromisoformat(s)


def golden_args(
    name: str,
    out: Path,
    *extra: str,
    ledger: Path | None = None,
    ext: str = "parquet",
    quiet: bool = True,
) -> list[str]:
    """The ``adjudicate`` command line for golden batch ``name`` (``ext`` files: parquet or
    csv), output in ``out``."""
    b = GOLDEN / name
    return [
        "adjudicate",
        str(b / f"settlements.{ext}"),
        "--fees",
        str(b / f"fees.{ext}"),
        "--roster",
        str(GOLDEN / f"roster.{ext}"),
        "--lists",
        str(GOLDEN / f"lists.{ext}"),
        "--plan",
        "zhelibao",
        *(["--ledger", str(ledger)] if ledger is not None else []),
        "--out",
        str(out),
        *(["--quiet"] if quiet else []),
        *extra,
    ]


def new_ledger(path: Path) -> Path:
    """Create an empty ledger at ``path`` with ``hmb-batch ledger init`` (adjudicate refuses a
    ledger that does not exist); returns ``path``."""
    result = run_cli(["ledger", "init", str(path)])
    assert result.exit_code == 0, result.output
    return path


def golden_batch(ledger: Path, out: Path, name: str, *extra: str) -> Any:
    """Run golden batch ``name`` through the CLI on ``ledger``; output in ``out/name``."""
    return run_cli(golden_args(name, out / name, *extra, ledger=ledger))


def ledger_snapshot(ledger: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every ledger table's rows (sorted; batch timestamps left out), for equality checks."""
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        out = {}
        for table in (
            "batches",
            "settlements",
            "settlement_costs",
            "accumulators",
            "accumulator_log",
            "payout_history",
        ):
            cols = "* EXCLUDE (started_at, finished_at)" if table == "batches" else "*"
            out[table] = sorted(con.execute(f"SELECT {cols} FROM {table}").fetchall(), key=str)
        return out
    finally:
        con.close()


def kernel_result(
    extract: Path | str, fees: Path | str, roster: Path, lists: Path, plan: str = "zhelibao"
) -> Any:
    """The kernel called on its own on one whole batch (one bucket, no ledger): what a test
    that needs the engine's frames, not the files, reads."""
    from hmb_batch.io.extract import read_extract
    from hmb_batch.io.reference import load_lists, load_roster
    from hmb_batch.plan.catalog import select_plan
    from hmb_batch.rules.kernel import Bucket, adjudicate_bucket

    typed = read_extract([Path(extract)], [Path(fees)])
    settlements, fee_lines = pl.collect_all([typed.settlements, typed.fee_lines])
    reference = load_lists(lists)
    return adjudicate_bucket(
        Bucket(settlements, fee_lines, load_roster(roster)),
        plan=select_plan(plan, sorted(reference["list"].unique().to_list())),
        lists=reference,
        batch_id="kernel",
        shape=typed.shape,
    )
