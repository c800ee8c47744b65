"""The per-order crediting workflow: decide grants, ingest them once, verify the balance.

One run per paid order, its id derived from the order id, so Temporal itself refuses a
second start for the same order. Deterministic: every side effect is an activity.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.credits import GRANT_REJECTED
    from polar_credits import search_attributes as sa
    from polar_credits.models import (
        Grant,
        IngestResult,
        MeterCheckInput,
        MeterReading,
        MeterVerification,
        OrderCreditsInput,
        OrderCreditsState,
        OrderFacts,
    )

# Transient Polar trouble only delays a grant: retry forever, with a bounded interval.
INGEST_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[GRANT_REJECTED],
)
# A failed meter read is just a missed check: the polling loop tries again later.
READ_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
ACTIVITY_TIMEOUT = timedelta(seconds=30)


def order_workflow_id(order_id: str) -> str:
    return f"order-credits-{order_id}"


class Status:
    PENDING = "pending"
    NO_RULE = "no_rule"
    GRANTED = "granted"
    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    FAILED = "failed"


@workflow.defn
class OrderCreditsWorkflow:
    def __init__(self) -> None:
        self._state: OrderCreditsState | None = None
        self._published: str | None = None

    @workflow.run
    async def run(self, input: OrderCreditsInput) -> OrderCreditsState:
        order = input.order
        self._state = OrderCreditsState(
            order_id=order.order_id, customer_id=order.customer_id, status=Status.PENDING
        )
        # The starter normally sets these (findable before the first task runs); a run started
        # any other way gets them here. Each upsert is a visibility write, so only if missing.
        missing = _missing_identity_attributes(order)
        if missing:
            workflow.upsert_search_attributes(missing)

        # Local activities: no server round trip per step, which matters on a busy cluster.
        grants: list[Grant] = await workflow.execute_local_activity(
            "evaluate_rules",
            order,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            result_type=list[Grant],
        )
        self._state.grants = grants
        if not grants:
            self._publish(Status.NO_RULE)
            return self._state

        try:
            # A regular activity: while Polar is failing, operators see the pending activity
            # and its last error in the UI.
            self._state.ingest = await workflow.execute_activity(
                "ingest_grants",
                grants,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=INGEST_RETRY,
                result_type=IngestResult,
            )
        except ActivityError as err:
            reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            self._state.failure = reason
            self._publish(Status.FAILED)
            raise ApplicationError(
                f"Credits for order {order.order_id} were not granted: {reason}",
                type=GRANT_REJECTED,
                non_retryable=True,
            ) from err

        self._state.status = Status.GRANTED
        for meter_grants in _by_meter(grants):
            self._state.verifications.append(await self._verify(input, meter_grants))
        verified = all(v.verified for v in self._state.verifications)
        self._publish(Status.VERIFIED if verified else Status.UNVERIFIED)
        return self._state

    @workflow.query
    def state(self) -> OrderCreditsState | None:
        return self._state

    async def _verify(self, input: OrderCreditsInput, grants: list[Grant]) -> MeterVerification:
        """Poll the customer meter with backoff until Polar's recomputation shows the grant.

        Never re-ingests: the grant is already in Polar. Past the bound the grant is flagged
        `unverified`, which an operator can look into; it is not a failure.
        """
        policy = input.verification
        first = grants[0]
        result = MeterVerification(
            meter=first.meter,
            meter_id=first.meter_id,
            units_granted=sum(g.units for g in grants),
            verified=False,
        )
        check = MeterCheckInput(
            customer_id=first.customer_id,
            meter_id=first.meter_id,
            order_id=first.order_id,
            event_name=first.event_name,
            rule_ids=[g.rule_id for g in grants],
        )
        deadline = workflow.now() + timedelta(seconds=policy.timeout_seconds)
        interval = policy.first_interval_seconds
        while True:
            try:
                reading: MeterReading = await workflow.execute_local_activity(
                    "read_meter",
                    check,
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=READ_RETRY,
                    result_type=MeterReading,
                )
                result.checks += 1
                result.balance = reading.balance
                result.consumed_units = reading.consumed_units
                result.credited_units = reading.credited_units
                if reading.includes_grant:
                    result.verified = True
                    return result
            except ActivityError:
                result.checks += 1
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining <= 0:
                return result
            if self._published != Status.GRANTED:
                self._publish(Status.GRANTED)  # visible while waiting for Polar
            await workflow.sleep(min(interval, remaining))
            interval = min(interval * 2, policy.max_interval_seconds)

    def _publish(self, status: str) -> None:
        """Set the status, and show it (with the units granted) to operators."""
        assert self._state is not None
        self._state.status = status
        self._published = status
        units = sum(g.units for g in self._state.grants) if self._state.ingest else 0
        workflow.upsert_search_attributes(
            [sa.CREDIT_STATUS.value_set(status), sa.CREDIT_UNITS.value_set(units)]
        )


def _missing_identity_attributes(order: OrderFacts) -> list:
    present = workflow.info().typed_search_attributes
    wanted = [
        (sa.POLAR_ORDER_ID, order.order_id),
        (sa.POLAR_CUSTOMER_ID, order.customer_id),
        (sa.POLAR_PRODUCT_ID, order.product_id),
    ]
    return [key.value_set(value) for key, value in wanted if value and present.get(key) is None]


def _by_meter(grants: list[Grant]) -> list[list[Grant]]:
    groups: dict[str, list[Grant]] = {}
    for grant in grants:
        groups.setdefault(grant.meter_id, []).append(grant)
    return list(groups.values())
