"""Money as integer fen (分): reading amounts in, writing Decimal(18, 2) out.

All amounts inside hmb-batch are Int64 fen. These are Polars expression builders, so parsing stays
vectorised and lazy.

Reading rules (issue 2):
- text: an optional sign, digits, optionally a point and decimals. Decimals beyond the second must
  be zeros (``1.2300`` is 123 fen); ``1.234`` is bad input, not silently rounded.
- decimal columns: exact; a scale above 2 follows the text rule.
- float columns: a float is an approximation of a decimal written by some other program. The value
  times 100 is rounded half up (away from zero) to whole fen; if it is not within a thousandth of a
  fen of a whole fen, the value had more than two decimals and is bad input.
- integer columns: whole yuan.
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl

MONEY_OUT = pl.Decimal(18, 2)

_AMOUNT_RE = r"^([+-]?)(\d+)(?:\.(\d*))?$"
_FLOAT_TOLERANCE_FEN = 1e-3


def fen_from_text(expr: pl.Expr) -> pl.Expr:
    """Parse yuan text to Int64 fen; null where the text is not a valid amount."""
    g = expr.str.strip_chars().str.extract_groups(_AMOUNT_RE)
    sign, whole, frac = g.struct.field("1"), g.struct.field("2"), g.struct.field("3")
    frac = frac.fill_null("")
    first_two = (frac + "00").str.slice(0, 2).cast(pl.Int64)
    rest_is_zero = frac.str.slice(2).str.contains(r"^0*$")
    magnitude = whole.cast(pl.Int64, strict=False) * 100 + first_two
    signed = pl.when(sign == "-").then(-magnitude).otherwise(magnitude)
    return pl.when(rest_is_zero & whole.is_not_null()).then(signed).otherwise(None)


def fen_from_float(expr: pl.Expr) -> pl.Expr:
    """Float yuan to Int64 fen, half up; null where the value has more than two decimals."""
    cents = expr * 100
    rounded = (cents.abs() + 0.5).floor() * cents.sign()
    ok = (cents - rounded).abs() <= _FLOAT_TOLERANCE_FEN
    return pl.when(ok & expr.is_finite()).then(rounded.cast(pl.Int64)).otherwise(None)


def fen_from(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Int64 fen from a column of any physical type an extract may carry."""
    if isinstance(dtype, pl.Decimal):
        scale = dtype.scale or 0
        if scale <= 2:
            return (expr * 100).cast(pl.Int64)
        return fen_from_text(expr.cast(pl.String))
    if dtype in (pl.Float32, pl.Float64):
        return fen_from_float(expr.cast(pl.Float64))
    if dtype.is_integer():
        return expr.cast(pl.Int64) * 100
    return fen_from_text(expr.cast(pl.String))


def to_decimal(expr: pl.Expr) -> pl.Expr:
    """Int64 fen to Decimal(18, 2) yuan, exactly."""
    return (expr.cast(pl.Decimal(38, 2)) / 100).cast(MONEY_OUT)


def yuan_to_fen(value: str | int | Decimal) -> int:
    """Parse a configured yuan amount (plan editions, tests) to fen, exactly.

    Raises ValueError if the amount has more than two non-zero decimals.
    """
    d = Decimal(str(value))
    fen = d * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{value!r} has more than two decimals")
    return int(fen)


def fen_to_yuan(fen: int) -> Decimal:
    """Fen to a two-place Decimal, for display."""
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))
