"""The visibility query of `GET /grants`: the kinds of runs it lists, and a query built from
validated values only, so no request can widen it."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from fastapi import HTTPException, status

from polar_credits import search_attributes as sa
from polar_credits.moments import to_utc

# Ids and statuses go into a visibility query: only characters that cannot end a string
# literal or start an operator are accepted, and values are quoted besides.
ID_VALUE = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,255}$"
STATUS_VALUE = r"^[a-z][a-z_]{0,39}$"
_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9._:@+\-TZ ]*$")


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
KINDS_BY_TYPE = {workflow_type: kind for kind, workflow_type in WORKFLOW_TYPES.items()}


def _literal(value: str) -> str:
    """A visibility string literal. Values are validated before; this refuses anything else,
    so no request can widen a query."""
    if not _SAFE_LITERAL.match(value):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, "A filter holds characters it may not."
        )
    return f"'{value}'"


def _time_literal(moment: datetime) -> str:
    return _literal(to_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def list_query(
    kinds: list[GrantKind],
    *,
    customer_id: str | None = None,
    order_id: str | None = None,
    subscription_id: str | None = None,
    product_id: str | None = None,
    status_: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
) -> str:
    """The visibility query of `GET /grants`, from validated values only."""
    types = " OR ".join(f"WorkflowType = {_literal(WORKFLOW_TYPES[k])}" for k in kinds)
    clauses = [f"({types})"]
    for attribute, value in (
        (sa.POLAR_CUSTOMER_ID, customer_id),
        (sa.POLAR_ORDER_ID, order_id),
        (sa.POLAR_SUBSCRIPTION_ID, subscription_id),
        (sa.POLAR_PRODUCT_ID, product_id),
        (sa.CREDIT_STATUS, status_),
    ):
        if value is not None:
            clauses.append(f"{attribute.name} = {_literal(value)}")
    if started_after is not None:
        clauses.append(f"StartTime >= {_time_literal(started_after)}")
    if started_before is not None:
        clauses.append(f"StartTime < {_time_literal(started_before)}")
    return " AND ".join(clauses)
