"""``hmb-batch ledger import``: a batch adjudicated on Spark applied to the DuckDB ledger.

A Spark run starts from a state folder (``hmb-batch ledger export``) and writes, besides its
outputs, the rows the ledger would have inserted had it run locally (``OUT/ledger_rows/``,
made by the kernel's own :func:`hmb_batch.ledger.store.batch_rows` per member bucket) and
what the ledger must hold after them (``manifest.json``, ``ledger_import``). Importing it is
the local run's commit, nothing else: the ledger's :meth:`~hmb_batch.ledger.store.Ledger.apply`
in one transaction, with its guards (no settlement recorded twice, cost rows under their own
member) and the same check inside the transaction that the ledger after equals the ledger
before plus the batch. A ledger that moved on since the state was exported is refused: the
batch was adjudicated on a year to date it no longer holds.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__
from hmb_batch.errors import ConfigError
from hmb_batch.ledger.parquet_state import read_state
from hmb_batch.ledger.store import (
    TABLE_COLUMNS,
    BatchRecord,
    Ledger,
    LedgerError,
    file_rows,
    open_ledger,
)
from hmb_batch.money import fen_to_yuan, yuan_to_fen
from hmb_batch.rules.reconcile import AfterExpectation
from hmb_batch.run.balancing import verify_after
from hmb_batch.run.batch import check_order

# the small files a Spark batch's folder holds, archived with the batch as a local run's are
# (its datasets are folders of Parquet files: they stay where the run wrote them)
ARCHIVED = ("manifest.json", "reconciliation.json", "report.html", "report.md")


@dataclass(frozen=True)
class Imported:
    """What an import applied: the batch's record in the ledger."""

    record: BatchRecord
    settlements: int


def import_spark_batch(
    batch_dir: Path,
    ledger_path: Path,
    *,
    wait: float = 30.0,
    allow_out_of_order: bool = False,
) -> Imported:
    """Apply the Spark batch in ``batch_dir`` to the ledger at ``ledger_path``.

    Refused (exit 9, nothing applied): a ledger whose applied batches are not those of the
    state the batch started from, or whose year to date is not the one the batch started
    from (a state of another ledger, or edited); a batch the ledger holds already, or an id it
    holds; a scenario's batch; a batch older than the ledger's latest settlement (unless
    ``allow_out_of_order``, as for a local run). Exit 5: a folder that is not a Spark batch's.
    """
    manifest = _manifest(batch_dir)
    spec = manifest["ledger_import"]
    if spec.get("scenario"):
        raise LedgerError(
            f"{batch_dir} is a batch of a scenario (hmb-batch simulate): its rules may not be "
            "the production plan's, and it is never applied to a ledger; nothing was applied"
        )
    state = read_state(batch_dir / "state")
    batch_id = str(manifest["batch_id"])
    started_from = state.batches[:-1]
    rows_dir = batch_dir / spec["rows"]
    with open_ledger(ledger_path, wait=wait) as lg:
        applied = [
            {"batch_id": b.batch_id, "batch_key": b.batch_key}
            for b in lg.batches()
            if b.status == "applied"
        ]
        if any(b["batch_key"] == manifest["batch_key"] for b in applied):
            raise LedgerError(f"the ledger holds batch {batch_id} already: nothing was applied")
        if any(b.batch_id == batch_id for b in lg.batches()):
            raise LedgerError(
                f"the ledger holds a batch with id {batch_id} already (reverted, or with other "
                "inputs): run the batch on Spark again with another --batch-id; nothing was "
                "applied"
            )
        if applied != started_from:
            raise LedgerError(
                f"batch {batch_id} was adjudicated on Spark from the state of "
                f"{len(started_from):,} batches (the last {_last(started_from)}), but the "
                f"ledger now holds {len(applied):,} (the last {_last(applied)}): its year to "
                "date is not the one the batch started from. Export the ledger again "
                "(hmb-batch ledger export) and run the batch on Spark from that state; "
                "nothing was applied"
            )
        rows: dict[str, pl.DataFrame | str] = {}
        for table in (
            "settlements",
            "settlement_costs",
            "settlement_responsibilities",
            "accumulator_log",
            "payout_history",
        ):
            if any((rows_dir / table).glob("*.parquet")):
                rows[table] = str(rows_dir / table / "*.parquet")
        for table, columns in TABLE_COLUMNS.items():
            if table not in rows and table != "batch_files":
                # a batch that adjudicated nothing is recorded all the same, as locally
                rows[table] = pl.DataFrame(schema={c: pl.Null for c in columns})
        if isinstance(rows["accumulator_log"], str):
            _check_started_from(lg, rows["accumulator_log"], batch_id)
        latest = dt.datetime.fromisoformat(spec["max_setl_time"]) if spec["max_setl_time"] else None
        check_order(lg, batch_id, latest, allow_out_of_order)
        # archived once every check has passed (an archived file no batch names is harmless,
        # but a refused import should leave nothing behind)
        files = {
            name: (batch_dir / name).read_bytes()
            for name in ARCHIVED
            if (batch_dir / name).exists()
        }
        digests = {name: lg.archive.keep(content) for name, content in files.items()}
        rows["batch_files"] = file_rows(batch_id, digests)
        summary = spec["summary"]
        record: dict[str, Any] = {
            "batch_id": batch_id,
            "seq": len(lg.batches()) + 1,
            "batch_key": manifest["batch_key"],
            "inputs": json.dumps(spec["inputs"], ensure_ascii=False),
            "editions": json.dumps(spec["editions"]),
            "hmb_version": spec.get("hmb_version", __version__),
            "started_at": dt.datetime.fromisoformat(spec["started_at"]),
            "finished_at": dt.datetime.fromisoformat(spec["finished_at"]),
            "settlements_in": summary["settlements_in"],
            "adjudicated": summary["adjudicated"],
            "quarantined": summary["quarantined"],
            "total_payout_fen": yuan_to_fen(summary["total_payout"]),
            "max_setl_time": latest,
            "summary": json.dumps(summary, ensure_ascii=False),
            "out_dir": str(batch_dir.resolve()),
        }
        expected = AfterExpectation(
            pl.DataFrame(
                spec["expected_after"],
                schema={
                    "plan_year": pl.Int64,
                    "cost": pl.String,
                    "before": pl.Int64,
                    "batch": pl.Int64,
                },
            ),
            int(spec["expected_payout_fen"]),
        )
        lg.apply(record, rows, verify=verify_after(expected, state.costs, batch_id))
        done = lg.find_batch(batch_id=batch_id)
    assert done is not None
    return Imported(done, int(summary["adjudicated"]))


