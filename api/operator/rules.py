"""`POST /rules/preview`: what the rules would grant an order, and why, granting nothing.

The API never calls Polar: the preview runs in the worker (RulesPreviewWorkflow), which
fetches an order by id, looks up the first-order fact and reads the customer's ledger there.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, status
from pydantic import BaseModel, ValidationError
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeout
from temporalio.service import RPCError

from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.operator.auth import OPERATOR
from polar_credits.api.operator.grants.query import ID_VALUE
from polar_credits.api.operator.route import OperatorRoute
from polar_credits.api.operator.temporal_errors import temporal_error
from polar_credits.api.problems import Problem
from polar_credits.models.decisions import OrderDecision
from polar_credits.models.grants import PolarErrorType
from polar_credits.models.orders import RulesPreviewInput
from polar_credits.orders import PaidOrder, order_facts
from polar_credits.rules import describe
from polar_credits.starters.runs import PREVIEW_TIMEOUT, run_preview

# A preview grants nothing and reserves nothing: a read token may ask for one.
router = APIRouter(
    prefix="/rules", tags=["rules"], dependencies=[OPERATOR], route_class=OperatorRoute
)

# The worker reads the order at Polar by this id: an id like the other routes take (Polar's
# are UUIDs), never a path, a query or a fragment.
_ORDER_ID = re.compile(ID_VALUE)
ORDER_ID_RULE = (
    "order_id must be a Polar order id: 1 to 256 letters, digits and . _ : @ + -, "
    "starting with a letter or a digit"
)

EXAMPLE_BY_ID = {"order_id": "9a3c4d1e-0000-4000-8000-000000000001"}
PreviewBody = Annotated[
    dict[str, Any],
    Body(
        description=(
            'Either {"order_id": "..."} (the worker reads the order from Polar) or a Polar '
            "order: the `data` object of an order.paid webhook (or the whole webhook body)."
        ),
        examples=[EXAMPLE_BY_ID],
    ),
]


class VerdictOut(BaseModel):
    rule_id: str
    key: str
    matched: bool
    reason: str
    units: int
    cap: int | None = None
    granted_before: int | None = None


class GrantOut(BaseModel):
    rule_id: str
    rule_key: str
    meter: str
    meter_id: str
    units: int
    external_id: str


class PreviewAnswer(BaseModel):
    """Each rule's verdict with its reason, and the grants an order run would make now."""

    order_id: str
    rules_version: str
    first_order: str | None = None
    verdicts: list[VerdictOut]
    grants: list[GrantOut]
    units: int
    lines: list[str]
    workflow_id: str


@router.post(
    "/preview",
    response_model=PreviewAnswer,
    responses={
        404: {"model": Problem, "description": "Polar has no order with this `order_id`."},
        422: {
            "model": Problem,
            "description": "Neither a Polar order nor a valid `order_id` (an id like the "
            "other routes take), or an order no real Polar order can be (a date out of range "
            "once converted to UTC, an id far beyond Polar's); nothing reached Polar.",
        },
    },
)
async def preview(
    request: Request,
    settings: SettingsDep,
    temporal: TemporalDep,
    body: PreviewBody,
) -> PreviewAnswer:
    """Explain the rules on one order: each rule's verdict and the grants, granting nothing
    and reserving nothing. Per-customer caps are shown as the customer's ledger stands now."""
    input = _preview_input(request, body)
    try:
        workflow_id, decision = await run_preview(
            temporal, input, task_queue=settings.credits_task_queue
        )
    except WorkflowFailureError as exc:
        cause = _root_cause(exc)
        if isinstance(cause, ApplicationError) and cause.type == PolarErrorType.ORDER_NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, cause.message) from exc
        if isinstance(cause, TemporalTimeout):
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"no worker finished the preview within {PREVIEW_TIMEOUT.seconds} s: "
                "is the worker running?",
            ) from exc
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"the preview failed: {cause}") from exc
    except (RPCError, RuntimeError) as exc:
        raise temporal_error(exc) from exc
    return _answer(decision, workflow_id)


def _preview_input(request: Request, body: dict[str, Any]) -> RulesPreviewInput:
    if set(body) == {"order_id"}:
        order_id = body["order_id"]
        if not isinstance(order_id, str) or not _ORDER_ID.fullmatch(order_id.strip()):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, ORDER_ID_RULE)
        return RulesPreviewInput(order_id=order_id.strip())
    if isinstance(body.get("data"), dict) and "type" in body:
        body = body["data"]  # a whole webhook body
    try:
        order = PaidOrder.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f'not a Polar order, nor {{"order_id": ...}}: {problems}',
        ) from None
    metadata_keys = request.app.state.metadata_keys
    refusal = order.refusal(metadata_keys)
    if refusal:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, refusal)
    return RulesPreviewInput(order=order_facts(order, metadata_keys))


def _answer(decision: OrderDecision, workflow_id: str) -> PreviewAnswer:
    return PreviewAnswer(
        order_id=decision.order_id,
        rules_version=decision.rules_version,
        first_order=decision.first_order.describe() if decision.first_order else None,
        verdicts=[
            VerdictOut(
                rule_id=v.rule_id,
                key=v.key,
                matched=v.matched,
                reason=v.reason,
                units=v.units,
                cap=v.cap,
                granted_before=v.granted_before,
            )
            for v in decision.verdicts
        ],
        grants=[
            GrantOut(
                rule_id=g.rule_id,
                rule_key=g.rule_key or g.rule_id,
                meter=g.meter,
                meter_id=g.meter_id,
                units=g.units,
                external_id=g.external_id,
            )
            for g in decision.grants
        ],
        units=sum(g.units for g in decision.grants),
        lines=describe(decision),
        workflow_id=workflow_id,
    )


def _root_cause(exc: BaseException) -> BaseException:
    """The first application error in the chain (the activity's own), else the last cause."""
    cause: BaseException = exc
    while not isinstance(cause, ApplicationError):
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None:
            break
        cause = inner
    return cause
