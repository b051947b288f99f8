"""The command line. Thin: parse, call the library, render; errors become exit codes."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import ClickException, MissingParameter
from typer._click.exceptions import UsageError as CommandLineError

from hmb_batch import __version__
from hmb_batch.cli.config import load_config, read_toml, read_toml_text
from hmb_batch.errors import ConfigError, ExitCode, HmbError, UsageError
from hmb_batch.money import fen_to_yuan
from hmb_batch.plan.catalog import select_plan, shipped_editions
from hmb_batch.plan.check import check_data
from hmb_batch.report import terminal as render
from hmb_batch.rules.codes import REASON_CODES

if TYPE_CHECKING:
    from hmb_batch.ledger.store import BatchRecord, Ledger
    from hmb_batch.plan.model import Edition
    from hmb_batch.run.replay import ReplayResult

T = TypeVar("T")

app = typer.Typer(
    name="hmb-batch",
    help=(
        "Batch claims processor for city-customised supplementary medical insurance (惠民保).\n\n"
        "Example:\n\n  hmb-batch adjudicate settlements.parquet --fees fees.parquet "
        "--roster roster.parquet --lists lists.parquet --plan zhelibao --out out/"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,  # locals may hold personal data
)
plan_app = typer.Typer(
    help=(
        "Plan editions: list, show, diff, check, new.\n\nExample:\n\n"
        "  hmb-batch plan show zhelibao-2023"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(plan_app, name="plan")
ledger_app = typer.Typer(
    help=(
        "The ledger: init, status, batches, a member's statement, revert the last batch.\n\n"
        "Example:\n\n  hmb-batch ledger member P20220000016 --ledger ledger.duckdb --year 2022"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ledger_app, name="ledger")

LedgerOption = Annotated[
    Path | None,
    typer.Option("--ledger", help="Ledger file (default: adjudicate.ledger in hmb.toml)."),
]
ConfigOption = Annotated[Path | None, typer.Option(help="Configuration file (default ./hmb.toml).")]
WaitOption = Annotated[float, typer.Option(help="Seconds to wait for a running batch.")]


def _on_ledger(
    ledger: Path | None, config: Path | None, wait: float, action: Callable[[Ledger], T]
) -> T:
    """Open the ledger under its lock, run ``action`` on it; errors become messages."""
    from hmb_batch.ledger.store import open_ledger

    try:
        with open_ledger(_ledger_path(ledger, config), wait=wait) as lg:
            return action(lg)
    except HmbError as exc:
        raise _fail(exc) from None


def _ledger_path(ledger: Path | None, config: Path | None) -> Path:
    # whether it exists is open_ledger's to say (exit 3, naming `hmb-batch ledger init`)
    cfg = load_config(config)
    path = ledger or cfg.path(cfg.adjudicate.ledger)
    if path is None:
        raise ConfigError("--ledger is required (or set adjudicate.ledger in hmb.toml)")
    return path


# Not at a terminal (cron, a pipe, a log file), rich would cut tables at 80 columns, dropping a
# column or truncating a reason code: there, render at a width no table reaches instead.
FULL_WIDTH = 100_000


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=FULL_WIDTH)


out = _console()
err = _console(stderr=True)


class _Answer:
    """How the running command answers: in JSON (its ``--json``) or for a person. With JSON,
    an error is a JSON document on stdout too, so a script reads one thing either way."""

    json = False


_answer = _Answer()


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False, default=str))


def _error_json(exit_code: ExitCode, message: str) -> dict[str, Any]:
    """``{"error": {"exit_code": N, "code": "NAME", "message": "..."}}`` (README: Exit codes)."""
    return {"error": {"exit_code": int(exit_code), "code": exit_code.name, "message": message}}


def _fail(exc: HmbError) -> typer.Exit:
    code = ExitCode(int(exc.exit_code))
    if _answer.json:
        _print_json(_error_json(code, str(exc)))
    else:
        # the message is text, never markup: a hint such as "[columns]" must print as written
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
    return typer.Exit(int(code))


def _answer_json(as_json: bool) -> bool:
    _answer.json = as_json
    return as_json


JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
SparkMasterOption = Annotated[
    str | None, typer.Option(help="Spark master URL for --engine spark (default local[2]).")
]


def _version(value: bool) -> None:
    if value:
        out.print(f"hmb-batch {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """hmb-batch."""


@app.command(
    epilog=(
        "Example: hmb-batch adjudicate settlements.parquet --fees fees.parquet "
        "--roster roster.parquet --lists lists.parquet --plan zhelibao --out out/2022-03-01"
    )
)
def adjudicate(
    extract: Annotated[
        str | None,
        typer.Argument(
            help=(
                "Settlements file (CSV or Parquet), or one wide file of fee lines carrying "
                "their settlement's columns; or a folder or a quoted glob of such files, read "
                "as one batch. A folder holding settlements.* and fees.* (the generator's "
                "nightly/NN/ layout) is read as the two files."
            ),
            show_default=False,
        ),
    ] = None,
    fees: Annotated[
        str | None, typer.Option(help="Fee-lines file, folder or glob (two-file extracts).")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option(help="Ledger (DuckDB file) carrying the year to date between batches."),
    ] = None,
    no_ledger: Annotated[
        bool,
        typer.Option(
            "--no-ledger",
            help="Ignore the ledger hmb.toml names: adjudicate the batch on its own.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help=(
                "Adjudicate against the ledger's year to date and write the files (marked dry "
                "run in manifest.json and the report), but apply nothing to the ledger."
            ),
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another run holding the ledger.")
    ] = 30.0,
    allow_out_of_order: Annotated[
        bool,
        typer.Option(
            "--allow-out-of-order",
            help="Apply a batch older than the ledger's latest (taken after it).",
        ),
    ] = False,
    roster: Annotated[Path | None, typer.Option(help="Roster (参保名单).")] = None,
    lists: Annotated[
        Path | None, typer.Option(help="Negative/admission/special-drug lists.")
    ] = None,
    plan: Annotated[
        str | None, typer.Option(help="Family (zhelibao), edition id, edition file or folder.")
    ] = None,
    out_dir: Annotated[
        str | None,
        typer.Option(
            "--out",
            help=(
                "Output folder; may hold {batch_id}, {date} (of the batch's latest "
                "settlement) and {plan_year}, e.g. out/{date}."
            ),
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Write into a folder holding another batch's files."),
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="Configuration file (default ./hmb.toml).")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="CSV encoding: utf-8 (BOM or not), gbk or gb18030.")
    ] = None,
    csv: Annotated[
        bool, typer.Option("--csv", help="Also write payouts.csv and quarantine.csv.")
    ] = False,
    csv_encoding: Annotated[
        str | None,
        typer.Option(
            help=(
                "Encoding of the --csv files: utf-8 (default), utf-8-sig (what Excel on "
                "Chinese Windows needs), gbk or gb18030."
            )
        ),
    ] = None,
    batch_id: Annotated[
        str | None, typer.Option(help="Batch id (default: extract name + content hash).")
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help=(
                "Memory bound, e.g. 1GiB or 800MB (default: a quarter of the machine's "
                "memory): a batch that would not fit is cut into member buckets through "
                "temporary files in the output folder."
            )
        ),
    ] = None,
    buckets: Annotated[
        int | None,
        typer.Option(
            "--buckets",
            "--partitions",
            min=1,
            help="Cut the batch into this many member buckets (default: from --memory-limit).",
        ),
    ] = None,
    unmasked: Annotated[
        bool,
        typer.Option(
            "--unmasked",
            help="Write psn_name and certno in full in the payout files (masked by default).",
        ),
    ] = False,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-on",
            help=(
                "Exit 10 (after the batch is done) when it has quarantined rows (quarantine) "
                "or any warning (warning). Repeatable."
            ),
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help=(
                "local (this process) or spark: the same kernel per part and member bucket on "
                "Apache Spark (Parquet inputs, no DuckDB ledger: the year to date comes from "
                "--prior and goes to OUT/state; outputs as Parquet datasets partitioned by "
                "plan year). Needs pip install 'hmb-batch[spark]' and Java 17 "
                "(scripts/ensure-java)."
            )
        ),
    ] = "local",
    spark_master: SparkMasterOption = None,
    prior: Annotated[
        Path | None,
        typer.Option(
            help=(
                "With --engine spark: the state folder the batch starts from (`hmb-batch "
                "ledger export`, or an earlier Spark run's OUT/state); default: every "
                "member's year at zero."
            )
        ),
    ] = None,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Adjudicate one batch: validate, apply the plan, reconcile, write payouts, quarantine,
    line audit, reconciliation.json and the report (report.html, report.md)."""
    from hmb_batch.io.outputs import CSV_ENCODINGS
    from hmb_batch.run.batch import BatchInputs, run_batch
    from hmb_batch.run.buckets import parse_size
    from hmb_batch.run.identity import extract_folder

    _answer_json(as_json)
    try:
        cfg = load_config(config)
        d = cfg.adjudicate
        roster_path = roster or cfg.path(d.roster)
        lists_path = lists or cfg.path(d.lists)
        missing = [
            name
            for name, value, key in (
                ("EXTRACT", extract, None),
                ("--roster", roster_path, "roster"),
                ("--lists", lists_path, "lists"),
            )
            if value is None
        ]
        if missing:
            raise UsageError(
                f"missing: {', '.join(missing)} (required; --roster and --lists may be set as "
                "adjudicate.roster and adjudicate.lists in hmb.toml)"
            )
        assert extract is not None and roster_path is not None and lists_path is not None
        if csv_encoding is not None and csv_encoding not in CSV_ENCODINGS:
            raise UsageError(
                f"--csv-encoding {csv_encoding}: give one of {', '.join(CSV_ENCODINGS)}"
            )
        wanted = {w.strip() for f in fail_on or [] for w in f.split(",") if w.strip()}
        if wanted - FAIL_ON:
            raise UsageError(
                f"--fail-on {', '.join(sorted(wanted - FAIL_ON))}: give quarantine or warning"
            )
        fee_spec: str | Path | None = fees
        if fee_spec is None:  # a night's folder holds its own fee lines, before hmb.toml's
            extract, fee_spec = extract_folder(extract)
        fee_spec = fee_spec or cfg.path(d.fees)
        inputs = BatchInputs(
            extract=extract,
            fees=fee_spec,
            roster=roster_path,
            lists=lists_path,
            plan=plan or d.plan,
            encoding=encoding or d.encoding,
            column_map=cfg.columns,
            batch_id=batch_id,
            districts=cfg.districts,
            timezone=d.timezone,
        )
        target = out_dir or str(cfg.path(d.out) or Path("out"))
        ledger_path = None if no_ledger else ledger or cfg.path(d.ledger)
        if dry_run and ledger_path is None:
            raise UsageError(
                "--dry-run adjudicates against a ledger's year to date: give --ledger (or set "
                "adjudicate.ledger in hmb.toml); without a ledger nothing is applied anyway"
            )
        if engine not in ("local", "spark"):
            raise UsageError(f"--engine {engine}: give local or spark")
        if spark_master is not None and engine != "spark":
            raise UsageError("--spark-master is for --engine spark")
        if prior is not None and engine != "spark":
            raise UsageError(
                "--prior is for --engine spark (a local run reads the year to date from --ledger)"
            )
        if engine == "spark":
            _adjudicate_on_spark(
                inputs,
                Path(target),
                ledger=ledger_path,
                master=spark_master,
                buckets=buckets,
                unmasked=unmasked,
                prior=prior,
                as_json=as_json,
                quiet=quiet,
            )
            return
        # progress on stderr only for a person at a terminal: cron logs and pipes stay clean
        show = not (quiet or as_json) and err.is_terminal
        with err.status("reading and validating …") if show else contextlib.nullcontext() as st:
            result = run_batch(
                inputs,
                target,
                csv=csv,
                csv_encoding=csv_encoding or d.csv_encoding,
                ledger_path=ledger_path,
                wait=wait,
                allow_out_of_order=allow_out_of_order,
                memory_limit=parse_size(limit)
                if (limit := memory_limit or d.memory_limit)
                else None,
                buckets_wanted=buckets,
                unmasked=unmasked,
                dry_run=dry_run,
                force=force,
                warning_limits=cfg.warnings,
                progress=(lambda stage, secs: st.update(f"{stage} done ({secs:.1f} s) …"))
                if st is not None
                else None,
            )
    except HmbError as exc:
        raise _fail(exc) from None
    status = result.manifest.get("status", "applied")
    flagged = ("quarantine" in wanted and result.summary.quarantined > 0) or (
        "warning" in wanted and bool(result.summary.warnings)
    )
    if as_json:
        _print_json(
            {
                "summary": result.summary.to_json(),
                "status": status,
                "dry_run": status == "dry_run",
                "replayed": result.replayed,
                "out": str(result.out_dir),
                "ledger": result.manifest.get("ledger"),
                "loss_ratios": result.manifest.get("loss_ratios", []),
                "warnings": result.summary.warnings,
                "reconciled": _reconciled(result.files),
                "files": {k: str(v) for k, v in result.files.items()},
                "exit_code": int(ExitCode.FLAGGED if flagged else ExitCode.OK),
            }
        )
    elif not quiet:
        if result.replayed:
            out.print(
                f"batch {result.summary.batch_id} was applied before with the same inputs and "
                "plan editions: the ledger is unchanged; its files were written again."
            )
        if status == "dry_run":
            out.print("DRY RUN: nothing was applied to the ledger.", style="bold yellow")
        render.batch_summary(
            out,
            result.summary,
            {k: str(v) for k, v in result.files.items()},
            _reconciled(result.files),
            result.manifest.get("loss_ratios", []),
        )
    if flagged:
        if not as_json:
            err.print(
                f"exit {int(ExitCode.FLAGGED)}: --fail-on {','.join(sorted(wanted))} "
                f"({result.summary.quarantined:,} quarantined, "
                f"{len(result.summary.warnings)} warning(s)); the batch itself is "
                + ("written, not applied (dry run)" if status == "dry_run" else "done"),
                highlight=False,
                markup=False,
            )
        raise typer.Exit(int(ExitCode.FLAGGED))


