"""The crediting rules file (TOML): which orders grant how many units of which meter.

Loaded and validated once at worker start-up; `decide_grants` is the one place where an
order's credits are decided.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from polar_credits.cadence import parse_cadence
from polar_credits.models import AllowanceRule, Grant, OrderFacts, SubscriptionFacts, order_key

BillingReason = Literal[
    "purchase",
    "subscription_create",
    "subscription_cycle",
    "subscription_update",
    "subscription_meter_cycle",
]


# Polar's own limit on metadata keys.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]


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

    def holds(self, key: str, metadata: dict) -> bool:
        if self.exists is not None:
            return (key in metadata) == self.exists
        assert self.one_of is not None
        return any(_same(metadata.get(key), wanted) for wanted in self.one_of)


class Meter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Polar meter id, used to verify the balance")
    event_name: str = Field(min_length=1, description="name of the events ingested for it")
    property: str = Field(default="units", min_length=1, max_length=40)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=100)
    meter: str
    # How much: exactly one of these three.
    units: StrictInt | None = Field(default=None, gt=0)
    units_per_seat: StrictInt | None = Field(default=None, gt=0)  # × the seats bought
    top_up_to: StrictInt | None = Field(default=None, gt=0)  # cadence rules only
    products: list[str] | None = None
    billing_reasons: list[BillingReason] = Field(default_factory=lambda: ["purchase"])
    # Order metadata this rule requires, key → a value (equal), { in = [...] } or
    # { exists = bool }; all must hold. The keys named here are the only metadata that ever
    # enters a workflow history (`metadata_keys`).
    metadata: dict[MetadataKey, Scalar | MetadataTest] | None = None
    # More conditions on the order (rules v2): its currency, the net amount it paid (integer
    # cents of its currency), whether it had a discount, and a validity window judged on the
    # order's own `created_at` (never the time it is processed).
    currencies: list[Annotated[str, StringConstraints(min_length=3, max_length=3)]] | None = None
    min_net_amount: StrictInt | None = Field(default=None, ge=0)
    discounted: StrictBool | None = None
    active_from: datetime | None = None
    active_until: datetime | None = None
    # Precedence: rules are evaluated by priority, highest first (then in file order); a
    # matching rule with stop = true ends the evaluation.
    priority: StrictInt = 0
    stop: StrictBool = False
    # false: no grant while the order's subscription is `trialing` (usually its $0 first
    # order), so a trial cannot be used to collect credits.
    during_trial: StrictBool = True
    # A cadence ("1 month", "2 weeks"): the rule grants on its own timer to every subscription
    # of its products, not on orders (README, "Allowances on their own cadence").
    every: str | None = None
    rollover_cap: StrictInt | None = Field(default=None, ge=0)  # cadence rules only

    @field_validator("metadata", mode="before")
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
        amounts = [n for n in ("units", "units_per_seat", "top_up_to") if getattr(self, n)]
        if len(amounts) != 1:
            raise ValueError(
                "give exactly one of units, units_per_seat or top_up_to"
                + (f" (found {', '.join(amounts)})" if amounts else "")
            )
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
        order_only = ("currencies", "min_net_amount", "discounted", "active_from", "active_until")
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

    def amount(self, seats: int | None) -> int | None:
        """Fixed units, or units per seat (a purchase without seats counts as one seat)."""
        if self.units_per_seat is not None:
            return self.units_per_seat * max(seats or 1, 1)
        return self.units

    def matches(self, order: OrderFacts) -> bool:
        if self.every is not None:
            return False  # granted by the subscription's allowance run instead
        if order.billing_reason not in self.billing_reasons:
            return False
        if not self._covers(order.product_id, order.subscription_status):
            return False
        if self.currencies is not None and order.currency.lower() not in self._currencies():
            return False
        if self.min_net_amount is not None and order.net_amount < self.min_net_amount:
            return False
        if self.discounted is not None and (order.discount_amount > 0) != self.discounted:
            return False
        if not self._active_at(order.created_at):
            return False
        return self.metadata_holds(order.metadata)

    def applies_to(self, facts: SubscriptionFacts) -> bool:
        """A cadence rule, for a subscription as it is now."""
        return (
            self.every is not None
            and self._covers(facts.product_id, facts.status)
            and self.metadata_holds(facts.metadata)
        )

    def _covers(self, product_id: str | None, subscription_status: str | None) -> bool:
        """The product and trial conditions, the same for orders and subscriptions."""
        if not self.during_trial and subscription_status == "trialing":
            return False
        return self.products is None or product_id in self.products

    def metadata_holds(self, metadata: dict) -> bool:
        return all(
            wanted.holds(key, metadata)
            if isinstance(wanted, MetadataTest)
            else _same(metadata.get(key), wanted)
            for key, wanted in (self.metadata or {}).items()
        )

    def _currencies(self) -> set[str]:
        return {c.lower() for c in self.currencies or ()}

    def _active_at(self, created_at: str | None) -> bool:
        """Within the validity window, judged on the order's own timestamp; an order that
        does not say when it was made matches no windowed rule."""
        if self.active_from is None and self.active_until is None:
            return True
        if created_at is None:
            return False
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if self.active_from is not None and moment < self.active_from:
            return False
        return self.active_until is None or moment < self.active_until


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meters: dict[str, Meter]
    rules: list[Rule]

    def metadata_keys(self) -> frozenset[str]:
        """The order metadata a decision can use: the allow-list of what the API copies into
        a workflow's input. Everything else in an order's metadata stays out of histories."""
        return frozenset(key for rule in self.rules for key in (rule.metadata or {}))

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
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule {rule.id!r}: duplicate rule id")
            seen.add(rule.id)
            if rule.meter not in self.meters:
                known = ", ".join(sorted(self.meters)) or "none"
                raise ValueError(
                    f"rule {rule.id!r}: unknown meter {rule.meter!r} (meters defined: {known})"
                )
        return self


def parse_rules(text: str, source: str = "<rules>") -> RulesFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    try:
        return RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(
            f"{source}: " + "; ".join(_describe(err, raw) for err in exc.errors())
        ) from None


def load_rules(path: Path) -> RulesFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(text, str(path))


def _describe(err: dict, raw: dict) -> str:
    loc = list(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = raw.get("rules")
        rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        name = rule.get("id") if isinstance(rule, dict) else None
        where = f"rule {name!r}" if name else f"rule #{loc[1] + 1}"
        field = ".".join(str(p) for p in loc[2:])
        return f"{where}: {field}: {message}" if field else f"{where}: {message}"
    if len(loc) >= 2 and loc[0] == "meters":
        field = ".".join(str(p) for p in loc[2:])
        return f"meter {loc[1]!r}: {field}: {message}" if field else f"meter {loc[1]!r}: {message}"
    where = ".".join(str(p) for p in loc)
    return f"{where}: {message}" if where else message


def _condition_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "extra_forbidden":
        return f"unknown condition {err['loc'][0]!r} (use in or exists)"
    if err["loc"][:1] == ("in",):
        if err["type"] == "too_short":
            return "in needs at least one value"
        return "in takes strings, whole numbers or booleans"
    return err["msg"].removeprefix("Value error, ")


def _same(actual: object, wanted: str | int | bool) -> bool:
    # True == 1 in Python; a rule asking for `true` must not match a metadata value of 1.
    return type(actual) is type(wanted) and actual == wanted


# Orders that credit a subscription period, and the snapshot field that says which period.
PERIOD_REASONS = {
    "subscription_create": ("period", "subscription_period_start"),
    "subscription_cycle": ("period", "subscription_period_start"),
    "subscription_meter_cycle": ("meter-period", "subscription_meter_period_start"),
}


def grant_key(order: OrderFacts) -> str:
    """What a grant is keyed on: the subscription period the order credits (so a second
    order for the same period, a retried invoice or a re-bill, grants nothing), or, for a
    purchase, a proration, or an order whose snapshot does not say the period, the order."""
    kind, attribute = PERIOD_REASONS.get(order.billing_reason, (None, None))
    start = getattr(order, attribute) if attribute else None
    if kind and start and order.subscription_id:
        return f"subscription:{order_key(order.subscription_id)}:{kind}:{start}"
    return f"order:{order_key(order.order_id)}"


def grant_external_id(order: OrderFacts, rule_id: str) -> str:
    """Polar's dedupe key for a grant: business keys only, so any retry maps to the same event."""
    return f"polar-credits:{grant_key(order)}:rule:{rule_id}"


