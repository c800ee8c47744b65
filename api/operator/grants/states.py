"""The runs' `state` answers, typed by kind: what the grants service reads of each, beside
the answer as the run returned it (which `GET /grants/{id}` shows unchanged)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from polar_credits.api.operator.grants.query import GrantKind
from polar_credits.operator_grants import GrantMeter


# The models mirror the fields the workflows' state dataclasses have (polar_credits/models/,
# polar_credits/operator_grants.py) that the API reads; a field older runs lack is optional.
# Lists and objects shown to the operator as the run returned them stay JSON objects.
class RunState(BaseModel):
    """What every kind's state may tell."""

    status: str | None = None
    customer_id: str | None = None
    failure: str | None = None
    decision: dict[str, Any] | None = None
    verifications: list[dict[str, Any]] = []


class OrderGrantRecord(BaseModel):
    """One event of an order run (its `Grant`): enough to show it and to compensate it."""

    rule_id: str | None = None
    meter: str
    meter_id: str
    event_name: str
    property: str | None = None
    units: int
    external_id: str


class OrderRunState(RunState):
    order_id: str | None = None
    grants: list[OrderGrantRecord] = []


class AllowancePeriodRecord(BaseModel):
    rule_id: str | None = None
    period_start: str | None = None
    units: int | None = None
    external_id: str | None = None


class AllowanceRunState(RunState):
    grants: list[AllowancePeriodRecord] = []


class ManualRunState(RunState):
    meter: str | None = None
    units: int | None = None
    external_id: str | None = None
    # The meter as resolved at start: what a revoke of this grant compensates on.
    grant_meter: GrantMeter | None = None


class RevokeEventMeter(BaseModel):
    name: str | None = None


class RevokeEventRecord(BaseModel):
    """One compensating event of a revoke run (its `RevokePlanned`), as shown."""

    meter: RevokeEventMeter | None = None
    units: int | None = None
    external_id: str | None = None
    grant_external_id: str | None = None


class RevokeRunState(RunState):
    units_requested: int | None = None
    units_revoked: int | None = None
    capped: str | None = None
    allow_negative: bool | None = None
    balances_before: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    def event_records(self) -> list[RevokeEventRecord]:
        return [RevokeEventRecord.model_validate(event) for event in self.events]


STATE_MODELS: dict[GrantKind, type[RunState]] = {
    GrantKind.ORDER: OrderRunState,
    GrantKind.ALLOWANCE: AllowanceRunState,
    GrantKind.MANUAL: ManualRunState,
    GrantKind.REVOKE: RevokeRunState,
}

State = TypeVar("State", bound=RunState)


@dataclass(frozen=True)
class StateAnswer(Generic[State]):
    raw: dict[str, Any]  # as the run returned it: `GET /grants/{id}` shows it unchanged
    typed: State