FAIL_ON = {"quarantine", "warning"}


def _adjudicate_on_spark(
    inputs: Any,
    out_dir: Path,
    *,
    ledger: Path | None,
    master: str | None,
    buckets: int | None,
    unmasked: bool,
    prior: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """``adjudicate --engine spark``: the batch on Spark without a ledger (see
    :mod:`hmb_batch.run.spark`); errors raise HmbError for the caller to report."""
    from hmb_batch.run.spark import DEFAULT_MASTER, run_spark_batch

    if ledger is not None:
        raise UsageError(
            "--engine spark runs without a DuckDB ledger: give --no-ledger (and --prior "
            "STATE for a year to date: `hmb-batch ledger export`), or run on the ledger with "
            "--engine local"
        )
    result = run_spark_batch(
        inputs,
        out_dir,
        master=master or DEFAULT_MASTER,
        buckets=buckets or 8,
        unmasked=unmasked,
        prior=prior,
    )
    reconciled = _reconciled({"reconciliation": out_dir / "reconciliation.json"})
    if as_json:
        _print_json(
            {
                "engine": "spark",
                "status": "no_ledger",
                "out": str(out_dir),
                "prior": str(prior) if prior is not None else None,
                "state": str(out_dir / "state"),
                "summary": result.manifest["counts"],
                "reconciled": reconciled,
                "files": {k: str(v) for k, v in result.files.items()},
                "exit_code": 0,
            }
        )
    elif not quiet:
        counts = result.manifest["counts"]
        out.print(
            f"batch {result.manifest['batch_id']} on Spark ({result.manifest['spark_master']}, "
            f"{result.manifest['buckets']} buckets): {counts['settlements_in']:,} settlements "
            f"in; reconciled: {reconciled['passed'] if reconciled else '?'}; files in {out_dir}",
            highlight=False,
            markup=False,
        )


def _reconciled(files: dict[str, Path]) -> dict[str, Any] | None:
    """Pass/fail and identity count from the batch's reconciliation.json (None if absent)."""
    path = files.get("reconciliation")
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        "passed": data["passed"],
        "identities": len(data["identities"]),
        "failed": [i["name"] for i in data["identities"] if not i["passed"]],
    }


