"""The customer ledger run's starter: one run per customer, started on first use by the
update that reserves capped units (update-with-start), and found again by its id after it
continues as new."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.identity import ledger_customer_key, ledger_workflow_id
from polar_credits.models.ledger import LedgerState, ReserveUnitsInput, ReserveUnitsResult
from polar_credits.workflows.customer_ledger import CustomerLedgerWorkflow


def ledger_start(customer_id: str, *, task_queue: str) -> WithStartWorkflowOperation[Any, Any]:
    text = ui.ledger_start(customer_id)
    return WithStartWorkflowOperation(
        CustomerLedgerWorkflow.run,
        LedgerState(customer_key=ledger_customer_key(customer_id)),
        id=ledger_workflow_id(customer_id),
        task_queue=task_queue,
        # The ledger is running almost always: then the update goes to it.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(sa.identity_pairs("", customer_id, None)),
        static_summary=text.summary,
        static_details=text.details,
    )


async def reserve_with_start(
    client: Client, input: ReserveUnitsInput, *, task_queue: str
) -> ReserveUnitsResult:
    """Reserve in the customer's ledger, starting the ledger if it is not running."""
    return await client.execute_update_with_start_workflow(
        CustomerLedgerWorkflow.reserve,
        input,
        start_workflow_operation=ledger_start(input.customer_id, task_queue=task_queue),
    )


async def release_reservations(client: Client, input: ReserveUnitsInput) -> ReserveUnitsResult:
    """Give back reservations in the customer's running ledger (never starts one). Raises
    RPCError NOT_FOUND when the customer has no ledger."""
    handle = client.get_workflow_handle(ledger_workflow_id(input.customer_id))
    return await handle.execute_update(CustomerLedgerWorkflow.release, input)
