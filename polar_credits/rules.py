"""The crediting rules file (TOML): which orders grant how many units of which meter.

Loaded and validated once at worker start-up; `decide_grants` is the one place where an
order's credits are decided.
"""

from __future__ import annotations

import tomllib
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
    model_validator,
)

from polar_credits.models import Grant, OrderFacts, order_key

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


class Meter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Polar meter id, used to verify the balance")
    event_name: str = Field(min_length=1, description="name of the events ingested for it")
    property: str = Field(default="units", min_length=1, max_length=40)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=100)
    meter: str
    units: StrictInt = Field(gt=0)
    products: list[str] | None = None
    billing_reasons: list[BillingReason] = Field(default_factory=lambda: ["purchase"])
    # Order metadata this rule requires, key → value (all must be equal). The keys named
    # here are the only metadata that ever enters a workflow history (`metadata_keys`).
    metadata: dict[MetadataKey, StrictStr | StrictInt | StrictBool] | None = None
    # false: no grant while the order's subscription is `trialing` (usually its $0 first
    # order), so a trial cannot be used to collect credits.
    during_trial: StrictBool = True

    def matches(self, order: OrderFacts) -> bool:
        if order.billing_reason not in self.billing_reasons:
            return False
        if not self.during_trial and order.subscription_status == "trialing":
            return False
        if self.products is not None and order.product_id not in self.products:
            return False
        return all(
            _same(order.metadata.get(key), value) for key, value in (self.metadata or {}).items()
        )


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meters: dict[str, Meter]
    rules: list[Rule]

    def metadata_keys(self) -> frozenset[str]:
        """The order metadata a decision can use: the allow-list of what the API copies into
        a workflow's input. Everything else in an order's metadata stays out of histories."""
        return frozenset(key for rule in self.rules for key in (rule.metadata or {}))

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
    for rule in rules.rules:
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
                units=rule.units,
                customer_id=order.customer_id,
                order_id=order.order_id,
                external_id=grant_external_id(order, rule.id),
                reason=order.billing_reason,
            )
        )
    return grants
