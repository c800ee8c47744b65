"""`polar-credits versions` against the dev server: runs of old order-workflow versions (a
stand-in registered as "OrderCreditsWorkflow" that takes the paths those versions took) are
reported until they are gone from the namespace, and a run of the current version never is."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio import activity, workflow
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import (
    DeleteWorkflowExecutionRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from polar_credits.workflows.order_credits import DECISION_PATCH, GATEWAY_PATCH
from tests.support.processes import REPO_ROOT

CLI = str(Path(sys.executable).parent / "polar-credits")
RETENTION = timedelta(days=1)
NOBODY = "no-worker-polls-this-queue"


@workflow.defn(name="OrderCreditsWorkflow")
class OldOrderRun:
    """Takes the path a run of `version` took, without the patches that version lacked."""

    @workflow.run
    async def run(self, version: str) -> str:
        if version == "v4":
            workflow.patched(DECISION_PATCH)
            return "no rule"
        if version == "v2":
            workflow.patched(GATEWAY_PATCH)
            await workflow.execute_activity(
                "ingest_order_grants", {}, start_to_close_timeout=timedelta(seconds=10)
            )
            return "granted"
        # The first release, stuck in its ingest (Polar down): open until terminated.
        await workflow.execute_activity(
            "ingest_grants", [], task_queue=NOBODY, start_to_close_timeout=timedelta(days=1)
        )
        return "granted"


@activity.defn(name="ingest_order_grants")
async def ingest_order_grants(_: dict[str, Any]) -> dict[str, Any]:
    return {}


@pytest.fixture
async def namespace(temporal_env: WorkflowEnvironment) -> AsyncIterator[tuple[str, Client]]:
    """A namespace of its own (retention one day), so other tests' runs are not counted."""
    name = f"versions-{uuid.uuid4().hex[:8]}"
    service = temporal_env.client.workflow_service
    await service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name,
            workflow_execution_retention_period=Duration(seconds=int(RETENTION.total_seconds())),
        )
    )
    target = temporal_env.client.service_client.config.target_host
    for _ in range(150):  # the server's namespace cache takes a few seconds to see it
        try:
            client = await Client.connect(target, namespace=name)
            await client.count_workflows()
            break
        except Exception:  # noqa: BLE001 - not there yet
            await asyncio.sleep(0.2)
    else:
        pytest.fail(f"namespace {name} never became usable")
    yield target, client


def versions_cli(target: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    kept = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_", "TEMPORAL_"))
    }
    env = {**kept, "TEMPORAL_ADDRESS": target, "TEMPORAL_NAMESPACE": namespace, "COLUMNS": "200"}
    return subprocess.run(
        [CLI, "versions", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


async def report_when(
    target: str, namespace: str, done: Any, what: str, seconds: float = 30.0
) -> dict[str, Any]:
    """The command's JSON report once `done(report)` holds (visibility is eventually
    consistent)."""
    shown: dict[str, Any] = {}
    for _ in range(int(seconds / 0.5)):
        result = await asyncio.to_thread(versions_cli, target, namespace, "--json")
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        if done(shown):
            return shown
        await asyncio.sleep(0.5)
    pytest.fail(f"{what}: the last report was {shown}")


def by_version(shown: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["version"]: row for row in shown["versions"]}


async def test_old_runs_are_reported_until_they_are_gone(
    namespace: tuple[str, Client],
) -> None:
    target, client = namespace
    ns = client.namespace
    queue = f"versions-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[OldOrderRun],
        activities=[ingest_order_grants],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        runs = {
            version: await client.start_workflow(
                "OrderCreditsWorkflow", version, id=f"order-credits-{version}", task_queue=queue
            )
            for version in ("v1", "v2", "v4")
        }
        await runs["v2"].result()
        await runs["v4"].result()

        shown = await report_when(
            target, ns, lambda s: s["runs_read"] == 3, "the three runs listed"
        )
        rows = by_version(shown)
        # The open first-release run needs v1's ingest and v3's decision path; the closed v2
        # run (its ingest completed without the period check) needs v2's and v3's code.
        assert (rows["v1"]["open_runs"], rows["v1"]["closed_runs"]) == (1, 0)
        assert (rows["v2"]["open_runs"], rows["v2"]["closed_runs"]) == (0, 1)
        assert (rows["v3"]["open_runs"], rows["v3"]["closed_runs"]) == (1, 1)
        assert rows["v1"]["example_runs"] == ["order-credits-v1"]
        assert rows["v2"]["example_runs"] == ["order-credits-v2"]
        assert not any(row["may_remove"] for row in rows.values())
        assert rows["v2"]["free_after"] is not None  # its close time plus the retention
        assert shown["retention_seconds"] == RETENTION.total_seconds()
        refused = await asyncio.to_thread(versions_cli, target, ns, "--check", "v1")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "order-credits-v1" in refused.stdout

        # Gone from the namespace (deleted, or past its retention): nothing left to wait for.
        await runs["v1"].terminate("retired")
        for handle in runs.values():
            await client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=ns, workflow_execution=WorkflowExecution(workflow_id=handle.id)
                )
            )
    shown = await report_when(
        target, ns, lambda s: s["runs_read"] == 0, "the deleted runs gone from visibility"
    )
    assert all(row["may_remove"] for row in shown["versions"])
    allowed = await asyncio.to_thread(versions_cli, target, ns, "--check", "v1")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
