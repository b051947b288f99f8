"""Personal data: masked in payout files unless --unmasked; never in reports, logs or summaries."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from conftest import GOLDEN, new_ledger, run_cli


def _night_with_names(tmp_path: Path) -> tuple[Path, pl.DataFrame]:
    """Golden batch_00 with a distinct name and certificate number per member."""
    s = pl.read_parquet(GOLDEN / "batch_00" / "settlements.parquet").with_columns(
        pl.format("欧阳{}", pl.col("psn_no").str.slice(-4)).alias("psn_name"),
        pl.format("3311021990{}", pl.col("psn_no").str.slice(-8)).alias("certno"),
    )
    path = tmp_path / "settlements.parquet"
    s.write_parquet(path)
    return path, s.select("psn_no", "psn_name", "certno").unique("psn_no")


def _run(settlements: Path, out: Path, *extra: str) -> str:
    r = run_cli(
        [
            "adjudicate",
            str(settlements),
            "--fees",
            str(GOLDEN / "batch_00" / "fees.parquet"),
            "--roster",
            str(GOLDEN / "roster.parquet"),
            "--lists",
            str(GOLDEN / "lists.parquet"),
            "--plan",
            "zhelibao",
            "--ledger",
            str(new_ledger(out.parent / f"{out.name}.duckdb")),
            "--out",
            str(out),
            "--csv",
            *extra,
        ]
    )
    assert r.exit_code == 0, r.output
    return str(r.output)


def test_payout_files_mask_names_and_certificate_numbers(tmp_path: Path) -> None:
    settlements, people = _night_with_names(tmp_path)
    output = _run(settlements, tmp_path / "masked")
    paid = pl.read_parquet(tmp_path / "masked" / "payouts.parquet").join(
        people, on="psn_no", suffix="_in"
    )
    assert paid.height > 700
    for row in paid.select("psn_name", "certno", "psn_name_in", "certno_in").iter_rows():
        name, cert, name_in, cert_in = row
        assert name == name_in[0] + "*" * (len(name_in) - 1)  # 欧阳1234 → 欧*****
        assert cert == cert_in[:3] + "*" * (len(cert_in) - 7) + cert_in[-4:]
    # nothing the run wrote or printed holds a full name or certificate number
    secrets = set(people["psn_name"]) | set(people["certno"])
    texts = [output] + [
        (tmp_path / "masked" / name).read_text(encoding="utf-8")
        for name in ("payouts.csv", "report.html", "report.md", "reconciliation.json")
    ]
    texts.append((tmp_path / "masked" / "manifest.json").read_text(encoding="utf-8"))
    for text in texts:
        assert not [x for x in secrets if x in text]


def test_unmasked_payout_files_carry_the_full_values(tmp_path: Path) -> None:
    settlements, people = _night_with_names(tmp_path)
    _run(settlements, tmp_path / "full", "--unmasked")
    paid = pl.read_parquet(tmp_path / "full" / "payouts.parquet").join(
        people, on="psn_no", suffix="_in"
    )
    assert (paid["psn_name"] == paid["psn_name_in"]).all()
    assert (paid["certno"] == paid["certno_in"]).all()
    # reports stay free of personal data even then
    report = (tmp_path / "full" / "report.html").read_text(encoding="utf-8")
    assert not [x for x in set(people["psn_name"]) if x in report]


def test_masking_hides_every_character_of_hostile_values() -> None:
    # a line break inside a name or ID number is masked like any character (a regular
    # expression's "." would have kept it, and the characters around it), and an empty or
    # short value gives no more stars than it has characters
    from hmb_batch.io.outputs import masked_certno, masked_name

    values = ["张\n三\n丰", "33\n0102199001011234", "", "1234567", "张", None]
    got = pl.DataFrame({"v": values}, schema={"v": pl.String}).select(
        masked_name(pl.col("v")).alias("name"), masked_certno(pl.col("v")).alias("cert")
    )
    assert got["name"].to_list() == ["张****", "3" + "*" * 18, "", "1******", "张", None]
    assert got["cert"].to_list() == [
        "*****",
        "33\n" + "*" * 12 + "1234",
        "",
        "*******",
        "*",
        None,
    ]
