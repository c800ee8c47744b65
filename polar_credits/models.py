"""Data that crosses the workflow boundary: workflow inputs, activity inputs and results.

Dataclasses only, so Temporal's default converter stores them, and new optional fields can
be added without breaking running workflows. Nothing here may hold a customer's email or
name: these objects are written into workflow histories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from polar_credits.grant_limit import HELD_OVER_MAX

# A metadata value: str, int, float or bool, as JSON carries it. Typed Any because Temporal's
# converter tries a union's members in order, and its int() turns True into 1 and 1.5 into 1:
# a rule asking for `true` would never match after the value crossed into a workflow.
MetadataValue = Any


class CreditStatus(StrEnum):
    """Where an order's crediting stands; shown as the `CreditStatus` search attribute."""

    PENDING = "pending"
    NO_RULE = "no_rule"
    GRANTED = "granted"
    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    FAILED = "failed"
    # Every grant was already in Polar before this run (another order for the same
    # subscription period): nothing granted, nothing to verify.
    ALREADY_GRANTED = "already_granted"
    # Every amount the rules computed was above the per-grant maximum (polar_credits/
    # grant_limit.py): held in the decision record, nothing sent to Polar.
    HELD_OVER_MAX = HELD_OVER_MAX


class PolarErrorType(StrEnum):
    """ApplicationError types that retry policies and the workflow refer to by name."""

    GRANT_REJECTED = "PolarRejectedGrant"  # a 422: no retry can fix it
    RATE_LIMITED = "PolarRateLimited"
    UNAVAILABLE = "PolarUnavailable"
    AUTH = "PolarAuthError"
    ORDER_NOT_FOUND = "PolarOrderNotFound"  # a preview by order id: Polar has no such order
    # Not Polar's: an amount above the per-grant maximum, held and never sent (no retry).
    GRANT_OVER_MAX = "GrantOverMaximum"


@dataclass
class OrderFacts:
    """What a crediting decision may look at, copied from a paid Polar order."""

    order_id: str
    customer_id: str
    billing_reason: str
    status: str
    product_id: str | None = None
    subscription_id: str | None = None
    subscription_status: str | None = None
    currency: str = "usd"
    subtotal_amount: int = 0
    discount_amount: int = 0
    net_amount: int = 0
    tax_amount: int = 0
    total_amount: int = 0
    refunded_amount: int = 0
    seats: int | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    created_at: str | None = None
    # The order's product's and customer's metadata, only the keys the rules name.
    product_metadata: dict[str, MetadataValue] = field(default_factory=dict)
    customer_metadata: dict[str, MetadataValue] = field(default_factory=dict)
    # The period a subscription order credits, from its subscription snapshot (UTC, to the
    # second): the billing period, and Polar's separate meter period when it has one.
    subscription_period_start: str | None = None
    subscription_meter_period_start: str | None = None


@dataclass
class VerificationPolicy:
    """How long and how often the workflow checks that Polar's meter shows the grant.

    `first_interval_seconds` is the wait before the first check: Polar recomputes a balance
    about 15 s after the customer's last event, so checking earlier only spends calls.
    """

    timeout_seconds: float = 1800.0
    first_interval_seconds: float = 1.0
    max_interval_seconds: float = 60.0


@dataclass
class OrderCreditsInput:
    order: OrderFacts
    verification: VerificationPolicy = field(default_factory=VerificationPolicy)


@dataclass
class Grant:
    """One rule's credit for one order: becomes one negative event in Polar."""

    rule_id: str
    meter: str
    meter_id: str
    event_name: str
    property: str
    units: int
    customer_id: str
    order_id: str
    external_id: str
    reason: str
    # The rule's stable key (its `key`, else its id), which `external_id` is built from; None
    # in grants decided before rules had keys (their key was the rule id).
    rule_key: str | None = None


@dataclass
class IngestResult:
    """Polar's answer for an order's events.

    Several orders share one ingest call, and Polar counts `inserted` and `duplicates` for
    the whole call, so they are exact for the order only when the call's answer says so
    (all inserted, all duplicates, or the call held only this order); otherwise None.
    `confirmed` is always the number of the order's events Polar holds now.
    """

    inserted: int | None
    duplicates: int | None
    confirmed: int = 0
    # Polar's clock (ISO) just after the call that confirmed the events: a meter recomputed
    # at or after it counts them.
    stored_by: str | None = None
    batch_events: int = 0
    # The first attempt's answer: duplicates then cannot be this run's own earlier call.
    first_attempt: bool | None = None

    def granted_before(self, grants: int) -> bool:
        """Polar held every one of the order's events before this run sent them."""
        return bool(self.first_attempt) and self.inserted == 0 and self.duplicates == grants


@dataclass
class IngestGrantsInput:
    grants: list[Grant]


@dataclass
class MeterCheckInput:
    customer_id: str
    meter_id: str
    order_id: str
    event_name: str
    rule_ids: list[str]


