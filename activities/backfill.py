"""The backfill's one activity: list one page of customers (or take the operator's slice),
grant each of them once through the gateway, and report what Polar did.

Only customer ids and counts leave this activity: the subscriptions Polar lists also hold the
customers' details, which never reach the workflow history.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from polar_credits.activities.credits import heartbeating
from polar_credits.activities.gateway import IngestOutcome, PolarGateway
from polar_credits.backfills import (
    MAX_CUSTOMER_ID_CHARS,
    BackfillPageInput,
    BackfillPageResult,
    BackfillTarget,
    RejectedCustomer,
)
from polar_credits.events import backfill_event
from polar_credits.models.grants import PolarErrorType

SKIP_REPEATED = "listed twice on one page"
SKIP_NO_CUSTOMER = "no usable customer id"


def _usable(customer_id: Any) -> bool:
    return (
        isinstance(customer_id, str)
        and 0 < len(customer_id) <= MAX_CUSTOMER_ID_CHARS
        and customer_id.isprintable()
    )


def page_customers(candidates: list[Any], result: BackfillPageResult) -> list[str]:
    """The page's customers, each once, in order; the others are counted as skipped."""
    chosen: list[str] = []
    seen: set[str] = set()
    for customer_id in candidates:
        if not _usable(customer_id):
            reason = SKIP_NO_CUSTOMER
        elif customer_id in seen:
            # A customer with two active subscriptions: one grant per backfill.
            reason = SKIP_REPEATED
        else:
            seen.add(customer_id)
            chosen.append(customer_id)
            continue
        result.skipped[reason] = result.skipped.get(reason, 0) + 1
    return chosen


def count(result: BackfillPageResult, outcome: IngestOutcome) -> None:
    if outcome.inserted is not None and outcome.duplicates is not None:
        result.granted += outcome.inserted
        result.already_granted += outcome.duplicates
    else:
        result.unattributed += outcome.confirmed


def _is_rejection(exc: BaseException) -> bool:
    return isinstance(exc, ApplicationError) and exc.type == PolarErrorType.GRANT_REJECTED


class BackfillActivities:
    """Holds the gateway; the worker registers its bound methods."""

    def __init__(self, gateway: PolarGateway) -> None:
        self._gateway = gateway

    @activity.defn(name="grant_backfill_page")
    async def grant_page(self, input: BackfillPageInput) -> BackfillPageResult:
        """Every grant carries the external id (backfill key, customer), so a page repeated
        after a crash or a retry, or a second start of the backfill, grants nothing twice."""
        result = BackfillPageResult()
        if input.target == BackfillTarget.CUSTOMERS:
            candidates: list[Any] = list(input.customer_ids)
        else:
            listing = await heartbeating(
                self._gateway.active_subscriptions(input.product_id, input.page, input.page_size)
            )
            items = listing.get("items") or []
            candidates = [item.get("customer_id") for item in items if isinstance(item, dict)]
            pagination = listing.get("pagination") or {}
            result.total = pagination.get("total_count")
            max_page = pagination.get("max_page")
            result.has_more = (
                input.page < max_page
                if isinstance(max_page, int)
                else len(items) >= input.page_size
            )
        result.customers = len(candidates)
        customers = page_customers(candidates, result)
        if customers:
            await self._grant(input, customers, result)
        activity.logger.info(
            "backfill %s, page %d: %d customer(s), %d granted, %d already granted, %d rejected",
            input.key,
            input.page,
            result.customers,
            result.granted,
            result.already_granted,
            len(result.rejected),
        )
        return result

    async def _grant(
        self, input: BackfillPageInput, customers: list[str], result: BackfillPageResult
    ) -> None:
        events = [backfill_event(input, customer_id) for customer_id in customers]
        try:
            # The whole page in one request: exact counts, one call (or a share of one).
            count(result, await heartbeating(self._gateway.ingest(events)))
            return
        except ApplicationError as exc:
            if not _is_rejection(exc):
                raise  # Polar unavailable, 429...: the activity retries the page
        # Polar refused something on the page (an unknown customer): one request per customer,
        # still merged into few calls by the gateway, which isolates the refused ones.
        outcomes = await heartbeating(
            asyncio.gather(
                *(self._gateway.ingest([event]) for event in events), return_exceptions=True
            )
        )
        for customer_id, outcome in zip(customers, outcomes, strict=True):
            if isinstance(outcome, IngestOutcome):
                count(result, outcome)
            elif _is_rejection(outcome):
                assert isinstance(outcome, ApplicationError)  # what _is_rejection checked
                result.rejected.append(RejectedCustomer(customer_id, outcome.message))
            else:
                raise outcome