@app.command(epilog="Example: hmb-batch report --ledger ledger.duckdb --year 2022 --out reports")
def report(
    year: Annotated[int, typer.Option(help="Plan year.")],
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    plan: Annotated[
        str | None,
        typer.Option(help="Plan (family, edition id or file) for premium and brackets."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("."),
    as_json: JsonOption = False,
) -> None:
    """The year-to-date report of a plan year from the ledger alone: report.html, report.md."""
    from hmb_batch.io.atomic import write_files
    from hmb_batch.report.data import loss_ratio_json, year_report
    from hmb_batch.report.pages import render_html, render_markdown

    _answer_json(as_json)
    try:
        cfg = load_config(config)
        selection = select_plan(plan or cfg.adjudicate.plan)
    except HmbError as exc:
        raise _fail(exc) from None
    data = _on_ledger(
        ledger, config, wait, lambda lg: year_report(lg, year, selection, cfg.districts)
    )
    files = write_files(
        {"report.html": render_html(data).encode(), "report.md": render_markdown(data).encode()},
        out_dir,
    )
    if as_json:
        _print_json(
            {
                "plan_year": year,
                "title": data.title,
                "scope": data.scope,
                "headline": dict(data.headline),
                "loss_ratios": loss_ratio_json(list(data.loss_ratios)),
                "files": {k: str(v) for k, v in files.items()},
            }
        )
        return
    for path in files.values():
        out.print(f"report: {path}")


@app.command(
    epilog=("Example: hmb-batch show out/payouts.parquet --where \"status = 'paid'\" --limit 20")
)
def show(
    file: Annotated[Path, typer.Argument(help="A Parquet file (payouts, quarantine, lines ...).")],
    where: Annotated[
        str | None,
        typer.Option(
            help='Keep the rows for which this SQL condition holds, e.g. "payout_amt > 1000".'
        ),
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Only these columns, comma-separated.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="At most this many rows (0: all of them).")
    ] = 20,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print an output file as a table (or CSV, or JSON), without Python: which rows,
    which columns, how many. The rows shown are those of the file, in its order."""
    from hmb_batch.report.show import read_rows

    _answer_json(as_json)
    try:
        if as_csv and as_json:
            raise UsageError("give --csv or --json, not both")
        shown = read_rows(file, where=where, columns=columns, limit=limit)
    except HmbError as exc:
        raise _fail(exc) from None
    if as_csv:
        sys.stdout.write(shown.csv())
    elif as_json:
        _print_json(
            {
                "file": str(file),
                "rows_in_file": shown.total,
                "rows_matching": shown.matched,
                "rows": shown.json_rows(),
            }
        )
    else:
        render.rows(out, file.name, shown.frame)
        n = shown.frame.height
        if where:
            said = f"{n:,} of {shown.matched:,} row(s) where {where}; the file has {shown.total:,}"
        else:
            said = f"{n:,} row(s)" + (f" of {shown.total:,}" if n < shown.total else "")
        out.print(said, highlight=False, markup=False)


@app.command(
    epilog=(
        "Example: hmb-batch simulate year-2022/ --plan zhelibao-2023 --out what-if-2023 "
        "(a year's extract under next year's rules, on a ledger of its own)"
    )
)
def simulate(
    extracts: Annotated[
        list[str],
        typer.Argument(
            help=(
                "Extracts, adjudicated in this order as one batch each: folders holding "
                "settlements.* and fees.* (a night of `generate --nights`), wide files, or one "
                "settlements file with --fees."
            ),
            show_default=False,
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="The scenario's folder.")],
    plan: Annotated[
        str | None,
        typer.Option(help="Family, edition id or edition file (default: adjudicate.plan)."),
    ] = None,
    set_values: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help=(
                "PATH=VALUE: one settlement-level parameter of the edition changed for this "
                "run, e.g. responsibilities.main.terms.0.floor=13000 (repeatable; see "
                "`hmb-batch plan show EDITION --set ...`)."
            ),
        ),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help=(
                "PATH=V1,V2,...: the scenario under each value of one parameter: total "
                "payout, members paid and loss ratio per value (sweep.json, .md, .html); the "
                "extracts are adjudicated once."
            )
        ),
    ] = None,
    from_ledger: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Start from a copy of this (production) ledger's state as of --as-of: the "
                "what-if for the rest of a year. The ledger is only read."
            )
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            help=(
                "With --from-ledger: a batch id (the state just after it) or a date "
                "YYYY-MM-DD (the batches whose settlements end by that day)."
            )
        ),
    ] = None,
    fees: Annotated[str | None, typer.Option(help="Fee lines of a single extract.")] = None,
    roster: Annotated[Path | None, typer.Option(help="Roster (参保名单).")] = None,
    lists: Annotated[Path | None, typer.Option(help="Negative, admission, drug lists.")] = None,
    config: ConfigOption = None,
    encoding: Annotated[str | None, typer.Option(help="CSV encoding of the inputs.")] = None,
    memory_limit: Annotated[str | None, typer.Option(help="Memory bound, e.g. 1GiB.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a scenario already in the folder.")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help=(
                "local (a scenario ledger in DIR) or spark: each extract one Spark batch, "
                "the year to date carried as Parquet (DIR/batches/NN/state); Parquet "
                "two-file extracts."
            )
        ),
    ] = "local",
    spark_master: SparkMasterOption = None,
    buckets: Annotated[
        int | None,
        typer.Option(help="--engine spark: parts and member buckets (default 8).", min=1),
    ] = None,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Adjudicate extracts under a scenario's rules into a ledger of its own (never the
    production ledger): each extract's usual files, each plan year's report, and the totals
    per plan year side by side (simulation.json, simulation.md). On Spark (--engine spark)
    the year to date travels as Parquet instead of a ledger, and each batch has its report."""
    from hmb_batch.analysis.simulate import ScenarioInputs, sweep_values, write_sweep
    from hmb_batch.analysis.simulate import simulate as run_scenario
    from hmb_batch.io.reference import load_lists
    from hmb_batch.plan.scenario import select_plan_with
    from hmb_batch.run.buckets import parse_size

    _answer_json(as_json)
    try:
        cfg = load_config(config)
        d = cfg.adjudicate
        roster_path = roster or cfg.path(d.roster)
        lists_path = lists or cfg.path(d.lists)
        missing = [n for n, v in (("--roster", roster_path), ("--lists", lists_path)) if v is None]
        if missing:
            raise UsageError(f"missing: {', '.join(missing)} (required, or set in hmb.toml)")
        assert roster_path is not None and lists_path is not None
        if (from_ledger is None) != (as_of is None):
            raise UsageError("--from-ledger and --as-of go together")
        if fees is not None and len(extracts) != 1:
            raise UsageError("--fees goes with one settlements file; give night folders instead")
        names = sorted(load_lists(lists_path, cfg.columns, encoding or d.encoding)["list"].unique())
        sets = list(set_values or [])
        swept_path, swept = _sweep_values(sweep)
        # the run under the first value; every value is then evaluated on its year to date
        run_sets = [*sets, f"{swept_path}={swept[0]}"] if swept else sets
        selection = select_plan_with(plan or d.plan, run_sets, names)
        variants = [
            (v, select_plan_with(plan or d.plan, [*sets, f"{swept_path}={v}"], names))
            for v in swept
        ]
        inputs = ScenarioInputs(
            roster=roster_path,
            lists=lists_path,
            fees=fees,
            encoding=encoding or d.encoding,
            column_map=cfg.columns,
            timezone=d.timezone,
            memory_limit=parse_size(limit) if (limit := memory_limit or d.memory_limit) else None,
        )
        if engine not in ("local", "spark"):
            raise UsageError(f"--engine {engine}: give local or spark")
        if engine != "spark" and (spark_master is not None or buckets is not None):
            raise UsageError("--spark-master and --buckets are for --engine spark")
        show = not (quiet or as_json) and err.is_terminal
        plan_source = (_absolute_spec(plan or d.plan), tuple(run_sets))
        describe = {
            "plan_spec": _absolute_spec(plan or d.plan),
            "changes": sets,
            # what the scenario's batches ran under (a sweep's: its first value)
            "run_changes": run_sets,
            "from_ledger": str(from_ledger) if from_ledger is not None else None,
            "as_of": as_of,
        }
        with err.status("simulating …") if show else contextlib.nullcontext() as st:
            progress = (lambda what: st.update(what)) if st is not None else None
            if engine == "spark":
                document, rows = _simulate_on_spark(
                    extracts,
                    selection,
                    inputs,
                    out_dir,
                    master=spark_master,
                    buckets=buckets or 8,
                    force=force,
                    plan_source=plan_source,
                    from_ledger=from_ledger,
                    as_of=as_of,
                    variants=variants,
                    describe=describe,
                    progress=progress,
                )
            else:
                result = run_scenario(
                    extracts,
                    selection,
                    inputs,
                    out_dir,
                    force=force,
                    plan_source=plan_source,
                    start_ledger=_copy_of(from_ledger, as_of, inputs.memory_limit),
                    describe=describe,
                    progress=progress,
                )
                document = result.document
                rows = sweep_values(result, variants, inputs) if variants else []
            swept_files = write_sweep(swept_path, rows, out_dir) if swept else {}
    except HmbError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json(
            document
            | (
                {"sweep": {"parameter": swept_path, "values": [r.to_json() for r in rows]}}
                if swept
                else {}
            )
        )
    elif not quiet:
        render.scenario(out, document)
        if swept:
            render.sweep(out, swept_path, [r.to_json() for r in rows])
            for name, path in swept_files.items():
                out.print(f"{name}: {path}", highlight=False, markup=False)


def _simulate_on_spark(
    extracts: list[str],
    selection: Any,
    inputs: Any,
    out_dir: Path,
    *,
    master: str | None,
    buckets: int,
    force: bool,
    plan_source: tuple[str, tuple[str, ...]],
    from_ledger: Path | None,
    as_of: str | None,
    variants: list[tuple[str, Any]],
    describe: dict[str, Any],
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, Any], list[Any]]:
    """``simulate --engine spark`` (see :func:`hmb_batch.analysis.simulate.simulate_on_spark`):
    its document and the sweep's rows; errors raise HmbError for the caller to report."""
    from hmb_batch.analysis.simulate import simulate_on_spark
    from hmb_batch.ledger.parquet_state import export_ledger
    from hmb_batch.run.spark import DEFAULT_MASTER

    def start(folder: Path) -> None:
        assert from_ledger is not None
        export_ledger(from_ledger, folder, as_of=as_of)

    result = simulate_on_spark(
        extracts,
        selection,
        inputs,
        out_dir,
        master=master or DEFAULT_MASTER,
        buckets=buckets,
        force=force,
        plan_source=plan_source,
        start=start if from_ledger is not None else None,
        variants=variants,
        describe=describe,
        progress=progress,
    )
    return result.document, result.sweep


def _absolute_spec(spec: str) -> str:
    """A plan spec that names a file or folder, made absolute (a later compare or replay may
    run elsewhere); an edition or family id as it is."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


def _copy_of(
    source: Path | None, as_of: str | None, memory_limit: int | None
) -> Callable[[Path], None] | None:
    """How a scenario's ledger starts: a copy of ``source`` as of a batch (just after it) or a
    date, read without changing a byte of it; None: empty."""
    if source is None or as_of is None:
        return None
    from hmb_batch.ledger.asof import copy_as_of, parse_as_of

    point = parse_as_of(as_of)

    def start(target: Path) -> None:
        if isinstance(point, dt.date):
            copy_as_of(source, target, through=point, memory_limit=memory_limit)
        else:
            copy_as_of(source, target, after=point, memory_limit=memory_limit)

    return start


def _sweep_values(spec: str | None) -> tuple[str, list[str]]:
    """``PATH=V1,V2,...`` as (PATH, [V1, V2, ...]) (no sweep: ("", [])); a usage error when
    malformed."""
    if spec is None:
        return "", []
    path, sep, values = spec.partition("=")
    swept = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not path.strip() or len(swept) < 2:
        raise UsageError(f"--sweep {spec}: write PATH=V1,V2,... with at least two values")
    return path.strip(), swept


@app.command(
    epilog="Example: hmb-batch compare ledger.duckdb what-if-2023 --year 2022 --out compare-2023"
)
def compare(
    a: Annotated[Path, typer.Argument(help="A: a ledger, a scenario folder or a batch folder.")],
    b: Annotated[Path, typer.Argument(help="B: the same kinds.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the comparison goes.")],
    year: Annotated[
        int | None, typer.Option(help="Plan year (default: the only one on both sides).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What B pays against A in one plan year: totals and loss ratios, members who gain or
    lose, by district, hospital, month, responsibility and bracket band, status changes
    (compare.html, compare.md, compare.json, members.parquet). Ledgers are only read."""
    from hmb_batch.analysis.compare import compare as compare_sides
    from hmb_batch.analysis.compare import load_side, write_comparison

    _answer_json(as_json)
    try:
        side_a, year_a = load_side(a, year)
        side_b, _ = load_side(b, year_a)
        comparison = compare_sides(side_a, side_b, year_a)
        files = write_comparison(comparison, out_dir)
    except HmbError as exc:
        raise _fail(exc) from None
    doc = comparison.totals()
    if as_json:
        _print_json(doc | {"files": {k: str(v) for k, v in files.items()}})
        return
    render.comparison(out, doc)
    for name, path in files.items():
        out.print(f"{name}: {path}", highlight=False, markup=False)


@app.command(
    epilog=(
        "Example: hmb-batch generate --members 2000 --year 2022 --seed 7 --out sample_data\n\n"
        "Three years as daily extracts: hmb-batch generate --members 2000 --year 2022 "
        "--years 3 --nights 365 --out three-years"
    )
)
def generate(
    members: Annotated[int, typer.Option(min=1, help="Members in the first plan year.")] = 2000,
    year: Annotated[int, typer.Option(help="(First) plan year.")] = 2022,
    years: Annotated[
        int,
        typer.Option(
            min=1,
            help="Consecutive plan years: most members re-enrol, some leave, some join.",
        ),
    ] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("generated"),
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    chunk_members: Annotated[
        int, typer.Option(help="Members per written chunk (memory bound).")
    ] = 200_000,
    nights: Annotated[
        int,
        typer.Option(
            min=0,
            help=(
                "Also split each year into N nightly extracts (nightly/NN/, numbered in date "
                "order); 365 or more: one a calendar day."
            ),
        ),
    ] = 0,
) -> None:
    """Generate synthetic plan years: settlements, fee lines, roster and lists."""
    from hmb_batch.generate import GeneratorSettings, generate_year, split_nights

    if fmt not in ("parquet", "csv"):
        err.print("[red]error:[/red] --format must be parquet or csv")
        raise typer.Exit(int(ExitCode.USAGE))
    if nights and fmt != "parquet":
        err.print("[red]error:[/red] --nights needs --format parquet")
        raise typer.Exit(int(ExitCode.USAGE))
    stats = generate_year(
        GeneratorSettings(
            members=members, year=year, seed=seed, chunk_members=chunk_members, years=years
        ),
        out_dir,
        fmt=fmt,
    )
    enrolled = " / ".join(f"{n:,}" for n in stats.members_by_year.values())
    span = f"plan years {year}–{year + years - 1}" if years > 1 else f"plan year {year}"
    out.print(
        f"wrote {out_dir}: {span}, {enrolled} members on the roster, "
        f"{stats.settlements:,} settlements, {stats.fee_lines:,} fee lines, "
        f"{stats.list_entries:,} list entries"
    )
    if nights:
        folders = split_nights(out_dir, nights, year, years)
        out.print(f"split into {len(folders)} nightly extracts under {out_dir / 'nightly'}")


@app.command(
    epilog=("Example: hmb-batch replay out/2022/2022-03-01/manifest.json --out /tmp/replay-0301")
)
def replay(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="The batch's manifest.json (or the folder holding it).", show_default=False
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="A new or empty folder for the replay's files.")
    ],
    ledger: Annotated[
        Path | None,
        typer.Option(
            help="The ledger the batch was applied to (default: the manifest's, else "
            "adjudicate.ledger in hmb.toml). Only read: it is not changed by a byte."
        ),
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            help="Where the batch's editions are (default: the --plan the batch ran with); "
            "each must hash as the manifest recorded."
        ),
    ] = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    memory_limit: Annotated[
        str | None, typer.Option(help="Memory bound, as for adjudicate (bytes do not change).")
    ] = None,
    buckets: Annotated[
        int | None,
        typer.Option(min=1, help="Member buckets, as for adjudicate (bytes do not change)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a past batch again from its manifest and check that its payout file comes out byte
    for byte: inputs and editions checked by hash (a changed one is named: exit 3, exit 5),
    the ledger rebuilt as it was before the batch in a scratch copy; exit 11 lists the first
    settlements that differ."""
    from hmb_batch.run.buckets import parse_size
    from hmb_batch.run.replay import Defaults, replay_batch

    _answer_json(as_json)
    try:
        cfg = load_config(config)
        d = cfg.adjudicate
        limit = memory_limit or d.memory_limit
        result = replay_batch(
            manifest,
            out_dir,
            ledger_path=ledger,
            plan=plan,
            defaults=Defaults(
                plan=d.plan,
                encoding=d.encoding,
                timezone=d.timezone,
                columns=cfg.columns,
                districts=cfg.districts,
                warnings=cfg.warnings,
                ledger=cfg.path(d.ledger),
            ),
            wait=wait,
            memory_limit=parse_size(limit) if limit else None,
            buckets_wanted=buckets,
        )
    except HmbError as exc:
        raise _fail(exc) from None
    code = ExitCode.OK if result.identical else ExitCode.REPLAY_DIFFERS
    if as_json:
        _print_json(result.to_json() | {"exit_code": int(code)})
    else:
        _print_replay(result)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def _print_replay(result: ReplayResult) -> None:
    """A replay's verdict for a person: the payout file's, each other file's, the differences."""
    p = result
    if p.identical:
        out.print(
            f"batch {p.batch_id}: payouts.parquet reproduced byte for byte (SHA-256 "
            f"{p.original_sha256})",
            style="bold green",
            highlight=False,
        )
    else:
        out.print(
            f"batch {p.batch_id}: the replay's payouts.parquet differs from the batch's "
            f"(SHA-256 {p.original_sha256} written then, {p.replay_sha256} now)",
            style="bold red",
            highlight=False,
        )
    for name, same in p.files.items():
        if name != "payouts.parquet":
            verdict = "no original to compare" if same is None else "same" if same else "differs"
            out.print(f"  {name}: {verdict}", highlight=False)
    for d in p.differences:
        values = ", ".join(f"{c} {v['original']} → {v['replay']}" for c, v in d["values"].items())
        shown = f" ({values})" if values else ""
        out.print(Text(f"  {d['setl_id']}: {', '.join(d['columns'])}{shown}"))
    for which, ids in (("original", p.only_in_original), ("replay", p.only_in_replay)):
        if ids:
            out.print(Text(f"  only in the {which}: {', '.join(ids)}"))
    for note in p.notes:
        out.print(Text(f"  note: {note}"))
    out.print(Text(f"replay's files: {p.out_dir}"))


@app.command(epilog="Example: hmb-batch codes --json")
def codes(as_json: JsonOption = False) -> None:
    """List every reason code with its Chinese and English description."""
    if as_json:
        _print_json(
            [
                {"code": c.code, "stage": c.stage.value, "zh": c.zh, "en": c.en}
                for c in REASON_CODES.values()
            ]
        )
        return
    t = Table("code", "stage", "中文", "English")
    for c in REASON_CODES.values():
        t.add_row(c.code, c.stage.value, c.zh, c.en)
    out.print(t)


@plan_app.command("list", epilog="Example: hmb-batch plan list")
def plan_list(as_json: JsonOption = False) -> None:
    """List the plan editions shipped with hmb-batch."""
    _answer_json(as_json)
    try:
        editions = shipped_editions()
    except HmbError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json(
            [
                {
                    "edition": e.id,
                    "plan": e.plan,
                    "plan_name": e.plan_name,
                    "year": e.edition,
                    "official": e.official,
                    "source": e.source,
                }
                for e in editions
            ]
        )
        return
    t = Table("edition", "plan", "year", "official", "source")
    for e in editions:
        t.add_row(e.id, e.plan_name, str(e.edition), "yes" if e.official else "example", e.source)
    out.print(t)


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="PATH=VALUE",
        help=(
            "Change one settlement-level parameter for this command, written as in the edition "
            "file, e.g. responsibilities.main.terms.0.floor=13000 or "
            "responsibilities.main.brackets.0.rate=0.80 (README: Plan editions). Repeatable."
        ),
    ),
]


