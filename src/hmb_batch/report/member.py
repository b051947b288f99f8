"""A member's statement with its explanation: the ledger's rows, the editions they were paid
under, and the member's roster facts, gathered for ``hmb-batch ledger member``.

The ledger does not keep the roster or the edition files, only their hashes per batch: the
editions are found among the shipped ones and ``--plan`` by id *and* hash (an edition file
changed since the batch is not used to explain it), and the roster is read from the file the
command is given. Either missing makes that part of the explanation unavailable, with the
reason, never the command fail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch.errors import HmbError
from hmb_batch.io.reference import load_roster
from hmb_batch.plan.catalog import select_plan, shipped_edition_files
from hmb_batch.plan.compiled import CompiledEdition
from hmb_batch.report.explain import (
    explain_settlements,
    explanation_json,
    facts_json,
    roster_facts,
    yuan,
)
from hmb_batch.run.identity import file_hash

EDITION_HASH = "edition_hash"


def edition_hash(e: CompiledEdition) -> str:
    """The hash a batch records for an edition (:func:`hmb_batch.run.identity.describe_batch`)."""
    return hashlib.sha256(e.edition.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class RosterSource:
    """Where the roster facts came from, or why there are none."""

    path: str | None
    reason: str | None = None  # set when the facts are unavailable
    sha256: str | None = None
    same_as_batches: list[str] = field(default_factory=list)  # batches that read this file
    other_batches: list[str] = field(default_factory=list)  # batches that read another roster

    @property
    def available(self) -> bool:
        """Whether the roster could be read."""
        return self.reason is None


@dataclass(frozen=True)
class MemberExplanation:
    """A member's statement (:meth:`hmb_batch.ledger.store.Ledger.member_statement` with
    ``edition_hash``), its explanation rows (:func:`explain_settlements`), why some
    settlements could not be explained (setl_id → reason), the editions by plan year, and the
    roster facts (:func:`roster_facts`)."""

    psn_no: str
    year: int | None
    statement: pl.DataFrame
    explanation: pl.DataFrame
    unexplained: dict[str, str]
    editions: dict[int, CompiledEdition]
    roster: RosterSource
    facts: pl.DataFrame

    def rows_of(self, setl_id: str) -> list[dict[str, Any]]:
        """The explanation rows of one settlement (one per responsibility)."""
        if self.explanation.height == 0:
            return []
        return self.explanation.filter(pl.col("setl_id") == setl_id).to_dicts()

    def totals(self) -> pl.DataFrame:
        """Per plan year: settlements, payable and payout (fen), and the year to date after
        the last settlement."""
        return (
            self.statement.group_by("plan_year", maintain_order=True)
            .agg(
                pl.len().alias("settlements"),
                pl.col("payable_fen").sum(),
                pl.col("payout_fen").sum(),
                pl.col("cum_payable_fen").last(),
                pl.col("cum_payout_fen").last(),
            )
            .sort("plan_year")
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``ledger member --json``: amounts as yuan decimal strings."""
        settlements = []
        for s in self.statement.iter_rows(named=True):
            rows = self.rows_of(s["setl_id"])
            settlements.append(
                {
                    "setl_id": s["setl_id"],
                    "init_setl_id": s["init_setl_id"],
                    "setl_time": s["setl_time"].isoformat() if s["setl_time"] else None,
                    "plan_year": s["plan_year"],
                    "status": s["status"],
                    "reasons": s["reasons"] or [],
                    "edition": s["edition"],
                    "batch": {
                        "id": s["batch_id"],
                        "seq": s["batch_seq"],
                        "started_at": s["batch_started_at"].isoformat()
                        if s["batch_started_at"]
                        else None,
                    },
                    "costs": [
                        {
                            "cost": c["cost"],
                            "increment": yuan(c["increment_fen"]),
                            "before": yuan(c["cum_fen"] - c["increment_fen"]),
                            "after": yuan(c["cum_fen"]),
                        }
                        for c in s["costs"] or []
                    ],
                    "payable": yuan(s["payable_fen"]),
                    "payout": yuan(s["payout_fen"]),
                    "cum_payable": yuan(s["cum_payable_fen"]),
                    "cum_payout": yuan(s["cum_payout_fen"]),
                    "responsibilities": [
                        {
                            "id": r["responsibility"],
                            "payable": yuan(r["payable_fen"]),
                            "payout": yuan(r["payout_fen"]),
                            "cum_payable": yuan(r["cum_payable_fen"]),
                            "cum_payout": yuan(r["cum_payout_fen"]),
                        }
                        for r in s["responsibilities"] or []
                    ],
                    "explanation": explanation_json(rows) if rows else None,
                    "explanation_unavailable": self.unexplained.get(s["setl_id"]),
                }
            )
        r = self.roster
        return {
            "format_version": 1,
            "psn_no": self.psn_no,
            "plan_year": self.year,
            "settlements": settlements,
            "totals": [
                {
                    "plan_year": t["plan_year"],
                    "settlements": t["settlements"],
                    "payable": yuan(t["payable_fen"]),
                    "payout": yuan(t["payout_fen"]),
                    "cum_payable": yuan(t["cum_payable_fen"]),
                    "cum_payout": yuan(t["cum_payout_fen"]),
                }
                for t in self.totals().iter_rows(named=True)
            ],
            "roster": {
                "available": r.available,
                "unavailable_reason": r.reason,
                "file": r.path,
                "sha256": r.sha256,
                "same_file_as_batches": r.same_as_batches,
                "other_file_batches": r.other_batches,
                "plan_years": facts_json(self.facts, self.editions) if r.available else [],
            },
        }


