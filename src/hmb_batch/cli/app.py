"""The command line. Thin: parse, call the library, render; errors become exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hmb_batch import __version__
from hmb_batch.cli.config import load_config, read_toml, read_toml_text
from hmb_batch.errors import ConfigError, ExitCode, HmbError, UsageError
from hmb_batch.plan.catalog import select_plan, shipped_editions
from hmb_batch.plan.check import check_data
from hmb_batch.report import terminal as render
from hmb_batch.rules.codes import REASON_CODES

if TYPE_CHECKING:
    from hmb_batch.ledger.store import Ledger

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
    help="Plan editions: list, show, check.\n\nExample:\n\n  hmb-batch plan show zhelibao-2023",
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


out = Console()
err = Console(stderr=True)


def _fail(exc: HmbError) -> typer.Exit:
    # the message is text, never markup: a hint such as "[columns]" must print as written
    err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
    return typer.Exit(int(exc.exit_code))


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
        str,
        typer.Argument(
            help=(
                "Settlements file (CSV or Parquet), or one wide file of fee lines carrying "
                "their settlement's columns; or a folder or a quoted glob of such files, read "
                "as one batch."
            )
        ),
    ],
    fees: Annotated[
        str | None, typer.Option(help="Fee-lines file, folder or glob (two-file extracts).")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option(help="Ledger (DuckDB file) carrying the year to date between batches."),
    ] = None,
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
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Configuration file (default ./hmb.toml).")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="CSV encoding: utf-8 (BOM or not), gbk or gb18030.")
    ] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Also write payouts.csv.")] = False,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Adjudicate one batch: validate, apply the plan, reconcile, write payouts, quarantine,
    line audit, reconciliation.json and the report (report.html, report.md)."""
    from hmb_batch.run.batch import BatchInputs, run_batch
    from hmb_batch.run.buckets import parse_size

    try:
        cfg = load_config(config)
        d = cfg.adjudicate
        roster_path = roster or cfg.path(d.roster)
        lists_path = lists or cfg.path(d.lists)
        if roster_path is None or lists_path is None:
            missing = "--roster" if roster_path is None else "--lists"
            raise UsageError(f"{missing} is required (or set adjudicate.{missing[2:]} in hmb.toml)")
        inputs = BatchInputs(
            extract=extract,
            fees=fees or cfg.path(d.fees),
            roster=roster_path,
            lists=lists_path,
            plan=plan or d.plan,
            encoding=encoding or d.encoding,
            column_map=cfg.columns,
            batch_id=batch_id,
            timezone=d.timezone,
        )
        target = out_dir or cfg.path(d.out) or Path("out")
        # progress on stderr only for a person at a terminal: cron logs and pipes stay clean
        show = not (quiet or as_json) and err.is_terminal
        with err.status("reading and validating …") if show else contextlib.nullcontext() as st:
            result = run_batch(
                inputs,
                target,
                csv=csv,
                ledger_path=ledger or cfg.path(d.ledger),
                wait=wait,
                allow_out_of_order=allow_out_of_order,
                memory_limit=parse_size(limit)
                if (limit := memory_limit or d.memory_limit)
                else None,
                buckets_wanted=buckets,
                unmasked=unmasked,
                progress=(lambda stage, secs: st.update(f"{stage} done ({secs:.1f} s) …"))
                if st is not None
                else None,
            )
    except HmbError as exc:
        raise _fail(exc) from None
    if as_json:
        print(
            json.dumps(
                {
                    "summary": result.summary.to_json(),
                    "replayed": result.replayed,
                    "reconciled": _reconciled(result.files),
                    "files": {k: str(v) for k, v in result.files.items()},
                },
                ensure_ascii=False,
            )
        )
    elif not quiet:
        if result.replayed:
            out.print(
                f"batch {result.summary.batch_id} was applied before with the same inputs and "
                "plan editions: the ledger is unchanged; its files were written again."
            )
        render.batch_summary(
            out,
            result.summary,
            {k: str(v) for k, v in result.files.items()},
            _reconciled(result.files),
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
) -> None:
    """The year-to-date report of a plan year from the ledger alone: report.html, report.md."""
    from hmb_batch.io.atomic import write_files
    from hmb_batch.report.data import year_report
    from hmb_batch.report.pages import render_html, render_markdown

    try:
        cfg = load_config(config)
        selection = select_plan(plan or cfg.adjudicate.plan)
    except HmbError as exc:
        raise _fail(exc) from None
    data = _on_ledger(ledger, config, wait, lambda lg: year_report(lg, year, selection))
    files = write_files(
        {"report.html": render_html(data).encode(), "report.md": render_markdown(data).encode()},
        out_dir,
    )
    for path in files.values():
        out.print(f"report: {path}")


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


