"""The crediting rules file (TOML): which orders grant how many units of which meter.

Loaded and validated once at worker start-up; `decide_grants` is the one place where an
order's credits are decided.

`Rule.verdict(order) -> (matched, reason)` gives, for each rule, a one-line reason: the first
condition that fails, or "matched". `Rule.matches(order)` is `verdict(order)[0]`: add a new
condition in `Rule._mismatch`, one `if` per condition, each returning its reason.
A rule's stable `key` (`Rule.stable_key`: its `key`, else its id) is what idempotency keys
use; `Grant.rule_key` / `AllowanceRule.rule_key` carry it.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Literal

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
from polar_credits.identity import grant_external_id
from polar_credits.models import AllowanceRule, Grant, OrderFacts, SubscriptionFacts

BillingReason = Literal[
    "purchase",
    "subscription_create",
    "subscription_cycle",
    "subscription_update",
    "subscription_meter_cycle",
]


# Polar's own limit on metadata keys.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]

# Currencies whose amounts Polar (through Stripe) counts in whole units, not hundredths:
# Stripe's list of zero-decimal currencies.
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
ROUNDING = {"down": ROUND_FLOOR, "up": ROUND_CEILING, "nearest": ROUND_HALF_UP}
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
    billing_reasons: list[BillingReason] = Field(default_factory=lambda: ["purchase"])
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
    # for its product; looked up through Polar's Orders API when a rule asks (polar_credits/
    # decision.py), so `matches` alone does not judge it.
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
    # of its products, not on orders (README, "Allowances on their own cadence").
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

    def amount(self, seats: int | None) -> int | None:
        """Fixed units, or units per seat (a purchase without seats counts as one seat)."""
        if self.units_per_seat is not None:
            return self.units_per_seat * max(seats or 1, 1)
        return self.units

    def units_for(self, order: OrderFacts) -> int:
        """What this rule grants for an order it matches; 0 means no grant."""
        if self.units_per_currency_unit is None:
            return self.amount(order.seats) or 0
        assert self.rounding is not None
        exact = self.units_per_currency_unit * currency_units(order.net_amount, order.currency)
        units = int(exact.to_integral_value(rounding=ROUNDING[self.rounding]))
        if self.min_units is not None:
            units = max(units, self.min_units)
        if self.max_units is not None:
            units = min(units, self.max_units)
        return max(units, 0)

    def matches(self, order: OrderFacts) -> bool:
        return self.verdict(order)[0]

    def verdict(self, order: OrderFacts) -> tuple[bool, str]:
        """Whether the rule matches the order, with a one-line reason: the first condition
        that fails, or "matched"."""
        problem = self._mismatch(order)
        return (problem is None, problem or "matched")

    def _mismatch(self, order: OrderFacts) -> str | None:
        if self.every is not None:
            return "a cadence rule: granted by the subscription's allowance run, not on orders"
        if order.billing_reason not in self.billing_reasons:
            return (
                f"billing reason {order.billing_reason} not in [{', '.join(self.billing_reasons)}]"
            )
        if not self.during_trial and order.subscription_status == "trialing":
            return "the subscription is trialing and during_trial = false"
        if self.products is not None and order.product_id not in self.products:
            return "product not in products"
        if self.currencies is not None and order.currency.lower() not in self._currencies():
            return f"currency {order.currency.lower()} not in [{', '.join(self.currencies)}]"
        if self.min_net_amount is not None and order.net_amount < self.min_net_amount:
            return f"net amount {order.net_amount} below min_net_amount {self.min_net_amount}"
        if self.discounted is not None and (order.discount_amount > 0) != self.discounted:
            return "the order has a discount" if order.discount_amount > 0 else "no discount"
        if not self._active_at(order.created_at):
            return f"order created at {order.created_at} is outside active_from/active_until"
        if problem := _metadata_mismatch("metadata", self.metadata, order.metadata):
            return problem
        if problem := _metadata_mismatch(
            "product_metadata", self.product_metadata, order.product_metadata
        ):
            return problem
        if problem := _metadata_mismatch(
            "customer_metadata", self.customer_metadata, order.customer_metadata
        ):
            return problem
        return None

    def applies_to(self, facts: SubscriptionFacts) -> bool:
        """A cadence rule, for a subscription as it is now."""
        return (
            self.every is not None
            and self._covers(facts.product_id, facts.status)
            and self.metadata_holds(facts.metadata)
            and _holds(self.product_metadata, facts.product_metadata)
            and _holds(self.customer_metadata, facts.customer_metadata)
        )

    def _covers(self, product_id: str | None, subscription_status: str | None) -> bool:
        """The product and trial conditions, the same for orders and subscriptions."""
        if not self.during_trial and subscription_status == "trialing":
            return False
        return self.products is None or product_id in self.products

    def metadata_holds(self, metadata: dict) -> bool:
        return _metadata_mismatch("metadata", self.metadata, metadata) is None

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


def parse_rules(text: str, source: str = "<rules>") -> RulesFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    try:
        rules = RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(
            f"{source}: " + "; ".join(_describe(err, raw) for err in exc.errors())
        ) from None
    rules._version = rules_version(text.encode("utf-8"))
    return rules


def rules_version(content: bytes) -> str:
    """The content hash a decision records: `sha256sum` of the file, shortened."""
    return "sha256:" + hashlib.sha256(content).hexdigest()[:16]


def load_rules(path: Path) -> RulesFile:
    try:
        # newline="": no newline translation, so the version is the hash of the file's bytes.
        with path.open(encoding="utf-8", newline="") as file:
            text = file.read()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(text, str(path))


def _describe(err: dict, raw: dict) -> str:
    loc = list(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    if err["type"] == "less_than_equal" and err.get("ctx", {}).get("le") == MAX_GRANT_UNITS:
        message = f"at most {MAX_GRANT_UNITS}, the per-grant maximum of every grant"
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


def _metadata_mismatch(
    label: str, conditions: dict[str, Scalar | MetadataTest] | None, metadata: dict
) -> str | None:
    """The first metadata condition that does not hold, said in one line, or None."""
    for key, wanted in (conditions or {}).items():
        if isinstance(wanted, MetadataTest):
            if wanted.holds(key, metadata):
                continue
            if wanted.exists is not None:
                return f"{label} {key} is {'absent' if wanted.exists else 'present'}"
            return f"{label} {key} is {_shown_value(metadata, key)}, not in {wanted.one_of!r}"
        if not _same(metadata.get(key), wanted):
            return f"{label} {key} is {_shown_value(metadata, key)}, not {wanted!r}"
    return None


def _holds(conditions: dict[str, Scalar | MetadataTest] | None, metadata: dict) -> bool:
    return _metadata_mismatch("", conditions, metadata) is None


def _shown_value(metadata: dict, key: str) -> str:
    if key not in metadata:
        return "absent"
    return repr(metadata[key])[:60]


def _same(actual: object, wanted: str | int | bool) -> bool:
    # True == 1 in Python; a rule asking for `true` must not match a metadata value of 1.
    return type(actual) is type(wanted) and actual == wanted


def currency_units(amount: int, currency: str) -> Decimal:
    """Polar's integer minor units (cents) as currency units; zero-decimal currencies (JPY,
    KRW, ...) are already whole units."""
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return Decimal(amount)
    return Decimal(amount) / 100


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
        units = rule.units_for(order)
        # A matching rule that comes to 0 units (a $0 order at so much per dollar) grants
        # nothing; with stop it still ends the evaluation: it matched.
        if units > 0:
            grants.append(
                Grant(
                    rule_id=rule.id,
                    meter=rule.meter,
                    meter_id=meter.id,
                    event_name=meter.event_name,
                    property=meter.property,
                    units=units,
                    customer_id=order.customer_id,
                    order_id=order.order_id,
                    external_id=grant_external_id(order, rule.stable_key),
                    reason=order.billing_reason,
                    rule_key=rule.stable_key,
                )
            )
        if rule.stop:
            break
    return grants


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
                rule_key=rule.stable_key,
            )
        )
    return decided
