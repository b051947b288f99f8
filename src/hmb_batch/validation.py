"""Validation: every settlement gets a verdict before any rule runs.

Pure: typed LazyFrames in (from :mod:`hmb_batch.extract`), LazyFrames out. A settlement is either
accepted (one row per setl_id, with its fee lines) or quarantined with one or more reason codes and
a human-readable detail naming the file, row, column, what was expected and what was found. Its fee
lines go to quarantine with it. Nothing is dropped: identical repeats of a settlement or a fee line
keep one copy and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from hmb_batch.contracts import (
    COMPONENT_PAIRS,
    FEE_LINES,
    LINE_COMPONENTS,
    SETTLEMENT_COMPONENTS,
    SETTLEMENTS,
    Kind,
)
from hmb_batch.extract import ERRORS, FILE, ROW, Extract
from hmb_batch.money import to_decimal

IS_REVERSAL = "is_reversal"
REASONS = "reasons"
DETAIL = "detail"
RECORD = "record"  # "settlement" | "fee_line" in quarantine output

_DETAIL_LIMIT = 5  # messages per settlement; the rest are summarised as "(+N more)"


@dataclass(frozen=True)
class ValidatedBatch:
    """A batch after validation.

    ``settlements``: accepted, one row per setl_id, with ``is_reversal``.
    ``fee_lines``: the accepted settlements' lines, one row per (setl_id, feedetl_sn).
    ``quarantine``: rejected settlement rows and fee lines with ``reasons`` and ``detail``.
    ``repeats``: one row per setl_id repeated identically, with ``copies`` dropped.
    """

    settlements: pl.LazyFrame
    fee_lines: pl.LazyFrame
    quarantine: pl.LazyFrame
    repeats: pl.LazyFrame
    repeated_lines: pl.LazyFrame


def _where(cond: pl.Expr, message: pl.Expr) -> pl.Expr:
    return pl.when(cond).then(message).otherwise(None)


def _at() -> pl.Expr:
    return pl.format("{} row {}", pl.col(FILE), pl.col(ROW))


def _yuan(expr: pl.Expr) -> pl.Expr:
    return to_decimal(expr).cast(pl.String)


def _line_messages(lines: pl.LazyFrame, reversal_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Per line: BAD_VALUE and AMOUNT_IDENTITY messages."""
    money = FEE_LINES.of_kind(Kind.MONEY)
    total = pl.sum_horizontal(*[pl.col(c) for c in LINE_COMPONENTS])
    neg = [
        _where(
            pl.col(c) < 0,
            pl.format(
                "{}: fee line {} column {}: expected an amount >= 0 outside a reversal, found {}",
                _at(),
                pl.col("feedetl_sn"),
                pl.lit(c),
                _yuan(pl.col(c)),
            ),
        )
        for c in money
    ]
    return (
        lines.join(reversal_ids, on="setl_id", how="left")
        .with_columns(pl.col(IS_REVERSAL).fill_null(False))
        .with_columns(
            pl.concat_list(
                pl.col(ERRORS),
                *[pl.when(~pl.col(IS_REVERSAL)).then(m) for m in neg],
            )
            .list.drop_nulls()
            .alias("_bad_value"),
            _where(
                total != pl.col("det_item_fee_sumamt"),
                pl.format(
                    "{}: fee line {}: det_item_fee_sumamt {} but its components add up to {}",
                    _at(),
                    pl.col("feedetl_sn"),
                    _yuan(pl.col("det_item_fee_sumamt")),
                    _yuan(total),
                ),
            ).alias("_identity"),
        )
    )


