"""Errors a person sees, and the exit codes the CLI turns them into (README: Exit codes)."""

from __future__ import annotations

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


class HmbError(Exception):
    """Base of the errors hmb-batch reports to a person without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE


class InputUnreadable(HmbError):
    """An input file cannot be opened or is not a format hmb-batch reads."""

    exit_code = ExitCode.INPUT_UNREADABLE


class SchemaError(HmbError):
    """A required column is missing: the run stops before anything is written."""

    exit_code = ExitCode.SCHEMA

    def __init__(self, file: str, table: str, missing: list[str], found: list[str]) -> None:
        self.file, self.table, self.missing, self.found = file, table, missing, found
        cols = ", ".join(missing)
        super().__init__(
            f"{file}: the {table} table has no column {cols} (required). "
            f"Found columns: {', '.join(found) or '(none)'}. "
            "If the site calls it something else, map it in hmb.toml under [columns]."
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