@plan_app.command(
    "show",
    epilog=(
        "Example: hmb-batch plan show zhelibao-2023\n\n"
        "A scenario: hmb-batch plan show zhelibao-2022 "
        "--set responsibilities.main.terms.0.floor=13000"
    ),
)
def plan_show(
    edition: Annotated[str, typer.Argument(help="Edition id, family id or edition file.")],
    sets: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an edition's rules in the rule text's terms; with --set, the scenario's edition (its
    id, what was changed, then its rules). With --json, the edition's parameters as data:
    amounts in fen, rates in parts per million (integers, exact); a scenario's also its
    "variant" (source edition, changes as the file writes them, tag)."""
    from hmb_batch.plan.scenario import select_plan_with

    _answer_json(as_json)
    try:
        selection = select_plan_with(edition, sets or [])
    except HmbError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json([e.edition.model_dump(mode="json") for e in selection.editions])
        return
    for e in selection.editions:
        render.edition(out, e.edition)


@plan_app.command(
    "diff",
    epilog=(
        "Example: hmb-batch plan diff zhelibao-2022 zhelibao-2023\n\n"
        "Against a scenario: hmb-batch plan diff zhelibao-2022 zhelibao-2022 "
        "--set-b responsibilities.main.brackets.1.rate=0.88"
    ),
)
def plan_diff(
    a: Annotated[str, typer.Argument(help="Edition id or edition file.")],
    b: Annotated[str, typer.Argument(help="Edition id or edition file.")],
    set_a: Annotated[
        list[str] | None,
        typer.Option("--set-a", metavar="PATH=VALUE", help="--set on edition A (repeatable)."),
    ] = None,
    set_b: Annotated[
        list[str] | None,
        typer.Option("--set-b", metavar="PATH=VALUE", help="--set on edition B (repeatable)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The parameters that differ from edition A to edition B, in the rule text's terms (a
    floor, a bracket's bound or rate, a band added or removed, a cap, the lists a cost reads
    ...); equal editions say so. Exit 0 either way."""
    from hmb_batch.plan.diff import diff_editions

    _answer_json(as_json)
    try:
        ea, eb = _one_edition(a, set_a or []), _one_edition(b, set_b or [])
    except HmbError as exc:
        raise _fail(exc) from None
    found = diff_editions(ea, eb)
    if as_json:
        _print_json(
            {
                "a": ea.id,
                "b": eb.id,
                "equal": not found,
                "differences": [f.to_json() for f in found],
            }
        )
        return
    if not found:
        out.print(
            f"{ea.id} and {eb.id}: the same parameters (nothing differs)",
            highlight=False,
            markup=False,
        )
        return
    out.print(f"{ea.id} → {eb.id}: {len(found)} difference(s)", highlight=False, markup=False)
    for f in found:
        out.print(f"  {f}", highlight=False, markup=False, soft_wrap=True)


