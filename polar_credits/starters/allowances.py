"""The subscription allowance run's starter: one run per subscription, reached with
signal-with-start so a message that arrives before its run exists starts it instead of being
lost. Subscription webhooks and recovery both deliver through `steer_allowance`.

Only subscriptions of a product a cadence rule names get a run; for any other product a
message only reaches a run that already exists (a subscription that moved away from an
allowance product must learn it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.identity import allowance_workflow_id
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import AllowanceState, AllowanceStatus, SubscriptionObservation
from polar_credits.rules import RulesFile
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow

# The logger these lines always had (the log formats print its name), from webhook or recovery.
log = logging.getLogger("polar_credits.api")


class AllowanceUnavailable(Exception):
    """Temporal could not take the message: the caller answers 503 so Polar retries."""


@dataclass
class Delivery:
    """Where the message went: `signalled` (the run has it), `ended` (the run is over and
    stays over: nothing to tell it), `no_run` (none exists, and none is wanted)."""

    outcome: Literal["signalled", "ended", "no_run"]
    workflow_id: str | None = None


def wants_allowance(rules: RulesFile | None, product_id: str | None) -> bool:
    return rules is not None and rules.cadence_product(product_id)


async def steer_allowance(
    temporal: Any,
    rules: RulesFile | None,
    observation: SubscriptionObservation,
    *,
    task_queue: str,
    deadline: float,
    via: str = ui.VIA_WEBHOOK,
) -> Delivery:
    """Deliver the observation to the subscription's allowance run, starting it (for a product
    with a cadence rule) when there is none, within `deadline` seconds. Raises
    AllowanceUnavailable when Temporal cannot take it. `via`: who started it, for the UI."""
    facts = observation.facts
    workflow_id = allowance_workflow_id(facts.subscription_id)
    try:
        async with asyncio.timeout(deadline):
            if wants_allowance(rules, facts.product_id):
                text = ui.allowance_start(
                    facts.subscription_id, facts.customer_id, facts.product_id, via=via
                )
                await temporal.start_workflow(
                    SubscriptionAllowanceWorkflow.run,
                    AllowanceState(subscription_id=facts.subscription_id),
                    id=workflow_id,
                    task_queue=task_queue,
                    start_signal="observe",
                    start_signal_args=[observation],
                    # An ended run stays ended: a late webhook must not start a new one.
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    search_attributes=TypedSearchAttributes(_start_attributes(observation)),
                    static_summary=text.summary,
                    static_details=text.details,
                    rpc_timeout=timedelta(seconds=deadline),
                )
            else:
                handle = temporal.get_workflow_handle(workflow_id)
                await handle.signal(
                    SubscriptionAllowanceWorkflow.observe,
                    observation,
                    rpc_timeout=timedelta(seconds=deadline),
                )
    except WorkflowAlreadyStartedError:
        # The run ended (the subscription ended): nothing more to tell it.
        log.info("subscription %s: allowance run has ended", for_log(facts.subscription_id))
        return Delivery("ended", workflow_id)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            # No run (this product wants none), or one that has ended.
            return Delivery("no_run")
        raise AllowanceUnavailable(type(exc).__name__) from exc
    except (TimeoutError, RuntimeError) as exc:
        raise AllowanceUnavailable(type(exc).__name__) from exc
    log.info(
        "subscription %s: %s delivered to %s",
        for_log(facts.subscription_id),
        for_log(observation.event_type or "message", 60),
        for_log(workflow_id),
    )
    return Delivery("signalled", workflow_id)


async def tell_running(
    client: Client, observation: SubscriptionObservation, *, rpc_timeout: timedelta
) -> bool:
    """Signal the subscription's allowance run if it is running (never start one); False when
    there is none."""
    handle = client.get_workflow_handle(allowance_workflow_id(observation.facts.subscription_id))
    try:
        await handle.signal(
            SubscriptionAllowanceWorkflow.observe, observation, rpc_timeout=rpc_timeout
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # none, or it has ended
            return False
        raise
    return True


def _start_attributes(observation: SubscriptionObservation) -> list[SearchAttributePair[Any]]:
    facts = observation.facts
    pairs = [SearchAttributePair(sa.CREDIT_STATUS, AllowanceStatus.WAITING_FOR_PAYMENT.value)]
    pairs += [
        SearchAttributePair(key, value)
        for key, value in sa.subscription_values(
            facts.subscription_id, facts.customer_id, facts.product_id
        )
    ]
    return pairs
