"""The operator's grants: list and show grant runs, grant by hand, revoke, re-run an order.

The API never calls Polar: it reads Temporal's visibility (the runs' search attributes),
queries runs, and starts the ManualGrantWorkflow, RevokeGrantWorkflow and OrderCreditsWorkflow
runs; the worker's activities do the Polar calls through the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.operator.auth import OPERATOR, WriterDep
from polar_credits.api.operator.page_tokens import PageTokenError, page_key, seal, unseal
from polar_credits.api.operator.route import OperatorRoute
from polar_credits.api.operator.temporal_errors import temporal_error
from polar_credits.api.problems import Problem
from polar_credits.api.webhooks import workflow_ui_url
from polar_credits.grant_limit import MAX_GRANT_UNITS
from polar_credits.models import CreditStatus, OrderCreditsInput, VerificationPolicy
from polar_credits.moments import to_utc
from polar_credits.operator_grants import (
    MAX_KEY_CHARS,
    MAX_REASON_CHARS,
    WORKFLOW_TYPES,
    GrantKind,
    GrantMeter,
    ManualGrantInput,
    RevokeInput,
    RevokeItem,
    RevokeStatus,
    manual_grant_external_id,
    manual_grant_workflow_id,
    revoke_workflow_id,
)
from polar_credits.operators import OPERATOR_MEMO, started_by
from polar_credits.settings import Settings
from polar_credits.workflows.manual_grant import ManualGrantWorkflow
from polar_credits.workflows.order_credits import OrderCreditsWorkflow, order_workflow_id
from polar_credits.workflows.revoke_grant import RevokeGrantWorkflow

router = APIRouter(tags=["grants"], dependencies=[OPERATOR], route_class=OperatorRoute)

FINGERPRINT_MEMO = "request_sha256"
TEMPORAL_TIMEOUT = timedelta(seconds=10)
# A revoke is a balance read and one ingest: the answer waits for it this long, then says
# `pending` (its id shows the outcome later).
REVOKE_WAIT_SECONDS = 20.0
MAX_PAGE = 100
MAX_GRANT_ID_CHARS = 1000

# Ids and statuses go into a visibility query: only characters that cannot end a string
# literal or start an operator are accepted, and values are quoted besides.
ID_VALUE = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,255}$"
STATUS_VALUE = r"^[a-z][a-z_]{0,39}$"
_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9._:@+\-TZ ]*$")

_KINDS_BY_TYPE = {workflow_type: kind for kind, workflow_type in WORKFLOW_TYPES.items()}
_STATUS_NAMES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CANCELED: "canceled",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}
ENDED_WITHOUT_GRANT = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TIMED_OUT,
}
# Order-run statuses whose grants are in Polar (so a revoke has something to take back).
GRANTED_STATUSES = {
    CreditStatus.GRANTED.value,
    CreditStatus.VERIFIED.value,
    CreditStatus.UNVERIFIED.value,
}

IdValue = Annotated[str, Field(pattern=ID_VALUE)]
# A filter's moment, refused (422) when it has no UTC equivalent (0001-01-01T00:00:00+01:00).
UtcMoment = Annotated[datetime, AfterValidator(to_utc)]
GrantId = Annotated[
    str, Path(min_length=1, max_length=MAX_GRANT_ID_CHARS, description="The run's workflow id")
]


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


# -- helpers ----------------------------------------------------------------------------------


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


def _summary(execution: WorkflowExecution) -> GrantSummary:
    attributes = execution.typed_search_attributes
    return GrantSummary(
        id=execution.id,
        kind=_KINDS_BY_TYPE[execution.workflow_type],
        status=attributes.get(sa.CREDIT_STATUS),
        execution_status=_STATUS_NAMES.get(execution.status, "running")
        if execution.status
        else "running",
        customer_id=attributes.get(sa.POLAR_CUSTOMER_ID),
        order_id=attributes.get(sa.POLAR_ORDER_ID),
        subscription_id=attributes.get(sa.POLAR_SUBSCRIPTION_ID),
        product_id=attributes.get(sa.POLAR_PRODUCT_ID),
        units=attributes.get(sa.CREDIT_UNITS),
        started_at=execution.start_time,
        closed_at=execution.close_time,
    )


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


async def _describe(handle: WorkflowHandle) -> Any | None:
    """The run's description, or None when there is no run with this id."""
    try:
        return await handle.describe(rpc_timeout=TEMPORAL_TIMEOUT)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return None
        raise temporal_error(exc) from exc
    except (RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc


async def _state(handle: WorkflowHandle, execution_status: Any) -> Any:
    """What the run's `state` query returns (its result once completed: no worker needed);
    None when no worker answers."""
    try:
        if execution_status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result(rpc_timeout=TEMPORAL_TIMEOUT)
        return await handle.query("state", rpc_timeout=TEMPORAL_TIMEOUT)
    except Exception:  # noqa: BLE001 - no worker to answer: the run's status still shows
        return None


def _not_found(grant_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"No grant run with id {grant_id!r}.")


def _meter(request: Request, name: str) -> GrantMeter:
    rules = request.app.state.rules
    meter = rules.meters.get(name) if rules is not None else None
    if meter is None:
        known = ", ".join(sorted(rules.meters)) if rules is not None else "none (no rules file)"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"Unknown meter {name!r}: the rules file defines {known}.",
        )
    return GrantMeter(
        name=name, meter_id=meter.id, event_name=meter.event_name, property=meter.property
    )