@app.command(epilog="Example: hmb-batch codes")
def codes() -> None:
    """List every reason code with its Chinese and English description."""
    t = Table("code", "stage", "中文", "English")
    for c in REASON_CODES.values():
        t.add_row(c.code, c.stage.value, c.zh, c.en)
    out.print(t)


@plan_app.command("list", epilog="Example: hmb-batch plan list")
def plan_list() -> None:
    """List the plan editions shipped with hmb-batch."""
    t = Table("edition", "plan", "year", "official", "source")
    try:
        for e in shipped_editions():
            t.add_row(
                e.id, e.plan_name, str(e.edition), "yes" if e.official else "example", e.source
            )
    except HmbError as exc:
        raise _fail(exc) from None
    out.print(t)


@plan_app.command("show", epilog="Example: hmb-batch plan show zhelibao-2023")
def plan_show(
    edition: Annotated[str, typer.Argument(help="Edition id, family id or edition file.")],
) -> None:
    """Show an edition's rules in the rule text's terms."""
    try:
        selection = select_plan(edition)
    except HmbError as exc:
        raise _fail(exc) from None
    for e in selection.editions:
        render.edition(out, e.edition)


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
    ledger: LedgerOption = None, config: ConfigOption = None, wait: WaitOption = 30.0
) -> None:
    """Batches, plan years, members and totals in the ledger."""
    batches, state = _on_ledger(ledger, config, wait, lambda lg: (lg.batches(), lg.state()))
    render.ledger_status(out, batches, state)


@ledger_app.command("batches", epilog="Example: hmb-batch ledger batches --ledger ledger.duckdb")
def ledger_batches(
    ledger: LedgerOption = None, config: ConfigOption = None, wait: WaitOption = 30.0
) -> None:
    """Every batch applied (or reverted), in order."""
    render.ledger_batches(out, _on_ledger(ledger, config, wait, lambda lg: lg.batches()))


@ledger_app.command(
    "member", epilog="Example: hmb-batch ledger member P20220000016 --year 2022 --ledger l.duckdb"
)
def ledger_member(
    psn_no: Annotated[str, typer.Argument(help="Member id (psn_no).")],
    year: Annotated[int | None, typer.Option(help="Plan year (default: all).")] = None,
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
) -> None:
    """A member's statement: each settlement, its increments, year to date and payout."""
    statement = _on_ledger(ledger, config, wait, lambda lg: lg.member_statement(psn_no, year))
    if statement.height == 0:
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
    render.member_statement(out, psn_no, statement)


@ledger_app.command(
    "revert", epilog="Example: hmb-batch ledger revert day-0305-1a2b3c --ledger l.duckdb"
)
def ledger_revert(
    batch_id: Annotated[str, typer.Argument(help="The most recent batch's id.")],
    ledger: LedgerOption = None,
    config: ConfigOption = None,
    wait: WaitOption = 30.0,
) -> None:
    """Undo the most recent batch exactly (accumulators, registry; payouts marked reverted)."""
    record = _on_ledger(ledger, config, wait, lambda lg: lg.revert(batch_id))
    out.print(
        f"reverted batch {record.batch_id} (seq {record.seq}): {record.adjudicated:,} "
        "settlements removed from the ledger, their payouts marked reverted"
    )


TRACEBACK_ENV = "HMB_TRACEBACK"  # set to 1 to see an internal error's traceback


def main() -> None:
    """Console-script entry point.

    An unexpected exception is a bug: exit 1 with its type and where it was raised, not its
    message or a traceback (either may quote the data being processed — names, ID numbers);
    ``HMB_TRACEBACK=1`` shows the traceback to whoever debugs it.
    """
    try:
        app()
    except HmbError as exc:  # pragma: no cover - commands catch their own
        err.print(Text(f"error: {exc}"))
        sys.exit(int(exc.exit_code))
    except Exception as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        err.print(
            Text(
                f"internal error: {type(exc).__name__}{where} — a bug in hmb-batch "
                f"{__version__}, please report it (run with {TRACEBACK_ENV}=1 for the "
                "traceback; it may show personal data). Nothing was applied unless the "
                "summary said so; the ledger is always as before or after a batch."
            ),
            soft_wrap=True,
        )
        sys.exit(int(ExitCode.FAILURE))
