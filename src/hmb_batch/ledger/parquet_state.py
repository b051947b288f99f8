"""A ledger's year to date as Parquet: the prior state a Spark run starts from, and leaves.

A Spark run has no DuckDB ledger on its workers. What an earlier batch leaves for the next —
the settlements adjudicated so far (the registry: for duplicates, reversals and what each
settlement added to the year to date) and every member-year's year to date (the
accumulators) — travels instead as a *state folder*::

    STATE/registry/*.parquet       setl_id, psn_no, plan_year, is_reversal, init_setl_id,
                                   reversed, header_fen, inc__COST ... (fen)
    STATE/accumulators/*.parquet   psn_no, plan_year, cum__COST ... (fen)
    STATE/state.json               the costs, the batches it holds (ids and keys), the year
                                   to date's payout and enrolment per plan year, its source

These are the columns of :class:`hmb_batch.rules.engine.PriorState`, the kernel's own input:
a Spark run sends each member bucket the registry rows its settlements name and its members'
accumulators, exactly what :meth:`hmb_batch.ledger.store.Ledger.prior_for` reads from a
ledger for a local run. ``hmb-batch ledger export`` writes a state folder from a ledger; a
Spark run (``--prior STATE``) writes the state after its batch into ``OUT/state``, which the
next batch (``hmb-batch simulate --engine spark`` chains them) starts from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from hmb_batch import __version__
from hmb_batch.errors import ConfigError
from hmb_batch.io.atomic import write_files
from hmb_batch.ledger.store import Ledger
from hmb_batch.money import fen_to_yuan, yuan_to_fen
from hmb_batch.report.data import enrolled_of
from hmb_batch.rules.engine import PriorState, cum, inc

STATE_FORMAT = "hmb-batch state 1"
STATE_JSON = "state.json"
REGISTRY, ACCUMULATORS = "registry", "accumulators"


@dataclass(frozen=True)
class StateInfo:
    """A state folder's ``state.json``: what its Parquet datasets hold."""

    folder: Path
    costs: list[str]
    batches: list[dict[str, str]]  # batch_id, batch_key, in order
    payout_by_plan_year_fen: dict[int, int]
    enrolled_by_plan_year: dict[int, int]
    source: dict[str, Any]

    @property
    def registry(self) -> Path:
        """The registry's dataset folder."""
        return self.folder / REGISTRY

    @property
    def accumulators(self) -> Path:
        """The accumulators' dataset folder."""
        return self.folder / ACCUMULATORS

    def to_json(self) -> dict[str, Any]:
        """state.json's content (money as decimal yuan strings)."""
        return {
            "format": STATE_FORMAT,
            "hmb_version": __version__,
            "costs": self.costs,
            "batches": self.batches,
            "payout_by_plan_year": {
                str(y): str(fen_to_yuan(v)) for y, v in sorted(self.payout_by_plan_year_fen.items())
            },
            "enrolled_by_plan_year": {
                str(y): v for y, v in sorted(self.enrolled_by_plan_year.items())
            },
            "source": self.source,
        }

    def before(self) -> list[dict[str, Any]]:
        """The year to date's payout per plan year as a ledger's ``state()`` gives it to
        :func:`hmb_batch.report.data.year_to_date_loss_ratios`."""
        return [
            {"plan_year": y, "payout": str(fen_to_yuan(v))}
            for y, v in sorted(self.payout_by_plan_year_fen.items())
        ]


def empty_state_info(folder: Path) -> StateInfo:
    """The state of no batch at all: every member's year at zero."""
    return StateInfo(folder, [], [], {}, {}, {"kind": "empty"})


