"""The reconciliation schedule: created or brought up to date by every worker at start-up (its
runs are started as polar_credits/starters/runs.py says; so is a run started at once).

Idempotent: any number of workers starting together leave one schedule, `polar-credits-reconcile`,
with the interval and input of the settings they were started with.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from polar_credits.identity import (
    RECONCILE_SCHEDULE_ID,
)
from polar_credits.models.orders import VerificationPolicy
from polar_credits.reconciliation import ReconcileInput
from polar_credits.settings import Settings
from polar_credits.starters.runs import reconcile_schedule_action

log = logging.getLogger("polar_credits.reconcile")


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
    return Schedule(
        action=reconcile_schedule_action(reconcile_input(settings)),
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
