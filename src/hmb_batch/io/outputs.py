"""Output files of a batch: payouts, quarantine, fee-line audit. Money Decimal(18, 2).

The run (run/buckets.py) writes these frames to bytes and writes them (temporary name, then rename).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hmb_batch.errors import OutputUnwritable, UsageError
from hmb_batch.money import MONEY_OUT, to_decimal
from hmb_batch.rules.engine import COUNTED_SUFFIX, DISPOSITION_SUFFIX, ENGINE, cum, inc
from hmb_batch.rules.validation import REASONS

# Columns a reader of an output file filters by: only these carry min/max statistics. pyarrow's
# writer is single-threaded, and the statistics of every text column (names, codes, reasons)
# cost about a quarter of writing the fee-line audit, for filters nobody runs.
FILTERED_BY = frozenset({"setl_id", "psn_no", "setl_time", "plan_year", "batch_id"})
# Ids almost unique per row: a dictionary of them costs its building and makes the file larger.
NO_DICTIONARY = frozenset({"setl_id", "psn_no", "init_setl_id", "feedetl_sn", "psn_name", "certno"})


def output_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer for an output file written in pieces (zstd; statistics on
    :data:`FILTERED_BY`, no dictionary for :data:`NO_DICTIONARY`)."""
    names = schema.names
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        write_statistics=[n for n in names if n in FILTERED_BY],
        use_dictionary=[n for n in names if n not in NO_DICTIONARY],
    )


PAYOUT_COLUMNS = [
    "setl_id",
    "psn_no",
    "plan_year",
    "status",
    "reasons",
    # "<cost>_amt" for each cost follow here (浙丽保: compliant_amt, reasonable_amt)
    "payable_amt",
    "payout_amt",
    "cum_payable_amt",
    "cum_payout_amt",
    "batch_id",
]


def _stars(n: pl.Expr) -> pl.Expr:
    """``n`` asterisks (none for n <= 0): an empty text padded, not a regular expression run
    over every character (whose ``.`` also left line breaks unmasked)."""
    return pl.lit("").str.pad_end(n.clip(lower_bound=0), "*")


def _length(expr: pl.Expr) -> pl.Expr:
    # signed: len_chars is unsigned, and an empty text's length - 1 must not wrap around
    return expr.str.len_chars().cast(pl.Int64)


def masked_name(expr: pl.Expr) -> pl.Expr:
    """A name with every character after the first replaced by ``*`` (张三丰 → 张**)."""
    return pl.concat_str(expr.str.slice(0, 1), _stars(_length(expr) - 1))


def masked_certno(expr: pl.Expr) -> pl.Expr:
    """A certificate number with all but its first 3 and last 4 characters replaced by ``*``."""
    n = _length(expr)
    return (
        pl.when(n > 7)
        .then(pl.concat_str(expr.str.slice(0, 3), _stars(n - 7), expr.str.slice(-4)))
        .otherwise(_stars(n))
    )


PERSONAL = ("psn_name", "certno")


def masked_personal(frame: pl.DataFrame, *, unmasked: bool = False) -> pl.DataFrame:
    """A frame with its psn_name and certno masked (see :func:`masked_name`,
    :func:`masked_certno`) unless ``unmasked``: the quarantine file and the ledger's archived
    copy of it keep setl_id and psn_no — what an operator needs to fix a row — not the person."""
    if unmasked:
        return frame
    return frame.with_columns(
        [
            (masked_name if c == "psn_name" else masked_certno)(pl.col(c).cast(pl.String)).alias(c)
            for c in PERSONAL
            if c in frame.columns
        ]
    )


def payouts_frame(
    payouts: pl.DataFrame,
    costs: list[str],
    responsibilities: list[str],
    *,
    unmasked: bool = False,
) -> pl.DataFrame:
    """The payout file's frame from the engine's payouts (fen), in processing order.

    Columns: the contract's (README: Output files), then ``edition``, ``init_setl_id``,
    ``setl_time``, ``med_type``, ``insu_admdvs``, ``fixmedins_code``, ``fixmedins_name``,
    ``cum_<cost>_amt``, ``responsibilities`` (a list of {id, payable_amt, payout_amt}), and
    ``psn_name`` and ``certno``: masked (张**, 330**********1234) unless ``unmasked``.
    """
    name, cert = pl.col("psn_name"), pl.col("certno")
    if not unmasked:
        name, cert = masked_name(name), masked_certno(cert)
    resp = pl.concat_list(
        [
            pl.struct(
                pl.lit(r).alias("id"),
                to_decimal(pl.col(f"resp__{r}__payable")).alias("payable_amt"),
                to_decimal(pl.col(f"resp__{r}__payout")).alias("payout_amt"),
            )
            for r in responsibilities
        ]
    )
    # lazy: only the columns the file takes are sorted, not every payout column
    return (
        payouts.lazy()
        .sort("batch_seq", "setl_time", "setl_id")
        .select(
            "setl_id",
            "psn_no",
            pl.col("plan_year").cast(pl.Int64),
            "status",
            pl.col(REASONS),
            *[to_decimal(pl.col(inc(c))).alias(f"{c}_amt") for c in costs],
            to_decimal(pl.col("payable")).alias("payable_amt"),
            to_decimal(pl.col("payout")).alias("payout_amt"),
            to_decimal(pl.col("cum_payable")).alias("cum_payable_amt"),
            to_decimal(pl.col("cum_payout")).alias("cum_payout_amt"),
            "batch_id",
            "edition",
            "init_setl_id",
            "setl_time",
            "med_type",
            "insu_admdvs",
            "fixmedins_code",
            "fixmedins_name",
            *[to_decimal(pl.col(cum(c))).alias(f"cum_{c}_amt") for c in costs],
            resp.alias("responsibilities"),
            name.alias("psn_name"),
            cert.alias("certno"),
        )
        .collect(engine=ENGINE)
    )


