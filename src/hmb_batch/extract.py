"""Reading extracts: files on disk to typed LazyFrames in the input contracts.

This is the I/O edge. It finds the format (by extension, else by content), maps column names to the
contract (case-insensitive, site names from ``[columns]`` in hmb.toml, known aliases), reads every
column with the contract's type — never inferring — and records per row what could not be read in
an ``_errors`` list, with the file and row, so validation can quarantine the row with a reason.

Two shapes of extract normalise to the same pair of frames (settlements, fee lines):
(a) a settlements file plus a fee-lines file; (b) one wide file of fee lines that carry their
settlement's columns. In a wide file, settlement columns whose names a fee line also has
(``fulamt_ownpay_amt``, ``preselfpay_amt``) must carry a ``setl_`` prefix; any other settlement
column may carry it too.
"""

from __future__ import annotations

import atexit
import codecs
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from hmb_batch.contracts import FEE_LINES, SETTLEMENTS, Contract, Kind
from hmb_batch.errors import InputUnreadable, SchemaError
from hmb_batch.money import fen_from

ROW = "_row"  # 1-based data row in its file (the header is not counted)
FILE = "_file"
ERRORS = "_errors"  # list[str] of what could not be read in this row; null when all is well
WIDE_PREFIX = "setl_"
_RAW = "__raw_"
# settlement columns whose names fee lines use too: prefixed with setl_ in a wide file
_SHARED = (set(SETTLEMENTS.names) & set(FEE_LINES.names)) - {"setl_id"}

_DTYPES: dict[Kind, pl.DataType] = {
    Kind.TEXT: pl.String(),
    Kind.MONEY: pl.Int64(),
    Kind.INTEGER: pl.Int64(),
    Kind.DATE: pl.Date(),
    Kind.DATETIME: pl.Datetime("us"),
}

_EXPECTED = {
    Kind.TEXT: "text",
    Kind.MONEY: "an amount in yuan with at most two decimals",
    Kind.DATE: "a date YYYY-MM-DD",
    Kind.DATETIME: "a timestamp YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]",
    Kind.INTEGER: "a whole number",
}


@dataclass(frozen=True)
class Extract:
    """One batch's settlements and fee lines, typed, with read errors recorded per row."""

    settlements: pl.LazyFrame
    fee_lines: pl.LazyFrame
    shape: str  # "two-file" or "wide"
    files: tuple[Path, ...]


def detect_format(path: Path) -> str:
    """'csv' or 'parquet', from the extension, else from the file's first bytes."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputUnreadable(f"{path}: cannot be read ({exc.strerror})") from exc
    return "parquet" if head == b"PAR1" else "csv"


_TMP: list[str] = []


def _transcoded(path: Path, encoding: str) -> Path:
    """A UTF-8 copy of a CSV in another encoding (Polars reads UTF-8 only), decoded in chunks."""
    if not _TMP:
        _TMP.append(tempfile.mkdtemp(prefix="hmb-batch-"))
        atexit.register(shutil.rmtree, _TMP[0], True)
    out = Path(_TMP[0]) / f"{len(list(Path(_TMP[0]).iterdir()))}-{path.name}"
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError as exc:
        raise InputUnreadable(f"unknown encoding {encoding!r} (try utf-8 or gbk)") from exc
    offset = 0
    try:
        with path.open("rb") as src, out.open("w", encoding="utf-8", newline="") as dst:
            while chunk := src.read(1 << 22):
                dst.write(decoder.decode(chunk))
                offset += len(chunk)
            dst.write(decoder.decode(b"", final=True))
    except UnicodeDecodeError as exc:
        raise InputUnreadable(
            f"{path}: not valid {encoding} at byte {offset + exc.start} "
            f"(use --encoding to name the file's encoding)"
        ) from exc
    return out


def scan_raw(path: Path, encoding: str = "utf-8") -> pl.LazyFrame:
    """Scan a CSV (all columns as text) or Parquet file lazily, adding _file and _row."""
    if not path.exists():
        raise InputUnreadable(f"{path}: no such file")
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            lf = pl.scan_parquet(path)
        else:
            enc = encoding.lower().replace("_", "-")
            utf8 = enc in ("utf-8", "utf8", "utf-8-sig")
            src = path if utf8 else _transcoded(path, encoding)
            lf = pl.scan_csv(src, infer_schema=False, encoding="utf8")
        lf.collect_schema()
    except InputUnreadable:
        raise
    except Exception as exc:
        raise InputUnreadable(f"{path}: cannot be read as {fmt}: {exc}") from exc
    return lf.with_row_index(ROW, offset=1).with_columns(pl.lit(str(path)).alias(FILE))


def _name_map(
    found: list[str], contract: Contract, column_map: Mapping[str, str], prefix: str = ""
) -> dict[str, str]:
    """Map each contract column to the extract's column that carries it (or leave it out)."""
    site = {k.lower(): v.lower() for k, v in column_map.items()}
    lower: dict[str, str] = {}
    for name in found:
        key = name.strip().lower()
        key = site.get(key, key)
        lower.setdefault(key, name)
    mapping: dict[str, str] = {}
    for col in contract.columns:
        for candidate in (col.name, *col.aliases):
            if prefix + candidate in lower:
                mapping[col.name] = lower[prefix + candidate]
                break
    return mapping