def _one_edition(spec: str, sets: list[str]) -> Edition:
    """The single edition ``spec`` names (an edition id or file), with ``sets`` applied."""
    from hmb_batch.plan.scenario import select_plan_with

    selection = select_plan_with(spec, sets)
    if not selection.fixed:
        ids = ", ".join(e.id for e in selection.editions)
        raise UsageError(
            f"plan diff compares two editions: {spec} is a family ({ids}); give one edition "
            "id or edition file"
        )
    return selection.editions[0].edition


@plan_app.command(
    "new",
    epilog="Example: hmb-batch plan new --from zhouhuibao-2024 mycity-2025.toml --name 某惠保",
)
def plan_new(
    file: Annotated[Path, typer.Argument(help="The edition file to write (.toml).")],
    source: Annotated[
        str, typer.Option("--from", help="Edition to start from (id, family or file).")
    ],
    plan: Annotated[
        str | None, typer.Option(help="Plan family id (default: FILE's name before '-').")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The plan's name (default: the id).")] = None,
    year: Annotated[
        int | None, typer.Option(help="Plan year (default: the source's year + 1).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE.")] = False,
) -> None:
    """Write a starting edition for a new city, copied from an edition, every parameter
    commented; edit it, then `hmb-batch plan check` it."""
    from hmb_batch.plan.template import edition_template

    try:
        origin = select_plan(source).editions[-1].edition
    except HmbError as exc:
        raise _fail(exc) from None
    plan_id = plan or file.stem.split("-")[0].lower().replace(" ", "_")
    if file.exists() and not force:
        err.print(Text.assemble(("error: ", "red"), f"{file} exists; give --force to overwrite it"))
        raise typer.Exit(int(ExitCode.USAGE))
    text = edition_template(
        origin, plan=plan_id, plan_name=name or plan_id, year=year or origin.edition + 1
    )
    e, problems = check_data(read_toml_text(text, file), None)
    if problems or e is None:  # a bug: the template must always check
        err.print("[red]internal error: the written edition does not check[/red]")
        for p in problems:
            err.print(f"  - {p}", highlight=False, markup=False)
        raise typer.Exit(int(ExitCode.FAILURE))
    file.write_text(text, encoding="utf-8")
    out.print(
        f"wrote {file}: {e.id}, a copy of {origin.id} with every parameter commented; "
        f"edit it, then: hmb-batch plan check {file} --lists LISTS_FILE"
    )


@plan_app.command(
    "check", epilog="Example: hmb-batch plan check my-city-2025.toml --lists lists.parquet"
)
def plan_check(
    file: Annotated[Path, typer.Argument(help="Edition file to check.")],
    lists: Annotated[
        Path | None, typer.Option(help="Lists file whose list names the edition may use.")
    ] = None,
) -> None:
    """Check an edition file and report every problem at once."""
    from hmb_batch.io.reference import load_lists

    try:
        names = None
        if lists is not None:
            names = sorted(load_lists(lists)["list"].unique().to_list())
        e, problems = check_data(read_toml(file), names)
    except HmbError as exc:
        raise _fail(exc) from None
    if problems:
        err.print(Text(f"{file}: {len(problems)} problem(s)", style="red"))
        for p in problems:
            err.print(f"  - {p}", highlight=False, markup=False)
        raise typer.Exit(int(ExitCode.CONFIG))
    assert e is not None
    out.print(f"{file}: ok — {e.id} ({e.plan_name}), {len(e.responsibilities)} responsibilities")


@ledger_app.command("init", epilog="Example: hmb-batch ledger init ledger.duckdb")
def ledger_init(
    path: Annotated[
        Path | None,
        typer.Argument(help="The ledger file to create (default: adjudicate.ledger in hmb.toml)."),
    ] = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
) -> None:
    """Create an empty ledger (and its parent folders); an existing one is refused.

    adjudicate and every other command refuse a ledger that does not exist, so a mistyped path
    cannot start every member's year to date at zero.
    """
    from hmb_batch.ledger.store import create_ledger

    try:
        target = _ledger_path(path, config)
        create_ledger(target, wait=wait)
    except HmbError as exc:
        raise _fail(exc) from None
    out.print(
        f"created the ledger {target} (its file archive will be {target}.files/: back up both)",
        highlight=False,
        markup=False,
    )


@ledger_app.command("status", epilog="Example: hmb-batch ledger status --ledger ledger.duckdb")
def ledger_status(
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Batches, plan years, members and totals in the ledger."""
    _answer_json(as_json)
    batches, state = _on_ledger(ledger, config, wait, lambda lg: (lg.batches(), lg.state()))
    if not as_json:
        render.ledger_status(out, batches, state)
        return
    applied = [b for b in batches if b.status == "applied"]
    _print_json(
        {
            "applied": len(applied),
            "reverted": len(batches) - len(applied),
            "latest": applied[-1].batch_id if applied else None,
            "plan_years": [
                {
                    "plan_year": r["plan_year"],
                    "members": r["members"],
                    "settlements": r["settlements"],
                    "payable": str(fen_to_yuan(r["payable_fen"])),
                    "payout": str(fen_to_yuan(r["payout_fen"])),
                }
                for r in state.iter_rows(named=True)
            ],
        }
    )


@ledger_app.command("batches", epilog="Example: hmb-batch ledger batches --ledger ledger.duckdb")
def ledger_batches(
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Every batch applied (or reverted), in order; a reverted one with who, when and why."""
    _answer_json(as_json)
    batches = _on_ledger(ledger, config, wait, lambda lg: lg.batches())
    if not as_json:
        render.ledger_batches(out, batches)
        return
    _print_json(
        [
            {
                "seq": b.seq,
                "batch_id": b.batch_id,
                "status": b.status,
                "started_at": b.started_at.isoformat(timespec="seconds"),
                "finished_at": b.finished_at.isoformat(timespec="seconds")
                if b.finished_at
                else None,
                "settlements_in": b.settlements_in,
                "adjudicated": b.adjudicated,
                "quarantined": b.quarantined,
                "total_payout": str(fen_to_yuan(b.total_payout_fen)),
                "max_setl_time": b.max_setl_time.isoformat() if b.max_setl_time else None,
                "out": b.out_dir,
                "reverted": {
                    "at": b.reverted_at.isoformat(timespec="seconds") if b.reverted_at else None,
                    "by": b.reverted_by,
                    "reason": b.revert_reason,
                }
                if b.status == "reverted"
                else None,
            }
            for b in batches
        ]
    )


@ledger_app.command(
    "member",
    epilog=(
        "Example: hmb-batch ledger member P20220000016 --year 2022 --ledger l.duckdb "
        "--roster roster.parquet --json"
    ),
)
def ledger_member(
    psn_no: Annotated[str, typer.Argument(help="Member id (psn_no).")],
    year: Annotated[int | None, typer.Option(help="Plan year (default: all).")] = None,
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    roster: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Roster for the member's benefit start, waiting period and suspensions "
                "(default: adjudicate.roster in hmb.toml; without one they are unavailable)."
            )
        ),
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            help=(
                "Where to find editions not shipped with hmb-batch: family, edition id, file "
                "or folder (default: adjudicate.plan in hmb.toml)."
            )
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A member's statement, explained: each settlement's edition, batch, floors and
    deductibles reached, bracket bands and rates, responsibility split and payout; and the
    member's roster facts (pay date, benefit start and the rule 1–4 that set it, waiting
    period, suspensions, restoration). Names and ID numbers are never shown."""
    from hmb_batch.report.member import explain_member

    _answer_json(as_json)

    def read(lg: Ledger) -> tuple[Any, dict[str, dict[str, Any]]]:
        statement = lg.member_statement(psn_no, year)
        return statement, lg.batch_provenance(statement["batch_id"].unique().to_list())

    statement, provenance = _on_ledger(ledger, config, wait, read)
    if statement.height == 0 and not as_json:
        # an empty statement is an answer, not an error (the ledger cannot tell a member with no
        # settlements from an unknown id): exit 0, on stdout
        out.print(
            f"no settlements for member {psn_no}"
            + (f" in {year}" if year else "")
            + " in the ledger",
            highlight=False,
            markup=False,
        )
        return
    try:
        cfg = load_config(config)
        explained = explain_member(
            psn_no,
            year,
            statement,
            provenance,
            plan=plan or cfg.adjudicate.plan,
            roster=roster or cfg.path(cfg.adjudicate.roster),
            column_map=cfg.columns,
            encoding=cfg.adjudicate.encoding,
            timezone=cfg.adjudicate.timezone,
        )
    except HmbError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json(explained.to_json())
    else:
        render.member_explanation(out, explained)


@ledger_app.command(
    "revert",
    epilog=("Example: hmb-batch ledger revert --last --reason 'wrong roster' --ledger l.duckdb"),
)
def ledger_revert(
    batch_id: Annotated[
        str | None,
        typer.Argument(help="The most recent batch's id (or give --last).", show_default=False),
    ] = None,
    last: Annotated[
        bool, typer.Option("--last", help="Revert the most recent applied batch.")
    ] = False,
    reason: Annotated[
        str, typer.Option(help="Why (kept in the ledger and written into the batch's folder).")
    ] = "",
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Undo the most recent batch exactly (accumulators, registry; payouts marked reverted);
    its output folder is marked: manifest.json status "reverted" and a REVERTED file saying
    who, when and why."""
    from hmb_batch.ledger.store import LedgerError

    _answer_json(as_json)
    if (batch_id is None) == (not last):
        raise _fail(UsageError("give the batch id to revert, or --last (not both)"))
    who = _who()

    def revert(lg: Ledger) -> BatchRecord:
        target = batch_id
        if target is None:
            latest = lg.last_applied()
            if latest is None:
                raise LedgerError("the ledger has no applied batch to revert")
            target = latest.batch_id
        return lg.revert(target, by=who, reason=reason or None)

    record = _on_ledger(ledger, config, wait, revert)
    # the revert is committed: from here on nothing may fail the command, or a retry of
    # `revert --last` would revert the night before too
    folder_note = _mark_folder(record, who, reason)
    if as_json:
        _print_json(
            {
                "reverted": record.batch_id,
                "seq": record.seq,
                "settlements_removed": record.adjudicated,
                "by": who,
                "reason": reason or None,
                "out": record.out_dir,
                "folder_marked": folder_note is None,
                "folder_note": folder_note,
            }
        )
        return
    out.print(
        f"reverted batch {record.batch_id} (seq {record.seq}): {record.adjudicated:,} "
        "settlements removed from the ledger, their payouts marked reverted",
        highlight=False,
        markup=False,
    )
    out.print(
        f"marked its folder {record.out_dir} (REVERTED)" if folder_note is None else folder_note,
        highlight=False,
        markup=False,
    )


