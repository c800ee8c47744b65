"""Activities of the order-credits workflow: decide grants, ingest them, verify the meter.

All side effects live here, and every Polar call goes through the gateway
(activities/gateway/), which batches, paces and translates Polar's errors. Verification
observes and never decides: once the grant is in Polar, no failure while reading can fail
the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from polar_credits.activities.gateway import (
    IngestOutcome,
    MeterRow,
    OrderStamp,
    PolarCallError,
    PolarGateway,
)
from polar_credits.events import grant_event
from polar_credits.grant_limit import over_max
from polar_credits.logsafe import for_log
from polar_credits.models.decisions import (
    DecideOrderInput,
    FirstOrderFact,
    FirstOrderInput,
    OrderDecision,
)
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import Grant, IngestGrantsInput, IngestResult, PolarErrorType
from polar_credits.models.orders import FetchOrderInput
from polar_credits.models.verification import (
    MeterCheckInput,
    MeterReading,
    MeterVerification,
    VerifyGrantsInput,
    VerifyGrantsResult,
)
from polar_credits.orders import PaidOrder, order_facts
from polar_credits.rules import RulesFile, decide_grants, explain_order
from polar_credits.worker_metrics import record_grants, record_verifications

log = logging.getLogger("polar_credits.activities")

HEARTBEAT_EVERY_SECONDS = 5.0
# The first-order lookup reads the oldest paid orders a page at a time; almost always the
# first page decides (only orders made in the same instant need the next).
FIRST_ORDER_PAGE = 10
FIRST_ORDER_MAX_PAGES = 10
FIRST_RECHECK_SECONDS = 2.0

T = TypeVar("T")


def _parse_time(value: str | None) -> datetime | None:
    return _utc(datetime.fromisoformat(value)) if value else None


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _earlier(stamp: OrderStamp, mine: datetime | None, order_id: str) -> bool:
    """`stamp` was made before the order (an order whose time is unknown comes last)."""
    if mine is None:
        return True
    theirs = _utc(stamp.created_at)
    return theirs < mine or (theirs == mine and stamp.id < order_id)


async def heartbeating(work: Awaitable[T], details: object = None) -> T:
    """Await `work`, heartbeating meanwhile, so a worker that dies is noticed in seconds
    while its activity waits for a batch or a permit."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_SECONDS)
            if done:
                return task.result()
            activity.heartbeat(details)
    finally:
        if not task.done():
            task.cancel()


def ingest_result(outcome: IngestOutcome) -> IngestResult:
    """The gateway's answer for one ingest, as the run records it (`first_attempt`: duplicates
    on a first attempt cannot be this run's own earlier call)."""
    return IngestResult(
        inserted=outcome.inserted,
        duplicates=outcome.duplicates,
        confirmed=outcome.confirmed,
        stored_by=outcome.stored_by.isoformat(),
        batch_events=outcome.batch_events,
        first_attempt=activity.info().attempt == 1,
    )


def includes_grant(row: MeterRow | None, stored_by: datetime | None) -> bool:
    """Polar recomputes balances asynchronously; a row recomputed at or after the moment
    the grant was stored (both on Polar's clock) counts it."""
    if row is None or row.modified_at is None:
        return False
    return stored_by is None or row.modified_at >= stored_by