def _typed_column(name: str, kind: Kind, dtype: pl.DataType, src: str) -> pl.Expr:
    raw = pl.col(src)
    if kind is Kind.TEXT:
        text = raw.cast(pl.String).str.strip_chars()
        return pl.when(text == "").then(None).otherwise(text).alias(name)
    if kind is Kind.MONEY:
        return fen_from(raw, dtype).alias(name)
    if kind is Kind.INTEGER:
        if dtype.is_integer():
            return raw.cast(pl.Int64).alias(name)
        return raw.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False).alias(name)
    if kind is Kind.DATE:
        if dtype == pl.Date:
            return raw.alias(name)
        if isinstance(dtype, pl.Datetime):
            return raw.dt.date().alias(name)
        text = raw.cast(pl.String).str.strip_chars().str.replace("T", " ")
        date_part = text.str.extract(
            r"^(\d{4}-\d{1,2}-\d{1,2})(?:\s+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$"
        )
        return date_part.str.to_date("%Y-%m-%d", strict=False).alias(name)
    # DATETIME
    if isinstance(dtype, pl.Datetime):
        return raw.dt.replace_time_zone(None).cast(pl.Datetime("us")).alias(name)
    if dtype == pl.Date:
        return raw.cast(pl.Datetime("us")).alias(name)
    text = raw.cast(pl.String).str.strip_chars().str.replace("T", " ")
    return pl.coalesce(
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us"),
        text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
    ).alias(name)


def _unreadable(name: str, src: str, required: bool) -> pl.Expr:
    """True where a value is present but unreadable, or a required value is empty."""
    present = pl.col(src).cast(pl.String).str.strip_chars().str.len_chars() > 0
    return ((present.fill_null(False) | required) & pl.col(name).is_null()).fill_null(False)


def _error_expr(name: str, kind: Kind, src: str, required: bool) -> pl.Expr:
    """A message where a value is present but unreadable, or a required value is empty."""
    raw_text = pl.col(src).cast(pl.String)
    present = raw_text.str.strip_chars().str.len_chars() > 0
    found = pl.when(present).then(pl.format("'{}'", raw_text)).otherwise(pl.lit("nothing"))
    bad = _unreadable(name, src, required)
    message = pl.format(
        "{} row {}: column {}: expected {}, found {}",
        pl.col(FILE),
        pl.col(ROW),
        pl.lit(name),
        pl.lit(_EXPECTED[kind]),
        found,
    )
    return pl.when(bad).then(message).otherwise(None)


