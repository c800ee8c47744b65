"""Stable rule keys end to end: `python worker.py` records each rules file's keys in the rules
registry, refuses (exit status 2) a file that renames a rule which has granted without keeping
its key, accepts it when told to, and a rename that keeps the key grants nothing twice.

Real worker processes, the real Temporal dev server, the stand-in as Polar."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from polar_credits.identity import registry_workflow_id
from polar_credits.models.orders import OrderCreditsState
from polar_credits.rule_keys import AcceptedRules, RegisteredKey, RegistryState, read_registry
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from polar_credits.workflows.rules_registry import RulesRegistryWorkflow
from tests.conftest import CREDIT_PRODUCT_ID, METER_ID, credit_pack_order
from tests.support.processes import REPO_ROOT, stop_process
from tests.support.standin import StandinProcess

POLLING = "worker polling task queue"
TIMEOUT = 60.0

METER = f"""
[meters.api_calls]
id = "{METER_ID}"
event_name = "api_usage"
"""


def rule(rule_id: str, extra: str = "") -> str:
    return (
        f'{METER}\n[[rules]]\nid = "{rule_id}"\nmeter = "api_calls"\nunits = 10\n'
        f'products = ["{CREDIT_PRODUCT_ID}"]\n{extra}'
    )


class Deployment:
    """Worker processes of one deployment (one task queue), each started with a rules file."""

    def __init__(self, temporal: WorkflowEnvironment, standin: StandinProcess, tmp: Path):
        self.client = temporal.client
        self.tmp = tmp
        self.task_queue = f"rule-keys-{uuid.uuid4().hex[:8]}"
        self.env = {
            "TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
            "POLAR_ACCESS_TOKEN": standin.token,
            "POLAR_API_URL": standin.base_url,
            "CREDITS_TASK_QUEUE": self.task_queue,
            # Not this test's subject: no reconciliation schedule in the shared test server.
            "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, rules_toml: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        n = len(self.processes)
        rules_path, log_path = self.tmp / f"rules-{n}.toml", self.tmp / f"worker-{n}.log"
        rules_path.write_text(rules_toml)
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "worker.py"],
                cwd=REPO_ROOT,
                env={
                    **clean,
                    "PYTHONUNBUFFERED": "1",
                    **self.env,
                    "CREDITS_RULES_FILE": str(rules_path),
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process, log_path

    async def run_until_recorded(self, rules_toml: str, key: str, rule_id: str, **env: str):
        """Start a worker and wait until the registry holds `key` as rule `rule_id`."""
        process, log = self.start(rules_toml, **env)
        deadline = time.monotonic() + TIMEOUT
        while True:
            registry = await read_registry(self.client, self.task_queue)
            entry = registry.keys.get(key)
            if entry is not None and entry.rule_id == rule_id:
                return process, log
            assert process.poll() is None, f"worker exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not recorded:\n{log.read_text()}"
            await asyncio.sleep(0.1)

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process)


@pytest.fixture
def deployment(temporal_env: WorkflowEnvironment, standin: StandinProcess, tmp_path: Path):
    deployment = Deployment(temporal_env, standin, tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop_all()


async def credit(client: Client, task_queue: str, customer_id: str, order_id: str, run: str):
    """One order run on the deployment's workers (a webhook's, or a re-run's: `run`)."""
    return await client.execute_workflow(
        OrderCreditsWorkflow.run,
        credit_pack_order(customer_id, order_id, first_interval_seconds=0.2),
        id=f"{run}-{order_id}",
        task_queue=task_queue,
        result_type=OrderCreditsState,
        execution_timeout=timedelta(seconds=TIMEOUT),
    )


async def counted(client: Client, query: str, at_least: int = 1) -> int:
    """Visibility catches up with a run's last search attributes shortly after it ends."""
    deadline = time.monotonic() + TIMEOUT
    while (count := (await client.count_workflows(query)).count) < at_least:
        assert time.monotonic() < deadline, f"{query}: {count}"
        await asyncio.sleep(0.2)
    return count


