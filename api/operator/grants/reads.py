"""The grants service's reads: list and show grant runs, and read one run from Temporal (its
description, its typed `state`, the input it was started with)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import timedelta
from typing import Any, cast

from fastapi import HTTPException, status
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import search_attributes as sa
from polar_credits.api.operator.grants.query import KINDS_BY_TYPE
from polar_credits.api.operator.grants.schemas import GrantDetail, GrantPage, GrantSummary
from polar_credits.api.operator.grants.states import (
    STATE_MODELS,
    AllowanceRunState,
    ManualRunState,
    OrderRunState,
    RevokeRunState,
    RunState,
    State,
    StateAnswer,
)
from polar_credits.api.operator.page_tokens import PageTokenError, page_key, seal, unseal
from polar_credits.api.operator.run_status import status_name
from polar_credits.api.operator.temporal_errors import temporal_error
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.models.orders import OrderCreditsInput
from polar_credits.operators import started_by
from polar_credits.settings import Settings

TEMPORAL_TIMEOUT = timedelta(seconds=10)


async def describe(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | None:
    """The run's description, or None when there is no run with this id."""
    try:
        return await handle.describe(rpc_timeout=TEMPORAL_TIMEOUT)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return None
        raise temporal_error(exc) from exc
    except (RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc


async def read_state(
    handle: WorkflowHandle[Any, Any],
    execution_status: WorkflowExecutionStatus | None,
    model: type[State],
) -> StateAnswer[State] | None:
    """What the run's `state` query returns (its result once completed: no worker needed);
    None when no worker answers, or the run has no state yet."""
    try:
        if execution_status == WorkflowExecutionStatus.COMPLETED:
            answer = await handle.result(rpc_timeout=TEMPORAL_TIMEOUT)
        else:
            answer = await handle.query("state", rpc_timeout=TEMPORAL_TIMEOUT)
    except Exception:  # noqa: BLE001 - no worker to answer: the run's status still shows
        return None
    if is_dataclass(answer) and not isinstance(answer, type):
        answer = asdict(answer)
    if not isinstance(answer, dict):
        return None
    return StateAnswer(raw=answer, typed=model.model_validate(answer))


async def first_input(temporal: Client, workflow_id: str, run_id: str | None) -> OrderCreditsInput:
    """The input the run was started with, from its history's first event."""
    handle = temporal.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        async for event in handle.fetch_history_events(rpc_timeout=TEMPORAL_TIMEOUT):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            (input,) = await temporal.data_converter.decode(payloads, [OrderCreditsInput])
            return cast(OrderCreditsInput, input)
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    except (ApplicationError, ValueError, TypeError) as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"The run's input cannot be read again: {exc}"
        ) from exc
    raise HTTPException(status.HTTP_409_CONFLICT, "The run has no history to start again from.")


def not_found(grant_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"No grant run with id {grant_id!r}.")


def grant_summary(execution: WorkflowExecution) -> GrantSummary:
    """A visibility row of a grant run, as `GET /grants` lists it."""
    attributes = execution.typed_search_attributes
    return GrantSummary(
        id=execution.id,
        kind=KINDS_BY_TYPE[execution.workflow_type],
        status=attributes.get(sa.CREDIT_STATUS),
        execution_status=status_name(execution.status),
        customer_id=attributes.get(sa.POLAR_CUSTOMER_ID),
        order_id=attributes.get(sa.POLAR_ORDER_ID),
        subscription_id=attributes.get(sa.POLAR_SUBSCRIPTION_ID),
        product_id=attributes.get(sa.POLAR_PRODUCT_ID),
        units=attributes.get(sa.CREDIT_UNITS),
        started_at=execution.start_time,
        closed_at=execution.close_time,
    )


async def list_grants(
    temporal: Client, settings: Settings, query: str, limit: int, page_token: str | None
) -> GrantPage:
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
    executions = [e for e in pages.current_page or [] if e.workflow_type in KINDS_BY_TYPE]
    following = pages.next_page_token
    return GrantPage(
        grants=[grant_summary(e) for e in executions],
        next_page_token=seal(key, following) if following else None,
    )


async def show_grant(temporal: Client, settings: Settings, grant_id: str) -> GrantDetail:
    handle = temporal.get_workflow_handle(grant_id)
    description = await describe(handle)
    if description is None or description.workflow_type not in KINDS_BY_TYPE:
        raise not_found(grant_id)
    summary = grant_summary(description)
    answer = await read_state(handle, description.status, STATE_MODELS[summary.kind])
    detail = GrantDetail(
        **summary.model_dump(),
        run_id=description.run_id,
        ui_url=workflow_ui_url(settings, grant_id),
        started_by=started_by(await description.memo()),
    )
    if answer is not None:
        state = answer.typed
        detail.state = answer.raw
        detail.decision = state.decision
        detail.failure = state.failure
        detail.verifications = list(state.verifications)
        detail.grants = grant_events(state)
    return detail


def grant_events(state: RunState) -> list[dict[str, Any]]:
    """The events the run ingested (or would), with their external ids."""
    if isinstance(state, OrderRunState):
        return [
            {"rule_id": g.rule_id, "meter": g.meter, "units": g.units, "external_id": g.external_id}
            for g in state.grants
        ]
    if isinstance(state, ManualRunState):
        return [{"meter": state.meter, "units": state.units, "external_id": state.external_id}]
    if isinstance(state, RevokeRunState):
        return [
            {
                "meter": e.meter.name if e.meter is not None else None,
                "units": e.units,
                "external_id": e.external_id,
                "revokes": e.grant_external_id,
            }
            for e in state.event_records()
        ]
    assert isinstance(state, AllowanceRunState)
    return [
        {
            "rule_id": g.rule_id,
            "period_start": g.period_start,
            "units": g.units,
            "external_id": g.external_id,
        }
        for g in state.grants
    ]