def type_table(
    raw: pl.LazyFrame,
    contract: Contract,
    *,
    column_map: Mapping[str, str] | None = None,
    prefix: str = "",
    file_label: str = "",
    require: bool = True,
) -> pl.LazyFrame:
    """Select a contract's columns from a raw frame with the contract's types.

    Raises SchemaError naming the file and every missing required column. Optional columns that
    are absent become null (money: 0 fen, so a missing ``refl_selfpay_amt`` means none).
    """
    schema = raw.collect_schema()
    found = [n for n in schema.names() if n not in (ROW, FILE)]
    mapping = _name_map(found, contract, column_map or {}, prefix)
    if prefix:  # wide files: unprefixed names not shared with fee lines are accepted too
        shared = _SHARED
        plain = _name_map(found, contract, column_map or {})
        for k, v in plain.items():
            if k not in mapping and k not in shared:
                mapping[k] = v
    missing = [c for c in contract.required if c not in mapping]
    if missing and require:
        shown = [prefix + m if prefix and m in _SHARED else m for m in missing]
        raise SchemaError(file_label or "input", contract.table, shown, found)
    typed: list[pl.Expr] = []
    raws: list[pl.Expr] = []
    bad: list[pl.Expr] = []
    errors: list[pl.Expr] = []
    for col in contract.columns:
        if col.name in mapping:
            src = mapping[col.name]
            typed.append(_typed_column(col.name, col.kind, schema[src], src))
            raws.append(pl.col(src).alias(_RAW + col.name))
            bad.append(_unreadable(col.name, _RAW + col.name, col.required))
            errors.append(_error_expr(col.name, col.kind, _RAW + col.name, col.required))
        elif col.kind is Kind.MONEY and not col.required:
            typed.append(pl.lit(0, pl.Int64).alias(col.name))
        else:
            typed.append(pl.lit(None, _DTYPES[col.kind]).alias(col.name))
    base = raw.select(*typed, *raws, pl.col(ROW), pl.col(FILE))
    if not errors:
        return base.with_columns(pl.lit(None, pl.List(pl.String)).alias(ERRORS))
    # Messages are formatted only for the few rows with a problem: formatting a string per
    # row and column for millions of good rows would cost more than the whole adjudication.
    messages = base.filter(pl.any_horizontal(bad)).select(
        pl.col(ROW), pl.concat_list(errors).list.drop_nulls().alias(ERRORS)
    )
    return base.drop([_RAW + n for n in mapping]).join(messages, on=ROW, how="left")


def source_column(
    raw: pl.LazyFrame, contract: Contract, column: str, column_map: Mapping[str, str] | None = None
) -> str | None:
    """The raw column that carries a contract column (None if the file lacks it)."""
    found = [n for n in raw.collect_schema().names() if n not in (ROW, FILE)]
    return _name_map(found, contract, column_map or {}).get(column)