# -- GET /grants -----------------------------------------------------------------------------


@router.get(
    "/grants",
    response_model=GrantPage,
    summary="List grant runs (order, allowance, manual, revoke), newest first",
    responses={
        422: {"model": Problem, "description": "A bad filter, or a page_token it never issued."},
        503: {"model": Problem, "description": "Temporal is unavailable; try again."},
    },
)
async def list_grants(
    temporal: TemporalDep,
    settings: SettingsDep,
    kind: Annotated[list[GrantKind] | None, Query(description="Default: every kind.")] = None,
    customer_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    order_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    subscription_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    product_id: Annotated[str | None, Query(pattern=ID_VALUE)] = None,
    status_: Annotated[
        str | None, Query(alias="status", pattern=STATUS_VALUE, description="CreditStatus")
    ] = None,
    started_after: Annotated[UtcMoment | None, Query(description="Start time from (ISO)")] = None,
    started_before: Annotated[UtcMoment | None, Query(description="Start time until (ISO)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    page_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> GrantPage:
    query = list_query(
        kind or list(GrantKind),
        customer_id=customer_id,
        order_id=order_id,
        subscription_id=subscription_id,
        product_id=product_id,
        status_=status_,
        started_after=started_after,
        started_before=started_before,
    )
    assert settings.polar_webhook_secret is not None
    key = page_key(settings.polar_webhook_secret.get_secret_value())
    token: bytes | None = None
    if page_token is not None:
        try:
            token = unseal(key, page_token)
        except PageTokenError as exc:
            # The caller's mistake, told at once: Temporal would retry it for ~10 s, then fail.
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"page_token is not a next_page_token this API returned ({exc}): list again "
                "without page_token, and pass each answer's next_page_token unchanged.",
            ) from exc
    pages = temporal.list_workflows(
        query, page_size=limit, next_page_token=token, rpc_timeout=TEMPORAL_TIMEOUT
    )
    try:
        await pages.fetch_next_page()
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    executions = [e for e in pages.current_page or [] if e.workflow_type in _KINDS_BY_TYPE]
    following = pages.next_page_token
    return GrantPage(
        grants=[_summary(e) for e in executions],
        next_page_token=seal(key, following) if following else None,
    )


# -- GET /grants/{id} --------------------------------------------------------------------------


@router.get(
    "/grants/{grant_id}",
    response_model=GrantDetail,
    summary="One grant run: its decision, events, verification and Temporal UI link",
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def show_grant(
    grant_id: GrantId, settings: SettingsDep, temporal: TemporalDep
) -> GrantDetail:
    handle = temporal.get_workflow_handle(grant_id)
    description = await _describe(handle)
    if description is None or description.workflow_type not in _KINDS_BY_TYPE:
        raise _not_found(grant_id)
    summary = _summary(description)
    state = _plain(await _state(handle, description.status))
    detail = GrantDetail(
        **summary.model_dump(),
        run_id=description.run_id,
        ui_url=workflow_ui_url(settings, grant_id),
        started_by=started_by(await description.memo()),
    )
    if isinstance(state, dict):
        detail.state = state
        detail.decision = state.get("decision")
        detail.failure = state.get("failure")
        detail.verifications = list(state.get("verifications") or [])
        detail.grants = _grant_events(summary.kind, state)
    return detail


def _grant_events(kind: GrantKind, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The events the run ingested (or would), with their external ids."""
    if kind == GrantKind.ORDER:
        return [
            {k: g.get(k) for k in ("rule_id", "meter", "units", "external_id")}
            for g in state.get("grants") or []
        ]
    if kind == GrantKind.MANUAL:
        return [
            {
                "meter": state.get("meter"),
                "units": state.get("units"),
                "external_id": state.get("external_id"),
            }
        ]
    if kind == GrantKind.REVOKE:
        return [
            {
                "meter": (e.get("meter") or {}).get("name"),
                "units": e.get("units"),
                "external_id": e.get("external_id"),
                "revokes": e.get("grant_external_id"),
            }
            for e in state.get("events") or []
        ]
    return [
        {k: g.get(k) for k in ("rule_id", "period_start", "units", "external_id")}
        for g in state.get("grants") or []
    ]


# -- POST /grants ------------------------------------------------------------------------------


@router.post(
    "/grants",
    response_model=ManualGrantView,
    status_code=201,
    summary="Grant units by hand (idempotent by key)",
    responses={
        200: {"model": ManualGrantView, "description": "This key's grant already exists."},
        403: {"model": Problem, "description": "A read token: this needs a write token."},
        409: {"model": Problem, "description": "The key was used with another body."},
        422: {"model": Problem, "description": "Bad request, or an unknown meter."},
        503: {"model": Problem},
    },
)
async def create_grant(
    body: ManualGrantBody,
    request: Request,
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> JSONResponse:
    meter = _meter(request, body.meter)
    workflow_id = manual_grant_workflow_id(body.idempotency_key)
    handle = temporal.get_workflow_handle(workflow_id)
    fingerprint = body.fingerprint()
    code = status.HTTP_200_OK
    description = await _describe(handle)
    if description is None:
        try:
            await _start_manual_grant(temporal, settings, body, meter, fingerprint, operator.name)
            code = status.HTTP_201_CREATED
        except WorkflowAlreadyStartedError:
            pass  # another request with this key won the race: compare with it below
        except (RPCError, RuntimeError, TimeoutError) as exc:
            raise temporal_error(exc) from exc
        description = await _describe(handle)
        if description is None:
            raise temporal_error(RuntimeError("the grant's run is not visible yet"))
    memo = await description.memo()
    if memo.get(FINGERPRINT_MEMO) != fingerprint:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency key {body.idempotency_key!r} was already used with another body: use "
            "a new key, or send the first body unchanged to see that grant.",
        )
    view = ManualGrantView(
        id=workflow_id,
        status=(description.typed_search_attributes.get(sa.CREDIT_STATUS) or "pending"),
        execution_status=_STATUS_NAMES.get(description.status, "running")
        if description.status
        else "running",
        idempotency_key=body.idempotency_key,
        customer_id=body.customer_id,
        meter=body.meter,
        units=body.units,
        reason=body.reason,
        external_id=manual_grant_external_id(body.idempotency_key),
        ui_url=workflow_ui_url(settings, workflow_id),
        started_by=started_by(memo),
    )
    state = _plain(await _state(handle, description.status)) if code == 200 else None
    if isinstance(state, dict):
        view.status = state.get("status") or view.status
        view.failure = state.get("failure")
    return JSONResponse(view.model_dump(mode="json"), status_code=code)


async def _start_manual_grant(
    temporal: Client,
    settings: Settings,
    body: ManualGrantBody,
    meter: GrantMeter,
    fingerprint: str,
    operator: str,
) -> None:
    text = ui.manual_grant_start(
        body.idempotency_key, body.customer_id, body.meter, body.units, via=ui.VIA_OPERATOR_API
    )
    await temporal.start_workflow(
        ManualGrantWorkflow.run,
        ManualGrantInput(
            key=body.idempotency_key,
            customer_id=body.customer_id,
            meter=meter,
            units=body.units,
            reason=body.reason,
            request_sha256=fingerprint,
            verification=VerificationPolicy(
                timeout_seconds=settings.credits_verify_timeout_seconds,
                first_interval_seconds=settings.credits_verify_first_check_seconds,
            ),
        ),
        id=manual_grant_workflow_id(body.idempotency_key),
        task_queue=settings.credits_task_queue,
        # One grant per key, for as long as Temporal keeps the run (Polar dedupes forever).
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        memo={FINGERPRINT_MEMO: fingerprint, OPERATOR_MEMO: operator},
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.CREDIT_STATUS, CreditStatus.PENDING.value),
                *(
                    SearchAttributePair(key, value)
                    for key, value in sa.identity_values("", body.customer_id, None)
                ),
            ]
        ),
        static_summary=text.summary,
        static_details=text.details,
        rpc_timeout=TEMPORAL_TIMEOUT,
    )


# -- POST /grants/{id}/revoke ------------------------------------------------------------------


@router.post(
    "/grants/{grant_id}/revoke",
    response_model=RevokeView,
    status_code=201,
    summary="Take a grant back once, capped at the customer's balance",
    responses={
        200: {"model": RevokeView, "description": "This grant was revoked before: that revoke."},
        202: {"model": RevokeView, "description": "Still running: GET /grants/{id} later."},
        403: {"model": Problem, "description": "A read token: this needs a write token."},
        404: {"model": Problem},
        409: {"model": Problem, "description": "The run granted nothing that can be revoked."},
        422: {"model": Problem},
        502: {"model": Problem, "description": "The revoke failed (its reason); nothing taken."},
    },
)
async def revoke_grant(
    grant_id: GrantId,
    body: RevokeBody,
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> JSONResponse:
    revoke_id = revoke_workflow_id(grant_id)
    revoke = temporal.get_workflow_handle(revoke_id)
    previous = await _describe(revoke)
    if previous is not None and previous.status not in ENDED_WITHOUT_GRANT:
        view = await _revoke_view(settings, revoke, previous, grant_id)
        return JSONResponse(view.model_dump(mode="json"), status_code=status.HTTP_200_OK)

    handle = temporal.get_workflow_handle(grant_id)
    description = await _describe(handle)
    if description is None or description.workflow_type not in _KINDS_BY_TYPE:
        raise _not_found(grant_id)
    kind = _KINDS_BY_TYPE[description.workflow_type]
    input = await _revoke_input(handle, kind, description, body)
    text = ui.revoke_start(
        grant_id, input.customer_id, input.units, input.allow_negative, via=ui.VIA_OPERATOR_API
    )
    try:
        await temporal.start_workflow(
            RevokeGrantWorkflow.run,
            input,
            id=revoke_id,
            task_queue=settings.credits_task_queue,
            # A revoke that failed (the balance could not be read) may be asked again.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            memo={OPERATOR_MEMO: operator.name},
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.CREDIT_STATUS, RevokeStatus.PENDING.value),
                    *(
                        SearchAttributePair(key, value)
                        for key, value in sa.identity_values(
                            input.order_id or "", input.customer_id, None
                        )
                    ),
                ]
            ),
            static_summary=text.summary,
            static_details=text.details,
            rpc_timeout=TEMPORAL_TIMEOUT,
        )
        code = status.HTTP_201_CREATED
    except WorkflowAlreadyStartedError:
        code = status.HTTP_200_OK  # another request revoked it meanwhile
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    try:
        await asyncio.wait_for(revoke.result(), timeout=REVOKE_WAIT_SECONDS)
    except WorkflowFailureError:
        pass  # the view says why
    except TimeoutError:
        code = status.HTTP_202_ACCEPTED
    described = await _describe(revoke)
    view = await _revoke_view(settings, revoke, described, grant_id)
    if view.status == RevokeStatus.FAILED.value:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, view.failure or "the revoke failed")
    return JSONResponse(view.model_dump(mode="json"), status_code=code)


async def _revoke_input(
    handle: WorkflowHandle, kind: GrantKind, description: Any, body: RevokeBody
) -> RevokeInput:
    state = _plain(await _state(handle, description.status))
    if not isinstance(state, dict):
        raise temporal_error(RuntimeError("no worker answered the grant's state query"))
    customer_id = state.get("customer_id") or ""
    if kind == GrantKind.ORDER:
        if state.get("status") not in GRANTED_STATUSES:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"Order run {handle.id!r} is {state.get('status')!r}: it granted nothing this "
                "run can take back.",
            )
        items = [
            RevokeItem(
                external_id=g["external_id"],
                meter=GrantMeter(
                    name=g["meter"],
                    meter_id=g["meter_id"],
                    event_name=g["event_name"],
                    property=g.get("property") or "units",
                ),
                units=int(g["units"]),
                rule_id=g.get("rule_id"),
            )
            for g in state.get("grants") or []
        ]
        order_id = state.get("order_id")
    elif kind == GrantKind.MANUAL:
        if state.get("status") not in GRANTED_STATUSES or not state.get("grant_meter"):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"Manual grant {handle.id!r} is {state.get('status')!r}: nothing to take back.",
            )
        meter = state["grant_meter"]
        items = [
            RevokeItem(
                external_id=state["external_id"],
                meter=GrantMeter(**meter),
                units=int(state["units"]),
            )
        ]
        order_id = None
    else:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"A {kind.value} run cannot be revoked here: revoke an order run or a manual grant.",
        )
    return RevokeInput(
        grant_id=handle.id,
        customer_id=customer_id,
        items=items,
        reason=body.reason,
        units=body.units,
        allow_negative=body.allow_negative,
        order_id=order_id,
    )


async def _revoke_view(
    settings: Settings, handle: WorkflowHandle, description: Any | None, grant_id: str
) -> RevokeView:
    """The revoke run as it stands; `description` is its describe() (None: not visible)."""
    execution_status = description.status if description is not None else None
    view = RevokeView(
        id=handle.id,
        grant_id=grant_id,
        status=RevokeStatus.PENDING.value,
        ui_url=workflow_ui_url(settings, handle.id),
        started_by=started_by(await description.memo()) if description is not None else None,
    )
    state = _plain(await _state(handle, execution_status))
    if isinstance(state, dict):
        view.status = state.get("status") or view.status
        view.units_requested = state.get("units_requested")
        view.units_revoked = state.get("units_revoked") or 0
        view.capped = state.get("capped")
        view.allow_negative = bool(state.get("allow_negative"))
        view.balances_before = list(state.get("balances_before") or [])
        view.events = list(state.get("events") or [])
        view.failure = state.get("failure")
    elif execution_status in ENDED_WITHOUT_GRANT:
        view.status = RevokeStatus.FAILED.value
    return view


# -- POST /orders/{order_id}/rerun -------------------------------------------------------------


@router.post(
    "/orders/{order_id}/rerun",
    response_model=RerunView,
    status_code=201,
    summary="Run an order's crediting again after its run failed",
    responses={
        403: {"model": Problem, "description": "A read token: this needs a write token."},
        404: {"model": Problem, "description": "No run for this order."},
        409: {"model": Problem, "description": "Its run granted, or still runs."},
        503: {"model": Problem},
    },
)
async def rerun_order(
    order_id: Annotated[str, Path(min_length=1, max_length=MAX_GRANT_ID_CHARS)],
    settings: SettingsDep,
    temporal: TemporalDep,
    operator: WriterDep,
) -> RerunView:
    workflow_id = order_workflow_id(order_id)
    handle = temporal.get_workflow_handle(workflow_id)
    description = await _describe(handle)
    if description is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No run for order {order_id!r}.")
    previous = _STATUS_NAMES.get(description.status, "running") if description.status else "running"
    if description.status not in ENDED_WITHOUT_GRANT:
        credit = description.typed_search_attributes.get(sa.CREDIT_STATUS)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Order {order_id!r}: its run is {previous} (credit status {credit!r}); only a run "
            "that failed, was terminated, canceled or timed out is run again.",
        )
    input = await _first_input(temporal, handle.id, description.run_id)
    text = ui.order_run(input.order, via=ui.VIA_RERUN)
    try:
        started = await temporal.start_workflow(
            OrderCreditsWorkflow.run,
            input,
            id=workflow_id,
            task_queue=settings.credits_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            memo={OPERATOR_MEMO: operator.name},
            search_attributes=TypedSearchAttributes(sa.order_start_attributes(input.order)),
            static_summary=text.summary,
            static_details=text.details,
            rpc_timeout=TEMPORAL_TIMEOUT,
        )
    except WorkflowAlreadyStartedError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"Order {order_id!r}: another run started meanwhile."
        ) from exc
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    return RerunView(
        order_id=order_id,
        id=workflow_id,
        run_id=started.result_run_id or "",
        previous_status=previous,
        ui_url=workflow_ui_url(settings, workflow_id),
        started_by=operator.name,
    )


async def _first_input(temporal: Client, workflow_id: str, run_id: str | None) -> OrderCreditsInput:
    """The input the run was started with, from its history's first event."""
    handle = temporal.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        async for event in handle.fetch_history_events(rpc_timeout=TEMPORAL_TIMEOUT):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            (input,) = await temporal.data_converter.decode(payloads, [OrderCreditsInput])
            return input
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    except (ApplicationError, ValueError, TypeError) as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"The run's input cannot be read again: {exc}"
        ) from exc
    raise HTTPException(status.HTTP_409_CONFLICT, "The run has no history to start again from.")
