"""A revoke: the compensating positive events of one grant, ingested once.

One run per revoked grant (`revoke-<grant id>`), and each event's external id is built from
the grant event it compensates, so a second revoke takes nothing back twice. Unless the
operator allows a negative balance, the units are capped at the customer's balance as Polar
shows it; a balance that cannot be read fails the revoke, and nothing is taken back.
"""

from __future__ import annotations

from typing import NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from polar_credits import search_attributes as sa
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.operator import OperatorActivities
    from polar_credits.models.grants import PolarErrorType
    from polar_credits.operator_grants import (
        BalanceReadInput,
        RevokeIngestInput,
        RevokeInput,
        RevokeState,
        RevokeStatus,
    )
    from polar_credits.revoke_plan import plan_revoke
    from polar_credits.workflows.policies import (
        BALANCE_RETRY,
        BALANCE_TIMEOUT,
        HEARTBEAT_TIMEOUT,
        INGEST_TIMEOUT,
        UNTIL_DONE_RETRY,
    )



@workflow.defn
class RevokeGrantWorkflow:
    def __init__(self) -> None:
        self._state: RevokeState | None = None

    @workflow.run
    async def run(self, input: RevokeInput) -> RevokeState:
        granted = sum(item.units for item in input.items)
        wanted = input.units if input.units is not None else granted
        self._state = RevokeState(
            grant_id=input.grant_id,
            customer_id=input.customer_id,
            status=RevokeStatus.PENDING.value,
            units_requested=wanted,
            allow_negative=input.allow_negative,
            reason=input.reason,
        )
        balances: dict[str, float] | None = None
        if not input.allow_negative:
            meter_ids = list(dict.fromkeys(item.meter.meter_id for item in input.items))
            workflow.set_current_details(ui.revoke_reading())
            try:
                read = await workflow.execute_activity_method(
                    OperatorActivities.read_revoke_balances,
                    BalanceReadInput(customer_id=input.customer_id, meter_ids=meter_ids),
                    start_to_close_timeout=BALANCE_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=BALANCE_RETRY,
                    summary=ui.activity_read_meter(
                        ", ".join(dict.fromkeys(item.meter.name for item in input.items))
                    ),
                )
            except ActivityError as err:
                self._fail("the customer's balance could not be read", err)
            self._state.balances_before = read.balances
            balances = {b.meter_id: b.balance for b in read.balances}

        events, capped = plan_revoke(input.items, wanted, balances)
        self._state.events = events
        self._state.capped = capped
        if not events:
            self._publish(RevokeStatus.NOTHING)
            return self._state
        units = sum(e.units for e in events)
        workflow.set_current_details(ui.revoke_revoking(units, bool(capped)))
        try:
            self._state.ingest = await workflow.execute_activity_method(
                OperatorActivities.ingest_revoke,
                RevokeIngestInput(
                    customer_id=input.customer_id,
                    grant_id=input.grant_id,
                    reason=input.reason,
                    events=events,
                ),
                start_to_close_timeout=INGEST_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
                summary=ui.activity_take_back(units),
            )
        except ActivityError as err:
            self._fail("Polar refused the compensating events", err)
        self._state.units_revoked = sum(e.units for e in events)
        self._publish(RevokeStatus.REVOKED)
        return self._state

    @workflow.query
    def state(self) -> RevokeState | None:
        return self._state

    def _fail(self, what: str, err: ActivityError) -> NoReturn:
        assert self._state is not None
        cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
        self._state.failure = f"{what}: {cause}; nothing was revoked"
        self._publish(RevokeStatus.FAILED)
        raise ApplicationError(
            f"Revoke of {self._state.grant_id} failed: {self._state.failure}",
            type=PolarErrorType.GRANT_REJECTED.value,
            non_retryable=True,
        ) from err

    def _publish(self, status: RevokeStatus) -> None:
        assert self._state is not None
        self._state.status = status.value
        # Negative: the units this run took back from the customer.
        workflow.upsert_search_attributes(
            [
                sa.CREDIT_STATUS.value_set(status.value),
                sa.CREDIT_UNITS.value_set(-self._state.units_revoked),
            ]
        )
        workflow.set_current_details(
            ui.revoke_done(status.value, self._state.units_revoked, bool(self._state.capped))
        )
