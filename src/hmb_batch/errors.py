"""Errors a person sees, and the exit codes the CLI turns them into (README: Exit codes)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in README."""

    OK = 0
    FAILURE = 1  # an unexpected internal error (a bug: please report it)
    USAGE = 2  # bad command line (typer's own code for usage errors)
    INPUT_UNREADABLE = 3  # a file is missing, unreadable, or not CSV/Parquet
    SCHEMA = 4  # a required column is missing from an input file
    CONFIG = 5  # hmb.toml or a plan edition is invalid
    RECONCILIATION = 6  # a balancing identity failed; nothing was applied
    LEDGER_BUSY = 7  # another hmb-batch holds the ledger
    REFERENCE_INVALID = 8  # the roster or the lists file has bad rows; nothing was written
    LEDGER_REFUSED = 9  # the ledger refuses: out-of-order batch, revert of an older batch, ...
    FLAGGED = 10  # --fail-on: the batch was done (applied, or written by a dry run) but has
    # quarantined rows or warnings that --fail-on asked to be told about
    REPLAY_DIFFERS = 11  # replay: the batch run again wrote another payout file than it did


class HmbError(Exception):
    """Base of the errors hmb-batch reports to a person without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE


class UsageError(HmbError):
    """The command line lacks something it needs (a required option, say)."""

    exit_code = ExitCode.USAGE


class InputUnreadable(HmbError):
    """An input file cannot be opened or is not a format hmb-batch reads."""

    exit_code = ExitCode.INPUT_UNREADABLE


class OutputRefused(HmbError):
    """The output folder holds another batch's files: refused (exit 2) unless ``--force``."""

    exit_code = ExitCode.USAGE


class OutputUnwritable(HmbError):
    """The output folder cannot be created or written: checked before anything is applied."""

    exit_code = ExitCode.INPUT_UNREADABLE


_HEADER_LIKE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_MAX_HEADER_DIGITS = 3


def _known_names() -> set[str]:
    from hmb_batch.io.contracts import CONTRACTS  # contracts needs nothing from here: no cycle

    names: set[str] = set()
    for contract in CONTRACTS.values():
        for col in contract.columns:
            names |= {col.name, *col.aliases, col.zh.lower()}
    return names


def looks_like_header(name: str, site_names: Collection[str] = ()) -> bool:
    """Whether a found column name may be shown in a message.

    A headerless CSV's first data row becomes its "column names": names, ID numbers. So a name
    is shown only if it is a contract column, alias or Chinese label (with or without the wide
    files' ``setl_`` prefix), a site name mapped in ``[columns]``, or an ASCII identifier —
    a letter or ``_`` first, then letters, digits and ``_``, at most 40 characters and at most
    3 digits. Anything else (digits, an ID-number shape, Chinese text that is no contract label,
    a date, an amount) may be a value and is only counted.
    """
    key = name.strip().lower()
    known = _known_names() | {n.strip().lower() for n in site_names}
    if key in known or key.removeprefix("setl_") in known:
        return True
    return bool(_HEADER_LIKE.fullmatch(key)) and sum(ch.isdigit() for ch in key) <= (
        _MAX_HEADER_DIGITS
    )


def shown_columns(found: Sequence[str], site_names: Collection[str] = ()) -> str:
    """The found column names for a message, never a data row's values.

    If fewer than half the names look like a header name (see :func:`looks_like_header`), the
    row is taken for data — a headerless file's first row — and no name is shown (an id such as
    ``S1`` looks like a name on its own). Otherwise the header-like names are shown and the rest
    counted.
    """
    if not found:
        return "(none)"
    shown = [n for n in found if looks_like_header(n, site_names)]
    hidden = len(found) - len(shown)
    if 2 * len(shown) < len(found):
        return (
            f"{len(found)} names, not shown: most look like data values, not column names "
            "(does the file lack its header row?)"
        )
    more = f" (+{hidden} not shown: they look like data values)" if hidden else ""
    return ", ".join(shown) + more


class SchemaError(HmbError):
    """A required column is missing: the run stops before anything is written.

    The message lists the columns found only as far as they look like a header (see
    :func:`looks_like_header`): a headerless file's first row is personal data.
    """

    exit_code = ExitCode.SCHEMA

    def __init__(
        self,
        file: str,
        table: str,
        missing: list[str],
        found: list[str],
        *,
        site_names: Collection[str] = (),
        hint: str = "",
    ) -> None:
        self.file, self.table, self.missing = file, table, missing
        self.found = [n for n in found if looks_like_header(n, site_names)]
        cols = ", ".join(missing)
        super().__init__(
            f"{file}: the {table} table has no column {cols} (required). "
            f"Found columns: {shown_columns(found, site_names)}. "
            + (hint or "If the site calls it something else, map it in hmb.toml under [columns].")
        )


class ConfigError(HmbError):
    """The configuration or a plan edition is invalid; the message lists every problem."""

    exit_code = ExitCode.CONFIG


class ReconciliationError(HmbError):
    """A balancing identity failed: nothing was applied to the ledger."""

    exit_code = ExitCode.RECONCILIATION


class ReferenceDataError(HmbError):
    """The roster or lists file has rows that cannot be used; the run stops before writing."""

    exit_code = ExitCode.REFERENCE_INVALID
