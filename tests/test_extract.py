"""Input contracts: reading CSV/Parquet/GBK, names, types, and validation verdicts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import GOLDEN, Extract, adjudicate_args, run_cli
from hmb_batch.errors import SchemaError
from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS
from hmb_batch.io.extract import ERRORS, FILE, ROW, read_extract, read_table
from hmb_batch.money import fen_from
from hmb_batch.rules.validation import validate


def _frames(
    settlements: Path, fees: Path | None = None, **kw: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    e = read_extract(settlements, fees, **kw)  # type: ignore[arg-type]
    drop = [FILE, ROW]
    return (
        e.settlements.drop(drop).collect().sort("setl_id"),
        e.fee_lines.drop(drop).collect().sort("setl_id", "feedetl_sn"),
    )


def test_csv_parquet_and_gbk_csv_give_identical_frames(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    parquet = _frames(b / "settlements.parquet", b / "fees.parquet")
    csv = _frames(b / "settlements.csv", b / "fees.csv")
    gbk = tmp_path / "settlements_gbk.csv"
    gbk.write_bytes((b / "settlements.csv").read_text(encoding="utf-8").encode("gbk"))
    assert "张三".encode("gbk") in gbk.read_bytes()  # really GBK, with Chinese text
    gbk_frames = _frames(gbk, b / "fees.csv", encoding="gbk")
    bom = tmp_path / "settlements_bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (b / "settlements.csv").read_bytes())
    bom_frames = _frames(bom, b / "fees.csv")
    for other in (csv, gbk_frames, bom_frames):
        assert_frame_equal(parquet[0], other[0])
        assert_frame_equal(parquet[1], other[1])
    assert parquet[0].filter(pl.col("psn_name").is_not_null())["psn_name"][0] == "张三"


def _nothing_written(out: Path) -> bool:
    """No output file (an empty output folder may be left by the early writability check)."""
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("encoding", [["--encoding", "utf-8"], []], ids=["utf-8", "default"])
def test_gbk_file_read_as_utf8_is_a_clear_error(tmp_path: Path, encoding: list[str]) -> None:
    # issue 13 item 20: this test passed --encoding ascii, so it never read a GBK file as UTF-8
    b = GOLDEN / "batch_00"
    gbk = tmp_path / "s.csv"
    gbk.write_bytes((b / "settlements.csv").read_text(encoding="utf-8").encode("gbk"))
    r = run_cli(
        [
            "adjudicate",
            str(gbk),
            "--fees",
            str(b / "fees.csv"),
            "--roster",
            str(GOLDEN / "roster.parquet"),
            "--lists",
            str(GOLDEN / "lists.parquet"),
            "--out",
            str(tmp_path / "out"),
            *encoding,
        ]
    )
    assert r.exit_code == 3, r.output
    assert "s.csv" in r.output and "byte" in r.output
    assert "--encoding gbk" in r.output or "--encoding gb18030" in r.output
    assert _nothing_written(tmp_path / "out")


def test_an_unknown_encoding_is_a_clear_error(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    r = run_cli(
        [
            "adjudicate",
            str(b / "settlements.csv"),
            "--fees",
            str(b / "fees.csv"),
            "--roster",
            str(GOLDEN / "roster.parquet"),
            "--lists",
            str(GOLDEN / "lists.parquet"),
            "--out",
            str(tmp_path / "out"),
            "--encoding",
            "klingon",
        ]
    )
    assert r.exit_code in (2, 3), r.output
    assert "klingon" in r.output
    assert _nothing_written(tmp_path / "out")


def test_wide_extract_normalises_like_the_two_file_extract(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    s = pl.read_parquet(b / "settlements.parquet")
    f = pl.read_parquet(b / "fees.parquet")
    shared = set(SETTLEMENTS.names) & set(FEE_LINES.names) - {"setl_id"}
    # a warehouse join: each fee line carries its settlement's columns, shared names prefixed
    wide = f.join(s.rename({c: f"SETL_{c}".upper() for c in shared}), on="setl_id", how="inner")
    wide.write_parquet(tmp_path / "wide.parquet")
    with_lines = s.join(f.select("setl_id").unique(), on="setl_id", how="semi")
    with_lines.write_parquet(tmp_path / "s.parquet")
    two = _frames(tmp_path / "s.parquet", b / "fees.parquet")
    one = _frames(tmp_path / "wide.parquet")
    assert_frame_equal(two[0], one[0])
    assert_frame_equal(two[1].join(with_lines.select("setl_id"), on="setl_id", how="semi"), one[1])


def test_ids_keep_leading_zeros_and_names_match_case_insensitively(tmp_path: Path) -> None:
    b = GOLDEN / "batch_00"
    upper = tmp_path / "upper.csv"
    df = pl.read_csv(b / "fees.csv", infer_schema=False)
    df.rename({c: c.upper() for c in df.columns}).write_csv(upper)
    lines = read_table(upper, FEE_LINES).collect()
    assert lines["feedetl_sn"].str.starts_with("000").any()
    assert lines.schema["feedetl_sn"] == pl.String
    assert lines.schema["det_item_fee_sumamt"] == pl.Int64  # fen


def test_site_column_names_map_through_hmb_toml(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="20000")
    files = ex.write(tmp_path / "in")
    renamed = pl.read_csv(files["settlements"], infer_schema=False).rename(
        {"setl_id": "JSID", "inscp_amt": "inscp_scp_amt"}  # a site name, and the known alias
    )
    renamed.write_csv(files["settlements"])
    (tmp_path / "hmb.toml").write_text('[columns]\nJSID = "setl_id"\n', encoding="utf-8")
    r = run_cli(
        adjudicate_args(
            files, str(tmp_path / "out"), "--config", str(tmp_path / "hmb.toml"), "--quiet"
        )
    )
    assert r.exit_code == 0, r.output
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    assert p["setl_id"].to_list() == ["S1"] and p["status"][0] == "paid"


def test_missing_required_column_stops_before_anything_is_written(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="100")
    files = ex.write(tmp_path / "in")
    pl.read_csv(files["settlements"], infer_schema=False).drop("setl_time").write_csv(
        files["settlements"]
    )
    with pytest.raises(SchemaError, match="setl_time"):
        read_extract(files["settlements"], files["fees"])
    r = run_cli(adjudicate_args(files, str(tmp_path / "out")))
    assert r.exit_code == 4
    assert "settlements.csv" in r.output and "setl_time" in r.output
    assert not (tmp_path / "out").exists()


def _quarantine(ex: Extract, tmp_path: Path) -> pl.DataFrame:
    files = ex.write(tmp_path / "in")
    r = run_cli(adjudicate_args(files, str(tmp_path / "out"), "--quiet"))
    assert r.exit_code == 0, r.output
    return pl.read_parquet(tmp_path / "out" / "quarantine.parquet")


def _reasons(q: pl.DataFrame, setl_id: str) -> list[str]:
    rows = q.filter((pl.col("setl_id") == setl_id) & (pl.col("record") == "settlement"))
    return sorted({r for rs in rows["reasons"] for r in rs})


def test_wrong_types_and_broken_identities_are_quarantined_with_reasons(
    ex: Extract, tmp_path: Path
) -> None:
    ex.member("M1")
    ex.claim("OK", "M1", "2022-03-01 10:00:00", reasonable="100")
    ex.claim("TEXT", "M1", "2022-03-02 10:00:00", reasonable="100", hifp_pay="abc")
    ex.claim("DECIMALS", "M1", "2022-03-03 10:00:00", reasonable="100", psn_pay="1.234")
    ex.claim("DATE", "M1", "2022-03-04 10:00:00", reasonable="100", setl_time="2022-02-30 10:00")
    ex.claim("NEG", "M1", "2022-03-05 10:00:00", reasonable="100", maf_pay="-1.00")
    ex.claim("SUM", "M1", "2022-03-06 10:00:00", reasonable="100", medfee_sumamt="999.99")
    ex.claim("HDR", "M1", "2022-03-07 10:00:00", reasonable="100")
    ex.settlements[-1]["fulamt_ownpay_amt"] = "50.00"
    ex.settlements[-1]["inscp_amt"] = "50.00"  # header total still adds up; lines do not
    ex.claim("NOLINES", "M1", "2022-03-08 10:00:00", reasonable="100")
    ex.lines = [ln for ln in ex.lines if ln["setl_id"] != "NOLINES"]
    ex.claim("TRAILING", "M1", "2022-03-09 10:00:00", reasonable="100", hifp_pay="1.2300")
    q = _quarantine(ex, tmp_path)
    assert _reasons(q, "OK") == [] and _reasons(q, "TRAILING") == []
    assert _reasons(q, "TEXT") == ["BAD_VALUE"]
    assert _reasons(q, "DECIMALS") == ["BAD_VALUE"]
    assert _reasons(q, "DATE") == ["BAD_VALUE"]
    assert _reasons(q, "NEG") == ["BAD_VALUE"]
    assert _reasons(q, "SUM") == ["AMOUNT_IDENTITY"]
    assert _reasons(q, "HDR") == ["HEADER_LINE_MISMATCH"]
    assert _reasons(q, "NOLINES") == ["MISSING_FEE_LINES"]
    detail = q.filter(pl.col("setl_id") == "TEXT")["detail"][0]
    assert "settlements.csv row 2" in detail and "hifp_pay" in detail and "'abc'" in detail
    assert "expected an amount" in detail
    # the quarantined settlement's lines are kept with it; nothing is dropped
    assert q.filter((pl.col("setl_id") == "TEXT") & (pl.col("record") == "fee_line")).height == 2
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    assert sorted(p["setl_id"]) == ["OK", "TRAILING"]


def test_duplicates_within_a_batch(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("SAME", "M1", "2022-03-01 10:00:00", reasonable="100")
    ex.settlements.append(dict(ex.settlements[-1]))  # identical repeat: one copy kept, counted
    ex.claim("DIFF", "M1", "2022-03-02 10:00:00", reasonable="100")
    ex.settlements.append({**ex.settlements[-1], "enddate": "2022-03-03"})
    q = _quarantine(ex, tmp_path)
    assert _reasons(q, "SAME") == []
    assert _reasons(q, "DIFF") == ["CONFLICTING_DUPLICATE"]
    assert q.filter((pl.col("setl_id") == "DIFF") & (pl.col("record") == "settlement")).height == 2
    p = pl.read_parquet(tmp_path / "out" / "payouts.parquet")
    assert p["setl_id"].to_list() == ["SAME"]


def test_reversal_may_be_negative_and_needs_no_lines(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="20000")
    ex.reversal("R1", "S1", "M1", "2022-03-05 10:00:00")
    ex.settlements[-1].update(medfee_sumamt="-20000.00", fulamt_ownpay_amt="-20000.00")
    q = _quarantine(ex, tmp_path)
    assert q.filter(pl.col("record") == "settlement").height == 0


def test_fee_lines_without_a_settlement_are_quarantined(ex: Extract, tmp_path: Path) -> None:
    ex.member("M1")
    ex.claim("S1", "M1", "2022-03-01 10:00:00", reasonable="100")
    ex.lines.append({**ex.lines[0], "setl_id": "GHOST"})
    q = _quarantine(ex, tmp_path)
    ghost = q.filter(pl.col("setl_id") == "GHOST")
    assert ghost["record"].to_list() == ["fee_line"]
    assert ghost["reasons"].to_list() == [["ORPHAN_FEE_LINES"]]


@pytest.mark.parametrize(
    ("values", "dtype", "fen"),
    [
        (["12.30", "-0.05", "1.2300", "7", " 3.1 "], pl.String, [1230, -5, 123, 700, 310]),
        (["1.234", "abc", "1e3", ""], pl.String, [None, None, None, None]),
        # floats: representation noise is rounded half up; a real third decimal is bad input
        ([0.1 + 0.2, 2.67, -3.53, 12.0, 1.005], pl.Float64, [30, 267, -353, 1200, None]),
        ([1.2345, float("nan")], pl.Float64, [None, None]),
        ([12, -3], pl.Int64, [1200, -300]),
    ],
)
def test_money_becomes_integer_fen(
    values: list[object], dtype: pl.DataType, fen: list[int | None]
) -> None:
    s = pl.DataFrame({"x": values}, schema={"x": dtype})
    got = s.select(fen_from(pl.col("x"), s.schema["x"]).alias("x"))["x"].to_list()
    assert got == fen


def test_decimal_parquet_money_is_exact(tmp_path: Path) -> None:
    lines = read_table(GOLDEN / "batch_00" / "fees.parquet", FEE_LINES).collect()
    raw = pl.read_parquet(GOLDEN / "batch_00" / "fees.parquet")
    assert (lines["det_item_fee_sumamt"].sum()) == int(raw["det_item_fee_sumamt"].sum() * 100)
    assert lines[ERRORS].list.len().sum() == 0


def test_timestamps_accept_space_or_t() -> None:
    df = pl.DataFrame(
        {
            "setl_id": ["a", "b", "c"],
            "feedetl_sn": ["1"] * 3,
            "fee_ocur_time": ["2022-03-31T08:24:01.000000", "2022-03-31 08:24:01", "2022-03-31"],
        }
    )
    from hmb_batch.io.extract import type_table

    typed = type_table(
        df.lazy().with_row_index(ROW).with_columns(pl.lit("t").alias(FILE)),
        FEE_LINES,
        require=False,
    ).collect()
    assert [str(t) for t in typed["fee_ocur_time"]] == [
        "2022-03-31 08:24:01",
        "2022-03-31 08:24:01",
        "2022-03-31 00:00:00",
    ]


def test_validation_verdict_for_every_settlement() -> None:
    b = GOLDEN / "batch_00"
    e = read_extract(b / "settlements.parquet", b / "fees.parquet")
    v = validate(e)
    accepted = v.settlements.collect().height
    rejected = v.quarantine.filter(pl.col("record") == "settlement").collect().height
    assert accepted + rejected == e.settlements.collect().height


def test_a_large_csv_is_read_in_pieces_as_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a CSV beyond CSV_PIECE_BYTES is read as pieces (Polars maps a file whole into memory):
    # the rows, their numbers and every message must be those of the file read whole, with
    # quoted commas and line breaks, a long record, a ragged row, a byte order mark and GBK all
    # across cuts
    from hmb_batch.io import extract

    header = "setl_id,psn_name,note,amount\n"
    rows = []
    for i in range(60):
        note = f'"a, ""quoted""\nline {i}"' if i % 7 == 3 else f"plain {i}"
        if i == 20:  # a record longer than several reads
            note = '"' + "long, " * 60 + '\nvalue"'
        extra = ",surplus" if i == 40 else ""
        rows.append(f"S{i:03d},张三{i},{note},{i}.50{extra}\n")
    text = header + "".join(rows) + "S999,李四,last,1"  # the last row has no line break
    files = {
        "utf-8": b"\xef\xbb\xbf" + text.encode("utf-8"),
        "gbk": text.encode("gbk"),
    }
    for encoding, content in files.items():
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes(content)
        extract._CHECKED.clear()
        whole = extract.scan_raw(path, encoding, temp_dir=tmp_path / "whole").collect()
        monkeypatch.setattr(extract, "CSV_PIECE_BYTES", 150)
        monkeypatch.setattr(extract, "_CHUNK", 64)  # the file is read (and cut) in 64-byte reads
        extract._CHECKED.clear()
        spill = tmp_path / f"pieces-{encoding}"
        pieces = extract.scan_raw(path, encoding, temp_dir=spill).collect()
        assert len(list(spill.glob("*.csv"))) >= 5, "the file was not cut into pieces"
        assert_frame_equal(pieces, whole)
        assert whole[ROW].to_list() == list(range(1, 62))
        assert (
            whole.filter(pl.col("setl_id") == "S040")["__shape"]
            .item()
            .startswith(f"{path} row 41 (line ")
        )
        chunks = pl.concat(
            [c.collect() for c in extract.raw_chunks(path, 7, encoding, temp_dir=spill)]
        )
        assert_frame_equal(chunks, whole)
        monkeypatch.undo()
    # a misplaced quote is named at the same line of the file, cut or not
    bad = tmp_path / "bad.csv"
    bad.write_bytes((header + "".join(rows[:50]) + 'S050,x,a"b,1\n').encode("gbk"))
    messages = []
    for piece_bytes in (1 << 26, 150):
        monkeypatch.setattr(extract, "CSV_PIECE_BYTES", piece_bytes)
        monkeypatch.setattr(extract, "_CHUNK", 64)
        extract._CHECKED.clear()
        with pytest.raises(extract.InputUnreadable) as refused:
            extract.scan_raw(bad, "gbk", temp_dir=tmp_path / f"bad-{piece_bytes}")
        messages.append(str(refused.value))
    assert messages[0] == messages[1] and "line 60 has a quote" in messages[0]
