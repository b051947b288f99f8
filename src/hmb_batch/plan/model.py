"""The authored plan edition: what a TOML edition file says, validated.

A 惠民保 plan edition, in general (DOMAIN.md sections 3 and 4):

- **eligibility**: enrolment deadline, launch-year grace window, waiting months, special-event
  windows, the wait after basic insurance is restored;
- **costs**: named per-settlement amounts that accumulate over the plan year. A ``settlement`` cost
  is built from settlement columns (浙丽保's compliant cost: in-policy amount less fund payments,
  less referral self-pay); a ``fee_lines`` cost sums fee-line components chosen by list type, level
  and list membership at the fee date (浙丽保's reasonable cost), plus settlement parts at a factor
  (referral self-pay at 50%). Either may be limited to some medical categories (med_type);
- **responsibilities** (责任): each adds terms ``max(0, year-to-date cost − floor or deductible)``
  (a deductible may be shared between terms and responsibilities, consumed in order), applies its
  brackets (lower ones for members with a pre-existing condition) and its cap (higher after N
  consecutive years);
- a **plan-wide cap** bounding the sum.

浙丽保 is one instance: one responsibility with two terms (compliant over a band floor, reasonable
over a deductible) and four brackets.

Amounts are yuan in the file (strings such as ``"18000.00"`` or integers) and integer fen here.
Rates are decimals in the file (``"0.75"``) and integer parts per million here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from hmb_batch.io.contracts import FEE_LINES, SETTLEMENTS, Kind

RATE_SCALE = 1_000_000  # rates are held as integer parts per million

FORMAT = "hmb-batch/plan-edition"
FORMAT_VERSION = 1

SETTLEMENT_MONEY = tuple(SETTLEMENTS.of_kind(Kind.MONEY))
LINE_MONEY = tuple(c for c in FEE_LINES.of_kind(Kind.MONEY) if c != "det_item_fee_sumamt")
KNOWN_LISTS = ("negative", "admission", "special_drug")


def _decimal(value: object, example: str) -> Decimal:
    """A TOML number or string as an exact Decimal (floats through their shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"expected {example}, found {value!r}")
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"expected {example}, found {value!r}") from exc


def _fen(value: object) -> int:
    fen = _decimal(value, 'an amount in yuan such as "18000.00"') * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{value!r} has more than two decimals (amounts are exact to the fen)")
    if fen < 0:
        raise ValueError(f"{value!r} is negative")
    return int(fen)


def _ppm(value: object) -> int:
    ppm = _decimal(value, 'a rate such as "0.75"') * RATE_SCALE
    if ppm != ppm.to_integral_value():
        raise ValueError(f"{value!r} has more than six decimals")
    if not 0 <= ppm <= RATE_SCALE:
        raise ValueError(f'rate {value} is outside 0..1 (write 75% as "0.75")')
    return int(ppm)


def _month_day(value: object) -> tuple[int, int]:
    if isinstance(value, str):
        try:
            d = dt.date.fromisoformat(f"2000-{value}")
            return d.month, d.day
        except ValueError:
            pass
    raise ValueError(f'expected a month and day "MM-DD" such as "12-31", found {value!r}')


