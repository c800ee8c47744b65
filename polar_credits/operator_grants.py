"""Data of the operator's own grants: manual grants and revokes (inputs, states), and the pure
revoke arithmetic both the workflow and its tests use (their ids: polar_credits/identity.py).

Dataclasses only (they are written into workflow histories): ids, units and the operator's
reason, never a customer's email or name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# manual_grant_*_id and revoke_workflow_id: imported from here by api/operator/grants.py only,
# until it imports them from polar_credits.identity (issue 17 merge).
from polar_credits.identity import (  # noqa: F401
    manual_grant_external_id,
    manual_grant_workflow_id,
    revoke_external_id,
    revoke_workflow_id,
)
from polar_credits.models import IngestResult, MeterVerification, VerificationPolicy

# The longest idempotency key the operator API takes (longer than OPERATOR_KEY's plain ones:
# those are hashed into ids, polar_credits/identity.py `operator_key_part`).
MAX_KEY_CHARS = 500
# The reason goes into the event's metadata (Polar: at most 500 characters a value) and the
# run's history: an operator's note, not a document.
MAX_REASON_CHARS = 200
# A manual grant's and a revoke's units: at most MAX_GRANT_UNITS (polar_credits/grant_limit.py).


class GrantKind(StrEnum):
    """The kinds of runs `GET /grants` lists, by their workflow type."""

    ORDER = "order"
    ALLOWANCE = "allowance"
    MANUAL = "manual"
    REVOKE = "revoke"


WORKFLOW_TYPES = {
    GrantKind.ORDER: "OrderCreditsWorkflow",
    GrantKind.ALLOWANCE: "SubscriptionAllowanceWorkflow",
    GrantKind.MANUAL: "ManualGrantWorkflow",
    GrantKind.REVOKE: "RevokeGrantWorkflow",
}


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


def plan_revoke(
    items: list[RevokeItem], wanted: int, balances: dict[str, float] | None
) -> tuple[list[RevokePlanned], str | None]:
    """The compensating events for `wanted` units, taken from the grant's events in order,
    each at most what it granted; with `balances` (meter id → balance), never more on a
    meter than its balance, so the customer never goes below zero. Returns the events (no
    zero-unit ones) and why fewer than `wanted` were planned, if so."""
    granted = sum(item.units for item in items)
    left = min(wanted, granted)
    why: list[str] = []
    if wanted > granted:
        why.append(f"the grant granted {granted} unit(s), not {wanted}")
    room = {m: max(0, int(b)) for m, b in balances.items()} if balances is not None else None
    planned: list[RevokePlanned] = []
    short_meters: list[str] = []
    for item in items:
        take = min(left, item.units)
        if room is not None:
            available = room.get(item.meter.meter_id, 0)
            if available < take:
                short_meters.append(item.meter.name)
            take = min(take, available)
            room[item.meter.meter_id] = available - take
        left -= take
        if take > 0:
            planned.append(
                RevokePlanned(
                    grant_external_id=item.external_id,
                    external_id=revoke_external_id(item.external_id),
                    meter=item.meter,
                    units=take,
                )
            )
    if short_meters and balances is not None:
        shown = ", ".join(
            f"{name} {balances.get(item.meter.meter_id, 0):g}"
            for name, item in _first_per_meter(items, short_meters)
        )
        why.append(
            f"capped at the customer's balance ({shown}): a revoke never takes a customer "
            "below zero unless allow_negative is set"
        )
    return planned, "; ".join(why) or None


def _first_per_meter(items: list[RevokeItem], names: list[str]) -> list[tuple[str, RevokeItem]]:
    seen: dict[str, RevokeItem] = {}
    for item in items:
        if item.meter.name in names and item.meter.name not in seen:
            seen[item.meter.name] = item
    return list(seen.items())
