"""PolarBudgetWorkflow: the pace every worker's Polar calls share."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits.workflows.polar_budget import (
    BudgetState,
    BudgetView,
    PermitRequest,
    PolarBudgetWorkflow,
    ThrottleReport,
    burst_size,
    emission_interval,
)


async def waits(handle: WorkflowHandle, count: int, per_minute: int) -> list[float]:
    return [
        (
            await handle.execute_update(PolarBudgetWorkflow.acquire, PermitRequest(per_minute))
        ).wait_seconds
        for _ in range(count)
    ]


async def start_budget(
    env: WorkflowEnvironment, queue: str, per_minute: int, **state: int
) -> WorkflowHandle:
    return await env.client.start_workflow(
        PolarBudgetWorkflow.run,
        BudgetState(per_minute=per_minute, **state),
        id=f"budget-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


def test_no_minute_holds_more_calls_than_the_share() -> None:
    for share in (1, 10, 60, 100, 300, 500):
        burst, interval = burst_size(share), emission_interval(share)
        # A burst at once, then one call per interval: the calls in any 60 s window.
        in_a_minute = burst + int(60 // interval)
        assert in_a_minute <= share + 1, (share, in_a_minute)
        assert in_a_minute >= share * 0.9, "the share is used, not wasted"


async def test_permits_come_as_a_burst_then_at_the_share(
    skipping_env: WorkflowEnvironment,
) -> None:
    queue = f"budget-{uuid.uuid4().hex[:8]}"
    async with Worker(skipping_env.client, task_queue=queue, workflows=[PolarBudgetWorkflow]):
        handle = await start_budget(skipping_env, queue, 60)
        got = await waits(handle, 10, 60)
    burst, interval = burst_size(60), emission_interval(60)
    assert got[:burst] == [0.0] * burst
    # Asked at (nearly) the same moment, later calls are spread one interval apart.
    for k, wait in enumerate(got[burst:], start=1):
        assert abs(wait - k * interval) < 0.5, got


async def test_a_429_makes_everyone_wait_and_slows_the_pace_for_a_while(
    skipping_env: WorkflowEnvironment,
) -> None:
    queue = f"budget-{uuid.uuid4().hex[:8]}"
    async with Worker(skipping_env.client, task_queue=queue, workflows=[PolarBudgetWorkflow]):
        handle = await start_budget(skipping_env, queue, 60)
        await handle.execute_update(PolarBudgetWorkflow.throttled, ThrottleReport(30))
        # A second 429 of the same wave does not halve the pace again.
        await handle.execute_update(PolarBudgetWorkflow.throttled, ThrottleReport(30))
        [first] = await waits(handle, 1, 60)
        view: BudgetView = await handle.query(PolarBudgetWorkflow.view)
        assert first >= 29, "nobody calls before Polar's retry-after"
        assert view.slowdown == 0.5 and view.effective_per_minute == 30
        assert view.throttles == 2

        await skipping_env.sleep(timedelta(minutes=6))
        await waits(handle, 1, 60)
        view = await handle.query(PolarBudgetWorkflow.view)
        assert view.slowdown == 1.0, "the pace recovers once the merchant's traffic eases"


async def test_the_budget_continues_as_new_and_keeps_its_pace(
    skipping_env: WorkflowEnvironment,
) -> None:
    queue = f"budget-{uuid.uuid4().hex[:8]}"
    async with Worker(skipping_env.client, task_queue=queue, workflows=[PolarBudgetWorkflow]):
        handle = await start_budget(skipping_env, queue, 60, continue_after=5)
        first_run = (await handle.describe()).run_id
        got = []
        for _ in range(12):
            latest = skipping_env.client.get_workflow_handle(handle.id)
            got += await waits(latest, 1, 60)
        latest = skipping_env.client.get_workflow_handle(handle.id)
        described = await latest.describe()
        view: BudgetView = await latest.query(PolarBudgetWorkflow.view)
    assert described.run_id != first_run
    assert view.permits == 12, "the count carries over into the new run"
    assert got[-1] > 0, "the schedule carries over too: no fresh burst after a new run"
