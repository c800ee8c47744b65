"""A manual grant: an operator's units for one customer, ingested once, then verified.

One run per idempotency key (its workflow id is built from the key), and Polar dedupes the
event by an external id built from the same key, so the same request never grants twice.
Verification observes only, as in the order run: at worst the grant ends `unverified`.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from polar_credits import search_attributes as sa
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.operator import OperatorActivities
    from polar_credits.identity import manual_grant_external_id
    from polar_credits.models.grants import PolarErrorType
    from polar_credits.models.orders import CreditStatus
    from polar_credits.models.verification import MeterGrant, MeterVerification
    from polar_credits.operator_grants import (
        ManualGrantIngestInput,
        ManualGrantInput,
        ManualGrantState,
    )
    from polar_credits.workflows.policies import (
        HEARTBEAT_TIMEOUT,
        INGEST_TIMEOUT,
        UNTIL_DONE_RETRY,
    )
    from polar_credits.workflows.verification import verify_meters


@workflow.defn
class ManualGrantWorkflow:
    def __init__(self) -> None:
        self._state: ManualGrantState | None = None

    @workflow.run
    async def run(self, input: ManualGrantInput) -> ManualGrantState:
        external_id = manual_grant_external_id(input.key)
        self._state = ManualGrantState(
            key=input.key,
            customer_id=input.customer_id,
            meter=input.meter.name,
            units=input.units,
            reason=input.reason,
            external_id=external_id,
            status=CreditStatus.PENDING.value,
            grant_meter=input.meter,
        )
        workflow.set_current_details(ui.manual_granting(input.units))
        try:
            self._state.ingest = await workflow.execute_activity_method(
                OperatorActivities.ingest_manual_grant,
                ManualGrantIngestInput(
                    customer_id=input.customer_id,
                    meter=input.meter,
                    units=input.units,
                    reason=input.reason,
                    external_id=external_id,
                    key=input.key,
                ),
                start_to_close_timeout=INGEST_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
                summary=ui.activity_ingest(input.units),
            )
        except ActivityError as err:
            reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            self._state.failure = reason
            self._publish(CreditStatus.FAILED)
            raise ApplicationError(
                f"Manual grant {input.key!r} was not granted: {reason}",
                type=PolarErrorType.GRANT_REJECTED.value,
                non_retryable=True,
            ) from err
        self._publish(CreditStatus.GRANTED)
        self._state.verifications = [await self._verify(input)]
        verified = all(v.verified for v in self._state.verifications)
        self._publish(CreditStatus.VERIFIED if verified else CreditStatus.UNVERIFIED)
        return self._state

    @workflow.query
    def state(self) -> ManualGrantState | None:
        return self._state

    async def _verify(self, input: ManualGrantInput) -> MeterVerification:
        """Observes, never decides: any failure here is a missed check, never a failed run."""
        assert self._state is not None and self._state.ingest is not None
        policy = input.verification
        meter = MeterGrant(meter=input.meter.name, meter_id=input.meter.meter_id, units=input.units)
        [verification] = await verify_meters(
            input.customer_id, [meter], self._state.ingest.stored_by, policy
        )
        return verification

    def _publish(self, status: CreditStatus) -> None:
        assert self._state is not None
        self._state.status = status.value
        units = self._state.units if self._state.ingest is not None else 0
        workflow.upsert_search_attributes(
            [sa.CREDIT_STATUS.value_set(status.value), sa.CREDIT_UNITS.value_set(units)]
        )
        if status == CreditStatus.GRANTED:
            workflow.set_current_details(ui.manual_verifying(units))
        else:
            workflow.set_current_details(ui.manual_done(status.value, units))