@dataclass
class MeterReading:
    """A customer meter as Polar shows it, and whether it already counts the grant's events."""

    meter_id: str
    consumed_units: float
    credited_units: float
    balance: float
    modified_at: str | None
    events_found: int
    includes_grant: bool


@dataclass
class MeterGrant:
    meter: str
    meter_id: str
    units: int


@dataclass
class VerifyGrantsInput:
    """What the verification activity checks, and until when (an absolute deadline, so a
    retried attempt does not start the clock again)."""

    customer_id: str
    meters: list[MeterGrant]
    stored_by: str | None
    check_from: str
    deadline: str
    max_interval_seconds: float = 60.0


@dataclass
class VerifyGrantsResult:
    verifications: list[MeterVerification]


@dataclass
class MeterVerification:
    meter: str
    meter_id: str
    units_granted: int
    verified: bool
    balance: float | None = None
    consumed_units: float | None = None
    credited_units: float | None = None
    checks: int = 0


@dataclass
class OrderCreditsState:
    """Live state of an order's crediting, returned by the `state` query and as the result."""

    order_id: str
    customer_id: str
    status: str
    grants: list[Grant] = field(default_factory=list)
    ingest: IngestResult | None = None
    verifications: list[MeterVerification] = field(default_factory=list)
    failure: str | None = None
    # Why the order got what it got (runs started before the decision record have none).
    decision: OrderDecision | None = None


# -- the decision record: why an order got what it got (polar_credits/rules/engine.py) ------


@dataclass
class FirstOrderFact:
    """Whether the order is the customer's first paid order for its product, as Polar's
    Orders API answered (earlier = older `created_at`, or the same one and a smaller id)."""

    first: bool
    earlier_order_id: str | None = None
    earlier_created_at: str | None = None

    def describe(self) -> str:
        if self.first:
            return "first paid order for this product: yes (no earlier paid order)"
        return (
            f"first paid order for this product: no: earlier order {self.earlier_order_id} "
            f"at {self.earlier_created_at}"
        )


@dataclass
class RuleVerdict:
    """One rule's verdict on one order, with a one-line reason."""

    rule_id: str
    key: str
    matched: bool
    reason: str
    units: int = 0  # granted by this rule to this order (after its per-customer cap)
    # max_units_per_customer, and what the rule had granted the customer before this order.
    cap: int | None = None
    granted_before: int | None = None


@dataclass
class HeldGrant:
    """An amount the rules computed above the per-grant maximum: recorded, never sent."""

    rule_id: str
    units: int  # the amount as computed
    reason: str
    period_start: str | None = None  # an allowance period


@dataclass
class OrderDecision:
    """The decision record: the rules version, each rule's verdict, the facts looked up,
    and the resulting grants. Recorded in the order run's history and its `state`."""

    order_id: str
    rules_version: str
    verdicts: list[RuleVerdict] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    first_order: FirstOrderFact | None = None
    # Facts a rule needs that are not looked up yet ("first_order"): look them up, decide again.
    needs: list[str] = field(default_factory=list)
    # A preview: nothing granted, nothing reserved; caps shown as they stand now.
    preview: bool = False
    # Grants above the per-grant maximum: held here, not in `grants`, never sent.
    held: list[HeldGrant] = field(default_factory=list)


@dataclass
class DecideOrderInput:
    order: OrderFacts
    first_order: FirstOrderFact | None = None
    preview: bool = False


@dataclass
class FirstOrderInput:
    order_id: str
    customer_id: str
    product_id: str | None
    created_at: str | None


@dataclass
class CapReservation:
    """Units a capped rule wants for one grant; `grant_id` is the grant's external id, so a
    retried reservation for the same grant is the same reservation."""

    rule_key: str
    grant_id: str
    units: int
    cap: int


@dataclass
class CapOutcome:
    rule_key: str
    grant_id: str
    wanted: int
    allowed: int
    granted_before: int  # the rule's total for the customer before this grant
    cap: int


@dataclass
class ReserveUnitsInput:
    customer_id: str
    reservations: list[CapReservation]
    # Read the totals only (a preview): nothing reserved.
    dry_run: bool = False


@dataclass
class ReserveUnitsResult:
    outcomes: list[CapOutcome] = field(default_factory=list)


@dataclass
class LedgerState:
    """A customer's ledger of capped grants: its input after continue-as-new, and its query."""

    customer_key: str
    totals: dict[str, int] = field(default_factory=dict)  # rule key -> units reserved
    # "<rule key> <grant id>" -> units: a reservation made twice is counted once.
    reservations: dict[str, int] = field(default_factory=dict)
    runs: int = 1
    history_limit: int | None = None  # tests set it low to see continue-as-new happen


@dataclass
class RulesPreviewInput:
    """A payload's facts, or an order id the worker fetches from Polar."""

    order: OrderFacts | None = None
    order_id: str | None = None


@dataclass
class FetchOrderInput:
    order_id: str


