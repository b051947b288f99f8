"""hmb.toml: a site's defaults for `hmb-batch adjudicate`, validated.

Example::

    [adjudicate]
    fees = "fees.parquet"        # paths are relative to this file's folder
    roster = "roster.parquet"
    lists = "lists.parquet"
    plan = "zhelibao"            # family, edition id, edition file or folder
    out = "out"
    encoding = "utf-8"           # CSV encoding: utf-8 (BOM or not), gbk or gb18030
    timezone = "Asia/Shanghai"   # zone of time-zone-aware Parquet timestamps (IANA name)
    memory_limit = "1GiB"        # bound memory: a bigger batch is cut into member buckets
    csv_encoding = "utf-8-sig"   # of the --csv copies: utf-8, utf-8-sig (Excel), gbk, gb18030

    [columns]                    # the site's column name = the contract's name
    JSID = "setl_id"

    [warnings]                   # when a batch gets a warning (see run/alerts.py)
    quarantined_share = 0.05

    [districts]                  # district code = name in the reports (adds to or renames the
    331102 = "莲都区"            # shipped Zhejiang table)

Command-line options override the file. The file is looked up as ``--config PATH``, else
``hmb.toml`` in the working directory; without one, every option comes from the command line.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hmb_batch.errors import ConfigError
from hmb_batch.io.contracts import CONTRACTS
from hmb_batch.io.extract import check_timezone
from hmb_batch.run.alerts import WarningLimits

DEFAULT_NAME = "hmb.toml"
_ALL_COLUMNS = {n for c in CONTRACTS.values() for n in c.names}


class AdjudicateDefaults(BaseModel):
    """Defaults for the adjudicate command."""

    model_config = ConfigDict(extra="forbid")

    fees: Path | None = None
    roster: Path | None = None
    lists: Path | None = None
    plan: str = "zhelibao"
    ledger: Path | None = None
    out: Path = Path("out")
    encoding: str = "utf-8"
    memory_limit: str | None = None
    csv_encoding: str = "utf-8"
    # a time-zone-aware timestamp is converted to this zone before its zone is dropped
    timezone: str = "Asia/Shanghai"

    @field_validator("csv_encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        from hmb_batch.io.outputs import CSV_ENCODINGS  # it imports the plan, which imports this

        if v not in CSV_ENCODINGS:
            raise ValueError(f"{v!r} is not one of {', '.join(CSV_ENCODINGS)}")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            return check_timezone(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class Config(BaseModel):
    """The whole of hmb.toml."""

    model_config = ConfigDict(extra="forbid")

    adjudicate: AdjudicateDefaults = Field(default_factory=AdjudicateDefaults)
    columns: dict[str, str] = Field(default_factory=dict)
    warnings: WarningLimits = Field(default_factory=WarningLimits)
    # district code -> name for the reports, on top of the shipped Zhejiang table
    districts: dict[str, str] = Field(default_factory=dict)
    base_dir: Path = Path(".")

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted({t for t in v.values() if t.lower() not in _ALL_COLUMNS})
        if unknown:
            raise ValueError(
                f"[columns] maps to unknown contract column(s) {', '.join(unknown)}; "
                "the right-hand side must be a contract name such as setl_id"
            )
        return {k: t.lower() for k, t in v.items()}

    @field_validator("districts")
    @classmethod
    def _named_codes(cls, v: dict[str, str]) -> dict[str, str]:
        table = {code.strip(): name.strip() for code, name in v.items()}
        bad = sorted(code for code, name in table.items() if not code or not name or " " in code)
        if bad:
            raise ValueError(
                f"[districts] needs a code without spaces and a name for each entry: "
                f'{", ".join(repr(c) for c in bad)} (e.g. 331102 = "莲都区")'
            )
        return table

    def path(self, p: Path | None) -> Path | None:
        """A configured path resolved against the config file's folder."""
        if p is None:
            return None
        return p if p.is_absolute() else self.base_dir / p


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents; ConfigError naming the file if it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    return read_toml_text(text, path)


def read_toml_text(text: str, path: Path) -> dict[str, Any]:
    """TOML text's contents; ConfigError naming ``path`` if it cannot be parsed."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_config(path: Path | None) -> Config:
    """Load ``path`` (or ./hmb.toml if present; else defaults). ConfigError lists every problem."""
    if path is None:
        candidate = Path(DEFAULT_NAME)
        if not candidate.exists():
            return Config()
        path = candidate
    data = read_toml(path)
    try:
        cfg = Config.model_validate({**data, "base_dir": path.parent})
    except ValidationError as exc:
        problems = "\n".join(f"  - {_problem(e['loc'], e['type'], e['msg'])}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid configuration:\n{problems}") from exc
    return cfg


def _problem(loc: tuple[int | str, ...], kind: str, message: str) -> str:
    """One configuration problem in the file's terms: ``[section] key``, and for a key hmb.toml
    does not know, the known key it most resembles."""
    *section, key = [str(part) for part in loc]
    where = f"[{'.'.join(section)}] {key}" if section else f"[{key}]"
    if kind != "extra_forbidden":
        return f"{where}: {message.removeprefix('Value error, ')}"
    model: type[BaseModel] = Config
    for part in section:
        field = model.model_fields.get(part)
        inner = field.annotation if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            break
        model = inner
    known = [k for k in model.model_fields if k != "base_dir"]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
    return f"{where}: not a setting hmb.toml knows{hint}"
