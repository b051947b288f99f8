"""A synthetic plan year in the input contracts: settlements, fee lines, roster, lists.

Realistic in shape, not in detail: most members never claim; outpatient visits are many and
small, inpatient stays few and large with a heavy tail (some six- and seven-figure years); fee
lines are drugs, services and materials of Class A, B and out of list; enrolment is on time, late,
through special events or absent; some members have basic insurance suspended and restored; some
settlements are reversed; lists change during the year. The amount identities hold exactly on every
settlement and line, and lines add up to their settlement.

Vectorised (numpy) and written in chunks of members, so tens of millions of fee lines fit in
memory. Members are generated in fixed blocks of ``BLOCK`` with their own seeds spawned from the
run's seed, so the output depends on the seed only — not on the chunk size.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from hmb_batch.money import to_decimal

BLOCK = 10_000
DISTRICTS = np.array(
    ["331102", "331121", "331122", "331123", "331124", "331125", "331126", "331127", "331181"]
)
N_DRUGS, N_SERVICES, N_MATERIALS = 400, 200, 100
HOSPITALS = 60
EVENTS = np.array(["newborn", "veteran", "transfer_in", "released"])
EVENT_DAYS = np.array([90, 30, 30, 30])


@dataclass(frozen=True)
class GeneratorSettings:
    """What to generate."""

    members: int
    year: int
    seed: int
    chunk_members: int = 200_000


def _day(year: int, offset: np.ndarray) -> np.ndarray:
    return (np.datetime64(f"{year}-01-01") + offset.astype("timedelta64[D]")).astype(
        "datetime64[D]"
    )


def _codes() -> pl.DataFrame:
    """The item catalogue: code, list_type, level, kind."""
    kinds = ["drug"] * N_DRUGS + ["service"] * N_SERVICES + ["material"] * N_MATERIALS
    codes = (
        [f"XD{i:05d}" for i in range(N_DRUGS)]
        + [f"SV{i:05d}" for i in range(N_SERVICES)]
        + [f"MT{i:05d}" for i in range(N_MATERIALS)]
    )
    idx = np.arange(len(codes))
    list_type = np.where(
        idx < N_DRUGS,
        np.where(idx % 5 == 0, "102", "101"),
        np.where(idx < N_DRUGS + N_SERVICES, "201", "301"),
    )
    lv_pick = (idx * 7) % 10
    level = np.where(lv_pick < 5, "01", np.where(lv_pick < 8, "02", "03"))
    return pl.DataFrame({"code": codes, "list_type": list_type, "chrgitm_lv": level, "kind": kinds})


def generate_lists(year: int, seed: int) -> pl.DataFrame:
    """Negative, admission and special-drug lists, some entries starting or ending mid-year."""
    rng = np.random.default_rng([seed, 99])
    cat = _codes()
    rows: list[dict[str, Any]] = []
    jan1, prev = dt.date(year, 1, 1), dt.date(year - 1, 1, 1)

    def entry(list_name: str, code: str, kind: str, frm: dt.date, to: dt.date | None) -> None:
        rows.append(
            {
                "list": list_name,
                "code": code,
                "name": f"{list_name} {code}",
                "item_kind": kind,
                "valid_from": frm,
                "valid_to": to,
            }
        )

    for code, kind in cat.select("code", "kind").iter_rows():
        r = rng.random()
        mid = jan1 + dt.timedelta(days=int(rng.integers(30, 330)))
        if kind in ("drug", "material") and r < 0.06:
            entry("negative", code, kind, prev, None)
        elif kind in ("drug", "material") and r < 0.08:
            entry("negative", code, kind, mid, None)  # added mid-year
        elif kind == "drug" and r < 0.10:
            entry("negative", code, kind, prev, mid)  # removed mid-year
        if kind == "service" and r < 0.35:
            entry("admission", code, kind, prev, None)
        elif kind == "service" and r < 0.45:
            entry("admission", code, kind, mid, None)
        if kind == "drug" and r > 0.95:
            entry("special_drug", code, kind, prev, None)
    return pl.DataFrame(
        rows,
        schema={
            "list": pl.String,
            "code": pl.String,
            "name": pl.String,
            "item_kind": pl.String,
            "valid_from": pl.Date,
            "valid_to": pl.Date,
        },
    )


def _roster_block(rng: np.random.Generator, year: int, first: int, m: int) -> pl.DataFrame:
    """Roster rows of every member of one block, with ``_enrolled`` (False: claims only)."""
    ids = np.array([f"P{year}{i:08d}" for i in range(first, first + m)])
    kind = rng.random(m)
    enrolled = kind >= 0.015  # 1.5% claim without being enrolled
    event = (kind >= 0.09) & (kind < 0.105)
    on_time = kind >= 0.105
    pay_off = np.where(on_time, rng.integers(-120, 0, m), rng.integers(0, 330, m))
    pay = _day(year, pay_off)
    ev_idx = rng.integers(0, len(EVENTS), m)
    ev_off = rng.integers(-20, 300, m)
    ev_date = _day(year, ev_off)
    # mostly within the window, some a few days past it
    delay = np.where(
        rng.random(m) < 0.8,
        rng.integers(0, 1, m) * 0 + (EVENT_DAYS[ev_idx] * rng.random(m)).astype(int),
        EVENT_DAYS[ev_idx] + rng.integers(1, 10, m),
    )
    pay = np.where(event, ev_date + delay.astype("timedelta64[D]"), pay)
    basic_start = np.where(event, ev_date, np.datetime64("2017-01-01"))
    susp = enrolled & (rng.random(m) < 0.02)
    s_from = _day(year, rng.integers(0, 250, m))
    s_len = rng.integers(10, 90, m)
    s_to = s_from + s_len.astype("timedelta64[D]")
    still = susp & (rng.random(m) < 0.15)
    restored = s_to + np.timedelta64(1, "D")
    nat = np.datetime64("NaT")
    df = pl.DataFrame(
        {
            "psn_no": ids,
            "plan_year": np.full(m, year, dtype=np.int64),
            "pay_date": pay,
            "basic_start_date": basic_start,
            "special_event": np.where(event, EVENTS[ev_idx], ""),
            "event_date": np.where(event, ev_date, nat),
            "basic_suspended_from": np.where(susp, s_from, nat),
            "basic_suspended_to": np.where(susp & ~still, s_to, nat),
            "basic_restored_date": np.where(susp & ~still, restored, nat),
            "hardship": np.where(
                rng.random(m) < 0.03, np.array(["特困", "低保", "低边"])[rng.integers(0, 3, m)], ""
            ),
            "admdvs": DISTRICTS[rng.integers(0, len(DISTRICTS), m)],
            "pre_existing": np.where(rng.random(m) < 0.06, "1", "0"),
            "consecutive_years": rng.integers(1, 5, m).astype(np.int64),
            "_enrolled": enrolled,
        }
    ).with_columns(
        pl.col(c).cast(pl.Date)
        for c in (
            "pay_date",
            "basic_start_date",
            "event_date",
            "basic_suspended_from",
            "basic_suspended_to",
            "basic_restored_date",
        )
    )
    return df


def _claims_block(
    rng: np.random.Generator,
    year: int,
    roster_ids: np.ndarray,
    admdvs: np.ndarray,
    hardship: np.ndarray,
    setl_offset: int,
    catalogue: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    m = len(roster_ids)
    claimer = rng.random(m) < 0.42
    n_out = np.where(claimer, rng.geometric(0.22, m), 0)
    n_in = np.where(claimer & (rng.random(m) < 0.12), rng.integers(1, 4, m), 0)
    n = n_out + n_in
    member = np.repeat(np.arange(m), n)
    total = len(member)
    if total == 0:
        return pl.DataFrame(), pl.DataFrame()
    # which of a member's settlements are inpatient: the last n_in ones
    pos = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    inpatient = pos >= np.repeat(n_out, n)
    med_type = np.where(inpatient, "21", np.where(rng.random(total) < 0.45, "14", "11"))
    employee = rng.random(m) < 0.45
    insutype = np.where(employee[member], "310", "390")
    setl_day = rng.integers(0, 365 if year % 4 else 366, total)
    los = np.where(inpatient, rng.integers(1, 21, total), 0)
    begin = _day(year, np.maximum(setl_day - los, 0))
    end = _day(year, setl_day)
    seconds = rng.integers(6 * 3600, 23 * 3600, total)
    setl_time = (end.astype("datetime64[s]") + seconds.astype("timedelta64[s]")).astype(
        "datetime64[us]"
    )
    setl_ids = np.array([f"S{year}{i:09d}" for i in range(setl_offset, setl_offset + total)])
    hospital = rng.integers(0, HOSPITALS, total)

    # fee lines
    k = np.where(inpatient, rng.integers(8, 40, total), rng.integers(1, 8, total))
    settle_of = np.repeat(np.arange(total), k)
    nl = len(settle_of)
    cat_pick = rng.random(nl)
    code_idx = np.where(
        cat_pick < 0.6,
        rng.integers(0, N_DRUGS, nl),
        np.where(
            cat_pick < 0.9,
            N_DRUGS + rng.integers(0, N_SERVICES, nl),
            N_DRUGS + N_SERVICES + rng.integers(0, N_MATERIALS, nl),
        ),
    )
    codes = catalogue["code"].to_numpy()[code_idx]
    list_type = catalogue["list_type"].to_numpy()[code_idx]
    level = catalogue["chrgitm_lv"].to_numpy()[code_idx]
    scale = np.where(inpatient, rng.lognormal(0.0, 1.0, total), 1.0)
    scale = np.where(inpatient & (rng.random(total) < 0.004), scale * 60, scale)  # the heavy tail
    base = np.where(
        inpatient[settle_of],
        rng.lognormal(np.log(250), 1.3, nl),
        rng.lognormal(np.log(25), 1.0, nl),
    )
    amount = np.maximum(1, np.round(base * scale[settle_of] * 100)).astype(np.int64)
    pre = np.where(level == "02", np.round(amount * rng.choice([0.05, 0.1, 0.2], nl)), 0).astype(
        np.int64
    )
    over = np.where((level != "03") & (rng.random(nl) < 0.04), np.round(amount * 0.3), 0).astype(
        np.int64
    )
    over = np.minimum(over, amount - pre)
    fulamt = np.where(level == "03", amount, 0).astype(np.int64)
    inscp = amount - pre - over - fulamt
    serial = np.arange(nl) - np.repeat(np.cumsum(k) - k, k) + 1
    span = (end - begin).astype(np.int64)[settle_of] + 1
    fee_day = begin[settle_of] + (rng.random(nl) * span).astype("timedelta64[D]")
    fee_time = (
        fee_day.astype("datetime64[s]") + rng.integers(0, 86400, nl).astype("timedelta64[s]")
    ).astype("datetime64[us]")

    def per_settlement(x: np.ndarray) -> np.ndarray:
        return np.bincount(settle_of, weights=x, minlength=total).astype(np.int64)

    s_fulamt, s_over, s_pre, s_inscp = map(per_settlement, (fulamt, over, pre, inscp))
    medfee = s_fulamt + s_over + s_pre + s_inscp
    rate = np.where(
        insutype == "310", np.where(inpatient, 0.85, 0.6), np.where(inpatient, 0.65, 0.5)
    )
    hifp = np.round(s_inscp * rate).astype(np.int64)
    left = s_inscp - hifp
    catastrophic = np.where(left > 1_500_000, np.round((left - 1_500_000) * 0.6), 0).astype(
        np.int64
    )
    hifmi = np.where(insutype == "390", catastrophic, 0)
    hifob = np.where(insutype == "310", catastrophic, 0)
    left = left - catastrophic
    poor = hardship[member] != ""
    maf = np.where(poor, np.round(left * 0.5), 0).astype(np.int64)
    left = left - maf
    referred = inpatient & (rng.random(total) < 0.03)
    refl = np.where(referred, np.floor(left * rng.uniform(0.05, 0.3, total)), 0).astype(np.int64)
    refl = refl | np.where(referred, 1, 0)  # odd fen: the 50% share needs half-up rounding
    refl = np.minimum(refl, left)
    fund = hifp + hifmi + hifob + maf
    zeros = np.zeros(total, dtype=np.int64)
    fen = {
        "medfee_sumamt": medfee,
        "fulamt_ownpay_amt": s_fulamt,
        "overlmt_selfpay": s_over,
        "preselfpay_amt": s_pre,
        "inscp_amt": s_inscp,
        "hifp_pay": hifp,
        "cvlserv_pay": zeros,
        "hifes_pay": zeros,
        "hifmi_pay": hifmi,
        "hifob_pay": hifob,
        "maf_pay": maf,
        "othfund_pay": zeros,
        "fund_pay_sumamt": fund,
        "psn_pay": medfee - fund,
        "refl_selfpay_amt": refl,
    }
    settlements = pl.DataFrame(
        {
            "setl_id": setl_ids,
            "init_setl_id": np.full(total, None),
            "refd_setl_flag": np.full(total, "0"),
            "psn_no": roster_ids[member],
            "psn_name": np.full(total, "张三"),
            "certno": np.full(total, "331102199001011234"),
            "insutype": insutype,
            "med_type": med_type,
            "insu_admdvs": admdvs[member],
            "fixmedins_code": np.array([f"H{h:04d}" for h in range(HOSPITALS)])[hospital],
            "fixmedins_name": np.array([f"丽水第{h + 1}医院" for h in range(HOSPITALS)])[hospital],
            "begndate": begin,
            "enddate": end,
            "setl_time": setl_time,
            **fen,
        },
        schema_overrides={"init_setl_id": pl.String},
    ).with_columns(
        pl.col("begndate", "enddate").cast(pl.Date), pl.col("setl_time").cast(pl.Datetime("us"))
    )
    # reversals: about 1% of settlements are undone a few days later, without fee lines
    rev = settlements.filter(pl.Series(rng.random(total) < 0.01))
    if rev.height:
        later = pl.duration(days=pl.lit(pl.Series(rng.integers(1, 20, rev.height))))
        rev = rev.with_columns(
            pl.col("setl_id").alias("init_setl_id"),
            ("R" + pl.col("setl_id")).alias("setl_id"),
            pl.lit("1").alias("refd_setl_flag"),
            pl.min_horizontal(
                pl.col("setl_time") + later, pl.lit(dt.datetime(year, 12, 31, 23, 59, 59))
            ).alias("setl_time"),
            *[(-pl.col(c)).alias(c) for c in fen],
        )
        settlements = pl.concat([settlements, rev])
    lines = pl.DataFrame(
        {
            "setl_id": setl_ids[settle_of],
            "feedetl_sn": np.char.zfill(serial.astype(str), 4),
            "fee_ocur_time": fee_time,
            "med_list_codg": codes,
            "hilist_name": np.char.add("item ", codes.astype(str)),
            "list_type": list_type,
            "chrgitm_lv": level,
            "med_chrgitm_type": np.where(
                list_type == "201", "05", np.where(list_type == "301", "08", "09")
            ),
            "det_item_fee_sumamt": amount,
            "fulamt_ownpay_amt": fulamt,
            "overlmt_amt": over,
            "preselfpay_amt": pre,
            "inscp_scp_amt": inscp,
        }
    ).with_columns(pl.col("fee_ocur_time").cast(pl.Datetime("us")))
    return settlements, lines


def _money_out(df: pl.DataFrame, money: list[str]) -> pl.DataFrame:
    return df.with_columns([to_decimal(pl.col(c)).alias(c) for c in money if c in df.columns])


_SETTLE_MONEY = [
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_amt",
    "hifp_pay",
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "othfund_pay",
    "fund_pay_sumamt",
    "psn_pay",
    "refl_selfpay_amt",
]
_LINE_MONEY = [
    "det_item_fee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
]


class _Sink:
    """Appends frames to one Parquet (row groups) or CSV file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.writer: pq.ParquetWriter | None = None
        self.started = False

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        if self.fmt == "parquet":
            table = df.to_arrow()
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self.writer.write_table(table)
        else:
            with self.path.open("a" if self.started else "w", encoding="utf-8", newline="") as fh:
                df.write_csv(fh, include_header=not self.started)
        self.started = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def generate_year(
    settings: GeneratorSettings, out_dir: Path, fmt: str = "parquet"
) -> dict[str, int]:
    """Write roster, lists, settlements and fee lines for one plan year into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if fmt == "parquet" else "csv"
    year = settings.year
    catalogue = _codes()
    lists = generate_lists(year, settings.seed)
    n_blocks = -(-settings.members // BLOCK)
    seeds = np.random.SeedSequence(settings.seed).spawn(n_blocks)
    sinks = {
        name: _Sink(out_dir / f"{name}.{ext}", fmt) for name in ("settlements", "fees", "roster")
    }
    counts = {"members": 0, "settlements": 0, "fee_lines": 0}
    blocks_per_chunk = max(1, settings.chunk_members // BLOCK)
    setl_offset = 0
    try:
        for chunk_start in range(0, n_blocks, blocks_per_chunk):
            parts: dict[str, list[pl.DataFrame]] = {"settlements": [], "fees": [], "roster": []}
            for b in range(chunk_start, min(n_blocks, chunk_start + blocks_per_chunk)):
                rng = np.random.default_rng(seeds[b])
                first = b * BLOCK
                m = min(BLOCK, settings.members - first)
                block = _roster_block(rng, year, first, m)
                # claims come from every member of the block, enrolled or not
                settlements, fees = _claims_block(
                    rng,
                    year,
                    block["psn_no"].to_numpy(),
                    block["admdvs"].to_numpy(),
                    block["hardship"].to_numpy(),
                    setl_offset,
                    catalogue,
                )
                roster = block.filter(pl.col("_enrolled")).drop("_enrolled")
                setl_offset += (
                    settlements.filter(pl.col("refd_setl_flag") == "0").height
                    if settlements.height
                    else 0
                )
                parts["roster"].append(roster)
                if settlements.height:
                    parts["settlements"].append(settlements)
                    parts["fees"].append(fees)
                counts["members"] += roster.height
            for name, frames in parts.items():
                if not frames:
                    continue
                df = pl.concat(frames)
                if name == "settlements":
                    counts["settlements"] += df.height
                    df = _money_out(df, _SETTLE_MONEY)
                elif name == "fees":
                    counts["fee_lines"] += df.height
                    df = _money_out(df, _LINE_MONEY)
                sinks[name].write(df)
    finally:
        for s in sinks.values():
            s.close()
    if fmt == "parquet":
        lists.write_parquet(out_dir / "lists.parquet")
    else:
        lists.write_csv(out_dir / "lists.csv")
    return {**counts, "list_entries": lists.height}


def split_nights(out_dir: Path, nights: int) -> list[Path]:
    """Split a generated year's settlements and fee lines into ``nights`` nightly extracts.

    Nights are equal spans of the year's days by settlement time, written to ``nightly/NN/``
    (Parquet), so the year can be run batch by batch on one ledger. Streams each night from the
    files.
    """
    settlements = pl.scan_parquet(out_dir / "settlements.parquet")
    fees = pl.scan_parquet(out_dir / "fees.parquet")
    day = pl.col("setl_time").dt.ordinal_day() - 1
    folders = []
    for n in range(nights):
        folder = out_dir / "nightly" / f"{n + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        night = settlements.filter((day * nights // 366) == n)
        night.sink_parquet(folder / "settlements.parquet")
        fees.join(night.select("setl_id"), on="setl_id", how="semi").sink_parquet(
            folder / "fees.parquet"
        )
        folders.append(folder)
    return folders
