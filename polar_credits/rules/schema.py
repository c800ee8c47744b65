"""The rules file's schema: meters, rules and their conditions as pydantic models, with the
validators that make a file that cannot work say which rule is wrong and how.

What a rule means for an order lives elsewhere: matching.py (does it apply), amounts.py (how
much), engine.py (the decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from polar_credits.cadence import parse_cadence
from polar_credits.grant_limit import MAX_GRANT_UNITS
from polar_credits.rules import matching

if TYPE_CHECKING:
    from polar_credits.models.facts import OrderFacts

BillingReason = Literal[
    "purchase",
    "subscription_create",
    "subscription_cycle",
    "subscription_update",
    "subscription_meter_cycle",
]


# Polar's own limit on metadata keys.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]

AMOUNT_KINDS = ("units", "units_per_seat", "units_per_currency_unit", "top_up_to")


@dataclass(frozen=True)
class MetadataKeys:
    """The metadata keys the rules name, per source: the only metadata the API copies into a
    workflow's input (`RulesFile.metadata_keys`)."""

    order: frozenset[str] = frozenset()
    product: frozenset[str] = frozenset()
    customer: frozenset[str] = frozenset()


class RulesError(Exception):
    """The rules file cannot be used; the message names the file, the rule and the problem."""


Scalar = StrictStr | StrictInt | StrictBool


