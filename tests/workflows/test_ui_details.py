"""What the Temporal UI shows while an order run runs: its current details at each phase
(deciding → granting → verifying → done) and the summaries of its activities, on the
time-skipping server with fake activities that hold the run in each phase until the test
has looked."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio import activity
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.converter import PayloadConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits.models import (
    DecideOrderInput,
    FirstOrderFact,
    FirstOrderInput,
    Grant,
    IngestGrantsInput,
    IngestResult,
    MeterVerification,
    OrderCreditsInput,
    OrderCreditsState,
    OrderDecision,
    OrderFacts,
    VerificationPolicy,
    VerifyGrantsInput,
    VerifyGrantsResult,
)
from workflows.order_credits import OrderCreditsWorkflow, order_workflow_id

ORDER_ID = "9a41c0de-0000-4000-8000-000000000001"
SETTLE = 10.0  # seconds a fake waits to be reached; each is reached in milliseconds


def grant(order_id: str, rule_id: str, units: int) -> Grant:
    return Grant(
        rule_id=rule_id,
        meter="api_calls",
        meter_id="meter-1",
        event_name="api_usage",
        property="units",
        units=units,
        customer_id="customer-1",
        order_id=order_id,
        external_id=f"polar-credits:order:{order_id}:rule:{rule_id}",
        reason="purchase",
    )


@dataclass
class Gate:
    """A fake activity waits at its gate: `reached` when it runs, `opened` lets it finish."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def pass_through(self) -> None:
        self.reached.set()
        await asyncio.wait_for(self.opened.wait(), SETTLE)


@dataclass
class GatedPolar:
    """The order's activities under their real names, each held at a gate. The decision
    needs the first-order fact, so the run waits in a regular activity while deciding (a
    local activity holds its workflow task open, and a query would wait for it)."""

    order_id: str
    deciding: Gate = field(default_factory=Gate)
    granting: Gate = field(default_factory=Gate)
    verifying: Gate = field(default_factory=Gate)

    def activities(self) -> list:
        grants = [grant(self.order_id, "starter-bonus", 10), grant(self.order_id, "launch", 5)]

        @activity.defn(name="decide_order_grants")
        async def decide_order_grants(input: DecideOrderInput) -> OrderDecision:
            if input.first_order is None:
                return OrderDecision(
                    order_id=self.order_id, rules_version="sha256:test", needs=["first_order"]
                )
            return OrderDecision(
                order_id=self.order_id,
                rules_version="sha256:test",
                grants=grants,
                first_order=input.first_order,
            )

        @activity.defn(name="look_up_first_order")
        async def look_up_first_order(input: FirstOrderInput) -> FirstOrderFact:
            await self.deciding.pass_through()
            return FirstOrderFact(first=True)

        @activity.defn(name="ingest_order_grants")
        async def ingest_order_grants(input: IngestGrantsInput) -> IngestResult:
            await self.granting.pass_through()
            n = len(input.grants)
            return IngestResult(
                inserted=n,
                duplicates=0,
                confirmed=n,
                stored_by=datetime.now(UTC).isoformat(),
                batch_events=n,
                first_attempt=True,
            )

        @activity.defn(name="verify_grants")
        async def verify_grants(input: VerifyGrantsInput) -> VerifyGrantsResult:
            await self.verifying.pass_through()
            return VerifyGrantsResult(
                verifications=[
                    MeterVerification(
                        meter=m.meter,
                        meter_id=m.meter_id,
                        units_granted=m.units,
                        verified=True,
                        balance=float(m.units),
                        checks=1,
                    )
                    for m in input.meters
                ]
            )

        return [decide_order_grants, look_up_first_order, ingest_order_grants, verify_grants]


async def current_details(handle: WorkflowHandle) -> str:
    """What the UI shows as the run's current details (the SDK's built-in metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def details_at(handle: WorkflowHandle, gate: Gate) -> str:
    await asyncio.wait_for(gate.reached.wait(), SETTLE)
    details = await current_details(handle)
    gate.opened.set()
    return details


async def test_current_details_follow_the_order_run_through_each_phase(
    skipping_env: WorkflowEnvironment,
) -> None:
    order_id = f"{ORDER_ID[:-8]}{uuid.uuid4().hex[:8]}"
    fake = GatedPolar(order_id)
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    async with Worker(
        skipping_env.client,
        task_queue=queue,
        workflows=[OrderCreditsWorkflow],
        activities=fake.activities(),
    ):
        handle = await skipping_env.client.start_workflow(
            OrderCreditsWorkflow.run,
            OrderCreditsInput(
                order=OrderFacts(
                    order_id=order_id,
                    customer_id="customer-1",
                    billing_reason="purchase",
                    status="paid",
                    product_id="product-1",
                ),
                verification=VerificationPolicy(timeout_seconds=600),
            ),
            id=order_workflow_id(order_id),
            task_queue=queue,
        )
        deciding = await details_at(handle, fake.deciding)
        granting = await details_at(handle, fake.granting)
        verifying = await details_at(handle, fake.verifying)
        state: OrderCreditsState = await handle.result()
        done = await current_details(handle)

    assert state.status == "verified"
    assert deciding == "deciding · applying the rules to order 9a41c0de…"
    assert granting == "granting 15 credits · rules starter-bonus, launch"
    assert verifying.startswith("verifying · granted 15 credits")
    assert done == "done · granted 15 credits · verified · rules starter-bonus, launch"

    # The timeline names each activity by what it does, not only by its type.
    converter = PayloadConverter.default
    summaries = {
        event.activity_task_scheduled_event_attributes.activity_type.name: converter.from_payload(
            event.user_metadata.summary, str
        )
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_scheduled_event_attributes")
    }
    assert summaries == {
        "look_up_first_order": "look up the customer's first order",
        "ingest_order_grants": "ingest 15 credits in 2 events",
        "verify_grants": "verify the balance on api_calls",
    }