def _candidates(plan: str | None) -> list[CompiledEdition]:
    """The editions that may explain a settlement: ``--plan``'s, then every shipped one."""
    found = list(select_plan(plan).editions) if plan else []
    for eid in shipped_edition_files():
        found += [e for e in select_plan(eid).editions]
    return found


def _resolve(
    statement: pl.DataFrame, provenance: Mapping[str, Mapping[str, Any]], plan: str | None
) -> tuple[pl.DataFrame, dict[str, CompiledEdition], dict[str, str]]:
    """The statement with each settlement's ``edition_hash`` (from its batch's record), the
    editions found by hash, and why the others were not (edition id → reason)."""
    hashes = {
        (b, eid): h for b, p in provenance.items() for eid, h in (p.get("editions") or {}).items()
    }
    keyed = pl.DataFrame(
        [{"batch_id": b, "edition": e, EDITION_HASH: h} for (b, e), h in hashes.items()],
        schema={"batch_id": pl.String, "edition": pl.String, EDITION_HASH: pl.String},
    )
    statement = statement.join(keyed, on=["batch_id", "edition"], how="left")
    by_hash = {edition_hash(e): e for e in reversed(_candidates(plan))}
    found: dict[str, CompiledEdition] = {}
    missing: dict[str, str] = {}
    wanted = statement.select("edition", EDITION_HASH).unique().drop_nulls("edition")
    for eid, h in wanted.iter_rows():
        if h in by_hash and by_hash[h].id == eid:
            found[h] = by_hash[h]
        elif any(e.id == eid for e in by_hash.values()):
            missing[eid] = (
                f"edition {eid} found differs from the one the batch recorded (another "
                "SHA-256: changed since, or the batch's own file); give --plan the edition "
                "file the batch used"
            )
        else:
            missing[eid] = f"edition {eid} is not shipped; give --plan the edition file"
    return statement, found, missing


def _roster(
    roster: Path | None,
    psn_no: str,
    provenance: Mapping[str, Mapping[str, Any]],
    column_map: Mapping[str, str] | None,
    encoding: str,
    timezone: str,
) -> tuple[RosterSource, pl.DataFrame | None]:
    if roster is None:
        return RosterSource(
            None, "no roster given (--roster, or adjudicate.roster in hmb.toml)"
        ), None
    if not roster.is_file():
        return RosterSource(str(roster), f"the roster {roster} does not exist"), None
    try:
        sha = file_hash(roster)
        rows = load_roster(
            roster, column_map, encoding, members=pl.Series([psn_no]), timezone=timezone
        )
    except HmbError as exc:
        return RosterSource(str(roster), f"the roster could not be read: {exc}"), None
    same: list[str] = []
    other: list[str] = []
    for b, p in sorted(provenance.items()):
        read = [f.get("sha256") for f in (p.get("inputs") or {}).get("roster", [])]
        (same if sha in read else other).append(b)
    return RosterSource(str(roster), None, sha, same, other), rows


def explain_member(
    psn_no: str,
    year: int | None,
    statement: pl.DataFrame,
    provenance: Mapping[str, Mapping[str, Any]],
    *,
    plan: str | None,
    roster: Path | None,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    timezone: str = "Asia/Shanghai",
) -> MemberExplanation:
    """Explain a member's statement read from the ledger (``provenance``: the batches' records,
    :meth:`hmb_batch.ledger.store.Ledger.batch_provenance`). ``plan``: a family, edition or
    file to look for editions in besides the shipped ones; ``roster``: the roster file."""
    statement, found, missing = _resolve(statement, provenance, plan)
    source, rows = _roster(roster, psn_no, provenance, column_map, encoding, timezone)
    if rows is not None and year is not None:
        rows = rows.filter(pl.col("plan_year") == year)
    # each plan year's edition: the one its settlements were paid under, else --plan's
    editions: dict[int, CompiledEdition] = {}
    for y, h in statement.select("plan_year", EDITION_HASH).drop_nulls().iter_rows():
        if h in found:
            editions[int(y)] = found[h]
    if rows is not None and plan:
        selection = select_plan(plan)
        for y in rows["plan_year"].to_list():
            e = selection.for_year(int(y))
            if int(y) not in editions and e is not None:
                editions[int(y)] = e
    facts = roster_facts(rows, editions) if rows is not None else pl.DataFrame()
    flags = (
        facts.select("plan_year", "pre_existing", "consecutive_years") if rows is not None else None
    )
    explained = [
        explain_settlements(statement.filter(pl.col(EDITION_HASH) == h), e, flags)
        for h, e in found.items()
    ]
    explanation = pl.concat(explained, how="diagonal_relaxed") if explained else pl.DataFrame()
    unexplained = {
        s: missing.get(e or "", f"settlement {s} has no edition recorded")
        for s, e, h in statement.select("setl_id", "edition", EDITION_HASH).iter_rows()
        if h not in found
    }
    return MemberExplanation(
        psn_no, year, statement, explanation, unexplained, editions, source, facts
    )