class MetadataTest(BaseModel):
    """A metadata condition other than equality: `{ in = [...] }` or `{ exists = true }`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    one_of: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    exists: StrictBool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> MetadataTest:
        if (self.one_of is None) == (self.exists is None):
            raise ValueError("a metadata condition is a value, { in = [...] } or { exists = ... }")
        return self


class Meter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Polar meter id, used to verify the balance")
    event_name: str = Field(min_length=1, description="name of the events ingested for it")
    property: str = Field(default="units", min_length=1, max_length=40)


def _purchase_only() -> list[BillingReason]:
    return ["purchase"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=100)
    # The rule's identity in idempotency keys (external ids), so renaming `id` never grants
    # again; defaults to the id, which is what every grant made before keys existed used.
    key: str | None = Field(default=None, min_length=1, max_length=100)
    meter: str
    # How much: exactly one of these four. No amount may exceed the per-grant maximum
    # (MAX_GRANT_UNITS); one computed above it (per seat, per currency unit) is held.
    units: StrictInt | None = Field(default=None, gt=0, le=MAX_GRANT_UNITS)
    units_per_seat: StrictInt | None = Field(  # × the seats bought
        default=None, gt=0, le=MAX_GRANT_UNITS
    )
    # × the order's net amount in currency units (pay-what-you-want products), rounded as
    # `rounding` says (no default: the merchant decides), then held within min/max_units.
    units_per_currency_unit: Decimal | None = Field(default=None, gt=0, le=1_000_000)
    rounding: Literal["down", "up", "nearest"] | None = None
    min_units: StrictInt | None = Field(default=None, gt=0, le=MAX_GRANT_UNITS)
    max_units: StrictInt | None = Field(default=None, gt=0, le=MAX_GRANT_UNITS)
    top_up_to: StrictInt | None = Field(default=None, gt=0, le=MAX_GRANT_UNITS)  # cadence only
    products: list[str] | None = None
    billing_reasons: list[BillingReason] = Field(default_factory=_purchase_only)
    # Order metadata this rule requires, key → a value (equal), { in = [...] } or
    # { exists = bool }; all must hold. The keys named here are the only metadata that ever
    # enters a workflow history (`metadata_keys`).
    metadata: dict[MetadataKey, Scalar | MetadataTest] | None = None
    # The same conditions on the metadata of the order's product and of its customer (for a
    # cadence rule: the subscription's product and customer). Only the keys named here are
    # copied (`RulesFile.metadata_keys`), so no other customer data enters a history.
    product_metadata: dict[MetadataKey, Scalar | MetadataTest] | None = None
    customer_metadata: dict[MetadataKey, Scalar | MetadataTest] | None = None
    # More conditions on the order (rules v2): its currency, the net amount it paid (integer
    # cents of its currency), whether it had a discount, and a validity window judged on the
    # order's own `created_at` (never the time it is processed).
    currencies: list[Annotated[str, StringConstraints(min_length=3, max_length=3)]] | None = None
    min_net_amount: StrictInt | None = Field(default=None, ge=0)
    discounted: StrictBool | None = None
    active_from: datetime | None = None
    active_until: datetime | None = None
    # Whether the order must be (true) or must not be (false) the customer's first paid order
    # for its product; looked up through Polar's Orders API when a rule asks and judged by
    # the engine (engine.py), so `matches` alone does not judge it.
    first_order: StrictBool | None = None
    # A lifetime cap on what this rule grants one customer, enforced by the customer's ledger
    # run (workflows/customer_ledger.py).
    max_units_per_customer: StrictInt | None = Field(default=None, gt=0)
    # Precedence: rules are evaluated by priority, highest first (then in file order); a
    # matching rule with stop = true ends the evaluation.
    priority: StrictInt = 0
    stop: StrictBool = False
    # false: no grant while the order's subscription is `trialing` (usually its $0 first
    # order), so a trial cannot be used to collect credits.
    during_trial: StrictBool = True
    # A cadence ("1 month", "2 weeks"): the rule grants on its own timer to every subscription
    # of its products, not on orders (docs/subscriptions.md, "Allowances on their own cadence").
    every: str | None = None
    rollover_cap: StrictInt | None = Field(default=None, ge=0)  # cadence rules only

    @field_validator("units_per_currency_unit", mode="before")
    @classmethod
    def _exact_rate(cls, value: object) -> object:
        """A TOML float (0.5) read through its shortest spelling, so 0.1 is exactly 0.1."""
        if isinstance(value, bool):
            raise ValueError("give a number, e.g. 10 or 0.5")
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, str):
            try:
                return Decimal(value)
            except InvalidOperation:
                raise ValueError("give a number, e.g. 10 or 0.5") from None
        return value

    @field_validator("metadata", "product_metadata", "customer_metadata", mode="before")
    @classmethod
    def _metadata_conditions(cls, value: object) -> object:
        """One clear message per condition, instead of one per member of the union."""
        if not isinstance(value, dict):
            return value
        checked: dict[object, object] = {}
        for key, wanted in value.items():
            if isinstance(wanted, dict):
                try:
                    checked[key] = MetadataTest.model_validate(wanted)
                except ValidationError as exc:
                    raise ValueError(f"{key}: {_condition_problem(exc)}") from None
            elif isinstance(wanted, str | int | bool):
                checked[key] = wanted
            else:
                raise ValueError(
                    f"{key}: give a string, a whole number, a boolean, "
                    "{ in = [...] } or { exists = true/false }"
                )
        return checked

    @model_validator(mode="after")
    def _one_amount(self) -> Rule:
        amounts = [n for n in AMOUNT_KINDS if getattr(self, n)]
        if len(amounts) != 1:
            raise ValueError(
                "give exactly one of units, units_per_seat, units_per_currency_unit or top_up_to"
                + (f" (found {', '.join(amounts)})" if amounts else "")
            )
        if self.units_per_currency_unit is None:
            for name in ("rounding", "min_units", "max_units"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} only goes with units_per_currency_unit")
        elif self.rounding is None:
            raise ValueError(
                'units_per_currency_unit needs rounding = "down", "up" or "nearest" '
                "(how to round a fraction of a unit)"
            )
        if self.min_units and self.max_units and self.min_units > self.max_units:
            raise ValueError("min_units must not exceed max_units")
        for name in ("active_from", "active_until"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name} needs a time zone, e.g. 2026-12-01T00:00:00Z")
        if self.active_from and self.active_until and self.active_from >= self.active_until:
            raise ValueError("active_from must be before active_until")
        if self.every is None:
            for name in ("top_up_to", "rollover_cap"):
                if getattr(self, name) is not None:
                    raise ValueError(f'{name} needs a cadence: add every = "1 month"')
            return self
        parse_cadence(self.every)
        order_only = (
            "currencies",
            "min_net_amount",
            "discounted",
            "active_from",
            "active_until",
            "units_per_currency_unit",
            "first_order",
            "max_units_per_customer",
        )
        for name in order_only:
            if name in self.model_fields_set:
                raise ValueError(f"{name} applies to orders: a rule with every cannot use it")
        if "billing_reasons" in self.model_fields_set:
            raise ValueError(
                "a rule with every grants on its own timer, not on orders: remove billing_reasons"
            )
        if self.top_up_to is not None and self.rollover_cap is not None:
            raise ValueError("top_up_to already caps the balance: remove rollover_cap")
        return self

    @property
    def stable_key(self) -> str:
        """What idempotency keys name this rule by: its key, else its id."""
        return self.key or self.id

    def matches(self, order: OrderFacts) -> bool:
        return self.verdict(order)[0]

    def verdict(self, order: OrderFacts) -> tuple[bool, str]:
        """Whether the rule matches the order, with a one-line reason: the first condition
        that fails, or "matched" (matching.py)."""
        return matching.verdict(self, order)


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meters: dict[str, Meter]
    rules: list[Rule]
    # "sha256:<first 16 hex>" of the file's bytes, set by `parse_rules`: each decision records
    # it, so an operator knows which file decided an order.
    _version: str = PrivateAttr(default="")

    @property
    def version(self) -> str:
        return self._version

    def metadata_keys(self) -> MetadataKeys:
        """The order, product and customer metadata a decision can use: the allow-list of
        what is copied into a workflow's input. Everything else stays out of histories (a
        customer's metadata may hold personal data)."""
        return MetadataKeys(
            order=frozenset(k for rule in self.rules for k in (rule.metadata or {})),
            product=frozenset(k for rule in self.rules for k in (rule.product_metadata or {})),
            customer=frozenset(k for rule in self.rules for k in (rule.customer_metadata or {})),
        )

    def by_precedence(self) -> list[Rule]:
        """Highest priority first; rules of one priority in file order."""
        return sorted(self.rules, key=lambda rule: -rule.priority)

    def has_cadence_rules(self) -> bool:
        return any(rule.every is not None for rule in self.rules)

    def cadence_product(self, product_id: str | None) -> bool:
        """Whether a subscription to this product has an allowance run: a cadence rule
        names the product, or names no products at all."""
        return any(
            rule.every is not None and (rule.products is None or product_id in rule.products)
            for rule in self.rules
        )

    @model_validator(mode="after")
    def _consistent(self) -> RulesFile:
        seen: set[str] = set()
        keys: dict[str, str] = {}
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule {rule.id!r}: duplicate rule id")
            seen.add(rule.id)
            if rule.stable_key in keys:
                raise ValueError(
                    f"rule {rule.id!r}: key {rule.stable_key!r} is already the key of rule "
                    f"{keys[rule.stable_key]!r} (a rule without key uses its id as key)"
                )
            keys[rule.stable_key] = rule.id
            if rule.meter not in self.meters:
                known = ", ".join(sorted(self.meters)) or "none"
                raise ValueError(
                    f"rule {rule.id!r}: unknown meter {rule.meter!r} (meters defined: {known})"
                )
        return self


def _condition_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "extra_forbidden":
        return f"unknown condition {err['loc'][0]!r} (use in or exists)"
    if err["loc"][:1] == ("in",):
        if err["type"] == "too_short":
            return "in needs at least one value"
        return "in takes strings, whole numbers or booleans"
    return err["msg"].removeprefix("Value error, ")
