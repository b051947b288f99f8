"""Synthetic plan years in the input contracts: settlements, fee lines, roster, lists.

Realistic in shape, not in detail: most members never claim; outpatient visits are many and
small, inpatient stays few and large with a heavy tail (six-figure years in every few thousand
members, seven-figure ones in a few per million); fee lines are drugs, services and materials
of Class A, B and out of list; enrolment is on time, late, through special events or absent;
some members have basic insurance suspended and restored; some settlements are reversed; lists
change during the year. The amount identities hold exactly on every settlement and line, and
lines add up to their settlement.

Calibrated so that a year pays about what a real plan does: under 浙丽保's rules (deductible
18,000 yuan, 75–95%) payouts come to some 95% of the premium pool net of operating cost. A
member's inpatient cost for the year is drawn from a log-logistic distribution at a stratified
quantile: each block's members take the quantiles in equal steps, in random order, so a few
thousand members already cover the distribution's body and a small year pays near the mean
instead of swinging with a handful of large cases.

Several consecutive plan years (``years``) keep the same members, most re-enrolling: each year
some leave for good and new ones join, and the roster holds one row per member and plan year,
its ``consecutive_years`` counting the member's unbroken years on the roster.

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

# Who claims in a year, by a member's stratified quantile u: the top P_CLAIM have outpatient
# visits, the top P_INPATIENT also inpatient stays.
P_CLAIM = 0.42
P_INPATIENT = 0.12
# A hospitalised member's inpatient cost for the year (yuan) at quantile v of the inpatients:
# log-logistic, IN_SCALE × (v / (1 − v)) ^ (1 / IN_SHAPE), at least IN_MIN; the quantile is
# cut at IN_TOP so the stratified body stays six-figure at most.
IN_SCALE, IN_SHAPE, IN_MIN, IN_TOP = 24_400.0, 2.2, 800.0, 0.998
IN_LINE_SIGMA = 0.4
# Seven-figure years are rare events on top of the body: this share of member-years, costs
# from CATASTROPHIC_MIN up (exponential on a log scale), capped.
CATASTROPHIC_RATE, CATASTROPHIC_MIN, CATASTROPHIC_MAX = 3e-6, 800_000.0, 4_000_000.0
# Consecutive years: each year this share of members leaves for good, and as many new ones
# (as a share of the first year's members) join.
LEAVE_RATE, JOIN_RATE = 0.10, 0.10


@dataclass(frozen=True)
class GeneratorSettings:
    """What to generate: ``members`` in the first plan year ``year``, ``years`` consecutive."""

    members: int
    year: int
    seed: int
    chunk_members: int = 200_000
    years: int = 1

    @property
    def joiners(self) -> int:
        """New members joining in each year after the first."""
        return max(1, round(self.members * JOIN_RATE)) if self.years > 1 else 0

    @property
    def pool(self) -> int:
        """Everyone who is a member in any of the years."""
        return self.members + self.joiners * (self.years - 1)


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


def _stratified(rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
    """A uniform quantile per row, stratified within each group: a group of n rows takes one
    value in each of the n equal steps of (0, 1), in random order."""
    n = len(group)
    order = np.lexsort((rng.random(n), group))
    _, first, size = np.unique(group[order], return_index=True, return_counts=True)
    step = np.repeat(size, size)
    rank = np.arange(n) - np.repeat(first, size)
    q = np.empty(n)
    q[order] = (rank + rng.random(n)) / step
    return q


def _item_at(catalogue: pl.DataFrame, q: np.ndarray) -> np.ndarray:
    """The catalogue row at quantile ``q`` of the items' mix: drugs, services and materials
    60/30/10%, each kind's levels 01/02/03 50/30/20%, uniform over a (kind, level)'s codes."""
    kind = catalogue["kind"].replace_strict({"drug": 0, "service": 1, "material": 2}).to_numpy()
    level = catalogue["chrgitm_lv"].replace_strict({"01": 0, "02": 1, "03": 2}).to_numpy()
    group = kind * 3 + level
    sizes = np.bincount(group, minlength=9)
    rows = np.argsort(group, kind="stable")
    share = np.outer([0.6, 0.3, 0.1], [0.5, 0.3, 0.2]).ravel()
    upper = np.cumsum(share)
    g = np.minimum(np.searchsorted(upper, q, side="right"), 8)
    within = np.clip((q - (upper[g] - share[g])) / share[g], 0.0, 1.0 - 1e-12)
    picked: np.ndarray = rows[(np.cumsum(sizes) - sizes)[g] + (within * sizes[g]).astype(np.int64)]
    return picked


def generate_lists(year: int, seed: int, years: int = 1) -> pl.DataFrame:
    """Negative, admission and special-drug lists, some entries starting or ending during the
    ``years`` plan years from ``year``."""
    rng = np.random.default_rng([seed, 99])
    cat = _codes()
    rows: list[dict[str, Any]] = []
    jan1, prev = dt.date(year, 1, 1), dt.date(year - 1, 1, 1)
    last_change = 330 + 365 * (years - 1)

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
        mid = jan1 + dt.timedelta(days=int(rng.integers(30, last_change)))
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


@dataclass
class _Members:
    """One block's members over all the years: who they are, and what carries from year to
    year (index i is member ``first + i``)."""

    ids: np.ndarray
    joined: np.ndarray  # the year index of their first year
    left: np.ndarray  # the year index of their first year gone
    admdvs: np.ndarray
    hardship: np.ndarray
    pre_existing: np.ndarray
    employee: np.ndarray
    streak: np.ndarray  # consecutive years on the roster up to the last year generated
    basic_start: np.ndarray


def _members(rng: np.random.Generator, settings: GeneratorSettings, first: int, m: int) -> _Members:
    idx = np.arange(first, first + m)
    joined = np.where(
        idx < settings.members, 0, 1 + (idx - settings.members) // max(1, settings.joiners)
    )
    return _Members(
        ids=np.array([f"P{settings.year}{i:08d}" for i in idx]),
        joined=joined,
        left=joined + rng.geometric(LEAVE_RATE, m),
        admdvs=DISTRICTS[rng.integers(0, len(DISTRICTS), m)],
        hardship=np.where(
            rng.random(m) < 0.03, np.array(["特困", "低保", "低边"])[rng.integers(0, 3, m)], ""
        ),
        pre_existing=np.where(rng.random(m) < 0.06, "1", "0"),
        employee=rng.random(m) < 0.45,
        # the first year's members have been on the roster up to three years before it
        streak=np.where(joined == 0, rng.integers(0, 4, m), 0),
        basic_start=np.full(m, np.datetime64("2017-01-01"), dtype="datetime64[D]"),
    )


def _roster_year(
    rng: np.random.Generator, year: int, members: _Members, who: np.ndarray, new: np.ndarray
) -> pl.DataFrame:
    """Roster rows of the members ``who`` (indices into ``members``) for one plan year, with
    ``_enrolled`` (False: claims only); ``new`` marks those in their first year, the only ones
    who may join through a special event. Updates the members' streak and basic start."""
    m = len(who)
    kind = rng.random(m)
    enrolled = kind >= 0.015  # 1.5% claim without being enrolled
    event = new & (kind >= 0.09) & (kind < 0.105)
    on_time = kind >= 0.105
    pay_off = np.where(on_time, rng.integers(-120, 0, m), rng.integers(0, 330, m))
    pay = _day(year, pay_off)
    ev_idx = rng.integers(0, len(EVENTS), m)
    ev_off = rng.integers(-20, 300, m)
    ev_date = _day(year, ev_off)
    # mostly within the window, some a few days past it
    delay = np.where(
        rng.random(m) < 0.8,
        (EVENT_DAYS[ev_idx] * rng.random(m)).astype(int),
        EVENT_DAYS[ev_idx] + rng.integers(1, 10, m),
    )
    pay = np.where(event, ev_date + delay.astype("timedelta64[D]"), pay)
    members.basic_start[who[event]] = ev_date[event]
    members.streak[who] = np.where(enrolled, members.streak[who] + 1, 0)
    susp = enrolled & (rng.random(m) < 0.02)
    s_from = _day(year, rng.integers(0, 250, m))
    s_len = rng.integers(10, 90, m)
    s_to = s_from + s_len.astype("timedelta64[D]")
    still = susp & (rng.random(m) < 0.15)
    restored = s_to + np.timedelta64(1, "D")
    nat = np.datetime64("NaT")
    return pl.DataFrame(
        {
            "psn_no": members.ids[who],
            "plan_year": np.full(m, year, dtype=np.int64),
            "pay_date": pay,
            "basic_start_date": members.basic_start[who],
            "special_event": np.where(event, EVENTS[ev_idx], ""),
            "event_date": np.where(event, ev_date, nat),
            "basic_suspended_from": np.where(susp, s_from, nat),
            "basic_suspended_to": np.where(susp & ~still, s_to, nat),
            "basic_restored_date": np.where(susp & ~still, restored, nat),
            "hardship": members.hardship[who],
            "admdvs": members.admdvs[who],
            "pre_existing": members.pre_existing[who],
            "consecutive_years": members.streak[who].astype(np.int64),
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


def _inpatient_cost(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
    """A hospitalised member's inpatient cost for the year (yuan) at quantile ``v``."""
    v = np.minimum(v, IN_TOP)
    body = np.maximum(IN_MIN, IN_SCALE * (v / (1.0 - v)) ** (1.0 / IN_SHAPE))
    rare = rng.random(len(v)) < CATASTROPHIC_RATE / P_INPATIENT
    huge = np.minimum(CATASTROPHIC_MAX, CATASTROPHIC_MIN * np.exp(rng.exponential(0.6, len(v))))
    return np.where(rare, huge, body)


def _claims_block(
    rng: np.random.Generator,
    year: int,
    members: _Members,
    who: np.ndarray,
    setl_offset: int,
    catalogue: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One plan year's settlements and fee lines of the members ``who``."""
    m = len(who)
    roster_ids, admdvs, hardship = members.ids[who], members.admdvs[who], members.hardship[who]
    # a member's health for the year: a quantile stratified among the employees and among the
    # others (whose basic insurance leaves them more to pay), so the sickest are shared between
    # the two as the members are, not as a few draws fall
    u = _stratified(rng, members.employee[who])
    claimer = u >= 1.0 - P_CLAIM
    in_member = u >= 1.0 - P_INPATIENT
    v = np.clip((u - (1.0 - P_INPATIENT)) / P_INPATIENT, 0.0, 1.0)
    n_out = np.where(claimer, rng.geometric(0.22, m), 0)
    # sicker members have more stays, the year's cost shared between them
    n_in = np.where(in_member, 1 + rng.binomial(1, 0.5 * v), 0)
    year_cost = np.where(in_member, _inpatient_cost(rng, v), 0.0)
    n = n_out + n_in
    member = np.repeat(np.arange(m), n)
    total = len(member)
    if total == 0:
        return pl.DataFrame(), pl.DataFrame()
    # which of a member's settlements are inpatient: the last n_in ones
    pos = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    inpatient = pos >= np.repeat(n_out, n)
    share = np.where(inpatient, rng.exponential(1.0, total), 0.0)
    share = share / np.maximum(np.bincount(member, weights=share, minlength=m), 1e-12)[member]
    stay_cost = year_cost[member] * share
    med_type = np.where(inpatient, "21", np.where(rng.random(total) < 0.45, "14", "11"))
    insutype = np.where(members.employee[who][member], "310", "390")
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
    # each line's item at a quantile q of the catalogue (kinds 60/30/10%, levels 50/30/20%): a
    # stay's lines take q in equal steps, so its mix of kinds, levels and listed items is the
    # catalogue's, give or take a line
    q = np.where(inpatient[settle_of], _stratified(rng, settle_of), rng.random(nl))
    code_idx = _item_at(catalogue, q)
    codes = catalogue["code"].to_numpy()[code_idx]
    list_type = catalogue["list_type"].to_numpy()[code_idx]
    level = catalogue["chrgitm_lv"].to_numpy()[code_idx]
    # an inpatient stay's cost spread over its lines by random weights; outpatient lines small
    weight = rng.lognormal(0.0, IN_LINE_SIGMA, nl)
    weight_sum = np.bincount(settle_of, weights=weight, minlength=total)[settle_of]
    base = np.where(
        inpatient[settle_of],
        stay_cost[settle_of] * weight / weight_sum,
        rng.lognormal(np.log(25), 1.0, nl),
    )
    amount = np.maximum(1, np.round(base * 100)).astype(np.int64)
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


@dataclass(frozen=True)
class Generated:
    """What :func:`generate_year` wrote: roster rows per plan year, settlements (reversals
    included), fee lines and list entries."""

    members_by_year: dict[int, int]
    settlements: int
    fee_lines: int
    list_entries: int


def generate_year(settings: GeneratorSettings, out_dir: Path, fmt: str = "parquet") -> Generated:
    """Write roster, lists, settlements and fee lines of ``settings.years`` consecutive plan
    years from ``settings.year`` into ``out_dir`` (one file each, every year in it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if fmt == "parquet" else "csv"
    plan_years = [settings.year + k for k in range(settings.years)]
    catalogue = _codes()
    lists = generate_lists(settings.year, settings.seed, settings.years)
    n_blocks = -(-settings.pool // BLOCK)
    seeds = np.random.SeedSequence(settings.seed).spawn(n_blocks)
    sinks = {
        name: _Sink(out_dir / f"{name}.{ext}", fmt) for name in ("settlements", "fees", "roster")
    }
    members_by_year = dict.fromkeys(plan_years, 0)
    counts = {"settlements": 0, "fee_lines": 0}
    blocks_per_chunk = max(1, settings.chunk_members // BLOCK)
    setl_offset = dict.fromkeys(plan_years, 0)
    try:
        for chunk_start in range(0, n_blocks, blocks_per_chunk):
            parts: dict[str, list[pl.DataFrame]] = {"settlements": [], "fees": [], "roster": []}
            for b in range(chunk_start, min(n_blocks, chunk_start + blocks_per_chunk)):
                rng = np.random.default_rng(seeds[b])
                first = b * BLOCK
                members = _members(rng, settings, first, min(BLOCK, settings.pool - first))
                for k, year in enumerate(plan_years):
                    who = np.flatnonzero((members.joined <= k) & (k < members.left))
                    if len(who) == 0:
                        continue
                    block = _roster_year(rng, year, members, who, members.joined[who] == k)
                    # claims come from every member of the year, enrolled or not
                    settlements, fees = _claims_block(
                        rng, year, members, who, setl_offset[year], catalogue
                    )
                    roster = block.filter(pl.col("_enrolled")).drop("_enrolled")
                    parts["roster"].append(roster)
                    members_by_year[year] += roster.height
                    if settlements.height:
                        setl_offset[year] += settlements.filter(
                            pl.col("refd_setl_flag") == "0"
                        ).height
                        parts["settlements"].append(settlements)
                        parts["fees"].append(fees)
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
    return Generated(members_by_year, counts["settlements"], counts["fee_lines"], lists.height)


# Rows one pass of split_nights holds in memory: nights are written in groups of about this
# many settlements (and as many fee lines), each group read from the files once.
SPLIT_ROWS = 2_000_000


def night_count(year: int, nights: int) -> int:
    """Nightly extracts a plan year is split into: ``nights``, or one a calendar day when
    ``nights`` is 365 or more (366 in a leap year)."""
    days = (dt.date(year + 1, 1, 1) - dt.date(year, 1, 1)).days
    return days if nights >= 365 else nights


def split_nights(out_dir: Path, nights: int, first_year: int, years: int = 1) -> list[Path]:
    """Split generated years' settlements and fee lines into nightly extracts.

    Each plan year is cut into ``nights`` equal spans of its days by settlement time — one a
    calendar day with ``nights`` ≥ 365 — written to ``nightly/NN/`` (Parquet), numbered from 1
    across the years in date order, zero-padded (at least two digits) so the names sort in
    order. Every night gets its folder, an empty extract on a day without settlements. The
    years can then be run batch by batch on one ledger. Streams from the files in groups of
    nights, each group read once.
    """
    settlements = pl.scan_parquet(out_dir / "settlements.parquet")
    fees = pl.scan_parquet(out_dir / "fees.parquet")
    per_year = {first_year + k: night_count(first_year + k, nights) for k in range(years)}
    offsets, total = {}, 0
    for y, count in per_year.items():
        offsets[y], total = total, total + count
    width = max(2, len(str(total)))
    folders = [out_dir / "nightly" / f"{n + 1:0{width}d}" for n in range(total)]
    year = pl.col("setl_time").dt.year()
    days = pl.when(year.mod(4) == 0).then(366).otherwise(365)  # 2001–2099
    within = (
        (pl.col("setl_time").dt.ordinal_day() - 1)
        * year.replace_strict(per_year, return_dtype=pl.Int64)
        // days
    )
    night = (year.replace_strict(offsets, return_dtype=pl.Int64) + within).alias("_night")
    keyed = settlements.with_columns(night)
    sizes = keyed.group_by("_night").len().collect()
    rows = dict(zip(sizes["_night"].to_list(), sizes["len"].to_list(), strict=True))
    lines_per_row = max(1, _height(fees) // max(1, _height(settlements)))
    group: list[int] = []
    held = 0
    for n in range(total):
        group.append(n)
        held += rows.get(n, 0) * (1 + lines_per_row)
        if held >= SPLIT_ROWS or n == total - 1:
            _write_nights(keyed, fees, group, folders)
            group, held = [], 0
    return folders


def _height(frame: pl.LazyFrame) -> int:
    return int(frame.select(pl.len()).collect().item())


def _write_nights(
    keyed: pl.LazyFrame, fees: pl.LazyFrame, group: list[int], folders: list[Path]
) -> None:
    """Write the nights ``group`` (consecutive) from one read of each file."""
    part = keyed.filter(pl.col("_night").is_between(group[0], group[-1])).collect()
    lines = fees.join(
        part.lazy().select("setl_id", "_night"), on="setl_id", how="inner", maintain_order="left"
    ).collect()
    for n in group:
        folder = folders[n]
        folder.mkdir(parents=True, exist_ok=True)
        part.filter(pl.col("_night") == n).drop("_night").write_parquet(
            folder / "settlements.parquet"
        )
        lines.filter(pl.col("_night") == n).drop("_night").write_parquet(folder / "fees.parquet")