class CreditActivities:
    """Holds the gateway and the rules; the worker registers its bound methods."""

    def __init__(self, gateway: PolarGateway, rules: RulesFile) -> None:
        self._gateway = gateway
        self._rules = rules

    @activity.defn(name="evaluate_rules")
    async def evaluate_rules(self, order: OrderFacts) -> list[Grant]:
        """The first releases' decision (grants only), for runs started before the record."""
        return [g for g in decide_grants(self._rules, order) if not over_max(g.units)]

    @activity.defn(name="decide_order_grants")
    async def decide_order_grants(self, input: DecideOrderInput) -> OrderDecision:
        """The decision record: rules version, each rule's verdict and reason, the grants
        (before per-customer caps, which the order run applies with the ledger)."""
        return explain_order(self._rules, input.order, input.first_order, preview=input.preview)

    @activity.defn(name="look_up_first_order")
    async def look_up_first_order(self, input: FirstOrderInput) -> FirstOrderFact:
        """Whether the order is the customer's first paid order for its product, from
        Polar's Orders API. Earlier means an older `created_at`, or the same `created_at` and
        a smaller order id (Polar does not order ties; this rule makes the answer the same
        for every order of the tie)."""
        if input.product_id is None:
            return FirstOrderFact(first=True)
        mine = _parse_time(input.created_at)
        for page in range(1, FIRST_ORDER_MAX_PAGES + 1):
            stamps = await self._gateway.paid_orders(
                input.customer_id, input.product_id, page=page, limit=FIRST_ORDER_PAGE
            )
            for stamp in stamps:
                if stamp.id == input.order_id:
                    continue
                if _earlier(stamp, mine, input.order_id):
                    return FirstOrderFact(
                        first=False,
                        earlier_order_id=stamp.id,
                        earlier_created_at=_utc(stamp.created_at).isoformat(),
                    )
                if mine is not None and _utc(stamp.created_at) > mine:
                    return FirstOrderFact(first=True)  # oldest first: nothing earlier follows
            if len(stamps) < FIRST_ORDER_PAGE:
                break
        return FirstOrderFact(first=True)

    @activity.defn(name="fetch_order_facts")
    async def fetch_order_facts(self, input: FetchOrderInput) -> OrderFacts:
        """An order from Polar, as the facts a decision reads (a preview by order id). The
        customer's details in Polar's answer stay here: only the facts are returned."""
        try:
            raw = await self._gateway.order(input.order_id)
        except PolarCallError as exc:
            if exc.status_code == 404:
                raise ApplicationError(
                    f"Polar has no order {for_log(input.order_id)}",
                    type=PolarErrorType.ORDER_NOT_FOUND.value,
                    non_retryable=True,
                ) from None
            raise
        try:
            order = PaidOrder.model_validate(raw)
        except ValidationError as exc:
            # Not str(exc): pydantic quotes the input, and Polar's order holds the customer.
            where = ", ".join(
                ".".join(str(p) for p in err["loc"]) for err in exc.errors(include_input=False)
            )
            raise ApplicationError(
                f"Polar's order {for_log(input.order_id)} cannot be read: {for_log(where, 200)}",
                non_retryable=True,
            ) from None
        keys = self._rules.metadata_keys()
        refusal = order.refusal(keys)
        if refusal:
            raise ApplicationError(
                f"Polar's order {for_log(input.order_id)} cannot be decided: {refusal}",
                non_retryable=True,
            )
        return order_facts(order, keys)

    @activity.defn(name="ingest_order_grants")
    async def ingest_order_grants(self, input: IngestGrantsInput) -> IngestResult:
        """The order's grants, in the next batch call; Polar dedupes each by `external_id`,
        so a batch retried after a lost answer grants nothing twice."""
        grants = input.grants
        outcome = await heartbeating(self._gateway.ingest([grant_event(g) for g in grants]))
        record_grants([(g.rule_id, g.meter, g.units) for g in grants])
        activity.logger.info(
            "grants for order %s confirmed by Polar (%d event(s), in a call of %d)",
            for_log(grants[0].order_id) if grants else "-",
            outcome.confirmed,
            outcome.batch_events,
        )
        return ingest_result(outcome)

    @activity.defn(name="verify_grants")
    async def verify_grants(self, input: VerifyGrantsInput) -> VerifyGrantsResult:
        """Check the customer's meters until Polar's recomputation shows the grant, or the
        deadline passes. Never raises for a failed read: it is one missed check.

        Only numbers leave this activity: Polar's objects carry the customer's email and
        name, which must not reach the workflow history.
        """
        stored_by = _parse_time(input.stored_by)
        deadline = _parse_time(input.deadline) or _now()
        check_from = _parse_time(input.check_from) or _now()
        checks = {m.meter_id: 0 for m in input.meters}
        previous = activity.info().heartbeat_details
        if previous and isinstance(previous[0], dict):  # a retried attempt keeps its count
            checks.update({k: int(v) for k, v in previous[0].items() if k in checks})
        results = {
            m.meter_id: MeterVerification(
                meter=m.meter, meter_id=m.meter_id, units_granted=m.units, verified=False
            )
            for m in input.meters
        }
        await self._sleep_until(check_from, checks)
        interval = FIRST_RECHECK_SECONDS
        while True:
            pending = [r for r in results.values() if not r.verified]
            # Reads wait for their batch and a permit: heartbeat meanwhile, or Temporal would
            # take the wait for a dead worker.
            readings = await heartbeating(
                asyncio.gather(
                    *(self._gateway.customer_meter(input.customer_id, r.meter_id) for r in pending),
                    return_exceptions=True,
                ),
                checks,
            )
            for result, reading in zip(pending, readings, strict=True):
                checks[result.meter_id] += 1
                result.checks = checks[result.meter_id]
                if isinstance(reading, BaseException):
                    log.warning(
                        "meter check %d for customer %s missed: %s",
                        result.checks,
                        for_log(input.customer_id),
                        reading,
                    )
                    continue
                if reading is not None:
                    result.balance = reading.balance
                    result.consumed_units = reading.consumed_units
                    result.credited_units = reading.credited_units
                result.verified = includes_grant(reading, stored_by)
            if all(r.verified for r in results.values()):
                break
            remaining = (deadline - _now()).total_seconds()
            if remaining <= 0:
                break
            await self._sleep_until(_now() + timedelta(seconds=min(interval, remaining)), checks)
            interval = min(interval * 2, input.max_interval_seconds)
        record_verifications([(r.meter, r.verified) for r in results.values()])
        return VerifyGrantsResult(verifications=[results[m.meter_id] for m in input.meters])

    async def _sleep_until(self, when: datetime, checks: dict[str, int]) -> None:
        while (left := (when - _now()).total_seconds()) > 0:
            activity.heartbeat(checks)
            await asyncio.sleep(min(left, HEARTBEAT_EVERY_SECONDS))

    # -- the first release's activities, for its runs still in flight --------------------

    @activity.defn(name="ingest_grants")
    async def ingest_grants(self, grants: list[Grant]) -> IngestResult:
        outcome = await self._gateway.ingest([grant_event(g) for g in grants])
        record_grants([(g.rule_id, g.meter, g.units) for g in grants])
        # The same answer as the new path gives (counts Polar's call cannot attribute are
        # null), without `first_attempt`, which the first release's runs never had.
        return replace(ingest_result(outcome), first_attempt=None)

    @activity.defn(name="read_meter")
    async def read_meter(self, check: MeterCheckInput) -> MeterReading:
        """The first release's check: the meter counts the grant once its `modified_at` is
        not older than every grant event's timestamp (both on Polar's clock)."""
        meter = await self._gateway.customer_meter(check.customer_id, check.meter_id)
        events = await self._gateway.order_events(
            check.customer_id, check.event_name, check.order_id
        )
        wanted = set(check.rule_ids)
        stamps = [
            _parse_time(event.timestamp)
            for event in events
            if getattr(event, "metadata", {}).get("rule_id") in wanted
        ]
        modified = meter.modified_at if meter else None
        includes = (
            meter is not None
            and len(stamps) >= len(wanted)
            and modified is not None
            # Polar's events always carry a timestamp (a None would fail the read, as before).
            and all(modified >= cast(datetime, stamp) for stamp in stamps)
        )
        return MeterReading(
            meter_id=check.meter_id,
            consumed_units=meter.consumed_units if meter else 0.0,
            credited_units=meter.credited_units if meter else 0.0,
            balance=meter.balance if meter else 0.0,
            modified_at=meter.modified_at.isoformat() if meter and meter.modified_at else None,
            events_found=len(stamps),
            includes_grant=includes,
        )

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.evaluate_rules,
            self.decide_order_grants,
            self.look_up_first_order,
            self.fetch_order_facts,
            self.ingest_order_grants,
            self.verify_grants,
            self.ingest_grants,
            self.read_meter,
        ]
