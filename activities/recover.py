"""Activities of a recovery: list the subscriptions Polar may still bill, page by page through
the gateway, and bring each one's allowance run back the way the webhooks start it.

Each run is reached with signal-with-start (polar_credits/starters/allowances.py: same id,
start attributes and reuse policy as a subscription webhook), carrying the subscription as
Polar shows it now, so a new run picks up at the period holding now and a running one only
learns nothing new. Periods are keyed in Polar on (subscription, rule, period start): a run
restarted this way grants nothing a lost run had granted. Only ids and counts leave here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import ui_summaries as ui
from polar_credits.activities.credits import heartbeating
from polar_credits.activities.gateway import PolarGateway
from polar_credits.identity import allowance_workflow_id
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import SubscriptionObservation
from polar_credits.orders import PolarSubscription, subscription_facts
from polar_credits.recovery import (
    RECOVERED_STATUSES,
    RENEWAL_MARGIN_SECONDS,
    RecoverSubscriptionsInput,
    RecoverSubscriptionsResult,
)
from polar_credits.rules import RulesFile
from polar_credits.starters.allowances import steer_allowance

log = logging.getLogger("polar_credits.recover")

START_TIMEOUT_SECONDS = 10.0
RECOVERY_EVENT = "recovery"  # the observation's event type, as logs and the run show it


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def deliver(
    client: Client, task_queue: str, rules: RulesFile, observation: SubscriptionObservation
) -> str:
    """Deliver an observation to the subscription's allowance run exactly as a webhook does;
    returns `started`, `running` (the run was there already), `ended` or `no_run`. Raises
    AllowanceUnavailable when Temporal cannot take it (the activity is retried)."""
    workflow_id = allowance_workflow_id(observation.facts.subscription_id)
    try:
        described = await client.get_workflow_handle(workflow_id).describe()
        running = described.status == WorkflowExecutionStatus.RUNNING
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        running = False
    delivery = await steer_allowance(
        client,
        rules,
        observation,
        task_queue=task_queue,
        deadline=START_TIMEOUT_SECONDS,
        via=ui.VIA_RECOVER,
    )
    if delivery.outcome != "signalled":
        return delivery.outcome
    return "running" if running else "started"


def recovered_observation(
    subscription: PolarSubscription, rules: RulesFile, created_after: str
) -> SubscriptionObservation:
    """The subscription as a `subscription.updated` webhook would show it, and how far Polar
    says it is paid: an allowance run only grants periods that are paid for."""
    facts = subscription_facts(subscription, rules.metadata_keys())
    paid_through = None
    start = subscription.current_period_start
    recent = start is not None and start >= _time(created_after) + timedelta(
        seconds=RENEWAL_MARGIN_SECONDS
    )
    if subscription.status == "past_due":
        # The renewal's payment failed: paid up to the current period, which waits for it.
        paid_through = facts.current_period_start
    elif not recent:
        # Active, trialing or paused since before the window: Polar keeps a subscription in
        # these states only once its current period is paid (a trial's $0 order included).
        paid_through = facts.current_period_end
    # else: the current period began inside the window; its paid order (listed next by this
    # same recovery, and delivered to the run as the webhook delivers it) tells the run.
    return SubscriptionObservation(
        facts=facts, event_type=RECOVERY_EVENT, paid_through=paid_through
    )


class RecoverActivities:
    """Holds the Temporal client (to reach allowance runs), the gateway and the rules; the
    worker registers its bound methods."""

    def __init__(self, client: Client, gateway: PolarGateway, rules: RulesFile) -> None:
        self._client = client
        self._gateway = gateway
        self._rules = rules

    def _cadence_products(self) -> list[str] | None:
        """The products whose subscriptions have allowance runs; None: every product (a
        cadence rule that names no products)."""
        products: set[str] = set()
        for rule in self._rules.rules:
            if rule.every is None:
                continue
            if rule.products is None:
                return None
            products.update(rule.products)
        return sorted(products)

    @activity.defn(name="recover_subscriptions_page")
    async def recover_subscriptions_page(
        self, input: RecoverSubscriptionsInput
    ) -> RecoverSubscriptionsResult:
        products = self._cadence_products()
        if products == []:
            return RecoverSubscriptionsResult()  # no cadence rule: no allowance runs
        listing = await heartbeating(
            self._gateway.subscriptions(
                list(RECOVERED_STATUSES), products, input.page, input.page_size
            )
        )
        items = [item for item in listing.get("items") or [] if isinstance(item, dict)]
        max_page = (listing.get("pagination") or {}).get("max_page")
        result = RecoverSubscriptionsResult(
            subscriptions=len(items),
            has_more=input.page < max_page
            if isinstance(max_page, int)
            else len(items) >= input.page_size,
        )
        for item in items:
            activity.heartbeat()
            try:
                subscription = PolarSubscription.model_validate(item)
            except ValidationError as exc:
                result.ignored += 1
                first = exc.errors(include_input=False, include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                log.warning("recover: a subscription Polar listed is unreadable: %s", where)
                continue
            if (
                subscription.refusal()
                or subscription.status not in RECOVERED_STATUSES
                or not self._rules.cadence_product(subscription.product_id)
            ):
                result.ignored += 1
                continue
            observation = recovered_observation(subscription, self._rules, input.created_after)
            outcome = await deliver(self._client, input.task_queue, self._rules, observation)
            if outcome == "started":
                result.started.append(subscription.id)
                log.info(
                    "recover: subscription %s: allowance run started", for_log(subscription.id)
                )
            elif outcome == "running":
                result.already_running += 1
            elif outcome == "ended":
                result.ended += 1
            else:
                result.ignored += 1
        return result

    def all(self) -> list[Callable[..., Any]]:
        return [self.recover_subscriptions_page]
