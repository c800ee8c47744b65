"""Data of the operator's own grants: manual grants and revokes (inputs, states). Their ids
are built in polar_credits/identity.py, the revoke arithmetic is polar_credits/revoke_plan.py,
and the kinds of runs the grants API lists are api/operator/grants/query.py.

Dataclasses only (they are written into workflow histories): ids, units and the operator's
reason, never a customer's email or name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from polar_credits.models.grants import IngestResult
from polar_credits.models.orders import VerificationPolicy
from polar_credits.models.verification import MeterVerification

# The longest idempotency key the operator API takes (longer than OPERATOR_KEY's plain ones:
# those are hashed into ids, polar_credits/identity.py `operator_key_part`).
MAX_KEY_CHARS = 500
# The reason goes into the event's metadata (Polar: at most 500 characters a value) and the
# run's history: an operator's note, not a document.
MAX_REASON_CHARS = 200
# A manual grant's and a revoke's units: at most MAX_GRANT_UNITS (polar_credits/grant_limit.py).


class RevokeStatus(StrEnum):
    """Where a revoke stands; shown as the `CreditStatus` search attribute of its run."""

    PENDING = "pending"
    REVOKED = "revoked"
    NOTHING = "nothing_to_revoke"  # the cap left nothing to take back
    FAILED = "failed"


@dataclass
class GrantMeter:
    """A meter of the rules file, resolved when the run starts (a later rules change never
    alters a running grant)."""

    name: str
    meter_id: str
    event_name: str
    property: str = "units"


@dataclass
class ManualGrantInput:
    key: str  # the operator's idempotency key
    customer_id: str
    meter: GrantMeter
    units: int
    reason: str
    # SHA-256 of the canonical request body: the same key with another body is refused.
    request_sha256: str
    verification: VerificationPolicy = field(default_factory=VerificationPolicy)


@dataclass
class ManualGrantState:
    """The `state` query and the result of a manual grant."""

    key: str
    customer_id: str
    meter: str
    units: int
    reason: str
    external_id: str
    status: str
    ingest: IngestResult | None = None
    verifications: list[MeterVerification] = field(default_factory=list)
    failure: str | None = None
    # The meter as resolved at start: what a revoke of this grant compensates on.
    grant_meter: GrantMeter | None = None


@dataclass
class ManualGrantIngestInput:
    customer_id: str
    meter: GrantMeter
    units: int
    reason: str
    external_id: str
    key: str


@dataclass
class RevokeItem:
    """One event of the revoked grant: its external id, meter and units."""

    external_id: str
    meter: GrantMeter
    units: int
    rule_id: str | None = None


@dataclass
class RevokeInput:
    grant_id: str  # the workflow id of the revoked grant's run
    customer_id: str
    items: list[RevokeItem]
    reason: str
    units: int | None = None  # None: everything the grant granted
    allow_negative: bool = False
    order_id: str | None = None


@dataclass
class BalanceReadInput:
    customer_id: str
    meter_ids: list[str]


@dataclass
class MeterBalance:
    meter_id: str
    balance: float


@dataclass
class BalanceReadResult:
    balances: list[MeterBalance]


@dataclass
class RevokePlanned:
    """One compensating event: `units` taken back from the grant event `grant_external_id`."""

    grant_external_id: str
    external_id: str
    meter: GrantMeter
    units: int


@dataclass
class RevokeIngestInput:
    customer_id: str
    grant_id: str
    reason: str
    events: list[RevokePlanned]


@dataclass
class RevokeState:
    """The `state` query and the result of a revoke."""

    grant_id: str
    customer_id: str
    status: str
    units_requested: int
    units_revoked: int = 0
    allow_negative: bool = False
    capped: str | None = None  # why fewer units than asked were taken back
    balances_before: list[MeterBalance] = field(default_factory=list)
    events: list[RevokePlanned] = field(default_factory=list)
    ingest: IngestResult | None = None
    failure: str | None = None
    reason: str = ""