Fen = Annotated[int, BeforeValidator(_fen)]
Rate = Annotated[int, BeforeValidator(_ppm)]
MonthDay = Annotated[tuple[int, int], BeforeValidator(_month_day)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Premium(_Strict):
    """Premium and loss-ratio parameters (赔付率)."""

    amount: Fen = Field(description="premium per member and year")
    operating_cost_share: Rate = Field(description="share of premium kept for operating costs")
    target_loss_ratio: Rate = Field(description="payouts ÷ premium net of operating cost")


class Eligibility(_Strict):
    """When a member's benefits start (DOMAIN.md rules 1–4 and the restored-basic rule)."""

    enrolment_deadline: MonthDay = Field(
        description="premium paid by this day of the year before the plan year → 1 Jan"
    )
    launch_year: int | None = Field(None, description="the plan's first year")
    launch_grace_last_day: MonthDay | None = Field(
        None, description="launch year only: paid from 1 Jan to this day → the day after payment"
    )
    waiting_months: int = Field(ge=0, le=24, description="late enrolment: pay_date + N months")
    restored_waiting_months: int = Field(
        ge=0, le=24, description="benefits start no earlier than basic_restored_date + N months"
    )
    special_event_windows: dict[str, int] = Field(
        default_factory=dict,
        description="event → days after event_date within which payment starts benefits",
    )


class LinePart(_Strict):
    """Which components of which fee lines count toward a fee-lines cost."""

    components: list[str] = Field(min_length=1)
    list_types: list[str] = Field(
        default_factory=list, description="list_type prefixes ('1' drugs, '2' services, ...)"
    )
    levels: list[str] = Field(default_factory=list, description="chrgitm_lv values ('01'..'03')")
    on_list: str | None = Field(None, description="the line must be on this list at its fee date")
    label: str = ""


class SettlementPart(_Strict):
    """A settlement column counted toward a fee-lines cost at a factor, rounded half up."""

    component: str
    factor: Rate = RATE_SCALE
    label: str = ""


class Cost(_Strict):
    """A named per-settlement amount that accumulates over the plan year."""

    label: str
    kind: Literal["settlement", "fee_lines"]
    med_types: list[str] = Field(default_factory=list, description="empty: every category")
    # settlement costs
    start: str | None = None
    less_funds: list[str] = Field(default_factory=list)
    less_after: list[str] = Field(default_factory=list)
    # fee-lines costs
    exclude_lists: list[str] = Field(default_factory=list)
    parts: list[LinePart] = Field(default_factory=list)
    settlement_parts: list[SettlementPart] = Field(default_factory=list)
    audit_code: str | None = Field(None, description="line audit code when a line counts")


class Term(_Strict):
    """``max(0, year-to-date cost − threshold)``; threshold: a floor, a deductible or a pool."""

    cost: str
    floor: Fen | None = Field(None, description="band floor: only the part above counts")
    deductible: Fen | None = None
    shared_deductible: str | None = Field(None, description="id of a [deductibles] pool")

    @model_validator(mode="after")
    def _one_threshold(self) -> Term:
        given = [x is not None for x in (self.floor, self.deductible, self.shared_deductible)]
        if sum(given) > 1:
            raise ValueError("give one of floor, deductible, shared_deductible")
        return self


class Bracket(_Strict):
    """A rate on the part of year-to-date payable up to ``up_to`` (open if absent)."""

    up_to: Fen | None = None
    rate: Rate


class ConsecutiveCap(_Strict):
    """A higher cap for members enrolled at least ``years`` consecutive years."""

    years: int = Field(ge=1)
    cap: Fen


class Responsibility(_Strict):
    """One benefit line (责任) of the plan."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    terms: list[Term] = Field(min_length=1)
    brackets: list[Bracket] = Field(min_length=1)
    pre_existing_brackets: list[Bracket] | None = None
    cap: Fen | None = None
    consecutive_cap: ConsecutiveCap | None = None


class Assumption(_Strict):
    """A parameter the public sources do not give, with the value used."""

    parameter: str
    value: str
    why: str


class Change(_Strict):
    """One parameter changed by ``--set``, values as the edition file writes them (None: absent)."""

    path: str = Field(description="the parameter, e.g. responsibilities.main.brackets.0.rate")
    old: str | None
    new: str | None


def variant_tag(changes: list[Change]) -> str:
    """``s`` and 6 hex digits of a hash of the changes (normalised paths and values, in path
    order): the same changes give the same tag whatever order or spelling they were given in."""
    material = json.dumps(sorted((c.path, c.new) for c in changes), ensure_ascii=False)
    return "s" + hashlib.sha256(material.encode()).hexdigest()[:6]


class Variant(_Strict):
    """What makes an edition a scenario: the edition it was derived from and its changes."""

    source: str = Field(description="id of the edition the changes were applied to")
    changes: list[Change] = Field(min_length=1)
    tag: str

    @model_validator(mode="after")
    def _tag_matches(self) -> Variant:
        if self.tag != variant_tag(self.changes):
            raise ValueError("the tag is not the hash of the changes")
        return self


class Edition(_Strict):
    """A validated plan edition (one plan, one plan year); a scenario's edition also carries the
    :class:`Variant` it was derived as (never written in an edition file)."""

    format: Literal["hmb-batch/plan-edition"]
    format_version: Literal[1]
    plan: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="plan family id")
    plan_name: str
    edition: int = Field(ge=2000, le=2100, description="the plan year this edition governs")
    official: bool = True
    source: str
    premium: Premium
    eligibility: Eligibility
    deductibles: dict[str, Fen] = Field(default_factory=dict)
    costs: dict[str, Cost]
    responsibilities: list[Responsibility] = Field(min_length=1)
    plan_cap: Fen | None = None
    assumptions: list[Assumption] = Field(default_factory=list)
    variant: Variant | None = None

    @model_serializer(mode="wrap")
    def _without_absent_variant(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a shipped edition serialises exactly as before variants existed: batches and the
        # ledger name editions by the hash of this serialisation
        data: dict[str, Any] = handler(self)
        if self.variant is None:
            data.pop("variant", None)
        return data

    @property
    def id(self) -> str:
        """``plan-year``; a scenario's edition: ``plan-year+tag`` (``zhelibao-2022+s3f9a1c``)."""
        base = f"{self.plan}-{self.edition}"
        return base if self.variant is None else f"{base}+{self.variant.tag}"
