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
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

from hmb_batch.errors import ConfigError, InputUnreadable, SchemaError
from hmb_batch.io.contracts import FEE_LINES, PERSONAL, SETTLEMENTS, Contract, Kind
from hmb_batch.money import MAX_AMOUNT_TEXT, above_maximum, fen_from, nfkc, non_ascii

ROW = "_row"  # 1-based data row in its file (the header is not counted)
FILE = "_file"
ERRORS = "_errors"  # list[str] of what could not be read in this row; null when all is well
WIDE_PREFIX = "setl_"
DEFAULT_TIMEZONE = "Asia/Shanghai"
_RAW = "__raw_"
# a CSV row's field-count problem (null when the row has as many fields as the header)
_SHAPE = "__shape"
_INTERNAL = (ROW, FILE, _SHAPE)
# settlement columns whose names fee lines use too: prefixed with setl_ in a wide file
_SHARED = (set(SETTLEMENTS.names) & set(FEE_LINES.names)) - {"setl_id"}
# what an id or code may not hold after NFKC: controls (Cc), format characters (Cf: zero-width
# space, BOM, word joiner ...) and whitespace
_BAD_CODE_CHAR = r"[\p{Cc}\p{Cf}\s]"
# what _BAD_CODE_CHAR matches within ASCII: the controls and the space
_BAD_ASCII = [chr(i) for i in range(0x21)] + ["\x7f"]

_DTYPES: dict[Kind, pl.DataType] = {
    Kind.TEXT: pl.String(),
    Kind.CODE: pl.String(),
    Kind.MONEY: pl.Int64(),
    Kind.INTEGER: pl.Int64(),
    Kind.DATE: pl.Date(),
    Kind.DATETIME: pl.Datetime("us"),
}

_EXPECTED = {
    Kind.TEXT: "text",
    Kind.CODE: "an id or code without control, invisible or whitespace characters",
    Kind.MONEY: "an amount in yuan with at most two decimals",
    Kind.DATE: "a date YYYY-MM-DD",
    Kind.DATETIME: "a timestamp YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]",
    Kind.INTEGER: "a whole number",
}
_EXPECTED_AT_MOST = f"an amount of at most {MAX_AMOUNT_TEXT} yuan"


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
_CHUNK = 1 << 22
# A CSV larger than this is read as pieces of about this size, each its own file starting with
# the header: Polars maps a CSV file into memory whole, and every page a scan touches counts in
# the process's resident memory, so a 1 GB extract read in chunks of rows still peaked above
# 1 GiB. Pieces cost one copy of the file (written while it is checked, in the run's spill area).
CSV_PIECE_BYTES = 64 << 20
# bytes that may stand before an opening quote / after a closing one (-1: start or end of file)
_QUOTE_NEIGHBOURS = np.array([ord(","), ord("\n"), ord("\r"), ord('"'), -1])
_BOM = codecs.BOM_UTF8


