"""Record the histories of the workflows around the order runs (backfills, reconciliation, the
rules registry, rule previews and the shared Polar budget) of the code in the working tree, for
the replay test (tests/workflows/test_replay.py).

When to use it: before you change one of these workflows, record the histories of the release
that is deployed now, and commit them with the change.

    python -m tests.histories.record_operations --release v1 [scenario ...]   # from the repo root

It starts its own Temporal dev server (127.0.0.1, a free port: the registry is started with a
signal and the budget answers updates, which the time-skipping server handles less well), runs
each scenario on an in-process worker with the fakes of the workflow tests (activities under
their real names, or the real activity over a fake Polar), and writes
`<workflow>_<release>_<scenario>.json`. Long-running runs (registry, budget) are recorded
while still open, as a deploy meets them, and when they have continued as new.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits import search_attributes
from polar_credits.activities.backfill import BackfillActivities
from polar_credits.activities.ledger import LedgerActivities
from polar_credits.backfills import BackfillInput, BackfillTarget
from polar_credits.identity import ledger_workflow_id
from polar_credits.models.facts import OrderFacts
from polar_credits.models.grants import PolarErrorType
from polar_credits.models.ledger import CapReservation, ReserveUnitsInput
from polar_credits.models.orders import FetchOrderInput, RulesPreviewInput
from polar_credits.reconciliation import ReconcileInput
from polar_credits.rule_keys import AcceptedRules, RegisteredKey, RegistryState
from polar_credits.workflows.backfill import BackfillWorkflow
from polar_credits.workflows.customer_ledger import CustomerLedgerWorkflow
from polar_credits.workflows.polar_budget import (
    BudgetState,
    PermitRequest,
    PolarBudgetWorkflow,
    ThrottleReport,
)
from polar_credits.workflows.reconcile import ReconcileWorkflow
from polar_credits.workflows.rules_preview import RulesPreviewWorkflow
from polar_credits.workflows.rules_registry import RulesRegistryWorkflow
from tests.conftest import temporal_binary
from tests.histories.record import every_run, recorder_main, report_privacy, save_runs
from tests.workflows import test_backfill as backfill_tests
from tests.workflows import test_order_decision as decision_tests
from tests.workflows import test_reconcile as reconcile_tests


@dataclass
class Recorded:
    """The runs of one scenario to write, oldest first, and the runs to stop afterwards."""

    runs: list[WorkflowHandle]
    still_open: list[WorkflowHandle]


Scenario = Callable[[Client, str], Awaitable[Recorded]]


async def until_idle(client: Client, workflow_id: str) -> None:
    """Wait until the latest run has no workflow task left to do: a run that just continued as
    new is recorded after its first task, as a deploy would meet it."""
    handle = client.get_workflow_handle(workflow_id)
    for _ in range(100):
        pending, completed = False, 0
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                pending = True
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                pending, completed = False, completed + 1
        if completed and not pending:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id}: its latest run never settled")


# Backfills: the real page activity over the workflow tests' fake Polar.


async def run_backfill(
    client: Client, queue: str, polar: backfill_tests.FakePolar, input: BackfillInput
) -> list[WorkflowHandle]:
    activities = BackfillActivities(polar)  # type: ignore[arg-type]
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BackfillWorkflow],
        activities=[activities.grant_page],
    ):
        handle = await client.start_workflow(
            BackfillWorkflow.run, input, id=f"backfill-{input.request.key}", task_queue=queue
        )
        await handle.result()
    return await every_run(client, handle.id)


def backfill_key() -> str:
    return f"record-{uuid.uuid4().hex[:8]}"


async def backfill_continued_as_new(client: Client, queue: str) -> Recorded:
    polar = backfill_tests.FakePolar(backfill_tests.customers(250))
    request = backfill_tests.request(
        backfill_key(), BackfillTarget.PRODUCT, product_id="prod-record"
    )
    runs = await run_backfill(client, queue, polar, BackfillInput(request, pages_per_run=2))
    assert len(runs) == 2, "two pages, then continue as new, then the last page"
    return Recorded(runs, [])


async def backfill_page_retried(client: Client, queue: str) -> Recorded:
    polar = backfill_tests.FakePolar(backfill_tests.customers(150))
    polar.lose_answer_of_call = 1  # page 1's events are stored, then the call "fails"
    request = backfill_tests.request(backfill_key(), BackfillTarget.ALL_ACTIVE)
    return Recorded(await run_backfill(client, queue, polar, BackfillInput(request)), [])


async def backfill_rejected_customers(client: Client, queue: str) -> Recorded:
    good = backfill_tests.customers(4)
    listed = [good[0], "cus-gone-1", *good[1:], "cus-gone-2"]
    polar = backfill_tests.FakePolar([], known=set(good))
    request = backfill_tests.request(backfill_key(), BackfillTarget.CUSTOMERS, customer_ids=listed)
    input = BackfillInput(request, page_size=3)
    return Recorded(await run_backfill(client, queue, polar, input), [])


# Reconciliation: its two activities faked under their real names.


async def run_reconcile(
    client: Client, queue: str, fake: reconcile_tests.FakeReconcile, **input: float
) -> Recorded:
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ReconcileWorkflow],
        activities=[fake.watermark, fake.reconcile_page],
    ):
        handle = await client.start_workflow(
            ReconcileWorkflow.run,
            ReconcileInput(task_queue=queue, **input),
            id=f"polar-credits-reconcile-record-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        await handle.result()
    return Recorded([handle], [])


async def reconcile_first_run(client: Client, queue: str) -> Recorded:
    fake = reconcile_tests.FakeReconcile(None, [(2, 98, 30), (1, 20, 50)])
    return await run_reconcile(client, queue, fake, lookback_seconds=3600)


async def reconcile_from_watermark(client: Client, queue: str) -> Recorded:
    fake = reconcile_tests.FakeReconcile("2026-11-30T11:00:00+00:00", [(0, 5, 15), (0, 0, None)])
    return await run_reconcile(client, queue, fake, overlap_seconds=600)


async def reconcile_page_limit(client: Client, queue: str) -> Recorded:
    """A run cut at its page limit: incomplete, the next run goes on from its watermark."""
    fake = reconcile_tests.FakeReconcile(None, [(1, 99, 10), (0, 100, 20), (0, 3, 25)])
    return await run_reconcile(client, queue, fake, max_pages=2)


# Rule previews: decisions from the decision tests' rules, the ledger real (read, not written).


def fetch_order(order: OrderFacts | None) -> Callable[[FetchOrderInput], Awaitable[OrderFacts]]:
    @activity.defn(name="fetch_order_facts")
    async def fetch_order_facts(input: FetchOrderInput) -> OrderFacts:
        if order is None:
            raise ApplicationError(
                f"Polar has no order {input.order_id}",
                type=PolarErrorType.ORDER_NOT_FOUND.value,
                non_retryable=True,
            )
        return order

    return fetch_order_facts


async def run_preview(
    client: Client,
    queue: str,
    preview: RulesPreviewInput,
    *,
    first: bool = True,
    fetched: OrderFacts | None = None,
    reserved_before: int = 0,
) -> Recorded:
    polar = decision_tests.FakePolar(first=first)
    ledger = LedgerActivities(client, queue)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RulesPreviewWorkflow, CustomerLedgerWorkflow],
        activities=[*polar.activities(), fetch_order(fetched), *ledger.all()],
    ):
        customer = (preview.order or fetched or decision_tests.order("none")).customer_id
        still_open = []
        if reserved_before:  # earlier orders used part of the "loyal" rule's cap
            earlier = CapReservation("loyal", "grant-earlier", reserved_before, 100)
            await ledger.reserve_capped_units(
                ReserveUnitsInput(customer_id=customer, reservations=[earlier])
            )
            still_open.append(client.get_workflow_handle(ledger_workflow_id(customer)))
        handle = await client.start_workflow(
            RulesPreviewWorkflow.run,
            preview,
            id=f"rules-preview-{uuid.uuid4().hex}",
            task_queue=queue,
        )
        try:
            decision = await handle.result()
        except WorkflowFailureError:
            assert fetched is None, "only the unknown order fails"
        else:
            assert decision.preview and decision.grants, decision
            if reserved_before:
                loyal = [g.units for g in decision.grants if g.rule_id == "loyal"]
                assert loyal == [min(40, 100 - reserved_before)], decision
    return Recorded([handle], still_open)


def customer() -> str:
    return f"customer-{uuid.uuid4().hex[:8]}"


async def preview_order_facts(client: Client, queue: str) -> Recorded:
    return await run_preview(
        client, queue, RulesPreviewInput(order=decision_tests.order(customer()))
    )


async def preview_order_id_capped(client: Client, queue: str) -> Recorded:
    """By order id: fetched from Polar, not the customer's first order, the cap partly used."""
    order = decision_tests.order(customer())
    return await run_preview(
        client,
        queue,
        RulesPreviewInput(order_id=order.order_id),
        first=False,
        fetched=order,
        reserved_before=80,
    )


