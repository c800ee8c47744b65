"""OrderCreditsWorkflow's decision record, first-order lookup and per-customer caps, and the
customer ledger itself, on the time-skipping server: Polar's activities are fakes under their
real names, the ledger is the real workflow reached through the real ledger activities."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits import search_attributes as sa
from polar_credits.activities.ledger import LedgerActivities
from polar_credits.identity import ledger_workflow_id
from polar_credits.models.decisions import (
    DecideOrderInput,
    FirstOrderFact,
    FirstOrderInput,
    OrderDecision,
)
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import IngestGrantsInput, IngestResult, PolarErrorType
from polar_credits.models.ledger import CapReservation, LedgerState, ReserveUnitsInput
from polar_credits.models.orders import (
    OrderCreditsInput,
    OrderCreditsState,
    RulesPreviewInput,
    VerificationPolicy,
)
from polar_credits.models.verification import (
    MeterVerification,
    VerifyGrantsInput,
    VerifyGrantsResult,
)
from polar_credits.rules import explain_order, parse_rules
from polar_credits.workflows.customer_ledger import CustomerLedgerWorkflow
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from polar_credits.workflows.rules_preview import RulesPreviewWorkflow

RULES = parse_rules("""
[meters.api]
id = "meter-1"
event_name = "api_usage"

[[rules]]
id = "bonus"
meter = "api"
units = 10
products = ["pack"]

[[rules]]
id = "welcome"
meter = "api"
units = 100
products = ["pack"]
first_order = true

[[rules]]
id = "loyal"
meter = "api"
units = 40
products = ["pack"]
max_units_per_customer = 100

[[rules]]
id = "team-seats"
meter = "api"
units_per_seat = 2000
products = ["team"]