class _Shape:
    """Field counts of a CSV's records, from its UTF-8 bytes, chunk by chunk.

    Quotes follow RFC 4180: a field may be quoted, ``""`` inside is a quote, and a comma or
    line break inside quotes belongs to the value. Records end at a line break outside quotes,
    as the CSV reader (Polars) ends them, so record *k* (the header is 0) is data row *k*.
    The work per chunk is a few NumPy passes over the positions of quotes, commas and line
    breaks — no Python loop over rows. Only records whose field count differs from the
    header's are kept (their row, count and physical line), so memory stays small.
    """

    def __init__(self) -> None:
        self.offset = 0  # file offset of the next byte fed
        self.prev = -1  # the byte before the next one (-1: start of file)
        self.in_quote = 0
        self.records = 0  # records ended so far (the header is record 0)
        self.commas = 0  # commas outside quotes in the record under way
        self.start = 0  # file offset where the record under way starts
        self.quoted_breaks = 0  # line breaks inside quotes so far (physical line numbers)
        self.header: int | None = None
        self.header_end: int | None = None  # file offset just after the header's line break
        self.bad_rows: list[np.ndarray] = []
        self.bad_fields: list[np.ndarray] = []
        self.bad_lines: list[np.ndarray] = []
        self.bad_quote: int | None = None  # file offset of the first misplaced quote
        self._held = b""

    def feed(self, data: bytes, final: bool = False) -> None:
        """Take the next bytes; the last byte waits for its successor (a quote's check)."""
        if self.offset == 0 and not self._held and data.startswith(_BOM):
            data, self.offset = data[len(_BOM) :], len(_BOM)
            self.start = self.offset
        data = self._held + data
        if not final:
            data, self._held = data[:-1], data[-1:]
            nxt = self._held[0] if self._held else -1
        else:
            self._held, nxt = b"", -1
        if data:
            self._chunk(np.frombuffer(data, dtype=np.uint8), nxt)
        if final:
            self._finish()

    def _chunk(self, buf: np.ndarray, nxt: int) -> None:
        base = self.offset
        quotes = np.flatnonzero(buf == 0x22)
        breaks = np.flatnonzero(buf == 0x0A)
        commas = np.flatnonzero(buf == 0x2C)
        if quotes.size or self.in_quote:
            if quotes.size:
                opening = (self.in_quote + np.arange(quotes.size)) % 2 == 0
                wide = buf.astype(np.int16)
                before = np.where(quotes > 0, wide[quotes - 1], self.prev)
                after_idx = np.minimum(quotes + 1, buf.size - 1)
                after = np.where(quotes + 1 < buf.size, wide[after_idx], nxt)
                misplaced = (opening & ~np.isin(before, _QUOTE_NEIGHBOURS)) | (
                    ~opening & ~np.isin(after, _QUOTE_NEIGHBOURS)
                )
                if misplaced.any() and self.bad_quote is None:
                    self.bad_quote = base + int(quotes[np.argmax(misplaced)])

            def outside(pos: np.ndarray) -> np.ndarray:
                kept: np.ndarray = pos[(self.in_quote + np.searchsorted(quotes, pos)) % 2 == 0]
                return kept

            all_breaks = breaks
            breaks, commas = outside(breaks), outside(commas)
            inside_breaks = np.setdiff1d(all_breaks, breaks, assume_unique=True)
            self.in_quote = (self.in_quote + quotes.size) % 2
        else:
            inside_breaks = breaks[:0]
        if breaks.size:
            before_end = np.searchsorted(commas, breaks)
            per_record = np.diff(before_end, prepend=0)
            per_record[0] += self.commas
            fields = per_record + 1
            rows = self.records + np.arange(breaks.size)
            starts = np.concatenate(([self.start - base], breaks[:-1] + 1))
            if self.header is None:
                self.header = int(fields[0])
                self.header_end = base + int(breaks[0]) + 1
            wrong = fields != self.header
            if wrong.any():
                lines = (
                    rows[wrong]
                    + 1
                    + self.quoted_breaks
                    + np.searchsorted(inside_breaks, starts[wrong])
                )
                self.bad_rows.append(rows[wrong])
                self.bad_fields.append(fields[wrong])
                self.bad_lines.append(lines)
            self.records += int(breaks.size)
            self.commas = int(commas.size - before_end[-1])
            self.start = base + int(breaks[-1]) + 1
        else:
            self.commas += int(commas.size)
        self.quoted_breaks += int(inside_breaks.size)
        self.prev = int(buf[-1])
        self.offset = base + buf.size

    def _finish(self) -> None:
        if self.offset > self.start and not self.in_quote:  # a last record without a line break
            fields = self.commas + 1
            if self.header is None:
                self.header = fields
            elif fields != self.header:
                self.bad_rows.append(np.array([self.records]))
                self.bad_fields.append(np.array([fields]))
                self.bad_lines.append(np.array([self.records + 1 + self.quoted_breaks]))
            self.records += 1

    def problems(self, path: Path) -> pl.DataFrame:
        """Data rows (``_row``) whose field count differs from the header's, with a message."""
        if not self.bad_rows:
            return pl.DataFrame(schema={ROW: pl.UInt32, _SHAPE: pl.String})
        frame = pl.DataFrame(
            {
                ROW: np.concatenate(self.bad_rows),
                "fields": np.concatenate(self.bad_fields),
                "line": np.concatenate(self.bad_lines),
            }
        ).filter(pl.col(ROW) > 0)
        return frame.select(
            pl.col(ROW).cast(pl.UInt32),
            pl.format(
                "{} row {} (line {}): {} fields where the header has {}",
                pl.lit(str(path)),
                pl.col(ROW),
                pl.col("line"),
                pl.col("fields"),
                pl.lit(self.header),
            ).alias(_SHAPE),
        )


def _line_of(path: Path, offset: int) -> int:
    """The 1-based physical line holding byte ``offset`` of a file (error messages only)."""
    line, seen = 1, 0
    with path.open("rb") as fh:
        while seen < offset and (chunk := fh.read(min(_CHUNK, offset - seen))):
            line += chunk.count(b"\n")
            seen += len(chunk)
    return line