async def preview_unknown_order(client: Client, queue: str) -> Recorded:
    return await run_preview(client, queue, RulesPreviewInput(order_id="no-such-order"))


# The rules registry: started by a worker's signal-with-start, one signal per accepted file.


def accepted(n: int) -> AcceptedRules:
    key = RegisteredKey(kind="order", products=[f"prod-{n}"], rule_id=f"rule-{n}")
    return AcceptedRules(f"sha256:{n:064x}", {f"key-{n}": key})


async def run_registry(client: Client, queue: str, files: int, limit: int | None) -> Recorded:
    workflow_id = f"polar-credits-rules:{queue}"
    async with Worker(client, task_queue=queue, workflows=[RulesRegistryWorkflow]):
        # As polar_credits.starters.registry.record_rule_keys starts it.
        await client.start_workflow(
            RulesRegistryWorkflow.run,
            RegistryState(history_limit=limit),
            id=workflow_id,
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="accept",
            start_signal_args=[accepted(0)],
        )
        latest = client.get_workflow_handle(workflow_id)
        for n in range(1, files):
            await latest.signal(RulesRegistryWorkflow.accept, accepted(n))
            await until_idle(client, workflow_id)  # one file per worker start, not a flood
        state = await latest.query(RulesRegistryWorkflow.accepted)
        assert sorted(state.keys) == sorted(f"key-{n}" for n in range(files)), state
    runs = await every_run(client, workflow_id)
    return Recorded(runs, [latest])


