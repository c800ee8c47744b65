"""Activities of reconciliation: find where the last run stopped, and list one page of paid
orders through the gateway, starting the order run of each order that has none.

The order runs start exactly as the webhook starts them (same id, input and search
attributes), so an order whose webhook did come is only counted: Temporal refuses the second
run. Only order ids and counts leave these activities.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from polar_credits import ui_summaries as ui
from polar_credits.activities.credits import heartbeating
from polar_credits.activities.gateway import PolarGateway
from polar_credits.identity import safe_key_part
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import SubscriptionObservation
from polar_credits.models.facts import OrderFacts
from polar_credits.models.orders import OrderCreditsInput
from polar_credits.orders import PaidOrder, SubscriptionSnapshot, order_facts, subscription_facts
from polar_credits.reconciliation import (
    WATERMARK_MEMO,
    ReconcilePageInput,
    ReconcilePageResult,
    Watermark,
    WatermarkInput,
)
from polar_credits.rules import RulesFile
from polar_credits.starters.allowances import tell_running
from polar_credits.starters.orders import start_order_run

log = logging.getLogger("polar_credits.reconcile")

# The completed runs looked at for the watermark: the latest few are enough (they run every
# few minutes), and a manual run beside the schedule's may have gone further.
WATERMARK_RUNS = 20
START_TIMEOUT = timedelta(seconds=10)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def later(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if _time(a) >= _time(b) else b


def watermark_query(task_queue: str) -> str:
    queue = task_queue.replace("\\", "\\\\").replace("'", "\\'")
    return (
        "WorkflowType = 'ReconcileWorkflow' AND ExecutionStatus = 'Completed' "
        f"AND TaskQueue = '{queue}'"
    )


class ReconcileActivities:
    """Holds the Temporal client (to start order runs), the gateway and the rules (for the
    metadata keys an order's facts may carry); the worker registers its bound methods."""

    def __init__(self, client: Client, gateway: PolarGateway, rules: RulesFile) -> None:
        self._client = client
        self._gateway = gateway
        self._rules = rules

    @activity.defn(name="reconcile_watermark")
    async def watermark(self, input: WatermarkInput) -> Watermark:
        """The furthest watermark of the latest completed runs, from their memo (visibility):
        durable as long as Temporal keeps closed runs (the namespace's retention), far longer
        than the interval between runs."""
        best = Watermark()
        runs = self._client.list_workflows(watermark_query(input.task_queue), limit=WATERMARK_RUNS)
        async for execution in runs:
            value = (await execution.memo()).get(WATERMARK_MEMO)
            if isinstance(value, str) and later(value, best.created_at) == value:
                best = Watermark(created_at=value, from_run=execution.id)
        return best

    @activity.defn(name="reconcile_page")
    async def reconcile_page(self, input: ReconcilePageInput) -> ReconcilePageResult:
        listing = await heartbeating(
            self._gateway.paid_orders_since(input.created_after, input.page, input.page_size)
        )
        items = [item for item in listing.get("items") or [] if isinstance(item, dict)]
        pagination = listing.get("pagination") or {}
        max_page = pagination.get("max_page")
        result = ReconcilePageResult(
            orders=len(items),
            has_more=input.page < max_page
            if isinstance(max_page, int)
            else len(items) >= input.page_size,
        )
        keys = self._rules.metadata_keys()
        for item in items:
            activity.heartbeat()
            created_at = item.get("created_at")
            if isinstance(created_at, str):
                try:
                    result.latest_created_at = later(created_at, result.latest_created_at)
                except ValueError:
                    pass
            try:
                order = PaidOrder.model_validate(item)
            except ValidationError as exc:
                result.ignored += 1
                first = exc.errors(include_input=False, include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                log.warning(
                    "reconcile: an order Polar listed is unreadable: %s: %s", where, first["msg"]
                )
                continue
            if order.status != "paid" or order.unknown_values() or order.refusal(keys):
                # The webhook path would not start these either (see api/webhooks/).
                result.ignored += 1
                continue
            if await self._start(order_facts(order, keys), input):
                result.started.append(safe_key_part(order.id))
            else:
                result.already_handled += 1
            if input.allowances and order.subscription_id:
                result.allowances_told += await self._tell_allowance(order)
        return result

    async def _tell_allowance(self, order: PaidOrder) -> int:
        """What the webhook does with a paid subscription order: tell the subscription's
        allowance run that it is paid. Only a run that exists (a recovery has started those of
        live subscriptions): an old order must not start one for a subscription since ended.
        1 when a run was told."""
        if not self._rules.cadence_product(order.product_id):
            return 0
        snapshot = order.subscription or SubscriptionSnapshot()
        observation = SubscriptionObservation(
            facts=subscription_facts(snapshot, self._rules.metadata_keys(), order),
            paid_order_id=order.id,
            event_type="order.paid",
        )
        told = await tell_running(self._client, observation, rpc_timeout=START_TIMEOUT)
        return 1 if told else 0

    async def _start(self, facts: OrderFacts, input: ReconcilePageInput) -> bool:
        """Start the order's run through the webhook's starter; False when it already has one.
        Unlike a redelivered webhook, a repair never reruns a failed run (the starter's reuse
        policy for reconciliation)."""
        try:
            handle = await start_order_run(
                self._client,
                OrderCreditsInput(order=facts, verification=input.verification),
                task_queue=input.task_queue,
                via=ui.VIA_RECONCILIATION,
                rpc_timeout=START_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:
            return False
        log.info("reconcile: order %s had no run; started %s", for_log(facts.order_id), handle.id)
        return True

    def all(self) -> list[Callable[..., Any]]:
        return [self.watermark, self.reconcile_page]
