"""Validation: every settlement gets a verdict before any rule runs.

Pure: typed LazyFrames in (from :mod:`hmb_batch.io.extract`), LazyFrames out. A settlement is either
accepted (one row per setl_id, with its fee lines) or quarantined with one or more reason codes and
a human-readable detail naming the file, row, column, what was expected and what was found. Its fee
lines go to quarantine with it. Nothing is dropped: identical repeats of a settlement or a fee line
keep one copy and are counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from hmb_batch.errors import InputUnreadable
from hmb_batch.io.contracts import (
    COMPONENT_PAIRS,
    FEE_LINES,
    LINE_COMPONENTS,
    SETTLEMENT_COMPONENTS,
    SETTLEMENTS,
    Contract,
    Kind,
)
from hmb_batch.io.extract import ERRORS, FILE, ROW, Extract
from hmb_batch.money import fen_to_yuan, to_decimal

IS_REVERSAL = "is_reversal"
REASONS = "reasons"
DETAIL = "detail"
RECORD = "record"  # "settlement" | "fee_line" in quarantine output

# what an accepted settlement's fee lines add up to (the engine's facts carry them on)
LINES_N = "lines_n"


def line_total(component: str) -> str:
    """Column of the sum of an accepted settlement's fee lines' ``component``."""
    return f"linesum__{component}"


_DETAIL_LIMIT = 5  # messages per settlement; the rest are summarised as "(+N more)"


@dataclass(frozen=True)
class ValidatedBatch:
    """A batch after validation.

    ``settlements``: accepted, one row per setl_id, with ``is_reversal``.
    ``fee_lines``: the accepted settlements' lines, one row per (setl_id, feedetl_sn).
    ``quarantine``: rejected settlement rows and fee lines with ``reasons`` and ``detail``.
    ``repeats``: one row per setl_id repeated identically, with ``copies`` dropped.
    ``repeated_lines``: the fee-line copies dropped as identical repeats (one row per copy).
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


def _line_checks(lines: pl.LazyFrame) -> pl.LazyFrame:
    """Per line, cheap boolean checks: unreadable values, negative amounts (bad outside a
    reversal, which the settlement decides: no join of every line with the reversals), broken
    identity."""
    money = FEE_LINES.of_kind(Kind.MONEY)
    total = pl.sum_horizontal(*[pl.col(c) for c in LINE_COMPONENTS])
    negative = pl.any_horizontal([(pl.col(c) < 0).fill_null(False) for c in money])
    return lines.with_columns(
        pl.col(ERRORS).is_not_null().alias("_l_unreadable"),
        negative.alias("_l_negative"),
        (total != pl.col("det_item_fee_sumamt")).fill_null(False).alias("_l_identity"),
    )