@ledger_app.command(
    "export",
    epilog="Example: hmb-batch ledger export --ledger ledger.duckdb --out state-2022",
)
def ledger_export(
    out_dir: Annotated[Path, typer.Option("--out", help="The state folder to write.")],
    as_of: Annotated[
        str | None,
        typer.Option(
            help=(
                "A batch id (the state just after it) or a date YYYY-MM-DD (the batches whose "
                "settlements end by that day); default: now."
            )
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a state already in the folder.")
    ] = False,
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """The ledger's year to date as Parquet (a state folder: registry/, accumulators/,
    state.json), which a Spark run starts from (--prior). The ledger is only read."""
    from hmb_batch.ledger.parquet_state import export_ledger

    _answer_json(as_json)
    try:
        info = export_ledger(
            _ledger_path(ledger, config), out_dir, as_of=as_of, force=force, wait=wait
        )
    except HmbError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json({"out": str(out_dir)} | info.to_json())
        return
    years = ", ".join(map(str, sorted(info.payout_by_plan_year_fen))) or "no plan year"
    out.print(
        f"exported the state of {len(info.batches):,} batches (plan years {years}) to {out_dir}",
        highlight=False,
        markup=False,
    )


@ledger_app.command(
    "import",
    epilog="Example: hmb-batch ledger import out/spark-2022-03-02 --ledger ledger.duckdb",
)
def ledger_import(
    batch_dir: Annotated[
        Path, typer.Argument(help="A batch's folder written by adjudicate --engine spark.")
    ],
    allow_out_of_order: Annotated[
        bool,
        typer.Option(
            "--allow-out-of-order",
            help="Apply a batch whose settlements are older than the ledger's latest.",
        ),
    ] = False,
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Apply a batch adjudicated on Spark (from this ledger's exported state) to the ledger,
    in one transaction, checked as a local run's commit is; refused if the ledger has moved
    on since the export."""
    from hmb_batch.run.ledger_import import import_spark_batch

    _answer_json(as_json)
    try:
        done = import_spark_batch(
            batch_dir,
            _ledger_path(ledger, config),
            wait=wait,
            allow_out_of_order=allow_out_of_order,
        )
    except HmbError as exc:
        raise _fail(exc) from None
    r = done.record
    if as_json:
        _print_json(
            {
                "imported": r.batch_id,
                "seq": r.seq,
                "settlements": done.settlements,
                "payout": str(fen_to_yuan(r.total_payout_fen)),
                "out": r.out_dir,
            }
        )
        return
    out.print(
        f"imported batch {r.batch_id} (seq {r.seq}): {done.settlements:,} settlements, payout "
        f"{fen_to_yuan(r.total_payout_fen):,} yuan",
        highlight=False,
        markup=False,
    )


def _mark_folder(record: BatchRecord, who: str, reason: str) -> str | None:
    """Mark a reverted batch's output folder; None when marked, else why not (never raises)."""
    from hmb_batch.run.out_folder import mark_reverted

    if record.out_dir is None:
        return (
            "its output folder is unknown (it was applied before hmb-batch recorded folders): "
            "mark its files as reverted by hand"
        )
    try:
        marked = mark_reverted(
            Path(record.out_dir),
            record.batch_id,
            at=record.reverted_at or dt.datetime.now(),
            by=who,
            reason=reason,
        )
    except OSError as exc:
        return (
            f"its folder {record.out_dir} could not be marked ({exc.strerror or exc}): mark "
            "its files as reverted by hand; the revert itself is done"
        )
    if not marked:
        return f"its folder {record.out_dir} no longer holds its files: nothing marked there"
    return None


def _who() -> str:
    """user@host of whoever runs the command (for the revert's record)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


TRACEBACK_ENV = "HMB_TRACEBACK"  # set to 1 to see an internal error's traceback


def main() -> None:
    """Console-script entry point.

    A command-line mistake (an unknown option, missing options) is exit 2, naming every required
    option missing at once; with ``--json`` it is a JSON error on stdout like any other error.

    An unexpected exception is a bug: exit 1 with its type and where it was raised, not its
    message or a traceback (either may quote the data being processed — names, ID numbers);
    ``HMB_TRACEBACK=1`` shows the traceback to whoever debugs it.
    """
    _answer.json = "--json" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        usage = ExitCode.USAGE if exc.exit_code == ExitCode.USAGE else ExitCode.FAILURE
        if _answer.json:
            _print_json(_error_json(usage, _usage_message(exc)))
        elif isinstance(exc, MissingParameter):
            CommandLineError(_usage_message(exc), ctx=exc.ctx).show()
        else:
            exc.show()
        sys.exit(int(usage))
    except typer.Abort:
        err.print("aborted")
        sys.exit(int(ExitCode.FAILURE))
    except HmbError as exc:  # pragma: no cover - commands catch their own
        _fail(exc)
        sys.exit(int(exc.exit_code))
    except Exception as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        message = (
            f"internal error: {type(exc).__name__}{where} — a bug in hmb-batch "
            f"{__version__}, please report it (run with {TRACEBACK_ENV}=1 for the "
            "traceback; it may show personal data). Nothing was applied unless the "
            "summary said so; the ledger is always as before or after a batch."
        )
        if _answer.json:
            _print_json(_error_json(ExitCode.FAILURE, message))
        else:
            err.print(Text(message), soft_wrap=True)
        sys.exit(int(ExitCode.FAILURE))
    sys.exit(code if isinstance(code, int) else int(ExitCode.OK))


def _usage_message(exc: ClickException) -> str:
    """A usage error's message; a missing option names every required option the command line
    lacks, not only the first one checked."""
    if not isinstance(exc, MissingParameter) or exc.ctx is None:
        return exc.format_message()
    given = {a.split("=", 1)[0] for a in sys.argv[1:]}
    missing = [
        p.opts[0] if p.param_type_name == "option" else (p.name or "").upper()
        for p in exc.ctx.command.params
        if p.required
        and (p is exc.param or (p.param_type_name == "option" and not given & set(p.opts)))
    ]
    return f"missing: {', '.join(missing)} (required)"