def rows_with(
    raw: pl.LazyFrame,
    contract: Contract,
    column: str,
    values: pl.Series,
    column_map: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """The raw rows whose ``column`` (a contract column, read as text) is one of ``values``.

    Filtering before typing keeps the cost with the rows kept (a night's members of a roster of
    millions); row numbers stay those of the file.
    """
    src = source_column(raw, contract, column, column_map)
    if src is None:
        return raw  # type_table names the missing column
    return raw.filter(pl.col(src).cast(pl.String).str.strip_chars().is_in(values.implode()))


def read_table(
    path: Path,
    contract: Contract,
    *,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
) -> pl.LazyFrame:
    """Scan one file as one contract's table, typed."""
    return type_table(
        scan_raw(path, encoding), contract, column_map=column_map, file_label=str(path)
    )


def _paths(spec: Path | Sequence[Path]) -> list[Path]:
    return [spec] if isinstance(spec, Path) else list(spec)


def _concat(frames: list[pl.LazyFrame]) -> pl.LazyFrame:
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")


def typed_frames(
    raw: pl.LazyFrame, path: Path, role: str, column_map: Mapping[str, str] | None = None
) -> dict[str, pl.LazyFrame]:
    """One raw file (or a slice of it) typed: ``role`` 'settlements' or 'fee_lines' (two-file
    extracts) gives that table; 'wide' gives both, ``settlements`` one row per line."""
    if role == "settlements":
        return {
            "settlements": type_table(raw, SETTLEMENTS, column_map=column_map, file_label=str(path))
        }
    if role == "fee_lines":
        return {
            "fee_lines": type_table(raw, FEE_LINES, column_map=column_map, file_label=str(path))
        }
    found = [n for n in raw.collect_schema().names() if n not in (ROW, FILE)]
    names = {n.lower() for n in found}
    site = {k.lower(): v.lower() for k, v in (column_map or {}).items()}
    names |= {site[n] for n in names if n in site}
    if "feedetl_sn" not in names:
        raise SchemaError(str(path), "fee_lines", ["feedetl_sn"], found)
    return {
        "settlements": type_table(
            raw, SETTLEMENTS, column_map=column_map, prefix=WIDE_PREFIX, file_label=str(path)
        ),
        "fee_lines": type_table(raw, FEE_LINES, column_map=column_map, file_label=str(path)),
    }


def extract_roles(
    extract: Sequence[Path], fees: Sequence[Path] | None
) -> tuple[str, list[tuple[Path, str]]]:
    """The extract's shape and each file's role (see :func:`typed_frames`)."""
    if fees is not None:
        return "two-file", [(p, "settlements") for p in extract] + [(p, "fee_lines") for p in fees]
    return "wide", [(p, "wide") for p in extract]


def read_extract(
    extract: Path | Sequence[Path],
    fees: Path | Sequence[Path] | None = None,
    *,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
) -> Extract:
    """Read a batch extract of either shape into typed settlements and fee lines.

    ``extract`` (and ``fees``) may be several files — a year of nightly extracts, or the parts of
    a partitioned export — read as one batch; each row keeps its own file and row number.
    """
    extract_files = _paths(extract)
    fee_files = _paths(fees) if fees is not None else None
    shape, roles = extract_roles(extract_files, fee_files)
    parts: dict[str, list[pl.LazyFrame]] = {"settlements": [], "fee_lines": []}
    for path, role in roles:
        for name, frame in typed_frames(scan_raw(path, encoding), path, role, column_map).items():
            parts[name].append(frame)
    settlements = _concat(parts["settlements"])
    if shape == "wide":
        settlements = distinct_headers(settlements)
    files = (*extract_files, *(fee_files or []))
    return Extract(settlements, _concat(parts["fee_lines"]), shape, files)


def raw_slices(
    path: Path, rows: int, spill: Path, encoding: str = "utf-8"
) -> Iterator[pl.LazyFrame]:
    """A file as raw frames of at most ``rows`` rows each, with their ``_file`` and ``_row``.

    For bounded-memory runs: a Parquet file is read a batch at a time; a CSV file is first
    converted to Parquet in ``spill`` (all columns as text) by a streaming pass.
    """
    source = scan_raw(path, encoding).drop(ROW, FILE)
    if detect_format(path) == "csv":
        converted = spill / f"csv-{len(list(spill.glob('csv-*')))}.parquet"
        source.sink_parquet(converted, row_group_size=rows)
        parquet = converted
    else:
        parquet = path
    offset = 1
    # pre_buffer (pyarrow's default) reads ahead across row groups: ~1 GB held for a 50M-line file
    for batch in pq.ParquetFile(parquet, pre_buffer=False).iter_batches(batch_size=rows):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield (
            frame.lazy()
            .with_row_index(ROW, offset=offset)
            .with_columns(pl.lit(str(path)).alias(FILE))
        )
        offset += frame.height


def distinct_headers(settlements: pl.LazyFrame) -> pl.LazyFrame:
    """A wide file's settlement rows, one per distinct header.

    Every line repeats its settlement's columns: keep one copy per distinct header (a header
    that differs between two lines of one settlement stays twice and is a conflict downstream).
    """
    return settlements.unique(subset=SETTLEMENTS.names, keep="first", maintain_order=True)
