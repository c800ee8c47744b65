"""The reconciliation schedule: created or brought up to date by every worker at start-up, and
the same run started at once for the operator API.

Idempotent: any number of workers starting together leave one schedule, `polar-credits-reconcile`,
with the interval and input of the settings they were started with.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import ui_summaries as ui
from polar_credits.identity import (
    RECONCILE_RUN_PREFIX,
    RECONCILE_SCHEDULE_ID,
    reconcile_now_workflow_id,
)
from polar_credits.models import VerificationPolicy
from polar_credits.operators import OPERATOR_MEMO
from polar_credits.reconciliation import ReconcileInput
from polar_credits.settings import Settings
from polar_credits.workflows.reconcile import ReconcileWorkflow

log = logging.getLogger("polar_credits.reconcile")

# A run that takes longer than this is cut off; the next one starts from the last watermark.
RUN_TIMEOUT = timedelta(hours=1)


def reconcile_input(settings: Settings) -> ReconcileInput:
    return ReconcileInput(
        task_queue=settings.credits_task_queue,
        verification=VerificationPolicy(
            timeout_seconds=settings.credits_verify_timeout_seconds,
            first_interval_seconds=settings.credits_verify_first_check_seconds,
        ),
        lookback_seconds=settings.credits_reconcile_lookback_seconds,
    )


def reconcile_schedule(settings: Settings) -> Schedule:
    text = ui.reconcile_start(scheduled=True)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ReconcileWorkflow.run,
            reconcile_input(settings),
            id=RECONCILE_RUN_PREFIX,  # Temporal appends the scheduled time
            task_queue=settings.credits_task_queue,
            execution_timeout=RUN_TIMEOUT,
            static_summary=text.summary,
            static_details=text.details,
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(
                    every=timedelta(seconds=settings.credits_reconcile_interval_seconds)
                )
            ]
        ),
        # A run still going when the next is due: skip that one (both would list the same
        # orders).
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


# The note of a pause made because the setting turned reconciliation off; a worker started with
# an interval again lifts this pause (an operator's own pause stays).
OFF_NOTE = "turned off: a worker started with CREDITS_RECONCILE_INTERVAL_SECONDS=0"


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> None:
    """Create the schedule, or update it to these settings when it exists; with an interval of
    0, create none and pause the existing one."""
    if settings.credits_reconcile_interval_seconds == 0:
        await _turn_off(client)
        return
    schedule = reconcile_schedule(settings)
    try:
        await client.create_schedule(RECONCILE_SCHEDULE_ID, schedule)
        log.info(
            "reconciliation scheduled every %gs (%s)",
            settings.credits_reconcile_interval_seconds,
            RECONCILE_SCHEDULE_ID,
        )
        return
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        # Keep an operator's pause (`temporal schedule toggle`): only spec, action and policy.
        state = current.description.schedule.state
        if state.paused and state.note == OFF_NOTE:
            state = ScheduleState(note="turned on again by a worker's settings")
        return ScheduleUpdate(
            schedule=Schedule(
                action=schedule.action, spec=schedule.spec, policy=schedule.policy, state=state
            )
        )

    await client.get_schedule_handle(RECONCILE_SCHEDULE_ID).update(update)
    log.info(
        "reconciliation schedule %s updated: every %gs",
        RECONCILE_SCHEDULE_ID,
        settings.credits_reconcile_interval_seconds,
    )


async def _turn_off(client: Client) -> None:
    handle = client.get_schedule_handle(RECONCILE_SCHEDULE_ID)
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            log.info("reconciliation is off (CREDITS_RECONCILE_INTERVAL_SECONDS=0)")
            return
        raise
    if not described.schedule.state.paused:
        await handle.pause(note=OFF_NOTE)
    log.info(
        "reconciliation is off (CREDITS_RECONCILE_INTERVAL_SECONDS=0): %s paused",
        RECONCILE_SCHEDULE_ID,
    )


async def start_reconcile_now(
    client: Client, settings: Settings, *, operator: str | None = None
) -> WorkflowHandle:
    """A run now, beside the schedule's (same input): what `POST /reconcile` starts, with the
    operator token's name in its memo."""
    text = ui.reconcile_start(scheduled=False)
    return await client.start_workflow(
        ReconcileWorkflow.run,
        reconcile_input(settings),
        id=reconcile_now_workflow_id(datetime.now(UTC)),
        task_queue=settings.credits_task_queue,
        execution_timeout=RUN_TIMEOUT,
        memo={OPERATOR_MEMO: operator} if operator else None,
        static_summary=text.summary,
        static_details=text.details,
    )
