"""The grants service's actions: grant by hand, plan and start a revoke, run an order again.
Each workflow this API starts is started in one small function here (`start_*`).

The API never calls Polar: it reads Temporal's visibility (the runs' search attributes),
queries runs, and starts the ManualGrantWorkflow, RevokeGrantWorkflow and OrderCreditsWorkflow
runs; the worker's activities do the Polar calls through the gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import HTTPException, status
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.api.operator.grants.query import KINDS_BY_TYPE, GrantKind
from polar_credits.api.operator.grants.reads import (
    TEMPORAL_TIMEOUT,
    describe,
    first_input,
    not_found,
    read_state,
)
from polar_credits.api.operator.grants.schemas import (
    ManualGrantBody,
    ManualGrantView,
    RerunView,
    RevokeBody,
    RevokeView,
)
from polar_credits.api.operator.grants.states import (
    STATE_MODELS,
    ManualRunState,
    OrderRunState,
    RevokeRunState,
)
from polar_credits.api.operator.run_status import ENDED_UNFINISHED, status_name
from polar_credits.api.operator.temporal_errors import temporal_error
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.identity import (
    manual_grant_external_id,
    manual_grant_workflow_id,
    order_workflow_id,
    revoke_workflow_id,
)
from polar_credits.models.orders import CreditStatus, OrderCreditsInput, VerificationPolicy
from polar_credits.operator_grants import (
    GrantMeter,
    ManualGrantInput,
    RevokeInput,
    RevokeItem,
    RevokeStatus,
)
from polar_credits.operators import started_by
from polar_credits.rules import RulesFile
from polar_credits.settings import Settings
from polar_credits.starters.operator import (
    FINGERPRINT_MEMO,
    start_manual_grant_run,
    start_revoke_run,
)
from polar_credits.starters.orders import start_order_run

# A revoke is a balance read and one ingest: the answer waits for it this long, then says
# `pending` (its id shows the outcome later).
REVOKE_WAIT_SECONDS = 20.0
# Order-run statuses whose grants are in Polar (so a revoke has something to take back).
GRANTED_STATUSES = {
    CreditStatus.GRANTED.value,
    CreditStatus.VERIFIED.value,
    CreditStatus.UNVERIFIED.value,
}


# -- a grant by hand ----------------------------------------------------------------------------


def grant_meter(rules: RulesFile | None, name: str) -> GrantMeter:
    """The rules file's meter `name`, resolved now (a later rules change never alters a run)."""
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


async def create_manual_grant(
    temporal: Client,
    settings: Settings,
    rules: RulesFile | None,
    body: ManualGrantBody,
    operator: str,
) -> tuple[ManualGrantView, int]:
    """The key's grant, started unless it exists; and 201 when started here, else 200."""
    meter = grant_meter(rules, body.meter)
    workflow_id = manual_grant_workflow_id(body.idempotency_key)
    handle = temporal.get_workflow_handle(workflow_id)
    fingerprint = body.fingerprint()
    code = status.HTTP_200_OK
    description = await describe(handle)
    if description is None:
        try:
            await start_manual_grant(temporal, settings, body, meter, fingerprint, operator)
            code = status.HTTP_201_CREATED
        except WorkflowAlreadyStartedError:
            pass  # another request with this key won the race: compare with it below
        except (RPCError, RuntimeError, TimeoutError) as exc:
            raise temporal_error(exc) from exc
        description = await describe(handle)
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
        execution_status=status_name(description.status),
        idempotency_key=body.idempotency_key,
        customer_id=body.customer_id,
        meter=body.meter,
        units=body.units,
        reason=body.reason,
        external_id=manual_grant_external_id(body.idempotency_key),
        ui_url=workflow_ui_url(settings, workflow_id),
        started_by=started_by(memo),
    )
    answer = await read_state(handle, description.status, ManualRunState) if code == 200 else None
    if answer is not None:
        view.status = answer.typed.status or view.status
        view.failure = answer.typed.failure
    return view, code


async def start_manual_grant(
    temporal: Client,
    settings: Settings,
    body: ManualGrantBody,
    meter: GrantMeter,
    fingerprint: str,
    operator: str,
) -> None:
    await start_manual_grant_run(
        temporal,
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
        task_queue=settings.credits_task_queue,
        operator=operator,
        via=ui.VIA_OPERATOR_API,
        rpc_timeout=TEMPORAL_TIMEOUT,
    )


# -- a revoke -----------------------------------------------------------------------------------


