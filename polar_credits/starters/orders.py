"""The order run's starter: one run per order (its id from the order id), with the reuse policy
of whoever starts it, the start search attributes and the operator who asked, if one did."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.common import TypedSearchAttributes, WorkflowIDReusePolicy

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.identity import order_workflow_id
from polar_credits.models.orders import OrderCreditsInput, OrderCreditsState
from polar_credits.operators import OPERATOR_MEMO
from polar_credits.workflows.order_credits import OrderCreditsWorkflow

# Who may start an order's run again once one exists. A redelivered webhook and an operator's
# rerun may replace a run that failed (Polar rejected the grant); a run that granted, or still
# runs, never is. A repair by reconciliation never reruns a failed run: that one was handled
# (and is visible as failed); `orders rerun` is the operator's.
REUSE_POLICIES = {
    ui.VIA_WEBHOOK: WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    ui.VIA_RERUN: WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    ui.VIA_RECONCILIATION: WorkflowIDReusePolicy.REJECT_DUPLICATE,
}


async def start_order_run(
    client: Client,
    input: OrderCreditsInput,
    *,
    task_queue: str,
    via: str,
    rpc_timeout: timedelta,
    operator: str | None = None,
) -> WorkflowHandle[OrderCreditsWorkflow, OrderCreditsState]:
    """Start the order's run. `via` (a ui.VIA_* constant) says who starts it, which sets the
    reuse policy; `operator`: the operator token's name, kept in the memo. Raises
    WorkflowAlreadyStartedError when the order has a run that may not be replaced."""
    text = ui.order_run(input.order, via=via)
    return await client.start_workflow(
        OrderCreditsWorkflow.run,
        input,
        id=order_workflow_id(input.order.order_id),
        task_queue=task_queue,
        id_reuse_policy=REUSE_POLICIES[via],
        memo={OPERATOR_MEMO: operator} if operator is not None else None,
        search_attributes=TypedSearchAttributes(sa.order_start_attributes(input.order)),
        static_summary=text.summary,
        static_details=text.details,
        rpc_timeout=rpc_timeout,
    )
