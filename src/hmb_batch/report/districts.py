"""District names for the reports: a member's district (``insu_admdvs``) shown as "331102 莲都区".

hmb-batch ships the codes of Zhejiang's province, cities and counties/districts
(``zhejiang_districts.toml``, GB/T 2260); hmb.toml's ``[districts]`` table adds codes or renames
shipped ones. A code in neither is shown as the bare code: a report never guesses a name.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from importlib import resources

SHIPPED = "zhejiang_districts.toml"


@functools.cache
def _shipped() -> Mapping[str, str]:
    text = resources.files("hmb_batch.report").joinpath(SHIPPED).read_text(encoding="utf-8")
    return dict(tomllib.loads(text)["districts"])


def district_names(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The shipped code → name table, with ``overrides`` (hmb.toml's ``[districts]``) on top."""
    return {**_shipped(), **(overrides or {})}


def district_label(code: str, names: Mapping[str, str]) -> str:
    """ "331102 莲都区" for a code with a name, else the code as it is."""
    name = names.get(code)
    return f"{code} {name}" if name else code
