"""`POST /reconcile`, `GET /reconcile/{workflow_id}`: run reconciliation now, and read a run's
report (the schedule runs it every CREDITS_RECONCILE_INTERVAL_SECONDS anyway).

The API never calls Polar: it starts a ReconcileWorkflow with the schedule's input, and the
worker lists the paid orders through the gateway.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from polar_credits.api.dependencies import SettingsDep, TemporalDep
from polar_credits.api.operator.auth import OPERATOR, WriterDep
from polar_credits.api.operator.route import WRITER_ANSWER, OperatorRoute
from polar_credits.api.operator.run_status import chain_status_name
from polar_credits.api.operator.temporal_errors import temporal_error
from polar_credits.api.problems import Problem
from polar_credits.api.temporal_ui import workflow_ui_url
from polar_credits.identity import RECONCILE_RUN_PREFIX
from polar_credits.operators import started_by
from polar_credits.reconcile_schedule import reconcile_input
from polar_credits.starters.runs import start_reconcile_now
from polar_credits.workflows.reconcile import ReconcileWorkflow

router = APIRouter(
    prefix="/reconcile", tags=["reconciliation"], dependencies=[OPERATOR], route_class=OperatorRoute
)

TEMPORAL_TIMEOUT = timedelta(seconds=10)


class ReconcileRun(BaseModel):
    workflow_id: str
    status: Literal["running", "completed", "failed", "terminated", "canceled", "timed_out"]
    report: dict[str, Any] | None = None
    ui_url: str
    started_by: str | None = Field(
        default=None,
        description="The name of the operator token that started the run; null for a run of "
        "the schedule.",
    )


@router.post(
    "",
    response_model=ReconcileRun,
    status_code=202,
    summary="Run reconciliation now",
    responses={
        **WRITER_ANSWER,
        503: {"model": Problem, "description": "Temporal is unavailable; try again."},
    },
)
async def reconcile_now(
    settings: SettingsDep, temporal: TemporalDep, operator: WriterDep
) -> ReconcileRun:
    try:
        handle = await start_reconcile_now(
            temporal, reconcile_input(settings), operator=operator.name
        )
    except (RPCError, RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    return ReconcileRun(
        workflow_id=handle.id,
        status="running",
        ui_url=workflow_ui_url(settings, handle.id),
        started_by=operator.name,
    )


@router.get(
    "/{workflow_id}",
    response_model=ReconcileRun,
    summary="A reconciliation run: its report once completed",
    responses={404: {"model": Problem, "description": "No such reconciliation run."}},
)
async def reconcile_run(
    workflow_id: Annotated[str, Path(max_length=300)],
    settings: SettingsDep,
    temporal: TemporalDep,
) -> ReconcileRun:
    missing = HTTPException(status.HTTP_404_NOT_FOUND, f"No reconciliation run {workflow_id!r}.")
    if not workflow_id.startswith(RECONCILE_RUN_PREFIX):
        raise missing
    handle = temporal.get_workflow_handle_for(ReconcileWorkflow.run, workflow_id)
    try:
        description = await handle.describe(rpc_timeout=TEMPORAL_TIMEOUT)
        state = description.status or WorkflowExecutionStatus.RUNNING
        operator = started_by(await description.memo())
        report = None
        if state == WorkflowExecutionStatus.COMPLETED:
            report = asdict(await handle.result(rpc_timeout=TEMPORAL_TIMEOUT))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise missing from None
        raise temporal_error(exc) from exc
    except (RuntimeError, TimeoutError) as exc:
        raise temporal_error(exc) from exc
    return ReconcileRun(
        workflow_id=workflow_id,
        status=chain_status_name(state),
        report=report,
        ui_url=workflow_ui_url(settings, workflow_id),
        started_by=operator,
    )