def read_state(folder: Path) -> StateInfo:
    """A state folder's description; exit 5 naming what is wrong with a folder that is not
    one (a missing or foreign state.json, a missing dataset)."""
    doc_path = folder / STATE_JSON
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{folder} is not a state folder: it has no {STATE_JSON} (write one with "
            "`hmb-batch ledger export`, or give a Spark run's OUT/state)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{doc_path} cannot be read as JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ConfigError(f"{doc_path} is not a state folder's description ({STATE_FORMAT})")
    for name in (REGISTRY, ACCUMULATORS):
        if not (folder / name).is_dir():
            raise ConfigError(f"{folder} is missing its {name}/ dataset")
    try:
        return StateInfo(
            folder,
            [str(c) for c in doc["costs"]],
            [{"batch_id": b["batch_id"], "batch_key": b["batch_key"]} for b in doc["batches"]],
            {int(y): yuan_to_fen(v) for y, v in doc["payout_by_plan_year"].items()},
            {int(y): int(v) for y, v in doc["enrolled_by_plan_year"].items()},
            dict(doc.get("source", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{doc_path} is incomplete or damaged ({exc!r})") from None


def conform(prior: PriorState, costs: list[str]) -> PriorState:
    """A prior state with exactly the columns the kernel reads for ``costs``: a cost the state
    does not hold is zero (nothing was added to it), as a ledger without its rows answers."""
    registry = prior.registry.with_columns(
        pl.lit(0, pl.Int64).alias(inc(c))
        for c in costs
        if inc(c) not in prior.registry.collect_schema()
    )
    accumulators = prior.accumulators.with_columns(
        pl.lit(0, pl.Int64).alias(cum(c))
        for c in costs
        if cum(c) not in prior.accumulators.collect_schema()
    )
    empty = PriorState.empty(costs)
    reg_schema, acc_schema = empty.registry.collect_schema(), empty.accumulators.collect_schema()
    return PriorState(
        registry.select(reg_schema.names()).cast(reg_schema),
        accumulators.select(acc_schema.names()).cast(acc_schema),
    )


def export_state(lg: Ledger, folder: Path, *, source: dict[str, Any]) -> StateInfo:
    """Write the applied batches' state of ``lg`` as a state folder (the registry of every
    adjudicated settlement, every member-year's year to date), read through the ledger's own
    :meth:`~hmb_batch.ledger.store.Ledger.prior_for`."""
    costs = sorted(
        str(r[0]) for r in lg.con.execute("SELECT DISTINCT cost FROM member_state").fetchall()
    )
    settlements = lg.query("SELECT setl_id, init_setl_id, psn_no FROM settlements")
    prior = lg.prior_for(settlements, costs)
    registry, accumulators = pl.collect_all([prior.registry, prior.accumulators])
    state = lg.state()
    years = [int(y) for y in state["plan_year"].to_list()]
    applied = [b for b in lg.batches() if b.status == "applied"]
    info = StateInfo(
        folder,
        costs,
        [{"batch_id": b.batch_id, "batch_key": b.batch_key} for b in applied],
        {int(r["plan_year"]): int(r["payout_fen"]) for r in state.iter_rows(named=True)},
        # each year's premium pool as the ledger counts it: the roster of the latest batch
        # with settlements in that year
        {y: n for y in years if (n := enrolled_of(lg.year_batches(y)).get(y)) is not None},
        source,
    )
    write_state(info, registry, accumulators)
    return info


def export_ledger(
    path: Path,
    folder: Path,
    *,
    as_of: str | None = None,
    force: bool = False,
    wait: float = 30.0,
) -> StateInfo:
    """``hmb-batch ledger export``: the ledger at ``path`` (as of a batch id, the state just
    after it, or an ISO date, the batches whose settlements end by then) as a state folder.
    The ledger is only read. A folder holding a state already is refused (exit 2) unless
    ``force``, which replaces it."""
    import shutil
    import tempfile

    from hmb_batch.errors import OutputRefused
    from hmb_batch.ledger.asof import copy_as_of, parse_as_of
    from hmb_batch.ledger.store import open_ledger

    if (folder / STATE_JSON).exists() or (folder / REGISTRY).exists():
        if not force:
            raise OutputRefused(
                f"{folder} holds a state already; give another --out, or --force to replace it"
            )
        for name in (REGISTRY, ACCUMULATORS):
            shutil.rmtree(folder / name, ignore_errors=True)
        (folder / STATE_JSON).unlink(missing_ok=True)
    source: dict[str, Any] = {"kind": "ledger", "ledger": str(path.resolve()), "as_of": as_of}
    if as_of is None:
        with open_ledger(path, wait=wait, upgrade=False) as lg:
            return export_state(lg, folder, source=source)
    point = parse_as_of(as_of)
    folder.mkdir(parents=True, exist_ok=True)
    # the copy as of then, beside what it becomes (same disk), removed once exported
    with tempfile.TemporaryDirectory(prefix=".hmb-export-", dir=folder) as tmp:
        copy = Path(tmp) / "ledger.duckdb"
        if isinstance(point, str):
            copy_as_of(path, copy, after=point, wait=wait, files=False)
        else:
            copy_as_of(path, copy, through=point, wait=wait, files=False)
        with open_ledger(copy, wait=wait) as lg:
            return export_state(lg, folder, source=source)


def write_state(info: StateInfo, registry: pl.DataFrame, accumulators: pl.DataFrame) -> None:
    """A state folder from its frames (one file a dataset), state.json last: a folder without
    it is not a state, so a write cut short is never read as one."""
    for name, frame in ((REGISTRY, registry), (ACCUMULATORS, accumulators)):
        (info.folder / name).mkdir(parents=True, exist_ok=True)
        frame.write_parquet(info.folder / name / "part-0.parquet")
    write_state_json(info)


def write_state_json(info: StateInfo) -> None:
    """A state folder's state.json (written after its datasets)."""
    write_files(
        {STATE_JSON: json.dumps(info.to_json(), ensure_ascii=False, indent=2).encode()},
        info.folder,
    )
