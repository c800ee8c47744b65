"""OrderCreditsWorkflow, branch by branch: what an operator sees for each way a grant ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits import search_attributes as sa
from polar_credits.models.decisions import DecideOrderInput, OrderDecision
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import Grant, IngestGrantsInput, IngestResult, PolarErrorType
from polar_credits.models.orders import OrderCreditsInput, OrderCreditsState, VerificationPolicy
from polar_credits.models.verification import (
    MeterVerification,
    VerifyGrantsInput,
    VerifyGrantsResult,
)
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from polar_credits.workflows.verification import VERIFY_SLACK

METER_ID = "meter-1"


def grant(order_id: str, rule_id: str = "bonus", units: int = 10) -> Grant:
    return Grant(
        rule_id=rule_id,
        meter="api_calls",
        meter_id=METER_ID,
        event_name="api_usage",
        property="units",
        units=units,
        customer_id="customer-1",
        order_id=order_id,
        external_id=f"polar-credits:order:{order_id}:rule:{rule_id}",
        reason="purchase",
    )


@dataclass
class FakePolar:
    """Activities under their real names; records what the workflow asked for."""

    grants: list[Grant]
    ingest_failures: list[ApplicationError] = field(default_factory=list)
    verify_outcome: str = "verified"  # or "unverified", or "raise"
    # Polar's answer for the order's events: (inserted, duplicates, first attempt); None:
    # all inserted, on the first attempt.
    ingest_answer: tuple[int | None, int | None, bool] | None = None
    ingested: list[IngestGrantsInput] = field(default_factory=list)
    verify_inputs: list[VerifyGrantsInput] = field(default_factory=list)
    ingest_attempts: int = 0
    verify_attempts: int = 0

    def activities(self) -> list:
        @activity.defn(name="decide_order_grants")
        async def decide_order_grants(input: DecideOrderInput) -> OrderDecision:
            return OrderDecision(
                order_id=input.order.order_id, rules_version="sha256:test", grants=self.grants
            )

        @activity.defn(name="ingest_order_grants")
        async def ingest_order_grants(input: IngestGrantsInput) -> IngestResult:
            self.ingest_attempts += 1
            if self.ingest_failures:
                raise self.ingest_failures.pop(0)
            self.ingested.append(input)
            stored_by = datetime.now(UTC).isoformat()
            n = len(input.grants)
            inserted, duplicates, first_attempt = self.ingest_answer or (n, 0, True)
            return IngestResult(
                inserted=inserted,
                duplicates=duplicates,
                confirmed=n,
                stored_by=stored_by,
                batch_events=n,
                first_attempt=first_attempt,
            )

        @activity.defn(name="verify_grants")
        async def verify_grants(input: VerifyGrantsInput) -> VerifyGrantsResult:
            self.verify_attempts += 1
            self.verify_inputs.append(input)
            if self.verify_outcome == "raise":
                # Non-retryable: one failed attempt stands for "every retry used up". Retries
                # on the time-skipping server race its clock against the attempt (a skip past
                # the heartbeat timeout abandons the attempt, and the worker's shutdown then
                # waits for it), which once hung CI; the bound itself is checked from history.
                raise ApplicationError(
                    "Polar unavailable while reading customer meters: 429", non_retryable=True
                )
            return VerifyGrantsResult(
                verifications=[
                    MeterVerification(
                        meter=m.meter,
                        meter_id=m.meter_id,
                        units_granted=m.units,
                        verified=self.verify_outcome == "verified",
                        balance=float(m.units),
                        checks=1,
                    )
                    for m in input.meters
                ]
            )

        return [decide_order_grants, ingest_order_grants, verify_grants]


def order_input(order_id: str, **policy: float) -> OrderCreditsInput:
    return OrderCreditsInput(
        order=OrderFacts(
            order_id=order_id,
            customer_id="customer-1",
            billing_reason="purchase",
            status="paid",
            product_id="product-1",
        ),
        verification=VerificationPolicy(**policy),
    )


async def run(
    env: WorkflowEnvironment, fake: FakePolar, input: OrderCreditsInput
) -> tuple[WorkflowHandle, OrderCreditsState | WorkflowFailureError]:
    queue = f"wf-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[OrderCreditsWorkflow],
        activities=fake.activities(),
    ):
        handle = await env.client.start_workflow(
            OrderCreditsWorkflow.run,
            input,
            id=f"order-credits-{input.order.order_id}",
            task_queue=queue,
        )
        try:
            await handle.result()
        except WorkflowFailureError as err:
            return handle, err
        # Query while the worker still runs (a closed run answers from its history): the
        # state an operator reads, not just the result.
        state = await handle.query(OrderCreditsWorkflow.state)
        assert state is not None
        return handle, state


async def test_grant_ingested_once_then_verified(skipping_env: WorkflowEnvironment) -> None:
    order_id = uuid.uuid4().hex
    fake = FakePolar(grants=[grant(order_id), grant(order_id, "launch-promo", 5)])
    _, state = await run(
        skipping_env, fake, order_input(order_id, first_interval_seconds=16, timeout_seconds=600)
    )
    assert isinstance(state, OrderCreditsState)
    assert state.status == "verified"
    assert len(fake.ingested) == 1 and len(fake.ingested[0].grants) == 2
    # One meter, both grants: one verification of 15 units.
    [check] = fake.verify_inputs
    assert [(m.meter_id, m.units) for m in check.meters] == [(METER_ID, 15)]
    assert check.stored_by == state.ingest.stored_by
    # The first check waits for Polar's recomputation; the deadline is the policy's bound.
    first = datetime.fromisoformat(check.check_from)
    deadline = datetime.fromisoformat(check.deadline)
    assert deadline - first == timedelta(seconds=600 - 16)


async def test_order_without_grants_ends_no_rule_and_calls_nothing(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakePolar(grants=[])
    _, state = await run(skipping_env, fake, order_input(uuid.uuid4().hex))
    assert isinstance(state, OrderCreditsState)
    assert state.status == "no_rule" and state.ingest is None
    assert fake.ingest_attempts == 0 and fake.verify_attempts == 0


async def test_rejected_grant_fails_the_run_with_polars_reason(
    skipping_env: WorkflowEnvironment,
) -> None:
    order_id = uuid.uuid4().hex
    reason = (
        "Polar rejected ingesting grant events (422): "
        "events.0.customer_id: Customer does not exist."
    )
    fake = FakePolar(
        grants=[grant(order_id)],
        ingest_failures=[
            ApplicationError(reason, type=PolarErrorType.GRANT_REJECTED, non_retryable=True)
        ],
    )
    handle, outcome = await run(skipping_env, fake, order_input(order_id))
    assert isinstance(outcome, WorkflowFailureError)
    assert "Customer does not exist" in str(outcome.cause)
    described = await handle.describe()
    assert described.status is not None and described.status.name == "FAILED"
    assert fake.ingest_attempts == 1, "a rejection is never retried"
    assert fake.verify_attempts == 0


async def test_transient_polar_failures_delay_the_grant_but_never_drop_it(
    skipping_env: WorkflowEnvironment,
) -> None:
    order_id = uuid.uuid4().hex
    outage = [
        ApplicationError("Polar unavailable while ingesting grant events: 503", type=t)
        for t in (PolarErrorType.UNAVAILABLE, PolarErrorType.RATE_LIMITED, PolarErrorType.AUTH)
    ]
    fake = FakePolar(grants=[grant(order_id)], ingest_failures=outage)
    _, state = await run(skipping_env, fake, order_input(order_id))
    assert isinstance(state, OrderCreditsState)
    assert state.status == "verified"
    assert fake.ingest_attempts == 4 and len(fake.ingested) == 1


@pytest.mark.parametrize("outcome", ["unverified", "raise"])
async def test_verification_never_fails_a_granted_run(
    skipping_env: WorkflowEnvironment, outcome: str
) -> None:
    """Reads that keep failing past every retry (429, 5xx, 404) end `unverified`, not failed,
    and the grant is never made again."""
    order_id = uuid.uuid4().hex
    fake = FakePolar(grants=[grant(order_id)], verify_outcome=outcome)
    handle, state = await run(
        skipping_env, fake, order_input(order_id, timeout_seconds=120, first_interval_seconds=16)
    )
    assert isinstance(state, OrderCreditsState), state
    assert state.status == "unverified"
    assert state.ingest is not None and len(fake.ingested) == 1
    assert [v.verified for v in state.verifications] == [False]
    assert fake.verify_attempts == 1
    # However verification fails, it cannot outlive its own bound: Temporal gives up on it
    # after the policy's timeout, the first check's wait and a fixed slack.
    [scheduled] = [
        event.activity_task_scheduled_event_attributes
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_scheduled_event_attributes")
        and event.activity_task_scheduled_event_attributes.activity_type.name == "verify_grants"
    ]
    assert (
        scheduled.schedule_to_close_timeout.ToTimedelta()
        == timedelta(seconds=120 + 16) + VERIFY_SLACK
    )
    described = await handle.describe()
    assert described.status is not None and described.status.name == "COMPLETED"


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ((0, 2, True), "already_granted"),  # another order granted this period first
        ((0, 2, False), "verified"),  # a retry after a lost answer: this run's own grant
        ((None, None, True), "verified"),  # counts shared with other orders: cannot tell
        ((1, 1, True), "verified"),  # one grant new (say, a rule added since)
    ],
)
async def test_grants_polar_already_held_end_the_run_without_verifying(
    skipping_env: WorkflowEnvironment, answer: tuple, status: str
) -> None:
    order_id = uuid.uuid4().hex
    fake = FakePolar(
        grants=[grant(order_id), grant(order_id, "launch-promo", 5)], ingest_answer=answer
    )
    handle, state = await run(skipping_env, fake, order_input(order_id))
    assert isinstance(state, OrderCreditsState)
    assert state.status == status
    assert fake.verify_attempts == (0 if status == "already_granted" else 1)
    described = await handle.describe()
    attributes = described.typed_search_attributes
    assert attributes.get(sa.CREDIT_STATUS) == status
    assert attributes.get(sa.CREDIT_UNITS) == (0 if status == "already_granted" else 15)