def _encoding_hint(encoding: str) -> str:
    if encoding == "utf-8":
        return (
            "if it is a GBK export, run with --encoding gbk, or --encoding gb18030 (GBK's "
            "superset, which also holds rare characters in names that GBK cannot); a file that "
            "mixes encodings must be exported again in one"
        )
    if encoding == "gbk":
        return "try --encoding gb18030 (GBK's superset), or leave --encoding out for UTF-8"
    return "name the file's encoding with --encoding (utf-8, gbk or gb18030)"


@dataclass(frozen=True)
class _CsvSource:
    """A CSV checked for its encoding and field counts: what Polars reads (UTF-8: the file
    itself, or pieces of it, each a header and whole records), and the bad rows."""

    pieces: tuple[Path, ...]
    problems: pl.DataFrame


class _Pieces:
    """The checked bytes of a CSV written as UTF-8 piece files of about
    :data:`CSV_PIECE_BYTES` (one piece when ``split`` is false), cut where a record ends (as
    :class:`_Shape` finds them: never inside quotes), each later piece starting with the
    header."""

    def __init__(self, path: Path, temp_dir: Path | None, *, split: bool) -> None:
        self.base = _copy_path(path, temp_dir)
        self.split = split
        self.done: list[Path] = []
        self.carry = bytearray()  # bytes fed but not yet written: the record under way
        self.carry_at = 0  # file offset of carry's first byte
        # the file's first bytes until the header is known (None: no header line within a
        # piece's size, and the file stays one piece)
        self.head: bytearray | None = bytearray()
        self.header: bytes | None = None
        self.size = 0
        self.out = self._open()

    def _open(self) -> BinaryIO:
        name = (
            self.base
            if not self.split
            else self.base.with_name(f"{self.base.name}.{len(self.done):05d}.csv")
        )
        self.current = name
        return name.open("wb")

    def add(self, data: bytes, shape: _Shape, *, final: bool) -> None:
        """Bytes the shape has just been fed (``final``: the last)."""
        if self.header is None and self.head is not None:
            self.head += data
            if shape.header_end is not None:
                start = len(_BOM) if self.head.startswith(_BOM) else 0
                self.header = bytes(self.head[start : shape.header_end])
                self.head = None
            elif len(self.head) > CSV_PIECE_BYTES:
                self.head = None
        self.carry += data
        whole = (shape.offset if final else shape.start) - self.carry_at
        if whole > 0:
            self._write(whole)
            if self.split and not final and self.size >= CSV_PIECE_BYTES and self.header:
                self._close()
                self.out = self._open()
                self.out.write(self.header)
                self.size = len(self.header)
        if len(self.carry) > _CHUNK:
            # a record longer than a read (or a file without line breaks) is written as it
            # comes; the piece is then cut where that record ends
            self._write(len(self.carry))

    def _write(self, n: int) -> None:
        self.out.write(self.carry[:n])
        del self.carry[:n]
        self.carry_at += n
        self.size += n

    def _close(self) -> None:
        self.out.close()
        self.done.append(self.current)

    def finish(self) -> tuple[Path, ...]:
        """Close the last piece (after the shape's last feed)."""
        if self.carry:
            self.out.write(self.carry)
        self._close()
        return tuple(self.done)

    def abandon(self) -> None:
        self.out.close()


_CHECKED: dict[tuple[str, int, int, str, str], _CsvSource] = {}


