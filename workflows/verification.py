"""The verification step every granting workflow ends with: observe Polar's balance until it
shows the grant. It observes, it never decides: the grant is in Polar, so whatever happens
while checking (429, 5xx, 404, lag, a worker lost) ends `unverified` at worst, never
`failed`, and never re-ingests."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.credits import CreditActivities
    from polar_credits.models.orders import VerificationPolicy
    from polar_credits.models.verification import MeterGrant, MeterVerification, VerifyGrantsInput
    from polar_credits.workflows.policies import HEARTBEAT_TIMEOUT, VERIFY_RETRY

VERIFY_SLACK = timedelta(minutes=5)


async def verify_meters(
    customer_id: str,
    meters: list[MeterGrant],
    stored_by: str | None,
    policy: VerificationPolicy,
) -> list[MeterVerification]:
    """One result per meter, verified or not; never raises."""
    now = workflow.now()
    timeout = timedelta(seconds=policy.timeout_seconds)
    try:
        result = await workflow.execute_activity_method(
            CreditActivities.verify_grants,
            VerifyGrantsInput(
                customer_id=customer_id,
                meters=meters,
                stored_by=stored_by,
                check_from=(now + timedelta(seconds=policy.first_interval_seconds)).isoformat(),
                deadline=(now + timeout).isoformat(),
                max_interval_seconds=policy.max_interval_seconds,
            ),
            schedule_to_close_timeout=timeout
            + timedelta(seconds=policy.first_interval_seconds)
            + VERIFY_SLACK,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=VERIFY_RETRY,
            summary=ui.activity_verify(m.meter for m in meters),
        )
        return result.verifications
    except Exception as err:  # noqa: BLE001 - any failure here is only a missed check
        workflow.logger.warning("verification gave up: %s", err)
        return [
            MeterVerification(
                meter=m.meter, meter_id=m.meter_id, units_granted=m.units, verified=False
            )
            for m in meters
        ]
