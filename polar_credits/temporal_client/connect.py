"""Connecting a client and checking its namespace, within the connect timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError

from polar_credits.codec import data_converter
from polar_credits.settings import Settings
from polar_credits.temporal_client.connection import TemporalConnection
from polar_credits.temporal_client.core_logs import logging_runtime
from polar_credits.temporal_client.errors import TemporalUnreachable, connect_error, rpc_error
from polar_credits.temporal_client.resolve import resolve_temporal

_T = TypeVar("_T")


async def connect_temporal(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    lazy: bool = False,
    connection: TemporalConnection | None = None,
) -> Client:
    """A client for `settings` (or the `connection` already resolved from them).

    Not lazy: connects within CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS and checks the
    namespace; raises SettingsError (a setting that can never work) or TemporalUnreachable,
    each naming the setting to fix. Lazy: connects on first use, so a process can start
    while Temporal comes up; only the resolution can fail here."""
    connection = connection or resolve_temporal(settings)
    connect = Client.connect(
        connection.address,
        namespace=connection.namespace,
        api_key=connection.api_key,
        tls=connection.tls,
        rpc_metadata=connection.rpc_metadata,
        data_converter=data_converter(settings),
        runtime=runtime or logging_runtime(),
        lazy=lazy,
    )
    if lazy:
        return await connect
    seconds = settings.credits_temporal_connect_timeout_seconds

    async def connect_and_check() -> Client:
        client = await connect
        await _check_namespace(client, connection, seconds)
        return client

    return await _explained(connect_and_check(), connection, seconds)


async def check_temporal(
    client: Client, connection: TemporalConnection, settings: Settings
) -> None:
    """Ask `client` (a lazy one too: this connects it) for its namespace, within
    CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS; raises SettingsError or TemporalUnreachable
    naming the setting to fix, as `connect_temporal` does."""
    seconds = settings.credits_temporal_connect_timeout_seconds
    await _explained(_check_namespace(client, connection, seconds), connection, seconds)


async def _check_namespace(client: Client, connection: TemporalConnection, seconds: float) -> None:
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=connection.namespace),
        timeout=timedelta(seconds=seconds),
    )


async def _explained(work: Awaitable[_T], connection: TemporalConnection, seconds: float) -> _T:
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise TemporalUnreachable(
            f"{connection.source('address')}: no answer from Temporal at {connection.address} "
            f"within {seconds:g} s (CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS): check the "
            "address and that the server is up."
        ) from None
    except RPCError as exc:
        raise rpc_error(connection, exc) from None
    except RuntimeError as exc:  # how the SDK reports a failed connect
        raise connect_error(connection, str(exc)) from None
