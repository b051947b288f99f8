"""Input contracts: every input table hmb-batch reads, column by column.

Names are the national medical-insurance platform's own (医疗保障信息平台, DOMAIN.md section 2).
Each column has a kind that fixes how it is read: ids and codes stay text (``0001`` keeps its
zeros; they are NFKC-normalised and may hold no invisible character), money becomes integer fen,
dates and timestamps accept ISO forms with a space or a ``T``.
Nothing here is inferred from the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """How a column is read and what it becomes."""

    TEXT = "text"  # names and free text: kept as written (outer whitespace stripped)
    # ids and codes: NFKC-normalised and stripped; an invisible, control or whitespace character
    # left inside is bad input, so "S1" and "S1<zero-width space>" can never be two settlements
    CODE = "code"
    MONEY = "money"  # yuan with at most two decimals -> Int64 fen
    DATE = "date"  # ISO date (a trailing time is accepted and dropped)
    DATETIME = "datetime"  # ISO timestamp, 'T' or space; a bare date means midnight
    INTEGER = "integer"  # whole number -> Int64


@dataclass(frozen=True)
class Column:
    """One column of an input table."""

    name: str
    kind: Kind
    required: bool
    zh: str
    meaning: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contract:
    """One input table: its columns in the platform's order."""

    table: str
    zh: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        """Column names in contract order."""
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        """Names of the columns an extract must carry."""
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def of_kind(self, kind: Kind) -> list[str]:
        """Names of the columns of one kind."""
        return [c.name for c in self.columns if c.kind is kind]


T, C, M, D, DT, INT = Kind.TEXT, Kind.CODE, Kind.MONEY, Kind.DATE, Kind.DATETIME, Kind.INTEGER

SETTLEMENTS = Contract(
    "settlements",
    "结算信息 setl_d",
    (
        Column("setl_id", C, True, "结算ID", "settlement id, unique"),
        Column("init_setl_id", C, False, "原结算ID", "for a reversal: the settlement it reverses"),
        Column("refd_setl_flag", C, False, "退费结算标志", "'1' = this row reverses init_setl_id"),
        Column("psn_no", C, True, "人员编号", "member id"),
        Column("psn_name", T, False, "姓名", "personal data, never printed unmasked"),
        Column("certno", T, False, "证件号码", "personal data, never printed unmasked"),
        Column("insutype", C, False, "险种类型", "310 employee / 390 resident basic insurance"),
        Column("med_type", C, True, "医疗类别", "11 outpatient, 14 chronic/special, 21 inpatient"),
        Column("insu_admdvs", C, False, "参保地医保区划", "member's district code"),
        Column("fixmedins_code", C, False, "定点医药机构编号", "hospital or pharmacy code"),
        Column("fixmedins_name", T, False, "定点医药机构名称", "hospital or pharmacy name"),
        Column("begndate", D, False, "开始日期", "treatment start (admission)"),
        Column("enddate", D, False, "结束日期", "treatment end (discharge)"),
        Column("setl_time", DT, True, "结算时间", "settlement timestamp"),
        Column("medfee_sumamt", M, True, "医疗费总额", "total cost"),
        Column("fulamt_ownpay_amt", M, True, "全自费金额", "fully self-paid (out of list)"),
        Column("overlmt_selfpay", M, True, "超限价自费费用", "self-paid above the price limit"),
        Column("preselfpay_amt", M, True, "先行自付金额", "Class-B first self-pay"),
        Column("inscp_amt", M, True, "符合政策范围金额", "in-policy amount", ("inscp_scp_amt",)),
        Column("hifp_pay", M, True, "统筹基金支出", "basic pooled fund paid"),
        Column("cvlserv_pay", M, False, "公务员医疗补助", "civil-servant subsidy paid"),
        Column("hifes_pay", M, False, "企业补充医疗保险", "enterprise supplementary paid"),
        Column("hifmi_pay", M, False, "居民大病保险", "catastrophic insurance paid (residents)"),
        Column("hifob_pay", M, False, "职工大额医疗费用补助", "large-amount subsidy (employees)"),
        Column("maf_pay", M, False, "医疗救助", "medical aid paid"),
        Column("othfund_pay", M, False, "其他基金", "other funds"),
        Column("fund_pay_sumamt", M, False, "基金支付总额", "all funds paid"),
        Column("psn_pay", M, False, "个人负担总金额", "what the patient still owes"),
        Column("refl_selfpay_amt", M, False, "转外自理费用", "referral self-pay (Zhejiang)"),
        Column("union_aid_pay", M, False, "职工医疗互助", "trade-union mutual aid paid"),
    ),
)