def _check_csv(path: Path, encoding: str, temp_dir: Path | None) -> _CsvSource:
    """One streaming pass over a CSV: decode it (a UTF-8 copy for other encodings, since Polars
    reads UTF-8 only), and count each record's fields.

    Raises InputUnreadable naming the file, the byte offset and line of the first byte that is
    not valid in ``encoding`` (with a hint at the right ``--encoding``), or of a quote that is
    misplaced or never closed (after which no reader can tell where rows end). No message quotes
    the file's content. A file checked before (same size and modification time) is not read again.
    """
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise InputUnreadable(
            f"unknown encoding {encoding!r} (use utf-8, gbk or gb18030)"
        ) from None
    utf8 = name in ("utf-8", "utf-8-sig")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, name, str(temp_dir))
    known = _CHECKED.get(key)
    if known is not None and all(p.exists() for p in known.pieces):
        return known
    shape = _Shape()
    decoder = codecs.getincrementaldecoder("utf-8" if utf8 else name)(errors="strict")
    split = stat.st_size > CSV_PIECE_BYTES
    pieces = _Pieces(path, temp_dir, split=split) if split or not utf8 else None
    offset = 0
    try:
        with path.open("rb") as src:
            while True:
                chunk = src.read(_CHUNK)
                held = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as exc:
                    at = offset - held + exc.start
                    raise InputUnreadable(
                        f"{path}: not valid {name} at byte {at} (line {_line_of(path, at)}); "
                        f"{_encoding_hint(name)}"
                    ) from None
                data = chunk if utf8 else text.encode("utf-8")
                shape.feed(data, final=not chunk)
                if pieces is not None:
                    pieces.add(data, shape, final=not chunk)
                if not chunk:
                    break
                offset += len(chunk)
    except OSError as exc:
        if pieces is not None:
            pieces.abandon()
        raise InputUnreadable(f"{path}: cannot be read ({exc.strerror})") from None
    except InputUnreadable:
        if pieces is not None:
            pieces.abandon()
        raise
    read = pieces.finish() if pieces is not None else (path,)
    if shape.bad_quote is not None or shape.in_quote:
        at = shape.bad_quote if shape.bad_quote is not None else shape.start
        # the offset is one of the UTF-8 bytes: the file's own, or its UTF-8 copy's
        line = _line_of(path, at) if utf8 else _utf8_line(path, name, at)
        what = (
            "a quote inside an unquoted value, or text after a closing quote"
            if shape.bad_quote is not None
            else "a quote that is never closed"
        )
        raise InputUnreadable(
            f"{path}: line {line} has {what}, so the rows after it cannot be told apart; "
            'quote a value that holds commas or quotes as "..." and double each quote inside it'
        )
    checked = _CsvSource(read, shape.problems(path))
    _CHECKED[key] = checked
    return checked


def _utf8_line(path: Path, encoding: str, offset: int) -> int:
    """The 1-based line holding byte ``offset`` of the UTF-8 text of a file in ``encoding``
    (error messages only)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    line, seen = 1, 0
    with path.open("rb") as fh:
        while seen < offset and (chunk := fh.read(_CHUNK)):
            data = decoder.decode(chunk).encode("utf-8")[: offset - seen]
            line += data.count(b"\n")
            seen += len(data)
    return line


def _copy_path(path: Path, temp_dir: Path | None) -> Path:
    """Where the UTF-8 copy of ``path`` goes: ``temp_dir`` (the caller removes it) or a private
    temporary folder removed when the process exits."""
    if temp_dir is None:
        if not _TMP:
            _TMP.append(tempfile.mkdtemp(prefix="hmb-batch-"))
            atexit.register(shutil.rmtree, _TMP[0], True)
        folder = Path(_TMP[0])
    else:
        folder = temp_dir
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{len(list(folder.iterdir()))}-{path.name}"


@lru_cache(maxsize=16)
def check_timezone(timezone: str) -> str:
    """``timezone`` if it is a known IANA zone (``Asia/Shanghai``); ConfigError otherwise."""
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {timezone!r}: give an IANA zone such as Asia/Shanghai"
        ) from None
    return timezone


def scan_raw(path: Path, encoding: str = "utf-8", *, temp_dir: Path | None = None) -> pl.LazyFrame:
    """Scan a CSV (all columns as text) or Parquet file lazily, adding _file and _row.

    A CSV is checked first (:func:`_check_csv`): its encoding, its quotes, and each row's field
    count — a row with fewer or more fields than the header carries a message that
    :func:`type_table` adds to the row's reading errors (missing trailing fields are otherwise
    read as empty, and an optional amount as 0). ``temp_dir``: where the UTF-8 copy of a
    non-UTF-8 CSV is written (default: a private temporary folder).
    """
    scans, problems = _scan_source(path, encoding, temp_dir)
    # the pieces in order are the file's rows in order: numbered once, after the concat
    return _numbered(_concat(scans), path, problems, 0)


def raw_chunks(
    path: Path, rows: int, encoding: str = "utf-8", *, temp_dir: Path | None = None
) -> Iterator[pl.LazyFrame]:
    """:func:`scan_raw` of a file as lazy frames of at most ``rows`` rows each, row numbers
    those of the file; the file is checked once.

    For runs in member buckets: a streaming query's peak memory grows with the rows it writes
    (Polars 2.1: about 50 MB per million fee lines typed and written to Parquet), so a big file
    is cut in fixed-size chunks, each one streaming query. Python only sends the queries; no
    row passes through it.
    """
    scans, problems = _scan_source(path, encoding, temp_dir)
    before = 0
    for i, lf in enumerate(scans):
        # each piece counted and read by queries of its own: no two are mapped at once
        total = _rows(lf)
        # an empty file still gives one (empty) chunk: its columns are checked and typed
        for offset in range(0, max(total, 1) if i == 0 else total, rows):
            yield _numbered(lf.slice(offset, rows), path, problems, before + offset)
        before += total


def _rows(lf: pl.LazyFrame) -> int:
    return int(lf.select(pl.len()).collect().item())


def _scan_source(
    path: Path, encoding: str, temp_dir: Path | None
) -> tuple[list[pl.LazyFrame], pl.DataFrame | None]:
    """The file's scans, in order: one for a Parquet file, one per piece for a CSV (see
    :data:`CSV_PIECE_BYTES`); and a CSV's rows with a wrong number of fields."""
    if not path.exists():
        raise InputUnreadable(f"{path}: no such file")
    fmt = detect_format(path)
    problems: pl.DataFrame | None = None
    try:
        if fmt == "parquet":
            scans = [pl.scan_parquet(path)]
        else:
            checked = _check_csv(path, encoding, temp_dir)
            problems = checked.problems
            scans = [
                pl.scan_csv(piece, infer_schema=False, encoding="utf8", truncate_ragged_lines=True)
                for piece in checked.pieces
            ]
        scans[0].collect_schema()  # the pieces share the file's header
    except (InputUnreadable, ConfigError):
        raise
    except Exception as exc:
        # a CSV reader's message may quote rows (names, ID numbers): only Parquet's is shown
        reason = f": {str(exc).splitlines()[0][:200]}" if fmt == "parquet" else ""
        raise InputUnreadable(f"{path}: cannot be read as {fmt}{reason}") from None
    return scans, problems


