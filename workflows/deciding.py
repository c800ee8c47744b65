"""The decision step an order run and a rules preview share: decide, look up the first-order
fact when a rule needs it and decide again, then ask the customer's ledger about capped
grants. The engine (polar_credits/rules/engine.py) decides; this step gathers its lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.credits import CreditActivities
    from polar_credits.activities.ledger import LedgerActivities
    from polar_credits.models.decisions import DecideOrderInput, FirstOrderInput, OrderDecision
    from polar_credits.models.facts import OrderFacts
    from polar_credits.models.ledger import CapReservation, ReserveUnitsInput
    from polar_credits.rules import apply_caps, cap_reservations
    from polar_credits.workflows.policies import (
        DECIDE_TIMEOUT,
        LOOKUP_TIMEOUT,
        PREVIEW_ACTIVITY_TIMEOUT,
        PREVIEW_RETRY,
        UNTIL_DONE_RETRY,
    )


@dataclass(frozen=True)
class DecisionOptions:
    """How a workflow runs the step. Its timeouts and retries are part of the commands its
    histories recorded, so each workflow keeps its own."""

    # A preview decides as a dry run and only reads the ledger's totals; an order reserves.
    preview: bool
    decide_timeout: timedelta
    lookup_timeout: timedelta
    lookup_retry: RetryPolicy


# An order run: transient trouble in the lookup or the ledger only delays the grant.
ORDER_DECISION = DecisionOptions(
    preview=False,
    decide_timeout=DECIDE_TIMEOUT,
    lookup_timeout=LOOKUP_TIMEOUT,
    lookup_retry=UNTIL_DONE_RETRY,
)
# A preview: someone is waiting, so a few quick tries, then say what failed.
PREVIEW_DECISION = DecisionOptions(
    preview=True,
    decide_timeout=PREVIEW_ACTIVITY_TIMEOUT,
    lookup_timeout=PREVIEW_ACTIVITY_TIMEOUT,
    lookup_retry=PREVIEW_RETRY,
)


class OrderDecisionStep:
    """One order's decision with its lookups. After a failed activity, `decision` is the
    last decision made (None if the first one failed), for the run to record."""

    def __init__(self, order: OrderFacts, options: DecisionOptions) -> None:
        self.order = order
        self.options = options
        self.decision: OrderDecision | None = None
        # The capped units reserved in the customer's ledger (never by a preview).
        self.reserved: list[CapReservation] = []

    async def run(self) -> OrderDecision:
        order, options = self.order, self.options
        # Local activities: no server round trip, which matters on a busy cluster.
        self.decision = await self._decide(DecideOrderInput(order=order, preview=options.preview))
        if self.decision.needs:
            # Only when a rule with `first_order` matches on everything else.
            fact = await workflow.execute_activity_method(
                CreditActivities.look_up_first_order,
                FirstOrderInput(
                    order_id=order.order_id,
                    customer_id=order.customer_id,
                    product_id=order.product_id,
                    created_at=order.created_at,
                ),
                start_to_close_timeout=options.lookup_timeout,
                retry_policy=options.lookup_retry,
                summary=ui.activity_first_order(),
            )
            self.decision = await self._decide(
                DecideOrderInput(order=order, first_order=fact, preview=options.preview)
            )
        reservations = cap_reservations(self.decision)
        if reservations:
            # An update of the customer's ledger run (activities/ledger.py): it serves the
            # customer's orders one at a time, so two of them never share a cap. A preview's
            # dry run reads the totals (a query): nothing reserved, no ledger started.
            result = await workflow.execute_activity_method(
                LedgerActivities.reserve_capped_units,
                ReserveUnitsInput(
                    customer_id=order.customer_id,
                    reservations=reservations,
                    dry_run=options.preview,
                ),
                start_to_close_timeout=options.lookup_timeout,
                retry_policy=options.lookup_retry,
                summary=(
                    ui.activity_read_caps()
                    if options.preview
                    else ui.activity_reserve(sum(r.units for r in reservations))
                ),
            )
            if not options.preview:
                self.reserved = reservations
            self.decision = apply_caps(self.decision, result.outcomes)
        return self.decision

    async def _decide(self, input: DecideOrderInput) -> OrderDecision:
        return await workflow.execute_local_activity_method(
            CreditActivities.decide_order_grants,
            input,
            start_to_close_timeout=self.options.decide_timeout,
            summary=ui.activity_decide(),
        )