def _line_messages(lines: pl.LazyFrame, reversal_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Messages for lines with a problem (the few suspect lines are joined with the reversals
    to tell a reversal's negative amounts, which are fine, from the others)."""
    money = FEE_LINES.of_kind(Kind.MONEY)
    total = pl.sum_horizontal(*[pl.col(c) for c in LINE_COMPONENTS])
    negative = [
        _where(
            ~pl.col(IS_REVERSAL) & (pl.col(c) < 0),
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
    identity = _where(
        pl.col("_l_identity"),
        pl.format(
            "{}: fee line {}: det_item_fee_sumamt {} but its components add up to {}",
            _at(),
            pl.col("feedetl_sn"),
            _yuan(pl.col("det_item_fee_sumamt")),
            _yuan(total),
        ),
    )
    conflict = _where(
        pl.col("_variants") > 1,
        pl.format(
            "{}: fee line {} appears {} times with different content",
            _at(),
            pl.col("feedetl_sn"),
            pl.col("_copies"),
        ),
    )
    suspect = pl.col("_l_unreadable") | pl.col("_l_negative") | pl.col("_l_identity")
    bad = pl.col("_l_unreadable") | (pl.col("_l_negative") & ~pl.col(IS_REVERSAL))
    return (
        lines.filter(suspect | (pl.col("_variants") > 1))
        .join(reversal_ids, on="setl_id", how="left")
        .with_columns(pl.col(IS_REVERSAL).fill_null(False))
        .filter(bad | pl.col("_l_identity") | (pl.col("_variants") > 1))
        .with_columns(
            pl.concat_list(pl.col(ERRORS).fill_null([]), *negative).list.drop_nulls().alias("_bv"),
            pl.concat_list(identity).list.drop_nulls().alias("_id"),
            pl.concat_list(conflict).list.drop_nulls().alias("_cf"),
        )
        .group_by("setl_id")
        .agg(
            pl.col("_bv").list.explode(keep_nulls=False, empty_as_null=False).alias("_line_bv"),
            pl.col("_id").list.explode(keep_nulls=False, empty_as_null=False).alias("_line_id"),
            pl.col("_cf")
            .list.explode(keep_nulls=False, empty_as_null=False)
            .unique(maintain_order=True)
            .alias("_line_cf"),
        )
    )


def _duplicates(
    frame: pl.LazyFrame, key: list[str], content: list[str], unique: bool = False
) -> pl.LazyFrame:
    """Add ``_copies`` and ``_variants`` (distinct contents) per key; ``unique``: the caller
    knows no key repeats (the usual night), so no row needs looking at."""
    if unique:
        return frame.with_columns(
            pl.lit(1, pl.UInt32).alias("_copies"), pl.lit(1, pl.UInt32).alias("_variants")
        )
    dup = pl.struct(key).is_duplicated()
    counted = (
        frame.filter(dup)
        .group_by(key)
        .agg(pl.len().alias("_copies"), pl.struct(content).n_unique().alias("_variants"))
    )
    # in input order: which copy of an identical repeat is kept (the first) must not depend on
    # how the engine ran the join
    return frame.join(counted, on=key, how="left", maintain_order="left").with_columns(
        pl.col("_copies").fill_null(1), pl.col("_variants").fill_null(1)
    )


def _first_copy(key: list[str]) -> pl.Expr:
    """Keep one copy of an identical repeat; every copy of a conflicting one."""
    return (pl.col("_variants") > 1) | (pl.col("_copies") == 1) | pl.struct(key).is_first_distinct()


Materialize = Callable[[list[pl.LazyFrame]], list[pl.LazyFrame]]


def keys_unique(extract_settlements: pl.DataFrame, fee_lines: pl.DataFrame) -> tuple[bool, bool]:
    """Whether no setl_id repeats among the settlement rows, and no (setl_id, feedetl_sn) among
    the fee lines: then :func:`validate` skips looking for copies."""
    # distinct hashes prove the keys distinct (counting UInt64s is ~5x cheaper than hashing
    # a struct of strings for duplicates); equal hashes may be a collision: then look exactly
    line_hash = pl.col("setl_id").hash(1) + pl.col("feedetl_sn").hash(2)
    lines_unique = fee_lines.select(line_hash.n_unique()).item() == fee_lines.height or not (
        fee_lines.select(pl.struct("setl_id", "feedetl_sn").is_duplicated().any()).item()
    )
    return (
        not extract_settlements.select(pl.col("setl_id").is_duplicated().any()).item(),
        lines_unique,
    )


def validate(
    extract: Extract,
    materialize: Materialize | None = None,
    *,
    unique: tuple[bool, bool] = (False, False),
) -> ValidatedBatch:
    """Give every settlement and fee line of a batch a verdict.

    Two phases: cheap boolean checks on every row decide the verdicts; messages are then
    formatted for the rejected settlements only. ``materialize`` (optional) receives the checked
    fee lines and settlements and may compute them once (e.g. collect them), so that the accepted
    frames and the quarantine do not each recompute the checks.
    """
    s = extract.settlements.with_columns(
        (pl.col("refd_setl_flag") == "1").fill_null(False).alias(IS_REVERSAL)
    )
    reversal_ids = s.filter(pl.col(IS_REVERSAL)).select("setl_id", IS_REVERSAL).unique("setl_id")

    # --- fee lines -------------------------------------------------------------------------
    line_key = ["setl_id", "feedetl_sn"]
    settlements_unique, lines_unique = unique
    lines = _duplicates(extract.fee_lines, line_key, FEE_LINES.names, lines_unique)
    # the cheap test first: is_first_distinct hashes every line
    repeated_lines = (
        lines.filter((pl.col("_copies") > 1) & (pl.col("_variants") == 1))
        .filter(~pl.struct(line_key).is_first_distinct())
        .select(*LINE_COMPONENTS)
    )
    if not lines_unique:
        lines = lines.filter(_first_copy(line_key))
    lines = _line_checks(lines)
    per_settlement = lines.group_by("setl_id").agg(
        pl.len().alias("_n_lines"),
        *[pl.col(c).sum().alias(f"_lines_{c}") for c in LINE_COMPONENTS],
        pl.col("_l_unreadable").any().alias("_any_line_unreadable"),
        pl.col("_l_negative").any().alias("_any_line_negative"),
        pl.col("_l_identity").any().alias("_any_line_identity"),
        (pl.col("_variants") > 1).any().alias("_any_line_conflict"),
    )

    # --- settlements: checks as booleans ---------------------------------------------------
    s = _duplicates(s, ["setl_id"], SETTLEMENTS.names, settlements_unique)
    repeats = (
        s.filter((pl.col("_copies") > 1) & (pl.col("_variants") == 1))
        .group_by("setl_id")
        .agg((pl.len() - 1).alias("dropped"))
    )
    if not settlements_unique:
        s = s.filter(_first_copy(["setl_id"]))
    # a full join: the per-settlement rows of setl_ids no settlement has are the orphan lines'
    s = s.with_columns(pl.lit(True).alias("_in_settlements")).join(
        per_settlement, on="setl_id", how="full", coalesce=True
    )
    money = SETTLEMENTS.of_kind(Kind.MONEY)
    total = pl.sum_horizontal(*[pl.col(c) for c in SETTLEMENT_COMPONENTS])
    flag_ok = pl.col("refd_setl_flag").is_null() | pl.col("refd_setl_flag").is_in(["0", "1"])
    negative = pl.any_horizontal([(pl.col(c) < 0).fill_null(False) for c in money])
    has_lines = pl.col("_n_lines").fill_null(0) > 0
    # a line's negative amounts are fine when its setl_id is a reversal's (any copy's)
    reversal_lines = (
        pl.col(IS_REVERSAL) if settlements_unique else pl.col(IS_REVERSAL).any().over("setl_id")
    )
    header_mismatch = pl.any_horizontal(
        [
            (pl.col(sc) != pl.col(f"_lines_{lc}")).fill_null(False)
            for sc, lc in COMPONENT_PAIRS.items()
        ]
    )
    checks = {
        "BAD_VALUE": pl.col(ERRORS).is_not_null()
        | (negative & ~pl.col(IS_REVERSAL))
        | ~flag_ok
        | (pl.col(IS_REVERSAL) & pl.col("init_setl_id").is_null())
        | pl.col("_any_line_unreadable").fill_null(False)
        | (pl.col("_any_line_negative") & ~reversal_lines).fill_null(False),
        "AMOUNT_IDENTITY": (total != pl.col("medfee_sumamt")).fill_null(False)
        | pl.col("_any_line_identity").fill_null(False),
        "HEADER_LINE_MISMATCH": has_lines & header_mismatch,
        "MISSING_FEE_LINES": ~pl.col(IS_REVERSAL) & ~has_lines,
        "CONFLICTING_DUPLICATE": (pl.col("_variants") > 1)
        | pl.col("_any_line_conflict").fill_null(False),
    }
    reasons = pl.concat_list(
        *[pl.when(check).then(pl.lit(code)) for code, check in checks.items()]
    ).list.drop_nulls()
    rejected_any = pl.any_horizontal(list(checks.values()))
    s = s.with_columns(rejected_any.alias("_rejected"))
    if materialize is not None:
        lines, s = materialize([lines, s])
    orphan_ids = s.filter(pl.col("_in_settlements").is_null()).select("setl_id")
    s = s.filter(pl.col("_in_settlements").is_not_null())
    accepted = (
        s.filter(~pl.col("_rejected"))
        .with_columns(
            pl.col("_n_lines").fill_null(0).cast(pl.Int64).alias(LINES_N),
            *[pl.col(f"_lines_{c}").fill_null(0).alias(line_total(c)) for c in LINE_COMPONENTS],
        )
        .drop(_scratch(s), ERRORS)
    )

    # --- messages, for the rejected only ---------------------------------------------------
    rejected = s.filter(pl.col("_rejected")).with_columns(reasons.alias(REASONS))
    rejected = rejected.join(_line_messages(lines, reversal_ids), on="setl_id", how="left")
    bad_value = pl.concat_list(
        pl.col(ERRORS).fill_null([]),
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
        pl.col("_line_bv").fill_null([]),
    )
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
        pl.col("_line_id").fill_null([]),
    )
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
    )
    missing = _where(
        ~pl.col(IS_REVERSAL) & ~has_lines,
        pl.format("setl_id {}: a settlement without fee lines", pl.col("setl_id")),
    )
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
        pl.col("_line_cf").fill_null([]),
    )
    messages = pl.concat_list(bad_value, identity, mismatch, missing, conflict).list.drop_nulls()
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
    rejected = rejected.with_columns(detail.alias(DETAIL))
    rejected = rejected.drop(_scratch(rejected), ERRORS)

    rejected_ids = rejected.select("setl_id", REASONS, DETAIL).unique("setl_id")
    lines = lines.select(*FEE_LINES.names, ROW, FILE)
    # the lines are matched against the few rejected and orphan ids (a null setl_id is an
    # orphan too), not against every accepted setl_id
    orphan_lines = lines.join(orphan_ids, on="setl_id", how="semi", nulls_equal=True).with_columns(
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
    # the accepted lines: a left join with the few dropped ids and a filter, not an anti join,
    # which cost ten times more on every line (and the filter keeps every line at no cost
    # when none is dropped)
    dropped = (
        pl.concat([rejected_ids.select("setl_id"), orphan_ids])
        .unique()
        .with_columns(pl.lit(True).alias("_dropped"))
    )
    accepted_lines = (
        lines.join(dropped, on="setl_id", how="left", nulls_equal=True)
        .filter(pl.col("_dropped").is_null())
        .drop("_dropped")
    )
    return ValidatedBatch(
        settlements=accepted,
        fee_lines=accepted_lines,
        quarantine=quarantine,
        repeats=repeats,
        repeated_lines=repeated_lines,
    )


# Int64 fen holds 9.2 × 10^18. Every amount a batch sums (line sums per settlement, costs,
# payable, payouts, reconciliation totals) is bounded in magnitude by the sum of the absolute
# values it was read from, so a batch whose money values add up to at most 10^16 fen (10^14
# yuan, about ten times China's yearly medical spending) cannot overflow any Int64 sum, and a
# member's year to date stays exact for more than 900 such batches in one plan year. Products
# with rates are formed in Int128 (plan.compiled.times_rate).
MAX_BATCH_ABSOLUTE_FEN = 10**16


def absolute_total(frame: pl.DataFrame, contract: Contract) -> int:
    """Σ |value| over a typed table's money columns, summed in Int128 (cannot wrap)."""
    money = [c for c in contract.of_kind(Kind.MONEY) if c in frame.columns]
    if not money or frame.height == 0:
        return 0
    total = frame.select(
        pl.sum_horizontal([pl.col(c).cast(pl.Int128).abs().fill_null(0).sum() for c in money])
    ).item()
    return int(total or 0)


def batch_within_bounds(absolute_fen: int) -> None:
    """Refuse (exit 3) a batch whose amounts add up beyond what exact Int64 sums can hold."""
    if absolute_fen > MAX_BATCH_ABSOLUTE_FEN:
        raise InputUnreadable(
            f"the batch's amounts add up to {fen_to_yuan(absolute_fen):,} yuan in absolute value, "
            f"more than the {fen_to_yuan(MAX_BATCH_ABSOLUTE_FEN):,} yuan one batch may hold "
            "(README: Input contracts); nothing was applied. Check the extract for absurd "
            "amounts, or split it into smaller batches"
        )


def _scratch(frame: pl.LazyFrame) -> list[str]:
    return [
        c
        for c in frame.collect_schema().names()
        if c.startswith("_") and c not in (ROW, FILE, ERRORS)
    ]


def quarantine_frame(settlements: pl.LazyFrame, fee_lines: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantine records: settlements and fee lines with reasons and detail, money in yuan.

    One row per record; ``record`` says which table it came from. The row's own columns follow
    (values that could not be read are empty; ``detail`` quotes what was found).
    """
    return pl.concat(
        [settlement_records(settlements), line_records(fee_lines)], how="diagonal_relaxed"
    )


def _records(frame: pl.LazyFrame, contract: Contract, record: str) -> pl.LazyFrame:
    cols = [
        to_decimal(pl.col(c)).alias(c) if contract.column(c).kind is Kind.MONEY else pl.col(c)
        for c in contract.names
        if c != "setl_id"
    ]
    return frame.select(
        pl.col("setl_id"),
        pl.lit(record).alias(RECORD),
        pl.col(REASONS),
        pl.col(DETAIL),
        *cols,
        pl.col(FILE).cast(pl.String),
        pl.col(ROW),
    )


def settlement_records(settlements: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantine records of settlement rows (with ``reasons`` and ``detail``)."""
    return _records(settlements, SETTLEMENTS, "settlement")


def line_records(fee_lines: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantine records of fee lines (with ``reasons`` and ``detail``)."""
    return _records(fee_lines, FEE_LINES, "fee_line")