def decide_grants(rules: RulesFile, order: OrderFacts) -> list[Grant]:
    if order.status not in ("paid", "partially_refunded", "refunded"):
        return []
    # Polar publishes a canceled subscription's final invoice as a cycle order: no new cycle.
    if order.billing_reason == "subscription_cycle" and order.subscription_status == "canceled":
        return []
    grants = []
    for rule in rules.by_precedence():
        if not rule.matches(order):
            continue
        meter = rules.meters[rule.meter]
        grants.append(
            Grant(
                rule_id=rule.id,
                meter=rule.meter,
                meter_id=meter.id,
                event_name=meter.event_name,
                property=meter.property,
                units=rule.amount(order.seats),
                customer_id=order.customer_id,
                order_id=order.order_id,
                external_id=grant_external_id(order, rule.id),
                reason=order.billing_reason,
            )
        )
        if rule.stop:
            break
    return grants


def allowance_external_id(subscription_id: str, rule_id: str, period_start: str) -> str:
    """Polar's dedupe key for one allowance period: a second run for the subscription, a
    reset of its run or a worker crash maps to the same event."""
    return (
        f"polar-credits:subscription:{order_key(subscription_id)}:allowance:{rule_id}"
        f":period:{period_start}"
    )


def decide_allowance_rules(rules: RulesFile, facts: SubscriptionFacts) -> list[AllowanceRule]:
    """The cadence rules that apply to the subscription as it is now (its product, seats,
    metadata and trial state)."""
    decided = []
    for rule in rules.rules:
        if not rule.applies_to(facts):
            continue
        meter = rules.meters[rule.meter]
        decided.append(
            AllowanceRule(
                rule_id=rule.id,
                every=str(parse_cadence(rule.every)),
                meter=rule.meter,
                meter_id=meter.id,
                event_name=meter.event_name,
                property=meter.property,
                units=rule.amount(facts.seats),
                top_up_to=rule.top_up_to,
                rollover_cap=rule.rollover_cap,
            )
        )
    return decided