async def revoke_grant(
    temporal: Client, settings: Settings, grant_id: str, body: RevokeBody, operator: str
) -> tuple[RevokeView, int]:
    """The grant's revoke: an earlier one (200), or one started here and waited for a while
    (201, or 202 while it still runs)."""
    revoke_id = revoke_workflow_id(grant_id)
    revoke = temporal.get_workflow_handle(revoke_id)
    previous = await describe(revoke)
    if previous is not None and previous.status not in ENDED_UNFINISHED:
        return await revoke_view(settings, revoke, previous, grant_id), status.HTTP_200_OK

    handle = temporal.get_workflow_handle(grant_id)
    description = await describe(handle)
    if description is None or description.workflow_type not in KINDS_BY_TYPE:
        raise not_found(grant_id)
    kind = KINDS_BY_TYPE[description.workflow_type]
    input = await revoke_input(handle, kind, description, body)
    try:
        await start_revoke(temporal, settings, input, operator)
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
    described = await describe(revoke)
    view = await revoke_view(settings, revoke, described, grant_id)
    if view.status == RevokeStatus.FAILED.value:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, view.failure or "the revoke failed")
    return view, code


async def revoke_input(
    handle: WorkflowHandle[Any, Any],
    kind: GrantKind,
    description: WorkflowExecutionDescription,
    body: RevokeBody,
) -> RevokeInput:
    """What a revoke of this run takes back: its events, from its typed state."""
    answer = await read_state(handle, description.status, STATE_MODELS[kind])
    if answer is None:
        raise temporal_error(RuntimeError("no worker answered the grant's state query"))
    state = answer.typed
    customer_id = state.customer_id or ""
    if isinstance(state, OrderRunState):
        if state.status not in GRANTED_STATUSES:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"Order run {handle.id!r} is {state.status!r}: it granted nothing this "
                "run can take back.",
            )
        items = [
            RevokeItem(
                external_id=g.external_id,
                meter=GrantMeter(
                    name=g.meter,
                    meter_id=g.meter_id,
                    event_name=g.event_name,
                    property=g.property or "units",
                ),
                units=g.units,
                rule_id=g.rule_id,
            )
            for g in state.grants
        ]
        order_id = state.order_id
    elif isinstance(state, ManualRunState):
        if state.status not in GRANTED_STATUSES or not state.grant_meter:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"Manual grant {handle.id!r} is {state.status!r}: nothing to take back.",
            )
        # A manual grant's state holds both once it has a meter (ManualGrantState).
        assert state.external_id is not None and state.units is not None
        items = [
            RevokeItem(external_id=state.external_id, meter=state.grant_meter, units=state.units)
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


async def start_revoke(
    temporal: Client, settings: Settings, input: RevokeInput, operator: str
) -> None:
    await start_revoke_run(
        temporal,
        input,
        task_queue=settings.credits_task_queue,
        operator=operator,
        via=ui.VIA_OPERATOR_API,
        rpc_timeout=TEMPORAL_TIMEOUT,
    )



async def revoke_view(
    settings: Settings,
    handle: WorkflowHandle[Any, Any],
    description: WorkflowExecutionDescription | None,
    grant_id: str,
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
    answer = await read_state(handle, execution_status, RevokeRunState)
    if answer is not None:
        state = answer.typed
        view.status = state.status or view.status
        view.units_requested = state.units_requested
        view.units_revoked = state.units_revoked or 0
        view.capped = state.capped
        view.allow_negative = bool(state.allow_negative)
        view.balances_before = list(state.balances_before)
        view.events = list(state.events)
        view.failure = state.failure
    elif execution_status in ENDED_UNFINISHED:
        view.status = RevokeStatus.FAILED.value
    return view


# -- an order's run again -----------------------------------------------------------------------


async def rerun_order(
    temporal: Client, settings: Settings, order_id: str, operator: str
) -> RerunView:
    workflow_id = order_workflow_id(order_id)
    handle = temporal.get_workflow_handle(workflow_id)
    description = await describe(handle)
    if description is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No run for order {order_id!r}.")
    previous = status_name(description.status)
    if description.status not in ENDED_UNFINISHED:
        credit = description.typed_search_attributes.get(sa.CREDIT_STATUS)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Order {order_id!r}: its run is {previous} (credit status {credit!r}); only a run "
            "that failed, was terminated, canceled or timed out is run again.",
        )
    input = await first_input(temporal, handle.id, description.run_id)
    try:
        started = await start_order_rerun(temporal, settings, input, operator)
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
        started_by=operator,
    )


async def start_order_rerun(
    temporal: Client, settings: Settings, input: OrderCreditsInput, operator: str
) -> WorkflowHandle[Any, Any]:
    return await start_order_run(
        temporal,
        input,
        task_queue=settings.credits_task_queue,
        via=ui.VIA_RERUN,
        rpc_timeout=TEMPORAL_TIMEOUT,
        operator=operator,
    )
