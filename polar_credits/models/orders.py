"""The order run (workflows/order_credits.py) and the rules preview: inputs and state."""


from dataclasses import dataclass, field
from enum import StrEnum

from polar_credits.grant_limit import HELD_OVER_MAX
from polar_credits.models.decisions import OrderDecision
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import Grant, IngestResult
from polar_credits.models.verification import MeterVerification


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


@dataclass
class RulesPreviewInput:
    """A payload's facts, or an order id the worker fetches from Polar."""

    order: OrderFacts | None = None
    order_id: str | None = None


@dataclass
class FetchOrderInput:
    order_id: str
