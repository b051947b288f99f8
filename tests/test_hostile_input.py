"""Issue 13, the reading edge: hostile amounts, ids, CSV shapes, encodings and time zones.

Each test is named after the issue's item it covers; each failed before the fix.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import GOLDEN, Extract, adjudicate_args, run_cli
from hmb_batch.errors import ConfigError, InputUnreadable, SchemaError
from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS, Column, Contract, Kind
from hmb_batch.io.extract import ERRORS, FILE, ROW, read_extract, read_table, type_table
from hmb_batch.money import MAX_AMOUNT_FEN

NAME, CERTNO = "欧阳文", "331102199001011234"
AT_MOST = "expected an amount of at most 10,000,000,000.00 yuan"


def _extract(ex: Extract) -> Extract:
    """Two members with personal data, so every test can check none of it leaks."""
    ex.member("M1")
    ex.member("M2")
    return ex


def _claim(ex: Extract, setl_id: str, day: int, psn_no: str = "M1", **header: Any) -> None:
    ex.claim(
        setl_id,
        psn_no,
        f"2022-03-{day:02d} 10:00:00",
        reasonable="20000",
        psn_name=NAME,
        certno=CERTNO,
        **header,
    )


def _run(files: dict[str, Path], tmp_path: Path, *extra: str) -> Any:
    result = run_cli(adjudicate_args(files, tmp_path / "out", "--quiet", *extra))
    _no_personal_data(result)
    return result


def _no_personal_data(result: Any) -> None:
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert NAME not in text and CERTNO not in text, text
    assert "Traceback" not in text, text


def _quarantine(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "quarantine.parquet").filter(
        pl.col("record") == "settlement"
    )


def _detail(q: pl.DataFrame, setl_id: str) -> str:
    rows = q.filter(pl.col("setl_id") == setl_id)
    assert rows.height >= 1, f"{setl_id} not quarantined: {q['setl_id'].to_list()}"
    assert "BAD_VALUE" in rows["reasons"][0], rows["reasons"][0]
    return str(rows["detail"][0])


def _paid(tmp_path: Path) -> list[str]:
    return sorted(pl.read_parquet(tmp_path / "out" / "payouts.parquet")["setl_id"].to_list())


def _typed(values: list[Any], dtype: pl.DataType, column: str = "psn_pay") -> pl.DataFrame:
    """``values`` read as settlement column ``column`` (a Parquet-like typed source)."""
    raw = pl.LazyFrame({column: values}, schema={column: dtype})
    raw = raw.with_row_index(ROW, offset=1).with_columns(pl.lit("t.parquet").alias(FILE))
    return type_table(raw, SETTLEMENTS, require=False).collect()


# --- item 1: amounts above the maximum ---------------------------------------------------------


def test_item01_text_amount_that_would_wrap_is_bad_value(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    _claim(ex, "OK", 1)
    _claim(ex, "WRAP", 2, psn_pay="184467440737095517.00")  # wrapped to 0.84 yuan before
    _claim(ex, "BIG", 3, maf_pay="10000000000.01")
    r = _run(ex.write(tmp_path / "in"), tmp_path)
    assert r.exit_code == 0, r.output
    q = _quarantine(tmp_path)
    wrap = _detail(q, "WRAP")
    assert "column psn_pay" in wrap and AT_MOST in wrap and "'184467440737095517.00'" in wrap
    assert AT_MOST in _detail(q, "BIG")
    assert _paid(tmp_path) == ["OK"]


def test_item01_text_amount_at_the_maximum_is_exact_one_fen_above_is_bad_value() -> None:
    text = ["10000000000.00", "10000000000.01", "-10000000000.00", "-10000000000.01"]
    typed = _typed(text, pl.String())
    assert typed["psn_pay"].to_list() == [MAX_AMOUNT_FEN, None, -MAX_AMOUNT_FEN, None]
    assert MAX_AMOUNT_FEN == 10**12
    errors = typed[ERRORS].to_list()
    assert errors[0] is None and errors[2] is None
    assert AT_MOST in errors[1][0] and "'10000000000.01'" in errors[1][0]
    assert AT_MOST in errors[3][0]


def test_item01_a_reversal_may_carry_minus_the_maximum(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    ex.reversal("R1", "S1", "M1", "2022-03-05 10:00:00")
    ex.settlements[-1].update(medfee_sumamt="-10000000000.00", fulamt_ownpay_amt="-10000000000.00")
    ex.reversal("R2", "S1", "M1", "2022-03-06 10:00:00")
    ex.settlements[-1].update(medfee_sumamt="-10000000000.01", fulamt_ownpay_amt="-10000000000.01")
    s = read_table(ex.write(tmp_path / "in")["settlements"], SETTLEMENTS).collect()
    r1 = s.filter(pl.col("setl_id") == "R1").row(0, named=True)
    r2 = s.filter(pl.col("setl_id") == "R2").row(0, named=True)
    assert r1["medfee_sumamt"] == -MAX_AMOUNT_FEN and r1[ERRORS] is None
    assert r2["medfee_sumamt"] is None and AT_MOST in r2[ERRORS][0]


@pytest.mark.parametrize(
    ("values", "dtype", "fen"),
    [
        (
            [1e10, 1e17, 1e300, float("inf"), -1e10],
            pl.Float64(),
            [MAX_AMOUNT_FEN, None, None, None, -MAX_AMOUNT_FEN],
        ),
        ([2**64 - 1, 10**10, 10**10 + 1], pl.UInt64(), [None, MAX_AMOUNT_FEN, None]),
        ([-(2**63), 10**11, -(10**10)], pl.Int64(), [None, None, -MAX_AMOUNT_FEN]),
        (
            [Decimal("10000000000.00"), Decimal("10000000000.01"), Decimal("1" + "0" * 30)],
            pl.Decimal(38, 2),
            [MAX_AMOUNT_FEN, None, None],
        ),
    ],
    ids=["float", "uint64", "int64", "decimal"],
)
def test_item01_parquet_amounts_above_the_maximum_are_bad_value(
    values: list[Any], dtype: pl.DataType, fen: list[int | None]
) -> None:
    typed = _typed(values, dtype)
    assert typed["psn_pay"].to_list() == fen
    for got, errors in zip(fen, typed[ERRORS].to_list(), strict=True):
        assert (errors is None) == (got is not None)
        if errors is not None:
            assert AT_MOST in errors[0] and "column psn_pay" in errors[0]


# --- item 2: ids are NFKC-normalised; invisible characters are bad input ------------------------


@pytest.mark.parametrize(
    "hostile",
    ["S1\u200b", "\ufeffS1", "S\x011", "S1\u2060", "S 1"],
    ids=["zero-width-space", "bom", "control", "word-joiner", "inner-space"],
)
def test_item02_invisible_character_in_setl_id_is_bad_value(
    ex: Extract, tmp_path: Path, hostile: str
) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    _claim(ex, hostile, 2)  # the paid settlement, sent again with an invisible character
    r = _run(ex.write(tmp_path / "in"), tmp_path)
    assert r.exit_code == 0, r.output
    q = _quarantine(tmp_path)
    assert q.height == 1
    detail = _detail(q, hostile)
    assert "column setl_id" in detail and "control, invisible or whitespace" in detail
    assert _paid(tmp_path) == ["S1"]  # never paid twice


def test_item02_full_width_digits_in_ids_are_ascii(ex: Extract, tmp_path: Path) -> None:
    ex.member("Ｍ１")  # the roster's member id in full-width forms
    _claim(ex, "S1", 1)
    _claim(ex, "Ｓ１", 1)  # the same settlement again, in full-width forms: one copy kept
    r = _run(ex.write(tmp_path / "in"), tmp_path)
    assert r.exit_code == 0, r.output
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    assert p["setl_id"].to_list() == ["S1"]
    assert p["status"].to_list() == ["paid"]  # M1 found on the roster as Ｍ１


@pytest.mark.parametrize("table", ["roster", "lists"])
def test_item02_zero_width_space_in_reference_ids_stops_the_run(
    ex: Extract, tmp_path: Path, table: str
) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    if table == "roster":
        ex.roster[0]["psn_no"] = "M1\u200b"
    else:
        ex.lists[0]["code"] = "NEG1\u200b"
    r = _run(ex.write(tmp_path / "in"), tmp_path)
    assert r.exit_code == 8, r.output
    assert f"{table}.csv row 1: column {'psn_no' if table == 'roster' else 'code'}" in r.output
    assert not (tmp_path / "out" / "payouts.parquet").exists()


# --- item 3 and 14: CSV rows with the wrong number of fields; quotes ----------------------------


def _edit_row(path: Path, row: int, edit: Any) -> None:
    """Apply ``edit`` to data row ``row`` (1-based) of a CSV, as text."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[row] = edit(lines[row])
    path.write_text("\n".join(lines), encoding="utf-8")


