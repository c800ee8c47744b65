"""What the Temporal UI shows while an order run runs: its current details at each phase
(deciding → granting → verifying → done) and the summaries of its activities, on the
time-skipping server with fake activities that hold the run in each phase until the test
has looked."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.converter import DataConverter, PayloadCodec, PayloadConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits import ui_summaries as ui
from polar_credits.identity import order_workflow_id
from polar_credits.models.decisions import (
    DecideOrderInput,
    FirstOrderFact,
    FirstOrderInput,
    OrderDecision,
)
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import IngestGrantsInput, IngestResult
from polar_credits.models.orders import OrderCreditsInput, OrderCreditsState, VerificationPolicy
from polar_credits.models.verification import (
    MeterVerification,
    VerifyGrantsInput,
    VerifyGrantsResult,
)
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.workflows import test_subscription_allowance as allowance
from tests.workflows.test_order_credits import grant
from tests.workflows.test_subscription_allowance import _terminate_runs  # noqa: F401 - autouse

ORDER_ID = "9a41c0de-0000-4000-8000-000000000001"
SETTLE = 10.0  # seconds a fake waits to be reached; each is reached in milliseconds


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


class MarkingCodec(PayloadCodec):
    """Stands in for an encrypting codec: wraps each payload, so a wrapped one is visible."""

    ENCODING = b"binary/ui-test-codec"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(metadata={"encoding": self.ENCODING}, data=p.SerializeToString())
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload.FromString(p.data) for p in payloads]


async def test_a_payload_codec_encodes_summaries_and_details_too(
    skipping_env: WorkflowEnvironment,
) -> None:
    """What the docs say of encrypted histories (docs/operator/runs.md, "In the Temporal UI"):
    temporalio passes user metadata (the start's summary and details, activity summaries,
    current details) through the payload codec."""
    codec = MarkingCodec()
    client = Client(
        **{
            **skipping_env.client.config(),
            "data_converter": dataclasses.replace(DataConverter.default, payload_codec=codec),
        }
    )
    order_id = f"{ORDER_ID[:-8]}{uuid.uuid4().hex[:8]}"
    fake = GatedPolar(order_id)
    for gate in (fake.deciding, fake.granting, fake.verifying):
        gate.opened.set()
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[OrderCreditsWorkflow], activities=fake.activities()
    ):
        handle = await client.start_workflow(
            OrderCreditsWorkflow.run,
            OrderCreditsInput(
                order=OrderFacts(
                    order_id=order_id,
                    customer_id="customer-1",
                    billing_reason="purchase",
                    status="paid",
                    product_id="product-1",
                )
            ),
            id=order_workflow_id(order_id),
            task_queue=queue,
            static_summary="order summary",
            static_details="order details",
        )
        await handle.result()
        # Read back through the codec: the words as written.
        described = await handle.describe()
        assert await described.static_summary() == "order summary"
        assert (await current_details(handle)).startswith("done · granted 15 credits")
        # The current details leave the worker encoded too: raw, they are not readable.
        raw = skipping_env.client.get_workflow_handle(handle.id)
        with pytest.raises(KeyError, match="Unknown payload encoding"):
            await current_details(raw)

    # Read raw (no codec): every piece of user metadata is the codec's output.
    wrapped = []
    async for event in raw.fetch_history_events():
        if event.HasField("user_metadata") and event.user_metadata.HasField("summary"):
            wrapped.append(event.user_metadata.summary.metadata["encoding"])
        if event.HasField("user_metadata") and event.user_metadata.HasField("details"):
            wrapped.append(event.user_metadata.details.metadata["encoding"])
    # The start's summary and details, and the three activities' summaries at least.
    assert len(wrapped) >= 5
    assert set(wrapped) == {MarkingCodec.ENCODING}


# -- the allowance run ------------------------------------------------------------------------


async def test_current_details_follow_an_allowance_through_its_months(
    skipping_env: WorkflowEnvironment,
) -> None:
    """Not paid, then waiting for each next period (with its date), held while past due, and
    done when the subscription ends; each timer says which period it waits for."""
    env = skipping_env
    queue = f"ui-allowance-{uuid.uuid4().hex[:8]}"
    anchor = await allowance.start_of_next_jan_31(env)
    sub = allowance.Subscription(anchor=anchor)
    first, second = allowance.month(anchor, 1), allowance.month(anchor, 2)
    async with allowance.worker(env, allowance.FakePolar(), queue):
        await allowance.sleep_until(env, anchor)
        handle = await allowance.signal_with_start(
            env, queue, sub.webhook("subscription.created", anchor)
        )
        await env.sleep(timedelta(minutes=1))
        unpaid = await current_details(handle)
        await allowance.tell(env, handle, sub.paid_order(await allowance.now(env)))
        waiting = await current_details(handle)
        await allowance.change(env, handle, sub, "subscription.updated", status="past_due")
        await allowance.sleep_until(env, first + timedelta(days=1))
        held = await current_details(handle)
        await allowance.change(env, handle, sub, "subscription.updated", status="active")
        waiting_again = await current_details(handle)
        await allowance.change(
            env, handle, sub, "subscription.canceled", status="canceled", ended_at=second
        )
        ended = await current_details(handle)
        timers = [
            PayloadConverter.default.from_payload(event.user_metadata.summary, str)
            async for event in handle.fetch_history_events()
            if event.HasField("timer_started_event_attributes")
        ]

    assert unpaid == "held: not paid · waiting for the subscription's first paid order"
    assert waiting == (
        f"waiting for the next period · {ui.when(first)} · 1 period granted, 100 credits in all"
    )
    assert held == "held: the subscription is past_due · 1 period granted, 100 credits in all"
    assert waiting_again == (
        f"waiting for the next period · {ui.when(second)} · 2 periods granted, 200 credits in all"
    )
    assert ended == "done · the subscription ended · 2 periods granted, 200 credits in all"
    assert f"next period {ui.when(first)}" in timers
    assert f"next period {ui.when(second)}" in timers
