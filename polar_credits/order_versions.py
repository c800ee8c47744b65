"""The order workflow's old versions, and which runs still need their code: read from each
run's history, for the check an operator runs before a release removes one
(`polar-credits versions`, docs/retiring-versions.md).

A run's version is not stored anywhere: it shows in its history. `workflow.patched(P)` records
a marker the first time a run passes P, so a run that passed P's place in the code without
P's marker was started by code older than P, and replays (a query, a reset, a worker restart
while it is open) only on P's old branch. Each old version's code is the old branch of one
patch; a run needs it when its history went past that patch without the marker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from polar_credits.workflows.order_credits import DECISION_PATCH, GATEWAY_PATCH, PERIOD_PATCH

WORKFLOW_TYPE = "OrderCreditsWorkflow"
PATCH_MARKER = "core_patch"
# The activities that show a run went past a patch's place without its marker.
FIRST_RELEASE_INGEST = "ingest_grants"  # scheduled right after the gateway patch's old branch
GATEWAY_INGEST = "ingest_order_grants"  # completed right before the period patch


@dataclass(frozen=True)
class OldVersion:
    name: str
    patch: str  # runs started before this patch need the code of its old branch
    code: str  # what retiring the version removes


OLD_VERSIONS = (
    OldVersion(
        "v1",
        GATEWAY_PATCH,
        "the first release: per-order `ingest_grants` and the `read_meter` polling loop "
        "(`_first_release`, `_poll_meter`, the string-named activities)",
    ),
    OldVersion(
        "v2",
        PERIOD_PATCH,
        "ingest through the gateway without the already-granted period check",
    ),
    OldVersion(
        "v3",
        DECISION_PATCH,
        "rules evaluated by the `evaluate_rules` local activity, without a decision record "
        "(v1 and v2 runs start on it too)",
    ),
)
CURRENT_VERSION = "v4"


def versions_needed(events: Iterable[HistoryEvent]) -> set[str]:
    """The old versions whose code replaying these events (a run's history, in order) needs."""
    patches: set[str] = set()
    task_completed = False
    first_release_ingest = False
    activity_types: dict[int, str] = {}
    gateway_ingest_done = False
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            task_completed = True
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            patch = _patch_id(event)
            if patch == DECISION_PATCH:
                # Started by v4, the newest patch's version: it records every patch it passes.
                # A future patch moves this stop to its own marker (docs/retiring-versions.md).
                return set()
            if patch is not None:
                patches.add(patch)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            activity_types[event.event_id] = name
            first_release_ingest |= name == FIRST_RELEASE_INGEST
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
            gateway_ingest_done |= activity_types.get(scheduled) == GATEWAY_INGEST
    needed: set[str] = set()
    # Every run takes the decision patch in its first workflow task.
    if task_completed and DECISION_PATCH not in patches:
        needed.add("v3")
    if first_release_ingest and GATEWAY_PATCH not in patches:
        needed.add("v1")
    # Counted from the ingest's completion, before the next task passes the period patch.
    if GATEWAY_PATCH in patches and PERIOD_PATCH not in patches and gateway_ingest_done:
        needed.add("v2")
    return needed


def _patch_id(event: HistoryEvent) -> str | None:
    attributes = event.marker_recorded_event_attributes
    if attributes.marker_name != PATCH_MARKER:
        return None
    payloads = attributes.details.get("patch-data")
    if payloads is None or not payloads.payloads:
        return None
    # The SDK's core writes this marker as plain JSON, outside any payload codec.
    try:
        patch = json.loads(payloads.payloads[0].data)
    except ValueError:
        return None
    return patch.get("id") if isinstance(patch, dict) else None


# -- the census over a namespace ------------------------------------------------------------


@dataclass
class VersionCount:
    version: OldVersion
    open: int = 0
    closed: int = 0
    # When the last closed run that needs it leaves the namespace's retention.
    free_after: datetime | None = None
    examples: list[str] = field(default_factory=list)  # a few workflow ids, to look at

    @property
    def removable(self) -> bool:
        return self.open == 0 and self.closed == 0


@dataclass
class Census:
    namespace: str
    retention: timedelta | None
    runs_read: int = 0
    counts: dict[str, VersionCount] = field(
        default_factory=lambda: {v.name: VersionCount(v) for v in OLD_VERSIONS}
    )


MAX_EXAMPLES = 3


async def take_census(
    client: Client, *, page_size: int = 100, pause: float = 0.2, concurrency: int = 4
) -> Census:
    """Every order run in visibility (open, and closed within retention), each history read
    until its version shows: one page for a run of the current version, whole for an old one.
    Slow on a large namespace (one history read per run): it pages visibility `page_size`
    runs at a time, `pause` seconds apart, with at most `concurrency` histories in flight."""
    census = Census(namespace=client.namespace, retention=await _retention(client))
    limit = asyncio.Semaphore(concurrency)

    async def classify(execution: WorkflowExecution) -> None:
        async with limit:
            needed = await _versions_of(client, execution)
        census.runs_read += 1
        for name in needed:
            _count(census, census.counts[name], execution)

    async for page in _pages(client, page_size, pause):
        await asyncio.gather(*(classify(execution) for execution in page))
    return census


def _count(census: Census, count: VersionCount, execution: WorkflowExecution) -> None:
    if execution.status in (None, WorkflowExecutionStatus.RUNNING):
        count.open += 1
    else:
        count.closed += 1
        if execution.close_time is not None and census.retention is not None:
            leaves = execution.close_time + census.retention
            count.free_after = max(leaves, count.free_after or leaves)
    if len(count.examples) < MAX_EXAMPLES:
        count.examples.append(execution.id)


async def _pages(
    client: Client, page_size: int, pause: float
) -> AsyncIterator[list[WorkflowExecution]]:
    token: bytes | None = None
    while True:
        pages = client.list_workflows(
            f"WorkflowType = '{WORKFLOW_TYPE}'", page_size=page_size, next_page_token=token
        )
        await pages.fetch_next_page()
        yield list(pages.current_page or [])
        token = pages.next_page_token
        if not token:
            return
        await asyncio.sleep(pause)  # visibility is shared with the service's own listings


async def _versions_of(client: Client, execution: WorkflowExecution) -> set[str]:
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    events: list[HistoryEvent] = []
    async for event in handle.fetch_history_events(page_size=100):
        events.append(event)
        if _is_current(event):
            return set()  # the rest of a v4 run's history cannot need old code
    return versions_needed(events)


def _is_current(event: HistoryEvent) -> bool:
    return (
        event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and _patch_id(event) == DECISION_PATCH
    )


async def _retention(client: Client) -> timedelta | None:
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )
    if not described.config.HasField("workflow_execution_retention_ttl"):
        return None
    return described.config.workflow_execution_retention_ttl.ToTimedelta()
