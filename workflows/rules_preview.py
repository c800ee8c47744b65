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
    from polar_credits.models.decisions import OrderDecision
    from polar_credits.models.orders import FetchOrderInput, RulesPreviewInput
    from polar_credits.workflows.deciding import PREVIEW_DECISION, OrderDecisionStep
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
        return await OrderDecisionStep(order, PREVIEW_DECISION).run()