[[rules]]
id = "pay-what-you-want"
meter = "api"
units_per_currency_unit = 1000000
rounding = "down"
products = ["pwyw"]
""")


@dataclass
class FakePolar:
    """Polar's side of the order run: decisions are real (the rules above), the first-order
    answer and ingest outcomes are set by the test."""

    first: bool = True
    reject_ingest: bool = False
    lookups: list[FirstOrderInput] = field(default_factory=list)
    ingested: list[IngestGrantsInput] = field(default_factory=list)

    def activities(self) -> list:
        @activity.defn(name="decide_order_grants")
        async def decide_order_grants(input: DecideOrderInput) -> OrderDecision:
            decision = explain_order(RULES, input.order, input.first_order)
            decision.preview = input.preview
            return decision

        @activity.defn(name="look_up_first_order")
        async def look_up_first_order(input: FirstOrderInput) -> FirstOrderFact:
            self.lookups.append(input)
            if self.first:
                return FirstOrderFact(first=True)
            return FirstOrderFact(
                first=False, earlier_order_id="order-0", earlier_created_at="2026-01-01T00:00:00Z"
            )

        @activity.defn(name="ingest_order_grants")
        async def ingest_order_grants(input: IngestGrantsInput) -> IngestResult:
            if self.reject_ingest:
                raise ApplicationError(
                    "Polar rejected ingesting grant events (422): customer does not exist",
                    type=PolarErrorType.GRANT_REJECTED,
                    non_retryable=True,
                )
            self.ingested.append(input)
            n = len(input.grants)
            return IngestResult(inserted=n, duplicates=0, confirmed=n, first_attempt=True)

        @activity.defn(name="verify_grants")
        async def verify_grants(input: VerifyGrantsInput) -> VerifyGrantsResult:
            return VerifyGrantsResult(
                verifications=[
                    MeterVerification(
                        meter=m.meter, meter_id=m.meter_id, units_granted=m.units, verified=True
                    )
                    for m in input.meters
                ]
            )

        return [decide_order_grants, look_up_first_order, ingest_order_grants, verify_grants]


def order(customer_id: str, product_id: str = "pack") -> OrderFacts:
    return OrderFacts(
        order_id=uuid.uuid4().hex,
        customer_id=customer_id,
        billing_reason="purchase",
        status="paid",
        product_id=product_id,
        created_at="2026-06-01T12:00:00+00:00",
    )


class Harness:
    def __init__(self, env: WorkflowEnvironment, fake: FakePolar) -> None:
        self.env = env
        self.fake = fake
        self.queue = f"wf-{uuid.uuid4().hex[:8]}"

    def worker(self) -> Worker:
        return Worker(
            self.env.client,
            task_queue=self.queue,
            workflows=[OrderCreditsWorkflow, CustomerLedgerWorkflow, RulesPreviewWorkflow],
            activities=[
                *self.fake.activities(),
                *LedgerActivities(self.env.client, self.queue).all(),
            ],
        )

    async def run(self, facts: OrderFacts) -> tuple[WorkflowHandle, OrderCreditsState | Exception]:
        handle = await self.env.client.start_workflow(
            OrderCreditsWorkflow.run,
            OrderCreditsInput(order=facts, verification=VerificationPolicy(timeout_seconds=60)),
            id=f"order-credits-{facts.order_id}",
            task_queue=self.queue,
        )
        try:
            await handle.result()
        except WorkflowFailureError as err:
            return handle, err
        state = await handle.query(OrderCreditsWorkflow.state)
        assert state is not None
        return handle, state

    async def ledger(self, customer_id: str) -> LedgerState:
        handle = self.env.client.get_workflow_handle(ledger_workflow_id(customer_id))
        return await handle.query(CustomerLedgerWorkflow.state)

    async def close_ledger(self, customer_id: str) -> None:
        # Cancel, not terminate: the test server refuses to terminate a run that took an
        # update ("Completed workflow"); the ledger's wait ends on cancellation.
        await self.env.client.get_workflow_handle(ledger_workflow_id(customer_id)).cancel()


async def test_the_decision_is_recorded_with_each_rules_verdict(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakePolar(first=False)
    harness = Harness(skipping_env, fake)
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    async with harness.worker():
        handle, state = await harness.run(order(customer))
        assert isinstance(state, OrderCreditsState) and state.decision is not None
        await harness.close_ledger(customer)
    decision = state.decision
    assert decision.rules_version == RULES.version
    reasons = {v.rule_id: v.reason for v in decision.verdicts}
    assert reasons["bonus"] == "matched: 10 units"
    assert reasons["welcome"].startswith("first_order = true, but an earlier paid order order-0")
    assert reasons["loyal"].startswith("matched: 40 units (within the cap: 0 granted before")
    assert decision.first_order is not None and not decision.first_order.first
    assert [(g.rule_id, g.units) for g in state.grants] == [("bonus", 10), ("loyal", 40)]
    assert len(fake.lookups) == 1
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.CREDIT_RULE_KEYS) == ["bonus", "loyal"]
    assert described.typed_search_attributes.get(sa.CREDIT_UNITS) == 50


async def test_no_lookup_when_no_first_order_rule_is_in_play(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakePolar()
    harness = Harness(skipping_env, fake)
    async with harness.worker():
        handle, state = await harness.run(order("customer-x", product_id="shirt"))
    assert isinstance(state, OrderCreditsState)
    assert state.status == "no_rule" and fake.lookups == []
    assert state.decision is not None
    assert all(v.reason == "product not in products" for v in state.decision.verdicts)
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.CREDIT_RULE_KEYS) is None


async def test_orders_of_one_customer_at_once_never_pass_the_cap(
    temporal_env: WorkflowEnvironment,
) -> None:
    """loyal grants 40 an order, at most 100 a customer: three orders at once grant 40, 40
    and 20 (in some order), and a fourth nothing.

    On the dev server: the time-skipping test server mishandles concurrent update-with-start
    (it answers "Completed workflow" to the ledger's tasks), and nothing here waits on a timer.
    """
    fake = FakePolar(first=False)
    harness = Harness(temporal_env, fake)
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    async with harness.worker():
        outcomes = await asyncio.gather(*(harness.run(order(customer)) for _ in range(3)))
        states = [state for _, state in outcomes]
        assert all(isinstance(s, OrderCreditsState) for s in states)
        loyal = sorted(
            sum(g.units for g in s.grants if g.rule_id == "loyal")
            for s in states  # type: ignore[union-attr]
        )
        assert loyal == [20, 40, 40]
        _, fourth = await harness.run(order(customer))
        assert isinstance(fourth, OrderCreditsState) and fourth.decision is not None
        [verdict] = [v for v in fourth.decision.verdicts if v.rule_id == "loyal"]
        assert verdict.reason == (
            "capped: 0 of 40 units (100 granted before, max_units_per_customer 100)"
        )
        assert [g.rule_id for g in fourth.grants] == ["bonus"]
        ledger = await harness.ledger(customer)
        assert ledger.totals == {"loyal": 100}
        await harness.close_ledger(customer)


async def test_a_refused_grant_gives_its_units_back(skipping_env: WorkflowEnvironment) -> None:
    fake = FakePolar(first=False, reject_ingest=True)
    harness = Harness(skipping_env, fake)
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    async with harness.worker():
        _, outcome = await harness.run(order(customer))
        assert isinstance(outcome, WorkflowFailureError)
        ledger = await harness.ledger(customer)
        assert ledger.totals == {"loyal": 0} and ledger.reservations == {}
        await harness.close_ledger(customer)


async def test_the_ledger_counts_a_grant_once_and_continues_as_new(
    temporal_env: WorkflowEnvironment,
) -> None:
    harness = Harness(temporal_env, FakePolar())
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    handle_id = ledger_workflow_id(customer)
    async with harness.worker():
        await temporal_env.client.start_workflow(
            CustomerLedgerWorkflow.run,
            LedgerState(customer_key=customer, history_limit=20),
            id=handle_id,
            task_queue=harness.queue,
        )
        handle = temporal_env.client.get_workflow_handle(handle_id)
        for n in range(8):
            request = ReserveUnitsInput(
                customer_id=customer,
                reservations=[CapReservation("loyal", f"grant-{n}", units=30, cap=100)],
            )
            first = await handle.execute_update(CustomerLedgerWorkflow.reserve, request)
            again = await handle.execute_update(CustomerLedgerWorkflow.reserve, request)
            assert first.outcomes[0].allowed == again.outcomes[0].allowed
        state = await handle.query(CustomerLedgerWorkflow.state)
        assert state.totals == {"loyal": 100}
        assert state.runs > 1, "the ledger continued as new, carrying its totals"
        await handle.cancel()


async def test_preview_grants_nothing_and_reserves_nothing(
    skipping_env: WorkflowEnvironment,
) -> None:
    fake = FakePolar(first=True)
    harness = Harness(skipping_env, fake)
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    async with harness.worker():
        decision = await skipping_env.client.execute_workflow(
            RulesPreviewWorkflow.run,
            RulesPreviewInput(order=order(customer)),
            id=f"rules-preview-{uuid.uuid4().hex}",
            task_queue=harness.queue,
        )
    assert decision.preview
    assert [(g.rule_id, g.units) for g in decision.grants] == [
        ("bonus", 10),
        ("welcome", 100),
        ("loyal", 40),
    ]
    assert fake.ingested == []
    with pytest.raises(RPCError) as raised:  # no ledger was started
        await harness.ledger(customer)
    assert raised.value.status == RPCStatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("product_id", "changes", "computed"),
    [
        ("team", {"seats": 2**53}, 2000 * 2**53),
        ("team", {"seats": 10**9}, 2000 * 10**9),
        ("pwyw", {"net_amount": 1_000_000}, 10**10),  # $10,000 at a million units a dollar
    ],
)
async def test_an_amount_above_the_per_grant_maximum_is_held_and_never_sent(
    skipping_env: WorkflowEnvironment, product_id: str, changes: dict, computed: int
) -> None:
    """Issue 16, item 7: the one per-grant maximum holds for order rules too, per seat and
    per currency unit: the run ends `held_over_max`, the decision says why and how much,
    and nothing reaches Polar."""
    fake = FakePolar()
    harness = Harness(skipping_env, fake)
    facts = order(f"customer-{uuid.uuid4().hex[:8]}", product_id)
    for name, value in changes.items():
        setattr(facts, name, value)
    async with harness.worker():
        handle, state = await harness.run(facts)
    assert isinstance(state, OrderCreditsState) and state.decision is not None
    assert state.status == "held_over_max" and state.grants == []
    assert fake.ingested == []
    [held] = state.decision.held
    assert held.units == computed and "per-grant maximum of 1000000000" in held.reason
    [verdict] = [v for v in state.decision.verdicts if v.matched]
    assert verdict.reason.startswith("held: ") and verdict.units == 0
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.CREDIT_STATUS) == "held_over_max"
    assert attributes.get(sa.CREDIT_UNITS) == 0