def _manifest(batch_dir: Path) -> dict[str, Any]:
    path = batch_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{batch_dir} is not a batch's folder: it has no manifest.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict) or "ledger_import" not in manifest:
        raise ConfigError(
            f"{batch_dir} is not a Spark batch's folder (its manifest.json has no "
            "ledger_import): a local run on the ledger applies its batch itself"
        )
    return manifest


def _check_started_from(lg: Ledger, log: str, batch_id: str) -> None:
    """The year to date each accumulator of the batch started from (its accumulator log's
    ``before``) must be what the ledger holds now: a member-year the ledger does not hold
    starts from nothing (null), a cost it holds no row of in a member-year it holds from
    zero, as :meth:`Ledger.prior_for` reads them for a local run."""
    rows = lg.con.execute(
        """
        WITH l AS (
            SELECT psn_no, plan_year::BIGINT AS plan_year, cost, before_fen
            FROM read_parquet($log)
        ), held AS (
            SELECT DISTINCT m.psn_no, m.plan_year::BIGINT AS plan_year
            FROM member_state m SEMI JOIN l
            ON m.psn_no = l.psn_no AND m.plan_year::BIGINT = l.plan_year
        )
        SELECT l.plan_year, l.cost, l.before_fen, m.amount_fen, count(*) OVER () AS n
        FROM l
        LEFT JOIN member_state m
            ON m.psn_no = l.psn_no AND m.plan_year::BIGINT = l.plan_year AND m.cost = l.cost
        LEFT JOIN held h ON h.psn_no = l.psn_no AND h.plan_year = l.plan_year
        WHERE l.before_fen IS DISTINCT FROM
            CASE WHEN m.amount_fen IS NOT NULL THEN m.amount_fen
                 WHEN h.psn_no IS NOT NULL THEN 0 END
        LIMIT 1
        """,
        {"log": log},
    ).fetchall()
    if rows:
        year, cost, started, held_fen, n = rows[0]
        raise LedgerError(
            f"batch {batch_id} started from another year to date than the ledger holds: "
            f"{n:,} accumulators differ (the first: plan year {year}, cost {cost}, the batch "
            f"started from {_yuan(started)}, the ledger holds {_yuan(held_fen)}). Its state "
            "was not exported from this ledger as it is now; export it again and run the "
            "batch from that state. Nothing was applied"
        )


def _yuan(fen: int | None) -> str:
    return "nothing" if fen is None else f"{fen_to_yuan(int(fen)):,} yuan"


def _last(batches: list[dict[str, str]]) -> str:
    return batches[-1]["batch_id"] if batches else "none"
