"""Starters of the one-off runs: a rules preview (executed, its decision returned), a
reconciliation (now, or by the schedule) and a recovery. Each gets a new id every time,
stamped with when it started, so none of them refuses a second start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowHandle

from polar_credits import ui_summaries as ui
from polar_credits.identity import (
    RECONCILE_RUN_PREFIX,
    preview_workflow_id,
    reconcile_now_workflow_id,
    recover_workflow_id,
)
from polar_credits.models.decisions import OrderDecision
from polar_credits.models.orders import RulesPreviewInput
from polar_credits.operators import OPERATOR_MEMO
from polar_credits.reconciliation import ReconcileInput, ReconcileResult
from polar_credits.recovery import RecoverInput, RecoverResult
from polar_credits.workflows.reconcile import ReconcileWorkflow
from polar_credits.workflows.recover import RecoverWorkflow
from polar_credits.workflows.rules_preview import RulesPreviewWorkflow

# A preview is a few quick activities; someone is waiting for the answer.
PREVIEW_TIMEOUT = timedelta(seconds=60)
# A reconciliation that takes longer than this is cut off; the next one starts from the last
# watermark.
RECONCILE_RUN_TIMEOUT = timedelta(hours=1)
# A recovery of a large organization lists many pages under the shared budget; cut it off
# well after any sane run (its report says where it got; running it again goes on).
RECOVER_RUN_TIMEOUT = timedelta(hours=12)


async def run_preview(
    client: Client, input: RulesPreviewInput, *, task_queue: str
) -> tuple[str, OrderDecision]:
    """Run a preview to its end: (its workflow id, its decision). Raises what
    execute_workflow raises (WorkflowFailureError: the preview failed or timed out)."""
    workflow_id = preview_workflow_id()
    text = ui.rules_preview_start(input.order.order_id if input.order else input.order_id)
    decision: OrderDecision = await client.execute_workflow(
        RulesPreviewWorkflow.run,
        input,
        id=workflow_id,
        task_queue=task_queue,
        execution_timeout=PREVIEW_TIMEOUT,
        static_summary=text.summary,
        static_details=text.details,
    )
    return workflow_id, decision


def reconcile_schedule_action(input: ReconcileInput) -> ScheduleActionStartWorkflow:
    """What the reconciliation schedule starts at each interval (on the input's task queue)."""
    text = ui.reconcile_start(scheduled=True)
    return ScheduleActionStartWorkflow(
        ReconcileWorkflow.run,
        input,
        id=RECONCILE_RUN_PREFIX,  # Temporal appends the scheduled time
        task_queue=input.task_queue,
        execution_timeout=RECONCILE_RUN_TIMEOUT,
        static_summary=text.summary,
        static_details=text.details,
    )


async def start_reconcile_now(
    client: Client, input: ReconcileInput, *, operator: str | None = None
) -> WorkflowHandle[ReconcileWorkflow, ReconcileResult]:
    """A run now, beside the schedule's (same input, same task queue): what `POST /reconcile`
    starts, with the operator token's name in its memo."""
    text = ui.reconcile_start(scheduled=False)
    return await client.start_workflow(
        ReconcileWorkflow.run,
        input,
        id=reconcile_now_workflow_id(datetime.now(UTC)),
        task_queue=input.task_queue,
        execution_timeout=RECONCILE_RUN_TIMEOUT,
        memo={OPERATOR_MEMO: operator} if operator else None,
        static_summary=text.summary,
        static_details=text.details,
    )


async def start_recovery(
    client: Client, input: RecoverInput
) -> WorkflowHandle[RecoverWorkflow, RecoverResult]:
    """`polar-credits recover`: one run (on the input's task queue) that rebuilds every run
    from Polar."""
    text = ui.recover_start(input.since_seconds, subscriptions=input.subscriptions)
    return await client.start_workflow(
        RecoverWorkflow.run,
        input,
        id=recover_workflow_id(datetime.now(UTC)),
        task_queue=input.task_queue,
        execution_timeout=RECOVER_RUN_TIMEOUT,
        static_summary=text.summary,
        static_details=text.details,
    )