def _numbered(
    lf: pl.LazyFrame, path: Path, problems: pl.DataFrame | None, offset: int
) -> pl.LazyFrame:
    # categorical: the path repeated on every row as text was a third of a typed fee line
    lf = lf.with_row_index(ROW, offset=offset + 1).with_columns(
        pl.lit(str(path), pl.Categorical).alias(FILE)
    )
    if problems is not None and problems.height:
        lf = lf.with_columns(
            pl.col(ROW)
            .replace_strict(problems[ROW], problems[_SHAPE], default=None, return_dtype=pl.String)
            .alias(_SHAPE)
        )
    return lf


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


def normalised_code(expr: pl.Expr) -> pl.Expr:
    """An id or code as hmb-batch compares it: NFKC-normalised (full-width digits become ASCII)
    and stripped; empty becomes null. Use it wherever raw ids are matched (roster filters)."""
    text = nfkc(expr).str.strip_chars()
    return pl.when(text != "").then(text)  # keeps the column's name, unlike then(None)


def _typed_column(name: str, kind: Kind, dtype: pl.DataType, src: str, timezone: str) -> pl.Expr:
    raw = pl.col(src)
    if kind is Kind.TEXT:
        text = raw.cast(pl.String).str.strip_chars()
        return pl.when(text == "").then(None).otherwise(text).alias(name)
    if kind is Kind.CODE:
        # kept as read, but an invisible character left after NFKC makes the row bad input
        # (see _unreadable): "S1" + U+200B must not become a second settlement S1
        return normalised_code(raw).alias(name)
    if kind is Kind.MONEY:
        return fen_from(raw, dtype).alias(name)
    if kind is Kind.INTEGER:
        if dtype.is_integer():
            return raw.cast(pl.Int64, strict=False).alias(name)
        return nfkc(raw).str.strip_chars().cast(pl.Int64, strict=False).alias(name)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        # an instant (UTC or any zone) is a local time in the plan's zone, then naive: a UTC
        # 18:00 on 31 December is 02:00 on 1 January in Beijing, in the next plan year
        raw = raw.dt.convert_time_zone(timezone).dt.replace_time_zone(None)
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
        return raw.cast(pl.Datetime("us")).alias(name)
    if dtype == pl.Date:
        return raw.cast(pl.Datetime("us")).alias(name)
    text = raw.cast(pl.String).str.strip_chars().str.replace("T", " ")
    return pl.coalesce(
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us"),
        text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
    ).alias(name)


