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

    [columns]                    # the site's column name = the contract's name
    JSID = "setl_id"

    [districts]                  # district code = name in the reports (adds to or renames the
    331102 = "莲都区"            # shipped Zhejiang table)

Command-line options override the file. The file is looked up as ``--config PATH``, else
``hmb.toml`` in the working directory; without one, every option comes from the command line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hmb_batch.errors import ConfigError
from hmb_batch.io.contracts import CONTRACTS
from hmb_batch.io.extract import check_timezone

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
    # a time-zone-aware timestamp is converted to this zone before its zone is dropped
    timezone: str = "Asia/Shanghai"

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
        problems = "\n".join(
            f"  - {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid configuration:\n{problems}") from exc
    return cfg
