"""The Temporal worker: runs order-credits workflows, their activities, and the Polar budget.

Start it with `python worker.py`; settings come from the environment (see README). Run as
many as you like against one Temporal cluster: they share one Polar call budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

from polar.v2026_10 import PolarAsync
from temporalio.client import Client
from temporalio.worker import Worker

from activities.budget import TemporalBudget
from activities.credits import CreditActivities
from activities.gateway import PolarGateway
from polar_credits.rules import RulesError, RulesFile, load_rules
from polar_credits.settings import Settings, SettingsError, load_settings
from workflows.order_credits import OrderCreditsWorkflow
from workflows.polar_budget import PolarBudgetWorkflow, budget_task_queue

# Activities mostly wait (for a batch, a permit, Polar's recomputation): they are cheap
# coroutines, and a renewal wave keeps thousands in flight.
MAX_CONCURRENT_ACTIVITIES = 10_000

log = logging.getLogger("polar_credits.worker")


def polar_client(settings: Settings) -> PolarAsync:
    assert settings.polar_access_token is not None
    return PolarAsync(
        settings.polar_access_token.get_secret_value(),
        environment=settings.polar_server,
        base_url=settings.polar_api_url,
        timeout=settings.polar_timeout_seconds,
    )


@contextlib.asynccontextmanager
async def build_worker(
    client: Client,
    task_queue: str,
    polar: PolarAsync,
    rules: RulesFile,
    *,
    per_minute: int = 60,  # the sandbox default: 60% of its 100 a minute
) -> AsyncIterator[PolarGateway]:
    """Poll the order queue and the budget's queue until the block exits; yields the
    process's one gateway to Polar."""
    gateway = PolarGateway(polar, TemporalBudget(client, task_queue, per_minute))
    orders = Worker(
        client,
        task_queue=task_queue,
        workflows=[OrderCreditsWorkflow],
        activities=CreditActivities(gateway, rules).all(),
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
    )
    budget = Worker(
        client, task_queue=budget_task_queue(task_queue), workflows=[PolarBudgetWorkflow]
    )
    try:
        async with budget, orders:
            yield gateway
    finally:
        await gateway.close()


async def serve(settings: Settings, rules: RulesFile) -> None:
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    polar = polar_client(settings)
    worker = build_worker(
        client,
        settings.credits_task_queue,
        polar,
        rules,
        per_minute=settings.polar_budget_per_minute,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker polling task queue %r on %s (namespace %r), Polar at %s, %d rule(s), "
        "Polar call budget %d/min for all workers",
        settings.credits_task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
        settings.polar_target,
        len(rules.rules),
        settings.polar_budget_per_minute,
    )
    async with worker:
        await stop.wait()
        log.info("stopping: finishing running activities")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings("POLAR_ACCESS_TOKEN", "CREDITS_RULES_FILE")
        assert settings.credits_rules_file is not None
        rules = load_rules(settings.credits_rules_file)
    except (SettingsError, RulesError) as exc:
        print(f"polar-credits worker: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings, rules))
    except RuntimeError as exc:  # Client.connect reports an unreachable server this way
        print(
            f"polar-credits worker: cannot reach Temporal at {settings.temporal_address}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
