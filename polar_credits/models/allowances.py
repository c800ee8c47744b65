"""Subscription allowances, rules with `every` (workflows/subscription_allowance.py)."""


from dataclasses import dataclass, field
from enum import StrEnum

from polar_credits.grant_limit import HELD_OVER_MAX
from polar_credits.models.decisions import HeldGrant
from polar_credits.models.facts import MetadataValue


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