def validate(extract: Extract) -> ValidatedBatch:
    """Give every settlement and fee line of a batch a verdict."""
    content = SETTLEMENTS.names
    s = extract.settlements.with_columns(
        (pl.col("refd_setl_flag") == "1").fill_null(False).alias(IS_REVERSAL)
    )
    reversal_ids = s.filter(pl.col(IS_REVERSAL)).select("setl_id", IS_REVERSAL).unique("setl_id")

    # --- fee lines: duplicates, per-line problems, then per settlement -----------------------
    line_content = FEE_LINES.names
    lines = extract.fee_lines.with_columns(
        pl.len().over("setl_id", "feedetl_sn").alias("_copies"),
        pl.struct(line_content).n_unique().over("setl_id", "feedetl_sn").alias("_variants"),
    )
    repeated_lines = (
        lines.filter((pl.col("_copies") > 1) & (pl.col("_variants") == 1))
        .group_by("setl_id", "feedetl_sn")
        .agg((pl.len() - 1).alias("dropped"))
    )
    lines = lines.filter(
        (pl.col("_variants") > 1) | (pl.int_range(pl.len()).over("setl_id", "feedetl_sn") == 0)
    )
    lines = _line_messages(lines, reversal_ids)
    per_settlement_lines = lines.group_by("setl_id").agg(
        pl.len().alias("_n_lines"),
        *[pl.col(c).sum().alias(f"_lines_{c}") for c in LINE_COMPONENTS],
        pl.col("_bad_value")
        .list.explode(keep_nulls=False, empty_as_null=False)
        .alias("_line_bad_value"),
        pl.col("_identity").drop_nulls().alias("_line_identity"),
        pl.when(pl.col("_variants") > 1)
        .then(
            pl.format(
                "{}: fee line {} appears {} times with different content",
                _at(),
                pl.col("feedetl_sn"),
                pl.col("_copies"),
            )
        )
        .drop_nulls()
        .unique(maintain_order=True)
        .alias("_line_conflict"),
    )

    # --- settlements -----------------------------------------------------------------------
    s = s.with_columns(
        pl.len().over("setl_id").alias("_copies"),
        pl.struct(content).n_unique().over("setl_id").alias("_variants"),
    )
    repeats = (
        s.filter((pl.col("_copies") > 1) & (pl.col("_variants") == 1))
        .group_by("setl_id")
        .agg((pl.len() - 1).alias("dropped"))
    )
    s = s.filter((pl.col("_variants") > 1) | (pl.int_range(pl.len()).over("setl_id") == 0)).join(
        per_settlement_lines, on="setl_id", how="left"
    )

    money = SETTLEMENTS.of_kind(Kind.MONEY)
    total = pl.sum_horizontal(*[pl.col(c) for c in SETTLEMENT_COMPONENTS])
    flag_ok = pl.col("refd_setl_flag").is_null() | pl.col("refd_setl_flag").is_in(["0", "1"])
    bad_value = pl.concat_list(
        pl.col(ERRORS),
        *[
            _where(
                ~pl.col(IS_REVERSAL) & (pl.col(c) < 0),
                pl.format(
                    "{}: column {}: expected an amount >= 0 outside a reversal, found {}",
                    _at(),
                    pl.lit(c),
                    _yuan(pl.col(c)),
                ),
            )
            for c in money
        ],
        _where(
            ~flag_ok,
            pl.format(
                "{}: column refd_setl_flag: expected '0' or '1', found '{}'",
                _at(),
                pl.col("refd_setl_flag"),
            ),
        ),
        _where(
            pl.col(IS_REVERSAL) & pl.col("init_setl_id").is_null(),
            pl.format(
                "{}: column init_setl_id: a reversal must name the settlement it reverses, "
                "found nothing",
                _at(),
            ),
        ),
        pl.col("_line_bad_value").fill_null([]),
    ).list.drop_nulls()
    identity = pl.concat_list(
        _where(
            total != pl.col("medfee_sumamt"),
            pl.format(
                "{}: medfee_sumamt {} but fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt "
                "+ inscp_amt = {}",
                _at(),
                _yuan(pl.col("medfee_sumamt")),
                _yuan(total),
            ),
        ),
        pl.col("_line_identity").fill_null([]),
    ).list.drop_nulls()
    has_lines = pl.col("_n_lines").fill_null(0) > 0
    mismatch = pl.concat_list(
        *[
            _where(
                has_lines & (pl.col(sc) != pl.col(f"_lines_{lc}")),
                pl.format(
                    "setl_id {}: header {} {} but its fee lines' {} add up to {}",
                    pl.col("setl_id"),
                    pl.lit(sc),
                    _yuan(pl.col(sc)),
                    pl.lit(lc),
                    _yuan(pl.col(f"_lines_{lc}")),
                ),
            )
            for sc, lc in COMPONENT_PAIRS.items()
        ]
    ).list.drop_nulls()
    conflict = pl.concat_list(
        _where(
            pl.col("_variants") > 1,
            pl.format(
                "{}: setl_id {} appears {} times in the batch with different content",
                _at(),
                pl.col("setl_id"),
                pl.col("_copies"),
            ),
        ),
        pl.col("_line_conflict").fill_null([]),
    ).list.drop_nulls()
    missing = _where(
        ~pl.col(IS_REVERSAL) & ~has_lines,
        pl.format("setl_id {}: a settlement without fee lines", pl.col("setl_id")),
    )
    checks = {
        "BAD_VALUE": bad_value,
        "AMOUNT_IDENTITY": identity,
        "HEADER_LINE_MISMATCH": mismatch,
        "MISSING_FEE_LINES": pl.concat_list(missing).list.drop_nulls(),
        "CONFLICTING_DUPLICATE": conflict,
    }
    s = s.with_columns(**{f"_m_{k}": v for k, v in checks.items()})
    reasons = pl.concat_list(
        *[pl.when(pl.col(f"_m_{k}").list.len() > 0).then(pl.lit(k)) for k in checks]
    ).list.drop_nulls()
    messages = pl.concat_list(*[pl.col(f"_m_{k}") for k in checks])
    detail = (
        pl.when(messages.list.len() > _DETAIL_LIMIT)
        .then(
            pl.format(
                "{} (+{} more)",
                messages.list.head(_DETAIL_LIMIT).list.join("; "),
                messages.list.len() - _DETAIL_LIMIT,
            )
        )
        .otherwise(messages.list.join("; "))
    )
    s = s.with_columns(reasons.alias(REASONS), detail.alias(DETAIL))
    scratch = [c for c in s.collect_schema().names() if c.startswith("_") and c not in (ROW, FILE)]
    s = s.drop(scratch)

    rejected = s.filter(pl.col(REASONS).list.len() > 0)
    accepted = s.filter(pl.col(REASONS).list.len() == 0).drop(REASONS, DETAIL)
    rejected_ids = rejected.select("setl_id", REASONS, DETAIL).unique("setl_id")
    lines = lines.select(*line_content, ROW, FILE)
    known = s.select("setl_id").unique()
    orphan_lines = lines.join(known, on="setl_id", how="anti").with_columns(
        pl.lit(["ORPHAN_FEE_LINES"]).alias(REASONS),
        pl.format(
            "{}: fee line {} of setl_id {}, which is not in the settlements file",
            _at(),
            pl.col("feedetl_sn"),
            pl.col("setl_id"),
        ).alias(DETAIL),
    )
    quarantine = quarantine_frame(
        rejected,
        pl.concat(
            [lines.join(rejected_ids, on="setl_id", how="inner"), orphan_lines],
            how="vertical_relaxed",
        ),
    )
    return ValidatedBatch(
        settlements=accepted,
        fee_lines=lines.join(accepted.select("setl_id"), on="setl_id", how="semi"),
        quarantine=quarantine,
        repeats=repeats,
        repeated_lines=repeated_lines,
    )


