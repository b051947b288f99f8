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
- every kind: an amount whose magnitude is above :data:`MAX_AMOUNT_FEN` is bad input (issue 13),
  so nothing wraps on read and the engine's arithmetic can be proved not to overflow.
- text is NFKC-normalised first: full-width digits and points (``１２３．４５``) read as ASCII;
  any other non-ASCII digit is bad input.
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl

MONEY_OUT = pl.Decimal(18, 2)

# The largest amount hmb-batch reads, per value: 10,000,000,000.00 yuan (10^10 yuan, 10^12 fen).
# A real settlement is below 10^8 yuan; the bound is what the engine's overflow proof rests on
# (rate in parts per million x amount in fen stays below 10^18 < 2^63 ~ 9.2 x 10^18), so it must
# not be raised without redoing that proof. Reversals may reach -MAX_AMOUNT_FEN.
MAX_AMOUNT_FEN = 10**12
MAX_AMOUNT_YUAN = MAX_AMOUNT_FEN // 100
MAX_AMOUNT_TEXT = "10,000,000,000.00"

# ASCII digits only: Rust's \d would also match Arabic-Indic and other digits NFKC keeps.
_AMOUNT_RE = r"^([+-]?)([0-9]+)(?:\.([0-9]*))?$"
_FLOAT_TOLERANCE_FEN = 1e-3
# digits of the whole-yuan part (leading zeros dropped) that can still be within the maximum
_MAX_WHOLE_DIGITS = len(str(MAX_AMOUNT_YUAN))


def non_ascii(text: pl.Expr) -> pl.Expr:
    """True where text holds a character beyond ASCII (more bytes than characters: a length
    comparison costs a fifth of a regular expression, on every id of every fee line)."""
    return text.str.len_bytes() != text.str.len_chars()


def nfkc(expr: pl.Expr) -> pl.Expr:
    """Text NFKC-normalised (full-width forms become ASCII). ASCII text is its own NFKC, and
    normalising only the rows that hold other characters costs a third of normalising all."""
    text = expr.cast(pl.String)
    return pl.when(non_ascii(text)).then(text.str.normalize("NFKC")).otherwise(text)