def test_item03_truncated_settlement_row_is_bad_value_naming_file_line_and_counts(
    ex: Extract, tmp_path: Path
) -> None:
    _extract(ex)
    for i, sid in enumerate(["S1", "CUT", "S3", "BAD"], start=1):
        _claim(ex, sid, i, refl="1000" if sid == "CUT" else "0")
    ex.settlements[3]["hifp_pay"] = "abc"
    files = ex.write(tmp_path / "in")
    header = files["settlements"].read_text(encoding="utf-8").split("\n")[0].split(",")
    cut_after = header.index("hifp_pay") + 1
    _edit_row(files["settlements"], 2, lambda line: ",".join(line.split(",")[:cut_after]))
    r = _run(files, tmp_path)
    assert r.exit_code == 0, r.output
    q = _quarantine(tmp_path)
    detail = _detail(q, "CUT")
    assert f"settlements.csv row 2 (line 3): {cut_after} fields where the header has " in detail
    assert str(len(header)) in detail
    assert q.filter(pl.col("setl_id") == "CUT")["_row"].to_list() == [2]
    # the rows after it keep their numbers
    assert q.filter(pl.col("setl_id") == "BAD")["_row"].to_list() == [4]
    assert "settlements.csv row 4: column hifp_pay" in _detail(q, "BAD")
    assert _paid(tmp_path) == ["S1", "S3"]


