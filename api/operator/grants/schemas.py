"""The grants API's request and response models: what the OpenAPI page documents."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from polar_credits.api.operator.grants.query import ID_VALUE, GrantKind
from polar_credits.grant_limit import MAX_GRANT_UNITS
from polar_credits.moments import to_utc
from polar_credits.operator_grants import MAX_KEY_CHARS, MAX_REASON_CHARS

MAX_GRANT_ID_CHARS = 1000


IdValue = Annotated[str, Field(pattern=ID_VALUE)]
# A filter's moment, refused (422) when it has no UTC equivalent (0001-01-01T00:00:00+01:00).
UtcMoment = Annotated[datetime, AfterValidator(to_utc)]
GrantId = Annotated[
    str, Path(min_length=1, max_length=MAX_GRANT_ID_CHARS, description="The run's workflow id")
]
OrderId = Annotated[str, Path(min_length=1, max_length=MAX_GRANT_ID_CHARS)]


class GrantSummary(BaseModel):
    id: str = Field(description="The run's workflow id: GET /grants/{id}.")
    kind: GrantKind
    status: str | None = Field(description="The run's CreditStatus search attribute.")
    execution_status: str = Field(description="Temporal's status of the run.")
    customer_id: str | None = None
    order_id: str | None = None
    subscription_id: str | None = None
    product_id: str | None = None
    units: int | None = Field(
        default=None,
        description="CreditUnits: units granted (a revoke: minus the units it took back).",
    )
    started_at: datetime | None = None
    closed_at: datetime | None = None


class GrantPage(BaseModel):
    grants: list[GrantSummary]
    next_page_token: str | None = Field(
        description="Pass as `page_token` for the next page; null on the last page."
    )


class GrantDetail(GrantSummary):
    run_id: str | None = None
    ui_url: str
    started_by: str | None = Field(
        default=None,
        description="The operator token's name that started this run (a manual grant, revoke "
        "or rerun); null for a run the service started (webhook, reconciliation, schedule).",
    )
    decision: dict[str, Any] | None = Field(
        default=None, description="Why an order got what it got (rules version, verdicts)."
    )
    grants: list[dict[str, Any]] = Field(
        default_factory=list, description="The events ingested, with their external ids."
    )
    verifications: list[dict[str, Any]] = Field(default_factory=list)
    failure: str | None = None
    state: dict[str, Any] | None = Field(
        default=None, description="The run's `state` query (or result), as it returned it."
    )


# Strict, like the rules file: `"units": true`, `"units": "10"` or `1.0` is refused (422), not
# read as 1 or 10; a string must be a string.
class ManualGrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    customer_id: IdValue = Field(description="The Polar customer id.")
    meter: str = Field(min_length=1, max_length=100, description="A meter of the rules file.")
    units: int = Field(ge=1, le=MAX_GRANT_UNITS)
    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON_CHARS,
        description="Goes into the event's metadata and the run's history: no personal data.",
    )
    idempotency_key: str = Field(
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="The same key with the same body returns the first grant; with another "
        "body it is refused (409).",
    )

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ManualGrantView(BaseModel):
    id: str
    kind: Literal["manual"] = "manual"
    status: str
    execution_status: str
    idempotency_key: str
    customer_id: str
    meter: str
    units: int
    reason: str
    external_id: str
    ui_url: str
    failure: str | None = None
    started_by: str | None = Field(default=None, description="The operator token's name.")


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    units: int | None = Field(
        default=None, ge=1, le=MAX_GRANT_UNITS, description="Default: what the grant granted."
    )
    reason: str = Field(default="revoked by an operator", min_length=1, max_length=MAX_REASON_CHARS)
    allow_negative: bool = Field(
        default=False, description="Take the units back even below a zero balance."
    )


class RevokeView(BaseModel):
    id: str = Field(description="The revoke run's workflow id.")
    grant_id: str
    status: str = Field(description="pending, revoked, nothing_to_revoke or failed.")
    units_requested: int | None = None
    units_revoked: int = 0
    capped: str | None = Field(default=None, description="Why fewer units than asked.")
    allow_negative: bool = False
    balances_before: list[dict[str, Any]] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
    failure: str | None = None
    ui_url: str
    started_by: str | None = Field(default=None, description="The operator token's name.")


class RerunView(BaseModel):
    order_id: str
    id: str
    run_id: str
    previous_status: str
    ui_url: str
    started_by: str = Field(description="The operator token's name.")