def quarantine_frame(settlements: pl.LazyFrame, fee_lines: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantine records: settlements and fee lines with reasons and detail, money in yuan.

    One row per record; ``record`` says which table it came from. The row's own columns follow
    (values that could not be read are empty; ``detail`` quotes what was found).
    """
    head = [
        pl.col("setl_id"),
        pl.lit("settlement").alias(RECORD),
        pl.col(REASONS),
        pl.col(DETAIL),
    ]
    s_cols = [
        to_decimal(pl.col(c)).alias(c) if SETTLEMENTS.column(c).kind is Kind.MONEY else pl.col(c)
        for c in SETTLEMENTS.names
        if c != "setl_id"
    ]
    line_head = [*head[:1], pl.lit("fee_line").alias(RECORD), *head[2:]]
    l_cols = [
        to_decimal(pl.col(c)).alias(c) if FEE_LINES.column(c).kind is Kind.MONEY else pl.col(c)
        for c in FEE_LINES.names
        if c != "setl_id"
    ]
    return pl.concat(
        [
            settlements.select(*head, *s_cols, pl.col(FILE), pl.col(ROW)),
            fee_lines.select(*line_head, *l_cols, pl.col(FILE), pl.col(ROW)),
        ],
        how="diagonal_relaxed",
    )
