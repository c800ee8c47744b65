"""The Polar call budget run's starter: one run per deployment (task queue), on a queue of its
own, started on first use by the update that asks for a permit (update-with-start)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from polar_credits import ui_summaries as ui
from polar_credits.identity import budget_workflow_id
from polar_credits.workflows.polar_budget import (
    BudgetState,
    Permit,
    PermitRequest,
    PolarBudgetWorkflow,
    ThrottleReport,
    budget_task_queue,
)


async def request_permit(
    client: Client, request: PermitRequest, *, task_queue: str, rpc_timeout: timedelta
) -> Permit:
    """A permit from the budget of the deployment on `task_queue` (the workers' queue),
    starting the budget run if it is not running."""
    queue = budget_task_queue(task_queue)
    text = ui.budget_start(queue, request.per_minute)
    return await client.execute_update_with_start_workflow(
        PolarBudgetWorkflow.acquire,
        request,
        start_workflow_operation=WithStartWorkflowOperation(
            PolarBudgetWorkflow.run,
            BudgetState(per_minute=request.per_minute),
            id=budget_workflow_id(task_queue),
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=text.summary,
            static_details=text.details,
        ),
        rpc_timeout=rpc_timeout,
    )


async def report_throttle(
    client: Client, report: ThrottleReport, *, task_queue: str, rpc_timeout: timedelta
) -> None:
    """Tell the running budget of the deployment on `task_queue` that Polar answered 429."""
    await client.get_workflow_handle(budget_workflow_id(task_queue)).execute_update(
        PolarBudgetWorkflow.throttled, report, rpc_timeout=rpc_timeout
    )