def test_item03_truncated_row_in_a_bounded_run_and_a_gbk_file(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    for i, sid in enumerate(["S1", "CUT", "S3"], start=1):
        _claim(ex, sid, i)
    files = ex.write(tmp_path / "in")
    _edit_row(files["settlements"], 2, lambda line: line.rsplit(",", 3)[0])
    for f in files.values():  # every CSV of the run in GBK
        f.write_bytes(f.read_text(encoding="utf-8").encode("gbk"))
    r = _run(files, tmp_path, "--buckets", "2", "--encoding", "gbk")
    assert r.exit_code == 0, r.output
    detail = _detail(_quarantine(tmp_path), "CUT")
    assert "settlements.csv row 2 (line 3): " in detail and "fields where the header has" in detail
    assert _paid(tmp_path) == ["S1", "S3"]


def test_item14_unquoted_comma_in_a_name_is_an_extra_field(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    _claim(ex, "COMMA", 2, fixmedins_name="人民医院")
    _claim(ex, "S3", 3)
    files = ex.write(tmp_path / "in")
    header = files["settlements"].read_text(encoding="utf-8").split("\n")[0].split(",")
    _edit_row(files["settlements"], 2, lambda line: line.replace("人民医院", "人民,医院"))
    _edit_row(files["fees"], 3, lambda line: line + ",extra")  # a fee line of COMMA too
    r = _run(files, tmp_path)
    assert r.exit_code == 0, r.output
    q = _quarantine(tmp_path)
    detail = _detail(q, "COMMA")
    assert f"row 2 (line 3): {len(header) + 1} fields where the header has {len(header)}" in detail
    assert "fees.csv row 3 (line 4)" in detail
    assert _paid(tmp_path) == ["S1", "S3"]


def test_item03_quoted_line_breaks_keep_row_and_line_numbers_right(
    ex: Extract, tmp_path: Path
) -> None:
    _extract(ex)
    _claim(ex, "S1", 1, fixmedins_name='人民,"医院"\n二部')  # quoted as RFC 4180 says
    _claim(ex, "CUT", 2)
    _claim(ex, "BAD", 3, hifp_pay="abc")
    files = ex.write(tmp_path / "in")
    assert '"人民,""医院""\n二部"' in files["settlements"].read_text(encoding="utf-8")
    _edit_row(files["settlements"], 3, lambda line: line.rsplit(",", 1)[0])  # CUT, line 4
    s = read_table(files["settlements"], SETTLEMENTS).collect().sort(ROW)
    assert s["setl_id"].to_list() == ["S1", "CUT", "BAD"]
    assert s["fixmedins_name"][0] == '人民,"医院"\n二部' and s[ERRORS][0] is None
    (cut,) = s[ERRORS][1].to_list()
    n = len(SETTLEMENTS.names) - 1  # union_aid_pay is not written
    assert cut == f"{files['settlements']} row 2 (line 4): {n - 1} fields where the header has {n}"
    assert s[ERRORS][2].to_list() == [
        f"{files['settlements']} row 3: column hifp_pay: expected an amount in yuan with at most "
        "two decimals, found 'abc'"
    ]


@pytest.mark.parametrize(
    "edit",
    [
        lambda line: line.replace(NAME, f'"{NAME}'),  # a quote never closed
        lambda line: line.replace(NAME, f'{NAME}"x'),  # a quote inside an unquoted value
    ],
    ids=["unclosed", "inside"],
)
def test_item14_unbalanced_quote_is_a_clear_exit_3_without_row_contents(
    ex: Extract, tmp_path: Path, edit: Any
) -> None:
    _extract(ex)
    for i in range(1, 4):
        _claim(ex, f"S{i}", i)
    files = ex.write(tmp_path / "in")
    _edit_row(files["settlements"], 2, edit)
    r = _run(files, tmp_path)
    assert r.exit_code == 3, r.output
    assert "settlements.csv: line 3 has a quote" in r.output
    assert "S3" not in r.output and "M1" not in r.output


# --- item 6: time-zone-aware Parquet timestamps -------------------------------------------------


def _utc_parquet(ex: Extract, tmp_path: Path, *also: str) -> dict[str, Path]:
    files = ex.write(tmp_path / "in")
    for name, cols in (("settlements", ["setl_time", *also]), ("fees", ["fee_ocur_time"])):
        df = pl.read_csv(files[name], infer_schema=False)
        # an instant stored in UTC: 2022-12-31 18:00 UTC is 2023-01-01 02:00 in Beijing
        df = df.with_columns(
            pl.col(c).str.to_datetime("%Y-%m-%d %H:%M:%S").dt.replace_time_zone("UTC") for c in cols
        )
        files[name] = files[name].with_suffix(".parquet")
        df.write_parquet(files[name])
    return files


def test_item06_utc_timestamps_are_read_in_beijing_time(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1", plan_year=2023)
    ex.claim("S1", "M1", "2022-12-31 18:00:00", reasonable="20000", begndate="2022-12-31 18:00:00")
    files = _utc_parquet(ex, tmp_path, "begndate")
    e = read_extract(files["settlements"], files["fees"])
    s, f = e.settlements.collect(), e.fee_lines.collect()
    assert s["setl_time"].to_list() == [dt.datetime(2023, 1, 1, 2, 0)]
    assert s["begndate"].to_list() == [dt.date(2023, 1, 1)]
    assert f["fee_ocur_time"].to_list() == [dt.datetime(2022, 12, 31, 17, 0)] * 2  # 09:00 UTC
    utc = read_extract(files["settlements"], files["fees"], timezone="UTC").settlements.collect()
    assert utc["setl_time"].to_list() == [dt.datetime(2022, 12, 31, 18, 0)]
    r = _run(files, tmp_path)
    assert r.exit_code == 0, r.output
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    assert p["plan_year"].to_list() == [2023]


def test_item06_timezone_comes_from_hmb_toml_and_must_be_known(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1", plan_year=2022)
    ex.claim("S1", "M1", "2022-12-31 18:00:00", reasonable="20000")
    files = _utc_parquet(ex, tmp_path)
    toml = tmp_path / "hmb.toml"
    toml.write_text('[adjudicate]\ntimezone = "UTC"\n', encoding="utf-8")
    r = _run(files, tmp_path, "--config", str(toml))
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "out" / "payouts.parquet")["plan_year"].to_list() == [2022]
    toml.write_text('[adjudicate]\ntimezone = "Mars/Olympus"\n', encoding="utf-8")
    r = _run(files, tmp_path, "--config", str(toml))
    assert r.exit_code == 5 and "Mars/Olympus" in r.output, r.output
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        read_extract(files["settlements"], files["fees"], timezone="Mars/Olympus")


# --- item 11: no personal data in messages ------------------------------------------------------


def test_item11_headerless_csv_does_not_print_its_first_row(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    _claim(ex, "S2", 2)
    files = ex.write(tmp_path / "in")
    _edit_row(files["settlements"], 0, lambda line: "")
    files["settlements"].write_text(
        files["settlements"].read_text(encoding="utf-8").lstrip("\n"), encoding="utf-8"
    )
    r = _run(files, tmp_path)
    assert r.exit_code == 4, r.output
    assert "lack its header row" in r.output
    assert "S1" not in r.output and "331102" not in r.output
    with pytest.raises(SchemaError) as info:
        read_extract(files["settlements"], files["fees"])
    assert NAME not in str(info.value) and NAME not in info.value.found


def test_item11_header_like_names_are_still_listed(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("setl_id,JSID,结算ID,psn_no,2022-03-01\nS1,a,b,M1,x\n", encoding="utf-8")
    with pytest.raises(SchemaError) as info:
        read_table(path, SETTLEMENTS)
    message = str(info.value)
    assert "Found columns: setl_id, JSID, 结算ID, psn_no (+1 not shown" in message
    assert "2022-03-01" not in message


def test_item11_unreadable_personal_value_is_never_quoted() -> None:
    # a site contract where certno must be a number: its reading error must not quote it
    contract = Contract("t", "t", (Column("certno", Kind.INTEGER, True, "证件号码", "personal"),))
    raw = pl.LazyFrame({"certno": [f"{CERTNO}X"]}).with_row_index(ROW, offset=1)
    typed = type_table(raw.with_columns(pl.lit("t.csv").alias(FILE)), contract).collect()
    (message,) = typed[ERRORS][0]
    assert CERTNO not in message and "found an unreadable value" in message


# --- item 12: the UTF-8 copy of a GBK file goes where the caller says ---------------------------


def test_item12_gbk_copy_goes_to_the_given_temp_dir(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    gbk = tmp_path / "settlements_gbk.csv"
    gbk.write_bytes((b / "settlements.csv").read_text(encoding="utf-8").encode("gbk"))
    spill = tmp_path / "out" / ".hmb-spill-1"
    e = read_extract(gbk, b / "fees.csv", encoding="gbk", temp_dir=spill)
    assert e.settlements.collect()["psn_name"].drop_nulls()[0] == "张三"
    (copy,) = spill.glob("*settlements_gbk.csv")  # the fees' copy is there too
    assert "张三" in copy.read_text(encoding="utf-8")


# --- item 13: encodings ---------------------------------------------------------------------------


def test_item13_gbk_csv_without_encoding_is_exit_3_naming_file_byte_and_encoding(
    ex: Extract, tmp_path: Path
) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    files = ex.write(tmp_path / "in")
    text = files["settlements"].read_text(encoding="utf-8")
    files["settlements"].write_bytes(text.encode("gbk"))
    with pytest.raises(UnicodeDecodeError) as bad:
        text.encode("gbk").decode("utf-8")
    first = bad.value.start  # 欧 in GBK (C5 B7) happens to be valid UTF-8: 阳 is not
    r = _run(files, tmp_path)
    assert r.exit_code == 3, r.output
    flat = " ".join(r.output.split())
    assert f"settlements.csv: not valid utf-8 at byte {first} (line 2)" in flat
    assert "--encoding gbk" in flat and "--encoding gb18030" in flat
    assert _run(files, tmp_path, "--encoding", "gbk").exit_code == 0


def test_item13_one_bad_byte_late_in_a_big_file_names_its_offset(tmp_path: Path) -> None:
    # a UTF-8 file with one GBK row after 5 MiB (past the first read chunk): mixed encodings
    path = tmp_path / "s.csv"
    good = "setl_id,psn_no,psn_name\n" + "".join(f"S{i},M{i},张三\n" for i in range(300_000))
    data = good.encode("utf-8")
    assert len(data) > 5 << 20
    path.write_bytes(data + "S,M,张三\n".encode("gbk"))
    with pytest.raises(InputUnreadable) as info:
        read_table(path, SETTLEMENTS)
    message = str(info.value)
    assert f"not valid utf-8 at byte {len(data) + 4} (line 300002)" in message
    assert "张三" not in message


def test_item13_gb18030_names_that_gbk_cannot_hold(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    _claim(ex, "S1", 1)
    ex.settlements[0]["psn_name"] = "王䶮"  # 䶮: in GB 18030, not in GBK
    files = ex.write(tmp_path / "in")
    text = files["settlements"].read_text(encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        text.encode("gbk")
    files["settlements"].write_bytes(text.encode("gb18030"))
    r = _run(files, tmp_path, "--encoding", "gbk")
    assert r.exit_code == 3, r.output
    assert "--encoding gb18030" in " ".join(r.output.split()) and "王" not in r.output
    r = _run(files, tmp_path, "--encoding", "gb18030", "--unmasked")
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "out" / "payouts.parquet")["psn_name"][0] == "王䶮"


# --- item 14: full-width digits in an amount ------------------------------------------------------


def test_item14_full_width_digits_in_an_amount_read_as_ascii(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    _claim(ex, "S1", 1, psn_pay="１２３．４５")
    _claim(ex, "ARABIC", 2, psn_pay="١٢٣")  # other digits NFKC keeps: bad input
    files = ex.write(tmp_path / "in")
    s = read_table(files["settlements"], SETTLEMENTS).collect().sort(ROW)
    assert s["psn_pay"].to_list() == [12345, None]
    r = _run(files, tmp_path)
    assert r.exit_code == 0, r.output
    assert _paid(tmp_path) == ["S1"]
    assert "column psn_pay" in _detail(_quarantine(tmp_path), "ARABIC")


def test_item14_parquet_floats_and_uint64_through_the_cli(ex: Extract, tmp_path: Path) -> None:
    _extract(ex)
    for i, sid in enumerate(["OK", "F17", "F300", "U64"], start=1):
        _claim(ex, sid, i)
    files = ex.write(tmp_path / "in")
    s = pl.read_csv(files["settlements"], infer_schema=False).with_columns(
        pl.Series("maf_pay", [0.0, 1e17, 1e300, 0.0]),
        pl.Series("othfund_pay", [0, 0, 0, 2**64 - 1], dtype=pl.UInt64),
    )
    files["settlements"] = files["settlements"].with_suffix(".parquet")
    s.write_parquet(files["settlements"])
    r = _run(files, tmp_path)
    assert r.exit_code == 0, r.output
    q = _quarantine(tmp_path)
    for sid, column in (("F17", "maf_pay"), ("F300", "maf_pay"), ("U64", "othfund_pay")):
        detail = _detail(q, sid)
        assert f"column {column}: {AT_MOST}" in detail
    assert _paid(tmp_path) == ["OK"]
    assert FEE_LINES.column("setl_id").kind is Kind.CODE