def _text_groups(expr: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    g = nfkc(expr).str.strip_chars().str.extract_groups(_AMOUNT_RE)
    whole = g.struct.field("2").str.strip_chars_start("0")
    return g.struct.field("1"), whole, g.struct.field("3").fill_null("")


def fen_from_text(expr: pl.Expr) -> pl.Expr:
    """Parse yuan text to Int64 fen; null where the text is not a valid amount or is above the
    maximum. The whole yuan are clipped before the multiplication, so nothing wraps.

    One boolean regex and a split, not a regex with groups: the groups' struct of strings cost
    twice as much, and every money column of every line goes through here.
    """
    text = nfkc(expr).str.strip_chars()
    well_formed = text.str.contains(_AMOUNT_RE)
    parts = text.str.split_exact(".", 1)
    whole = parts.struct.field("field_0").str.strip_chars_start("+-")
    frac = parts.struct.field("field_1").fill_null("")
    # digits beyond Int64 parse as null; at most MAX + 1 yuan survive the clip
    whole_yuan = whole.cast(pl.Int64, strict=False).clip(0, MAX_AMOUNT_YUAN + 1)
    first_two = (frac + "00").str.slice(0, 2).cast(pl.Int64, strict=False)
    rest_is_zero = frac.str.slice(2).str.strip_chars("0") == ""
    magnitude = whole_yuan * 100 + first_two
    signed = pl.when(text.str.starts_with("-")).then(-magnitude).otherwise(magnitude)
    return pl.when(well_formed & rest_is_zero & (magnitude <= MAX_AMOUNT_FEN)).then(signed)


def fen_from_float(expr: pl.Expr) -> pl.Expr:
    """Float yuan to Int64 fen, half up; null where the value has more than two decimals, is
    not finite, or is above the maximum (clipped before the cast, so 1e300 cannot overflow)."""
    cents = expr.clip(-MAX_AMOUNT_YUAN - 1, MAX_AMOUNT_YUAN + 1) * 100
    rounded = (cents.abs() + 0.5).floor() * cents.sign()
    ok = (cents - rounded).abs() <= _FLOAT_TOLERANCE_FEN
    within = expr.is_finite() & (rounded.abs() <= MAX_AMOUNT_FEN)
    return pl.when(ok & within).then(rounded.cast(pl.Int64, strict=False)).otherwise(None)


def fen_from(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Int64 fen from a column of any physical type an extract may carry; null where a value is
    unreadable or above :data:`MAX_AMOUNT_FEN` (see :func:`above_maximum`)."""
    if isinstance(dtype, pl.Decimal):
        scale = dtype.scale or 0
        if scale <= 2:
            # clipped first: 10^30 yuan x 100 would overflow the decimal or the Int64
            bound = pl.lit(Decimal(MAX_AMOUNT_YUAN + 1), pl.Decimal(38, scale))
            clipped = expr.cast(pl.Decimal(38, scale)).clip(-bound, bound)
            fen = (clipped * 100).cast(pl.Int64, strict=False)
            return pl.when(fen.abs() <= MAX_AMOUNT_FEN).then(fen).otherwise(None)
        return fen_from_text(expr.cast(pl.String))
    if dtype in (pl.Float32, pl.Float64):
        return fen_from_float(expr.cast(pl.Float64))
    if dtype.is_integer():
        # clipped in the column's own type: a uint64 above Int64's maximum cannot be cast
        low = 0 if dtype.is_unsigned_integer() else -MAX_AMOUNT_YUAN - 1
        clipped = expr.clip(low, MAX_AMOUNT_YUAN + 1).cast(pl.Int64) * 100
        return pl.when(clipped.abs() <= MAX_AMOUNT_FEN).then(clipped).otherwise(None)
    return fen_from_text(expr.cast(pl.String))


def above_maximum(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """True where a value is a well-formed amount (or a number) whose magnitude is above
    :data:`MAX_AMOUNT_FEN`: the reading error then names the maximum, not the format."""
    if isinstance(dtype, pl.Decimal) and (dtype.scale or 0) <= 2:
        bound = pl.lit(Decimal(MAX_AMOUNT_YUAN), pl.Decimal(38, dtype.scale or 0))
        return (expr.cast(pl.Decimal(38, dtype.scale or 0)).abs() > bound).fill_null(False)
    if dtype in (pl.Float32, pl.Float64):
        x = expr.cast(pl.Float64)
        # NaN compares above every number in Polars: it is unreadable, not too large
        return (x.is_infinite() | (x.is_finite() & (x.abs() > MAX_AMOUNT_YUAN))).fill_null(False)
    if dtype.is_integer():
        if dtype.is_unsigned_integer():
            return (expr > MAX_AMOUNT_YUAN).fill_null(False)
        return ((expr < -MAX_AMOUNT_YUAN) | (expr > MAX_AMOUNT_YUAN)).fill_null(False)
    _, whole, frac = _text_groups(expr.cast(pl.String))
    too_long = whole.str.len_chars() > _MAX_WHOLE_DIGITS
    at_max = (whole == str(MAX_AMOUNT_YUAN)) & frac.str.contains(r"[1-9]")
    return (too_long | at_max).fill_null(False)


_FEN = pl.lit(Decimal("0.01"), pl.Decimal(18, 2))


def to_decimal(expr: pl.Expr) -> pl.Expr:
    """Int64 fen to Decimal(18, 2) yuan, exactly.

    Fen below 10^18 in magnitude are exact as Decimal(18, 0); times 0.01 (unscaled 1 at scale
    2) the product's unscaled value is the fen themselves at scale 2, so nothing is rounded.
    Beyond 10^18 the cast fails, as Decimal(18, 2) cannot hold the yuan. A division by 100
    (in Decimal(38, 2)) gives the same values, more slowly.
    """
    return (expr.cast(pl.Decimal(18, 0)) * _FEN).cast(MONEY_OUT)


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
