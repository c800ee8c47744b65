"""A dry run of the rules on one order: the decision an order run would record, granting
nothing and reserving nothing.

Runs in the worker because a preview may need Polar (the order by its id, the first-order
lookup) and the API never calls Polar itself. Short-lived: the API executes it and waits.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.credits import CreditActivities
    from polar_credits.activities.ledger import LedgerActivities
    from polar_credits.models import (
        DecideOrderInput,
        FetchOrderInput,
        FirstOrderInput,
        OrderDecision,
        ReserveUnitsInput,
        RulesPreviewInput,
    )
    from polar_credits.rules import apply_caps, cap_reservations
    from polar_credits.workflows.policies import PREVIEW_ACTIVITY_TIMEOUT, PREVIEW_RETRY


@workflow.defn
class RulesPreviewWorkflow:
    @workflow.run
    async def run(self, input: RulesPreviewInput) -> OrderDecision:
        order = input.order
        if order is None:
            assert input.order_id is not None
            order = await workflow.execute_activity_method(
                CreditActivities.fetch_order_facts,
                FetchOrderInput(order_id=input.order_id),
                start_to_close_timeout=PREVIEW_ACTIVITY_TIMEOUT,
                retry_policy=PREVIEW_RETRY,
                summary=ui.activity_fetch_order(),
            )
        decide = DecideOrderInput(order=order, preview=True)
        decision: OrderDecision = await workflow.execute_local_activity_method(
            CreditActivities.decide_order_grants,
            decide,
            start_to_close_timeout=PREVIEW_ACTIVITY_TIMEOUT,
            summary=ui.activity_decide(),
        )
        if decision.needs:
            decide.first_order = await workflow.execute_activity_method(
                CreditActivities.look_up_first_order,
                FirstOrderInput(
                    order_id=order.order_id,
                    customer_id=order.customer_id,
                    product_id=order.product_id,
                    created_at=order.created_at,
                ),
                start_to_close_timeout=PREVIEW_ACTIVITY_TIMEOUT,
                retry_policy=PREVIEW_RETRY,
                summary=ui.activity_first_order(),
            )
            decision = await workflow.execute_local_activity_method(
                CreditActivities.decide_order_grants,
                decide,
                start_to_close_timeout=PREVIEW_ACTIVITY_TIMEOUT,
                summary=ui.activity_decide(),
            )
        reservations = cap_reservations(decision)
        if reservations:
            # Reads the ledger's totals (a query): nothing reserved, no ledger started.
            totals = await workflow.execute_activity_method(
                LedgerActivities.reserve_capped_units,
                ReserveUnitsInput(
                    customer_id=order.customer_id, reservations=reservations, dry_run=True
                ),
                start_to_close_timeout=PREVIEW_ACTIVITY_TIMEOUT,
                retry_policy=PREVIEW_RETRY,
                summary=ui.activity_read_caps(),
            )
            decision = apply_caps(decision, totals.outcomes)
        return decision