# -- subscription allowances (rules with `every`) -------------------------------------------


class AllowanceStatus(StrEnum):
    """Where a subscription's allowance stands; shown as the `CreditStatus` search attribute
    of its allowance run."""

    WAITING_FOR_PAYMENT = "waiting_for_payment"  # no paid order seen yet
    ACTIVE = "active"
    PAUSED = "paused"
    # A grant is due but the subscription is not in good standing (past_due, incomplete),
    # or its next billing period has not started yet: held until it is, or it ends.
    HELD = "held"
    ENDING = "ending"  # canceled at period end: no grant at or after that end
    # The last period of a rule computed an amount above the per-grant maximum: held (in the
    # state's `held`), skipped, never sent; until that rule grants a period again.
    HELD_OVER_MAX = HELD_OVER_MAX
    ENDED = "ended"


@dataclass
class SubscriptionFacts:
    """The subscription as one webhook or order snapshot showed it. No personal data."""

    subscription_id: str
    customer_id: str
    product_id: str | None
    status: str
    # UTC ISO timestamps, to the second; None when the payload did not say.
    modified_at: str | None = None
    started_at: str | None = None
    current_period_start: str | None = None
    current_period_end: str | None = None
    cancel_at_period_end: bool = False
    ends_at: str | None = None
    ended_at: str | None = None
    seats: int | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    # The subscription's product's and customer's metadata, only the keys the rules name.
    product_metadata: dict[str, MetadataValue] = field(default_factory=dict)
    customer_metadata: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass
class SubscriptionObservation:
    """A signal to the allowance run: a subscription webhook, or a paid subscription order
    (then `paid_order_id` is set: the subscription has been paid for)."""

    facts: SubscriptionFacts
    paid_order_id: str | None = None
    event_type: str | None = None
    # Set by a recovery (`polar-credits recover`), which reads the subscription from Polar
    # instead of seeing its paid orders: the end of the latest period Polar shows as paid.
    paid_through: str | None = None


@dataclass
class AllowanceRule:
    """A rule with a cadence, as it applies to the subscription now."""

    rule_id: str
    every: str
    meter: str
    meter_id: str
    event_name: str
    property: str
    units: int | None = None  # fixed units, or units per seat × seats, already multiplied
    top_up_to: int | None = None
    rollover_cap: int | None = None
    # The rule's stable key, which the period's external id is built from (None: decided
    # before rules had keys; the rule id was the key).
    rule_key: str | None = None


@dataclass
class AllowanceGrant:
    """One allowance period of one rule, granted (or found already granted) in Polar."""

    rule_id: str
    period_start: str
    units: int
    external_id: str
    # Polar already held this period's event (a second run, a reset): nothing new granted.
    already_granted: bool = False
    stored_by: str | None = None
    # For capped rules: the balance the amount was computed from (docs/subscriptions.md, "Caps").
    balance_seen: float | None = None


@dataclass
class AllowanceGrantInput:
    subscription_id: str
    customer_id: str
    rule: AllowanceRule
    period_start: str
    # This run's recent grants on the rule's meter: a capped rule counts those the balance
    # read does not show yet.
    recent: list[AllowanceGrant] = field(default_factory=list)


@dataclass
class AllowanceRulesInput:
    facts: SubscriptionFacts


@dataclass
class AllowanceState:
    """The allowance run's state: its input after continue-as-new, and the `state` query."""

    subscription_id: str
    status: str = AllowanceStatus.WAITING_FOR_PAYMENT.value
    facts: SubscriptionFacts | None = None
    # A paid subscription order was seen; periods at or after `paid_through` (the end of the
    # latest paid billing period) wait for the renewal's payment.
    paid: bool = False
    paid_through: str | None = None
    # Grant periods are counted from here: the subscription's start, from its payload.
    anchor: str | None = None
    begun: bool = False
    decided_trialing: bool = False
    # rule id → index of the next period to consider (periods before it are done or skipped)
    next_period: dict[str, int] = field(default_factory=dict)
    rules: list[AllowanceRule] = field(default_factory=list)
    next_grant_at: str | None = None
    held_because: str | None = None
    grants: list[AllowanceGrant] = field(default_factory=list)  # the most recent ones
    grants_total: int = 0
    units_total: int = 0
    skipped: list[str] = field(default_factory=list)  # "rule@period: why", most recent
    runs: int = 1  # this run and the ones it continued from
    history_limit: int | None = None  # tests set it low to see continue-as-new happen
    # Periods whose computed amount was above the per-grant maximum (most recent), and the
    # rules whose latest period was held (the run shows `held_over_max` until they grant).
    held: list[HeldGrant] = field(default_factory=list)
    held_total: int = 0
    holding: list[str] = field(default_factory=list)
    # Messages refused because they name another customer than the subscription's (a
    # subscription's customer never changes in Polar): "what: why", most recent.
    refused: list[str] = field(default_factory=list)
    refused_total: int = 0