def _unreadable(
    name: str, kind: Kind, src: str, required: bool, dtype: pl.DataType | None = None
) -> pl.Expr:
    """True where a value is present but unreadable, or a required value is empty.

    ``dtype``: the source column's type; a number, date or boolean is present when it is not
    null (casting it to text just to look for blanks cost a tenth of the typing time); text,
    categorical or binary values are present when not blank."""
    if dtype is not None and (dtype.is_numeric() or dtype.is_temporal() or dtype == pl.Boolean):
        present = pl.col(src).is_not_null()
    else:
        present = pl.col(src).cast(pl.String).str.strip_chars().str.len_chars() > 0
    empty_or_null = ((present.fill_null(False) | required) & pl.col(name).is_null()).fill_null(
        False
    )
    if kind is Kind.CODE:
        code = pl.col(name)
        # the ASCII ones among the characters _BAD_CODE_CHAR matches are found without a
        # regular expression; it runs only on the (few) codes with other characters
        bad = code.str.contains_any(_BAD_ASCII) | pl.when(non_ascii(code)).then(code).str.contains(
            _BAD_CODE_CHAR
        )
        return empty_or_null | bad.fill_null(False)
    return empty_or_null


def _found(name: str, kind: Kind, src: str) -> pl.Expr:
    """What a reading error says it found: the value quoted, never a personal one."""
    raw_text = pl.col(src).cast(pl.String)
    present = raw_text.str.strip_chars().str.len_chars() > 0
    if name in PERSONAL:
        quoted = pl.lit("an unreadable value")
    elif kind is Kind.CODE:
        # invisible characters shown as '?', the first one's bytes named so it can be found
        code = raw_text.str.normalize("NFKC").str.strip_chars()
        quoted = pl.format(
            "'{}' ('?': a control, invisible or whitespace character; the first is UTF-8 {})",
            code.str.replace_all(_BAD_CODE_CHAR, "?"),
            code.str.extract("(" + _BAD_CODE_CHAR + ")").str.encode("hex"),
        )
    else:
        quoted = pl.format("'{}'", raw_text)
    return pl.when(present).then(quoted).otherwise(pl.lit("nothing"))


def _error_expr(name: str, kind: Kind, dtype: pl.DataType, src: str, required: bool) -> pl.Expr:
    """A message where a value is present but unreadable, or a required value is empty."""
    expected: pl.Expr = pl.lit(_EXPECTED[kind])
    if kind is Kind.MONEY:
        expected = (
            pl.when(above_maximum(pl.col(src), dtype))
            .then(pl.lit(_EXPECTED_AT_MOST))
            .otherwise(expected)
        )
    message = pl.format(
        "{} row {}: column {}: expected {}, found {}",
        pl.col(FILE),
        pl.col(ROW),
        pl.lit(name),
        expected,
        _found(name, kind, src),
    )
    return pl.when(_unreadable(name, kind, src, required, dtype)).then(message).otherwise(None)


def type_table(
    raw: pl.LazyFrame,
    contract: Contract,
    *,
    column_map: Mapping[str, str] | None = None,
    prefix: str = "",
    file_label: str = "",
    require: bool = True,
    timezone: str = DEFAULT_TIMEZONE,
) -> pl.LazyFrame:
    """Select a contract's columns from a raw frame with the contract's types.

    Raises SchemaError naming the file and every missing required column. Optional columns that
    are absent become null (money: 0 fen, so a missing ``refl_selfpay_amt`` means none).
    ``timezone``: the zone a time-zone-aware Parquet timestamp is converted to before its zone
    is dropped (naive timestamps and text are already local time). The result ends with
    :data:`ROW`, :data:`FILE` and :data:`ERRORS` (what could not be read in the row, or null).
    """
    typed, messages = type_table_apart(
        raw,
        contract,
        column_map=column_map,
        prefix=prefix,
        file_label=file_label,
        require=require,
        timezone=timezone,
    )
    return with_errors(typed, messages)


def with_errors(
    typed: pl.LazyFrame, messages: pl.LazyFrame, *, known: int | None = None
) -> pl.LazyFrame:
    """Typed rows and their reading errors (from :func:`type_table_apart`) as one frame.

    ``known``: the number of messages, when the caller has counted them; with none (the usual
    file) the rows need no join."""
    if known == 0:
        return typed.with_columns(pl.lit(None, pl.List(pl.String)).alias(ERRORS))
    return typed.join(
        messages.select(FILE, ROW, ERRORS), on=[FILE, ROW], how="left", maintain_order="left"
    )


