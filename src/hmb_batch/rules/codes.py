"""Reason codes: why a settlement was quarantined or denied, and why a fee line counted or not.

Every code has a Chinese and an English description; reports and `hmb-batch codes` print them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import polars as pl


class Stage(StrEnum):
    """Where in the run a code is given."""

    QUARANTINE = "quarantine"  # bad input, duplicates, orphans: not adjudicated, not in the ledger
    DENIAL = "denial"  # adjudicated, pays nothing, adds nothing to the year to date
    LINE = "line"  # fee-line audit


@dataclass(frozen=True)
class ReasonCode:
    """A reason code with its descriptions."""

    code: str
    stage: Stage
    zh: str
    en: str


_CODES = (
    ReasonCode("SCHEMA", Stage.QUARANTINE, "缺少必需列", "a required column is missing"),
    ReasonCode(
        "BAD_VALUE",
        Stage.QUARANTINE,
        "数据值无法识别或不合法",
        "a value cannot be read (amount, date) or is not allowed (negative amount outside a "
        "reversal, empty required field)",
    ),
    ReasonCode(
        "AMOUNT_IDENTITY",
        Stage.QUARANTINE,
        "金额构成不平衡",
        "a settlement's or a fee line's components do not add up to its total",
    ),
    ReasonCode(
        "HEADER_LINE_MISMATCH",
        Stage.QUARANTINE,
        "明细合计与结算单不符",
        "the fee lines do not add up to the settlement's four components",
    ),
    ReasonCode(
        "MISSING_FEE_LINES", Stage.QUARANTINE, "结算缺少费用明细", "a settlement has no fee lines"
    ),
    ReasonCode(
        "CONFLICTING_DUPLICATE",
        Stage.QUARANTINE,
        "同一结算ID内容冲突",
        "one setl_id (or one fee line) appears twice in the batch with different content",
    ),
    ReasonCode(
        "ORPHAN_FEE_LINES",
        Stage.QUARANTINE,
        "费用明细无对应结算",
        "fee lines whose setl_id is not in the settlements file",
    ),
    ReasonCode(
        "DUPLICATE_SETTLEMENT",
        Stage.QUARANTINE,
        "结算已理算过（重复）",
        "this setl_id was adjudicated before",
    ),
    ReasonCode(
        "ORPHAN_REVERSAL",
        Stage.QUARANTINE,
        "冲正找不到原结算",
        "a reversal whose original settlement was never adjudicated (or comes after it)",
    ),
    ReasonCode(
        "REVERSAL_MISMATCH",
        Stage.QUARANTINE,
        "冲正金额与原结算不符",
        "a reversal whose amounts are neither zero nor exactly the negation of its original's "
        "(partial refunds come as a reversal plus a new settlement)",
    ),
    ReasonCode(
        "DUPLICATE_REVERSAL",
        Stage.QUARANTINE,
        "原结算已被冲正",
        "a second reversal of a settlement already reversed",
    ),
    ReasonCode(
        "NO_PLAN_EDITION",
        Stage.QUARANTINE,
        "无对应年度方案",
        "no plan edition covers the settlement's plan year",
    ),
    ReasonCode(
        "NOT_ENROLLED", Stage.DENIAL, "未参保", "the member has no enrolment for the plan year"
    ),
    ReasonCode(
        "WAITING_PERIOD",
        Stage.DENIAL,
        "待遇等待期内",
        "the service date is before the member's benefit start",
    ),
    ReasonCode(
        "BASIC_SUSPENDED",
        Stage.DENIAL,
        "基本医保暂停期间",
        "basic insurance was suspended on the service date",
    ),
    ReasonCode(
        "NEGATIVE_LIST",
        Stage.LINE,
        "负面清单项目，不计入",
        "on the negative list at the fee date: nothing counts",
    ),
    ReasonCode(
        "NOT_ADMITTED",
        Stage.LINE,
        "全自费服务项目不在准入清单",
        "a fully self-paid service not on the admission list: its self-paid part does not count",
    ),
    ReasonCode(
        "NOT_IN_SCOPE",
        Stage.LINE,
        "不在该责任范围",
        "outside every responsibility's scope (medical category, list, level)",
    ),
    ReasonCode("COUNTED_COMPLIANT", Stage.LINE, "计入合规医疗费用", "counted as compliant cost"),
    ReasonCode("COUNTED_REASONABLE", Stage.LINE, "计入合理医疗费用", "counted as reasonable cost"),
    ReasonCode("COUNTED_IN_LIST", Stage.LINE, "计入目录内自付费用", "counted as in-list self-pay"),
    ReasonCode(
        "COUNTED_OUT_OF_LIST", Stage.LINE, "计入目录外自费费用", "counted as out-of-list self-pay"
    ),
    ReasonCode("COUNTED_SPECIAL_DRUG", Stage.LINE, "计入特药费用", "counted as special-drug cost"),
    ReasonCode(
        "DENIED_SETTLEMENT",
        Stage.LINE,
        "所属结算被拒付",
        "the line's settlement was denied: nothing counts",
    ),
)

REASON_CODES: dict[str, ReasonCode] = {c.code: c for c in _CODES}


# above this many distinct codes the table of every combination (2**n lists) grows too large
_COMBINATIONS_UP_TO = 10


def code_list(flags: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The codes whose condition holds, in the order given, once each, as a list[str] column.

    Each row's conditions make a number (bit i: the i-th distinct code holds) that picks its
    list from a table of every combination: a list assembled per row from ``when/then``
    branches costs about ten times more, and a joined string split again several times more,
    which matters on every fee line of a province.
    """
    merged: dict[str, pl.Expr] = {}
    for cond, code in flags:
        if "|" in code:
            raise ValueError(f"reason code {code!r} may not contain '|'")
        merged[code] = (merged[code] | cond) if code in merged else cond
    codes = list(merged)
    if len(codes) > _COMBINATIONS_UP_TO:
        joined = pl.concat_str(
            [pl.when(cond.fill_null(False)).then(pl.lit(code)) for code, cond in merged.items()],
            separator="|",
            ignore_nulls=True,
        )
        return (
            pl.when(joined == "")
            .then(pl.lit([], pl.List(pl.String)))
            .otherwise(joined.str.split("|"))
        )
    table = pl.Series(
        [[c for i, c in enumerate(codes) if n >> i & 1] for n in range(1 << len(codes))],
        dtype=pl.List(pl.String),
    )
    number = pl.sum_horizontal(
        pl.lit(0, pl.UInt32),
        *[
            cond.fill_null(False).cast(pl.UInt32) * (1 << i)
            for i, cond in enumerate(merged.values())
        ],
    )
    return pl.lit(table).gather(number)