async def registry_open(client: Client, queue: str) -> Recorded:
    return await run_registry(client, queue, files=3, limit=None)


async def registry_continued_as_new(client: Client, queue: str) -> Recorded:
    recorded = await run_registry(client, queue, files=6, limit=12)
    assert len(recorded.runs) > 1, "the registry continued as new"
    return recorded


# The Polar budget: every worker's permits and 429 reports, as updates.


async def run_budget(client: Client, queue: str, continue_after: int) -> Recorded:
    async with Worker(client, task_queue=queue, workflows=[PolarBudgetWorkflow]):
        handle = await client.start_workflow(
            PolarBudgetWorkflow.run,
            BudgetState(per_minute=60, continue_after=continue_after),
            id=f"polar-credits-budget-record-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        for n in range(8):
            latest = client.get_workflow_handle(handle.id)
            if n == 4:
                await latest.execute_update(PolarBudgetWorkflow.throttled, ThrottleReport(2))
            await latest.execute_update(PolarBudgetWorkflow.acquire, PermitRequest(60))
        await until_idle(client, handle.id)
        latest = client.get_workflow_handle(handle.id)
        view = await latest.query(PolarBudgetWorkflow.view)
        assert view.permits == 8 and view.throttles == 1, view
    return Recorded(await every_run(client, handle.id), [latest])


async def budget_open(client: Client, queue: str) -> Recorded:
    return await run_budget(client, queue, continue_after=1_000)


async def budget_continued_as_new(client: Client, queue: str) -> Recorded:
    recorded = await run_budget(client, queue, continue_after=5)
    assert len(recorded.runs) > 1, "the budget continued as new"
    return recorded


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "continued_as_new": ("backfill", backfill_continued_as_new),
    "page_retried": ("backfill", backfill_page_retried),
    "rejected_customers": ("backfill", backfill_rejected_customers),
    "first_run": ("reconcile", reconcile_first_run),
    "from_watermark": ("reconcile", reconcile_from_watermark),
    "page_limit": ("reconcile", reconcile_page_limit),
    "order_facts": ("rules_preview", preview_order_facts),
    "order_id_capped": ("rules_preview", preview_order_id_capped),
    "unknown_order": ("rules_preview", preview_unknown_order),
    "registry_open": ("rules_registry", registry_open),
    "registry_continued_as_new": ("rules_registry", registry_continued_as_new),
    "budget_open": ("polar_budget", budget_open),
    "budget_continued_as_new": ("polar_budget", budget_continued_as_new),
}


def file_stem(prefix: str, release: str, name: str) -> str:
    name = name.removeprefix(prefix.split("_")[-1] + "_")  # registry_open -> open
    return f"{prefix}_{release}_{name}"


async def main(release: str, names: list[str]) -> int:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search_attributes.ALL,
        dev_server_log_level="error",
    )
    written: list[Path] = []
    try:
        for name in names:
            prefix, scenario = SCENARIOS[name]
            queue = f"record-{prefix}-{uuid.uuid4().hex[:8]}"
            recorded = await scenario(env.client, queue)
            written += await save_runs(recorded.runs, file_stem(prefix, release, name))
            for handle in recorded.still_open:
                await handle.terminate("recorded")
    finally:
        await env.shutdown()
    return report_privacy(written, [])


if __name__ == "__main__":
    recorder_main(__doc__, SCENARIOS, main)
