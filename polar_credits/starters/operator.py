"""Starters of the operator's own runs: a manual grant (one run per idempotency key), a revoke
(one per revoked grant run) and a backfill (one per key). Each keeps the operator token's name
in its memo; a manual grant and a backfill also keep the request's fingerprint, so a key sent
again with another body is told apart."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.backfills import BackfillInput, BackfillProgress
from polar_credits.identity import (
    backfill_workflow_id,
    manual_grant_workflow_id,
    revoke_workflow_id,
)
from polar_credits.models.orders import CreditStatus
from polar_credits.operator_grants import (
    ManualGrantInput,
    ManualGrantState,
    RevokeInput,
    RevokeState,
    RevokeStatus,
)
from polar_credits.operators import OPERATOR_MEMO
from polar_credits.workflows.backfill import BackfillWorkflow
from polar_credits.workflows.manual_grant import ManualGrantWorkflow
from polar_credits.workflows.revoke_grant import RevokeGrantWorkflow

# The memo key of the request's SHA-256 (manual grants and backfills).
FINGERPRINT_MEMO = "request_sha256"


async def start_manual_grant_run(
    client: Client,
    input: ManualGrantInput,
    *,
    task_queue: str,
    operator: str,
    via: str,
    rpc_timeout: timedelta,
) -> WorkflowHandle[ManualGrantWorkflow, ManualGrantState]:
    """Raises WorkflowAlreadyStartedError when the key has a run (Temporal keeps it)."""
    text = ui.manual_grant_start(
        input.key, input.customer_id, input.meter.name, input.units, via=via
    )
    return await client.start_workflow(
        ManualGrantWorkflow.run,
        input,
        id=manual_grant_workflow_id(input.key),
        task_queue=task_queue,
        # One grant per key, for as long as Temporal keeps the run (Polar dedupes forever).
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        memo={FINGERPRINT_MEMO: input.request_sha256, OPERATOR_MEMO: operator},
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.CREDIT_STATUS, CreditStatus.PENDING.value),
                *sa.identity_pairs("", input.customer_id, None),
            ]
        ),
        static_summary=text.summary,
        static_details=text.details,
        rpc_timeout=rpc_timeout,
    )


async def start_revoke_run(
    client: Client,
    input: RevokeInput,
    *,
    task_queue: str,
    operator: str,
    via: str,
    rpc_timeout: timedelta,
) -> WorkflowHandle[RevokeGrantWorkflow, RevokeState]:
    """Raises WorkflowAlreadyStartedError when the grant was revoked (or is being revoked)."""
    text = ui.revoke_start(
        input.grant_id, input.customer_id, input.units, input.allow_negative, via=via
    )
    return await client.start_workflow(
        RevokeGrantWorkflow.run,
        input,
        id=revoke_workflow_id(input.grant_id),
        task_queue=task_queue,
        # A revoke that failed (the balance could not be read) may be asked again.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        memo={OPERATOR_MEMO: operator},
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.CREDIT_STATUS, RevokeStatus.PENDING.value),
                *sa.identity_pairs(input.order_id or "", input.customer_id, None),
            ]
        ),
        static_summary=text.summary,
        static_details=text.details,
        rpc_timeout=rpc_timeout,
    )


async def start_backfill_run(
    client: Client,
    input: BackfillInput,
    *,
    task_queue: str,
    fingerprint: str,
    operator: str,
    via: str,
    rpc_timeout: timedelta,
) -> WorkflowHandle[BackfillWorkflow, BackfillProgress]:
    """Raises WorkflowAlreadyStartedError when the key has a run that did not fail."""
    request = input.request
    customers_listed = len(request.customer_ids) if request.customer_ids else None
    text = ui.backfill_start(
        request.key,
        request.target,
        request.meter.name,
        request.units,
        request.product_id,
        customers_listed,
        via=via,
    )
    return await client.start_workflow(
        BackfillWorkflow.run,
        input,
        id=backfill_workflow_id(request.key),
        task_queue=task_queue,
        # A backfill that ended without finishing may be started again with the same body.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        memo={
            FINGERPRINT_MEMO: fingerprint,
            "target": request.target,
            "product_id": request.product_id,
            "customers_listed": customers_listed,
            "meter": request.meter.name,
            "units": request.units,
            "reason": request.reason,
            OPERATOR_MEMO: operator,
        },
        static_summary=text.summary,
        static_details=text.details,
        rpc_timeout=rpc_timeout,
    )