FEE_LINES = Contract(
    "fee_lines",
    "费用明细 fee_list_d",
    (
        Column("setl_id", C, True, "结算ID", "the settlement this line belongs to"),
        Column("feedetl_sn", C, True, "费用明细流水号", "line serial, unique within a settlement"),
        Column("fee_ocur_time", DT, True, "费用发生时间", "when the item was charged"),
        Column("med_list_codg", C, True, "医疗目录编码", "national list code"),
        Column("hilist_name", T, False, "医保目录名称", "item name"),
        Column("list_type", C, True, "目录类别", "101/102 drug, 201 service, 301 material"),
        Column("chrgitm_lv", C, True, "收费项目等级", "01 Class A, 02 Class B, 03 out of list"),
        Column("med_chrgitm_type", T, False, "医疗收费项目类别", "charge item category"),
        Column("det_item_fee_sumamt", M, True, "明细项目费用总额", "line total"),
        Column("fulamt_ownpay_amt", M, True, "全自费金额", "fully self-paid"),
        Column("overlmt_amt", M, True, "超限价金额", "over the price limit"),
        Column("preselfpay_amt", M, True, "先行自付金额", "Class-B first self-pay"),
        Column("inscp_scp_amt", M, True, "符合范围金额", "in-policy amount", ("inscp_amt",)),
    ),
)

ROSTER = Contract(
    "roster",
    "参保名单",
    (
        Column("psn_no", C, True, "人员编号", "member id"),
        Column("plan_year", INT, True, "待遇年度", "plan year of this enrolment"),
        Column("pay_date", D, True, "缴费日期", "premium paid"),
        Column("basic_start_date", D, False, "基本医保待遇开始日期", "start of basic benefits"),
        Column("special_event", T, False, "特殊事件", "newborn | veteran | transfer_in | released"),
        Column("event_date", D, False, "事件日期", "date of the special event"),
        Column(
            "basic_suspended_from", D, False, "基本医保暂停起", "basic insurance suspended from"
        ),
        Column("basic_suspended_to", D, False, "基本医保暂停止", "suspended until (empty: still)"),
        Column("basic_restored_date", D, False, "基本医保恢复日期", "basic benefits restored"),
        Column("hardship", T, False, "困难类别", "特困 | 低保 | 低边"),
        Column("admdvs", T, False, "医保区划", "member's district code"),
        Column("pre_existing", T, False, "既往症", "'1' = member has a pre-existing condition"),
        Column("consecutive_years", INT, False, "连续参保年数", "consecutive years enrolled"),
    ),
)

LISTS = Contract(
    "lists",
    "清单",
    (
        Column("list", C, True, "清单", "negative | admission | special_drug"),
        Column("code", C, True, "医疗目录编码", "med_list_codg of the item"),
        Column("name", T, False, "名称", "item name"),
        Column("item_kind", T, False, "类别", "drug | service | material"),
        Column("valid_from", D, True, "生效日期", "first day on the list"),
        Column("valid_to", D, False, "失效日期", "last day on the list (empty = open)"),
    ),
)

# Personal data: never quoted in a message (a reading error says "an unreadable value").
PERSONAL = frozenset({"psn_name", "certno"})

CONTRACTS: dict[str, Contract] = {c.table: c for c in (SETTLEMENTS, FEE_LINES, ROSTER, LISTS)}

# Settlement components: the identity medfee_sumamt = sum of these, and what lines add up to.
SETTLEMENT_COMPONENTS = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_amt")
LINE_COMPONENTS = ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")
# The four fee components under one name, settlement column -> line column.
COMPONENT_PAIRS = dict(zip(SETTLEMENT_COMPONENTS, LINE_COMPONENTS, strict=True))