# what lines.parquet repeats of a fee line: its key, its code and its total. The rest of the
# line (list_type, chrgitm_lv, the component amounts) is in the fee-lines file, joined back on
# (setl_id, feedetl_sn): the component amounts and two codes written again cost more than the
# whole audit without them.
AUDIT_REPEATS = ("setl_id", "feedetl_sn", "med_list_codg", "det_item_fee_sumamt")


def lines_frame(audit: pl.DataFrame) -> pl.DataFrame:
    """The fee-line audit file's frame from the engine's audit: each line's key, code and
    total (:data:`AUDIT_REPEATS`), ``reasons``, what each cost counted of it (``<cost>_counted``)
    and where each component went (``<component>__disposition``); money in yuan."""
    names = audit.collect_schema().names()
    kept = [
        c
        for c in names
        if c in AUDIT_REPEATS or c == REASONS or c.endswith((COUNTED_SUFFIX, DISPOSITION_SUFFIX))
    ]
    return audit.select(
        [to_decimal(pl.col(c)) if audit.schema[c] == pl.Int64 else pl.col(c) for c in kept]
    )


def to_text_frame(df: pl.DataFrame) -> pl.DataFrame:
    """A frame CSV can hold: lists joined by '|', structs flattened, money as plain decimals."""
    ids: list[str] = []
    if "responsibilities" in df.columns and len(df) > 0:
        ids = (
            df["responsibilities"]
            .list.eval(pl.element().struct.field("id"))
            .explode()
            .unique(maintain_order=True)
            .drop_nulls()
            .to_list()
        )
    return to_text(df.lazy(), ids).collect(engine=ENGINE)


def to_text(frame: pl.LazyFrame, responsibilities: list[str]) -> pl.LazyFrame:
    """Lazy :func:`to_text_frame` for a payout frame whose responsibility ids are known."""
    cols: list[pl.Expr] = []
    for name, dtype in frame.collect_schema().items():
        if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
            continue  # flattened below
        if isinstance(dtype, pl.List):
            cols.append(pl.col(name).list.join("|").alias(name))
        elif isinstance(dtype, pl.Decimal):
            cols.append(pl.col(name).cast(MONEY_OUT).cast(pl.String).alias(name))
        else:
            cols.append(pl.col(name))
    for rid in responsibilities:
        for field in ("payable_amt", "payout_amt"):
            cols.append(
                pl.col("responsibilities")
                .list.eval(
                    pl.element().filter(pl.element().struct.field("id") == rid).struct.field(field)
                )
                .list.first()
                .cast(pl.String)
                .alias(f"resp_{rid}_{field}")
            )
    return frame.select(cols)


# Encodings of the CSV copies: utf-8-sig is what Excel on Chinese Windows needs to read UTF-8;
# gbk for older systems; gb18030 holds every character gbk cannot.
CSV_ENCODINGS = ("utf-8", "utf-8-sig", "gbk", "gb18030")
_TRANSCODE_CHARS = 1 << 22


def write_csv(frame: pl.LazyFrame, target: Path, encoding: str = "utf-8") -> Path:
    """Stream ``frame`` (see :func:`to_text`) to a CSV file in ``encoding``.

    Polars writes UTF-8; another encoding is a second pass over the file in blocks. A character
    the encoding cannot hold (a rare name character in gbk) is an error naming the line, never
    a silently replaced character in a payment file.
    """
    if encoding not in CSV_ENCODINGS:
        raise UsageError(f"--csv-encoding {encoding}: not one of {', '.join(CSV_ENCODINGS)}")
    if encoding in ("utf-8", "utf-8-sig"):
        frame.sink_csv(target, include_bom=encoding == "utf-8-sig")
        return target
    utf8 = target.with_name(f".{target.name}.utf-8")
    try:
        frame.sink_csv(utf8)
        line = 1
        with utf8.open(encoding="utf-8", newline="") as src, target.open("wb") as dst:
            while block := src.read(_TRANSCODE_CHARS):
                try:
                    dst.write(block.encode(encoding))
                except UnicodeEncodeError as exc:
                    at = line + block.count("\n", 0, exc.start)
                    raise OutputUnwritable(
                        f"{target.name}: line {at} holds a character {encoding} cannot "
                        f"encode (U+{ord(block[exc.start]):04X}); use --csv-encoding gb18030 "
                        "or utf-8-sig, which hold every character"
                    ) from None
                line += block.count("\n")
    finally:
        utf8.unlink(missing_ok=True)
    return target