def type_table_apart(
    raw: pl.LazyFrame,
    contract: Contract,
    *,
    column_map: Mapping[str, str] | None = None,
    prefix: str = "",
    file_label: str = "",
    require: bool = True,
    timezone: str = DEFAULT_TIMEZONE,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """:func:`type_table` as two frames: the typed rows (ending with :data:`ROW`, :data:`FILE`)
    and the few rows with reading errors (``setl_id`` and ``psn_no`` where the contract has
    them, ROW, FILE, :data:`ERRORS`).

    Kept apart, both stream from one scan into files without the join that puts them together,
    which would hold every typed row until the last message is known (a streaming engine must
    see a join's whole build side first): bucketed runs join them per bucket, in memory.
    """
    check_timezone(timezone)
    schema = raw.collect_schema()
    found = [n for n in schema.names() if n not in _INTERNAL]
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
        raise SchemaError(
            file_label or "input", contract.table, shown, found, site_names=list(column_map or {})
        )
    typed: list[pl.Expr] = []
    raws: list[pl.Expr] = []
    bad: list[pl.Expr] = []
    errors: list[pl.Expr] = []
    for col in contract.columns:
        if col.name in mapping:
            src = mapping[col.name]
            dtype = schema[src]
            typed.append(_typed_column(col.name, col.kind, dtype, src, timezone))
            raws.append(pl.col(src).alias(_RAW + col.name))
            bad.append(_unreadable(col.name, col.kind, _RAW + col.name, col.required, dtype))
            errors.append(_error_expr(col.name, col.kind, dtype, _RAW + col.name, col.required))
        elif col.kind is Kind.MONEY and not col.required:
            typed.append(pl.lit(0, pl.Int64).alias(col.name))
        else:
            typed.append(pl.lit(None, _DTYPES[col.kind]).alias(col.name))
    shape = [pl.col(_SHAPE)] if _SHAPE in schema else []
    if shape:  # a CSV row with too few or too many fields (see scan_raw)
        bad.append(pl.col(_SHAPE).is_not_null())
        errors.insert(0, pl.col(_SHAPE))
    base = raw.select(*typed, *raws, *shape, pl.col(ROW), pl.col(FILE))
    # the ids a bucketed run sends the messages to their rows' bucket by
    key = [pl.col(c) for c in ("setl_id", "psn_no") if c in contract.names]
    if not errors:
        none = base.filter(pl.lit(False)).select(
            *key, pl.col(ROW), pl.col(FILE), pl.lit(None, pl.List(pl.String)).alias(ERRORS)
        )
        return base, none
    # Messages are formatted only for the few rows with a problem: formatting a string per
    # row and column for millions of good rows would cost more than the whole adjudication.
    messages = base.filter(pl.any_horizontal(bad)).select(
        *key, pl.col(ROW), pl.col(FILE), pl.concat_list(errors).list.drop_nulls().alias(ERRORS)
    )
    scratch = [_RAW + n for n in mapping] + ([_SHAPE] if shape else [])
    return base.drop(scratch), messages


def source_column(
    raw: pl.LazyFrame, contract: Contract, column: str, column_map: Mapping[str, str] | None = None
) -> str | None:
    """The raw column that carries a contract column (None if the file lacks it)."""
    found = [n for n in raw.collect_schema().names() if n not in _INTERNAL]
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
    millions); row numbers stay those of the file. An id column is compared as it is typed
    (:func:`normalised_code`), so a full-width ``Ｍ１`` in the roster finds member ``M1``.
    """
    src = source_column(raw, contract, column, column_map)
    if src is None:
        return raw  # type_table names the missing column
    if contract.column(column).kind is Kind.CODE:
        key = normalised_code(pl.col(src))
    else:
        key = pl.col(src).cast(pl.String).str.strip_chars()
    return raw.filter(key.is_in(values.implode()))


def read_table(
    path: Path,
    contract: Contract,
    *,
    column_map: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    timezone: str = DEFAULT_TIMEZONE,
    temp_dir: Path | None = None,
) -> pl.LazyFrame:
    """Scan one file as one contract's table, typed (see :func:`scan_raw`, :func:`type_table`)."""
    return type_table(
        scan_raw(path, encoding, temp_dir=temp_dir),
        contract,
        column_map=column_map,
        file_label=str(path),
        timezone=timezone,
    )


def _paths(spec: Path | Sequence[Path]) -> list[Path]:
    return [spec] if isinstance(spec, Path) else list(spec)


def _concat(frames: list[pl.LazyFrame]) -> pl.LazyFrame:
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")