async def test_a_rename_is_refused_unless_it_keeps_the_key_and_keeping_it_grants_nothing_twice(
    deployment: Deployment, standin: StandinProcess
) -> None:
    client, queue = deployment.client, deployment.task_queue
    first, _ = await deployment.run_until_recorded(rule("welcome"), "welcome", "welcome")
    customer_id = standin.create_customer()["id"]
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    granted = await credit(client, queue, customer_id, order_id, "webhook")
    assert [(g.rule_id, g.units) for g in granted.grants] == [("welcome", 10)]
    await counted(client, f"TaskQueue = '{queue}' AND CreditRuleKeys = 'welcome'")
    stop_process(first)

    # Renamed without keeping its key: the worker refuses to start, and says why and how.
    refused, log = deployment.start(rule("welcome-credits"))
    assert await asyncio.to_thread(refused.wait, TIMEOUT) == 2
    message = log.read_text()
    assert "drops rule key 'welcome'" in message
    assert "rule 'welcome-credits' (key 'welcome-credits')" in message
    assert CREDIT_PRODUCT_ID in message
    assert "add key = \"welcome\" to rule 'welcome-credits'" in message
    assert "CREDITS_ALLOW_DROPPED_RULE_KEYS=true" in message
    assert POLLING not in message

    # Renamed keeping its key: accepted; a second run for the order (a re-run, a
    # reconciliation) maps to the same event, which Polar already has.
    renamed = rule("welcome-credits", 'key = "welcome"')
    kept, _ = await deployment.run_until_recorded(renamed, "welcome", "welcome-credits")
    again = await credit(client, queue, customer_id, order_id, "rerun")
    assert [(g.rule_id, g.external_id) for g in again.grants] == [
        ("welcome-credits", granted.grants[0].external_id)
    ]
    grants = [e for e in standin.events(customer_id) if e["name"] == "api_usage"]
    assert [e["metadata"]["units"] for e in grants] == [-10]
    stop_process(kept)

    # Told to: a file dropping the key is accepted (and the registry remembers both).
    await deployment.run_until_recorded(
        rule("brand-new"), "brand-new", "brand-new", CREDITS_ALLOW_DROPPED_RULE_KEYS="true"
    )
    registry = await read_registry(client, queue)
    assert {"welcome", "brand-new"} <= set(registry.keys)


async def test_a_dropped_key_that_never_granted_or_whose_products_nobody_takes_is_fine(
    deployment: Deployment,
) -> None:
    await deployment.run_until_recorded(rule("never-granted"), "never-granted", "never-granted")
    other_product = rule("welcome").replace(CREDIT_PRODUCT_ID, "another-product")
    # "never-granted" granted nothing: its products may go to another rule.
    process, _ = await deployment.run_until_recorded(rule("taker"), "taker", "taker")
    stop_process(process)
    await deployment.run_until_recorded(other_product, "welcome", "welcome")


async def test_the_registry_keeps_every_key_across_continue_as_new(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = temporal_env.client
    queue = f"registry-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[RulesRegistryWorkflow]):
        handle = await client.start_workflow(
            RulesRegistryWorkflow.run,
            RegistryState(history_limit=12),
            id=registry_workflow_id(queue),
            task_queue=queue,
        )
        for n in range(8):
            key = RegisteredKey(kind="order", products=[f"p{n}"], rule_id=f"rule-{n}")
            await handle.signal(
                RulesRegistryWorkflow.accept, AcceptedRules(f"sha256:{n:016x}", {f"k{n}": key})
            )
        deadline = time.monotonic() + TIMEOUT
        while len((await read_registry(client, queue)).keys) < 8:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        state = await handle.query(RulesRegistryWorkflow.accepted)
        assert sorted(state.keys) == [f"k{n}" for n in range(8)]
        assert state.keys["k3"].first_version == "sha256:0000000000000003"
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{handle.id}'")]
        assert len(runs) > 1  # continued as new, keys carried over
        await handle.terminate("test over")
