"""Record the histories of a recovery (`polar-credits recover`) of the code in the working tree,
for the replay test (tests/workflows/test_replay.py): RecoverWorkflow's runs, and allowance
runs brought back by a recovery's message (the `paid_through` observation).

When to use it: before you change RecoverWorkflow or how SubscriptionAllowanceWorkflow takes a
recovery's message, record the histories of the release that is deployed now, and commit them
with the change.

    python -m tests.histories.record_recover --release v1 [scenario ...]   # from the repo root

Each scenario is one of the workflow tests (tests/workflows/test_recover.py) with its fakes,
on Temporal's time-skipping server. RecoverWorkflow runs are written as
`recover_<release>_<scenario>.json`; allowance runs as
`subscription_allowance_<release>_<scenario>.json` (release v2 of that workflow: v1 had no
recovery), then terminated.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits.recovery import RecoverInput
from polar_credits.workflows.recover import RecoverWorkflow
from tests.histories.record import recorder_main, report_privacy, save_runs
from tests.workflows import test_recover as recover_tests
from tests.workflows import test_subscription_allowance as allowance_tests
from tests.workflows.conftest import BIN, register_search_attributes


async def run_recover(
    client: Client, fake: recover_tests.FakeRecover, **input: object
) -> WorkflowHandle:
    queue = f"record-recover-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RecoverWorkflow],
        activities=[fake.reconcile_page, fake.recover_subscriptions_page],
    ):
        handle = await client.start_workflow(
            RecoverWorkflow.run,
            RecoverInput(task_queue=queue, **input),  # type: ignore[arg-type]
            id=f"polar-credits-recover-record-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        await handle.result()
    return handle


async def orders_and_subscriptions(env: WorkflowEnvironment) -> list[WorkflowHandle]:
    fake = recover_tests.FakeRecover(orders=[(3, 97), (1, 0)], subscriptions=[(2, 98), (0, 5)])
    return [await run_recover(env.client, fake, since_seconds=30 * 86400)]


async def page_limit(env: WorkflowEnvironment) -> list[WorkflowHandle]:
    fake = recover_tests.FakeRecover(orders=[(1, 0), (1, 0), (1, 0)], subscriptions=[(1, 0)])
    return [await run_recover(env.client, fake, since_seconds=3600, max_pages=2)]


def allowance_scenario(test_name: str) -> Callable[[WorkflowEnvironment], Awaitable[list]]:
    async def scenario(env: WorkflowEnvironment) -> list[WorkflowHandle]:
        await getattr(recover_tests, test_name)(env, f"record-{uuid.uuid4().hex[:8]}")
        return list({(h.id, h.result_run_id): h for h in allowance_tests.STARTED}.values())

    return scenario


# scenario → (file prefix, how it runs)
SCENARIOS: dict[str, tuple[str, Callable[[WorkflowEnvironment], Awaitable[list]]]] = {
    "orders_and_subscriptions": ("recover", orders_and_subscriptions),
    "page_limit": ("recover", page_limit),
    "recovered": (
        "subscription_allowance",
        allowance_scenario("test_a_recovered_run_grants_the_month_holding_now_once_and_goes_on"),
    ),
    "recovered_past_due": (
        "subscription_allowance",
        allowance_scenario("test_a_recovered_past_due_run_holds_until_the_renewal_is_paid"),
    ),
}


async def main(release: str, names: list[str]) -> int:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    written: list[Path] = []
    try:
        await register_search_attributes(env)
        for name in names:
            prefix, scenario = SCENARIOS[name]
            runs = await scenario(env)
            written += await save_runs(runs, f"{prefix}_{release}_{name}")
            while allowance_tests.STARTED:
                with contextlib.suppress(Exception):  # a run that ended is left as it is
                    await allowance_tests.STARTED.pop().terminate("recorded")
    finally:
        await env.shutdown()
    return report_privacy(written, [])


if __name__ == "__main__":
    recorder_main(__doc__, SCENARIOS, main)