def typed_frames(
    raw: pl.LazyFrame,
    path: Path,
    role: str,
    column_map: Mapping[str, str] | None = None,
    *,
    timezone: str = DEFAULT_TIMEZONE,
) -> dict[str, pl.LazyFrame]:
    """One raw file (or a slice of it) typed: ``role`` 'settlements' or 'fee_lines' (two-file
    extracts) gives that table; 'wide' gives both, ``settlements`` one row per line.
    ``timezone``: see :func:`type_table`."""
    return {
        name: with_errors(typed, messages)
        for name, (typed, messages) in typed_frames_apart(
            raw, path, role, column_map, timezone=timezone
        ).items()
    }


def typed_frames_apart(
    raw: pl.LazyFrame,
    path: Path,
    role: str,
    column_map: Mapping[str, str] | None = None,
    *,
    timezone: str = DEFAULT_TIMEZONE,
) -> dict[str, tuple[pl.LazyFrame, pl.LazyFrame]]:
    """:func:`typed_frames` with each table's rows and reading errors apart (see
    :func:`type_table_apart`)."""
    label = str(path)
    if role in ("settlements", "fee_lines"):
        contract = SETTLEMENTS if role == "settlements" else FEE_LINES
        return {
            role: type_table_apart(
                raw, contract, column_map=column_map, file_label=label, timezone=timezone
            )
        }
    found = [n for n in raw.collect_schema().names() if n not in _INTERNAL]
    names = {n.lower() for n in found}
    site = {k.lower(): v.lower() for k, v in (column_map or {}).items()}
    names |= {site[n] for n in names if n in site}
    if "feedetl_sn" not in names:
        raise SchemaError(
            label,
            "fee_lines",
            ["feedetl_sn"],
            found,
            site_names=list(column_map or {}),
            hint=(
                "Without --fees the extract is read as one wide file of fee lines that carry "
                "their settlement's columns; if this is a settlements file, did you forget "
                "--fees (the fee-lines file)? If the site calls the column something else, map "
                "it in hmb.toml under [columns]."
            ),
        )
    return {
        "settlements": type_table_apart(
            raw,
            SETTLEMENTS,
            column_map=column_map,
            prefix=WIDE_PREFIX,
            file_label=label,
            timezone=timezone,
        ),
        "fee_lines": type_table_apart(
            raw, FEE_LINES, column_map=column_map, file_label=label, timezone=timezone
        ),
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
    timezone: str = DEFAULT_TIMEZONE,
    temp_dir: Path | None = None,
) -> Extract:
    """Read a batch extract of either shape into typed settlements and fee lines.

    ``extract`` (and ``fees``) may be several files — a year of nightly extracts, or the parts of
    a partitioned export — read as one batch; each row keeps its own file and row number.
    ``timezone``: see :func:`type_table`; ``temp_dir``: see :func:`scan_raw`. The files are
    read here, into memory (the frames returned are lazy views of what was read).
    """
    extract_files = _paths(extract)
    fee_files = _paths(fees) if fees is not None else None
    shape, roles = extract_roles(extract_files, fee_files)
    apart: list[tuple[str, pl.LazyFrame, pl.LazyFrame]] = []
    for path, role in roles:
        raw = scan_raw(path, encoding, temp_dir=temp_dir)
        for name, (rows, errors) in typed_frames_apart(
            raw, path, role, column_map, timezone=timezone
        ).items():
            apart.append((name, rows, errors))
    # rows and reading errors of a file computed in one query (they share its scan and typing;
    # a lazy join of the two typed every row twice), then joined in memory
    done = pl.collect_all([f for _, rows, errors in apart for f in (rows, errors)])
    parts: dict[str, list[pl.LazyFrame]] = {"settlements": [], "fee_lines": []}
    for i, (name, _, _) in enumerate(apart):
        rows_df, errors_df = done[2 * i], done[2 * i + 1]
        parts[name].append(with_errors(rows_df.lazy(), errors_df.lazy(), known=errors_df.height))
    settlements = _concat(parts["settlements"])
    if shape == "wide":
        settlements = distinct_headers(settlements)
    files = (*extract_files, *(fee_files or []))
    return Extract(settlements, _concat(parts["fee_lines"]), shape, files)


def distinct_headers(settlements: pl.LazyFrame) -> pl.LazyFrame:
    """A wide file's settlement rows, one per distinct header.

    Every line repeats its settlement's columns: keep one copy per distinct header (a header
    that differs between two lines of one settlement stays twice and is a conflict downstream).
    """
    return settlements.unique(subset=SETTLEMENTS.names, keep="first", maintain_order=True)
