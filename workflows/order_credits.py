"""The per-order crediting workflow: decide grants, ingest them once, verify the balance.

One run per paid order, its id derived from the order id, so Temporal itself refuses a
second start for the same order. Deterministic: every side effect is an activity, and
every Polar call behind those activities goes through the worker's gateway.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from polar_credits import search_attributes as sa
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.credits import CreditActivities
    from polar_credits.activities.ledger import LedgerActivities
    from polar_credits.logsafe import for_log
    from polar_credits.models.decisions import HeldGrant
    from polar_credits.models.facts import OrderFacts
    from polar_credits.models.grants import Grant, IngestGrantsInput, IngestResult, PolarErrorType
    from polar_credits.models.ledger import CapReservation, ReserveUnitsInput
    from polar_credits.models.orders import CreditStatus, OrderCreditsInput, OrderCreditsState
    from polar_credits.models.verification import (
        MeterCheckInput,
        MeterGrant,
        MeterReading,
        MeterVerification,
    )
    from polar_credits.rules import granted_rule_keys
    from polar_credits.worker_metrics import count_held
    from polar_credits.workflows.deciding import ORDER_DECISION, OrderDecisionStep
    from polar_credits.workflows.policies import (
        DECIDE_TIMEOUT,
        FIRST_RELEASE_TIMEOUT,
        HEARTBEAT_TIMEOUT,
        INGEST_TIMEOUT,
        LOOKUP_TIMEOUT,
        METER_READ_RETRY,
        RELEASE_RETRY,
        UNTIL_DONE_RETRY,
    )
    from polar_credits.workflows.verification import verify_meters

# Runs started from here on ingest through the gateway and verify in one activity; runs of
# the first release (per-order ingest, a timer loop of meter reads) replay on the old path.
GATEWAY_PATCH = "polar-gateway"
# Runs started from here on end `already_granted`, without verifying, when Polar already
# held every one of their grants (grants of a subscription period are keyed on the period).
PERIOD_PATCH = "period-grants"
# Runs started from here on record their decision (rules version, each rule's verdict and
# reason, the first-order fact, per-customer caps reserved in the customer's ledger) and tag
# themselves with the keys of the rules that granted.
DECISION_PATCH = "decision-record"


@workflow.defn
class OrderCreditsWorkflow:
    def __init__(self) -> None:
        self._state: OrderCreditsState | None = None
        self._published: str | None = None
        self._reserved: list[CapReservation] = []

    @workflow.run
    async def run(self, input: OrderCreditsInput) -> OrderCreditsState:
        order = input.order
        self._state = OrderCreditsState(
            order_id=order.order_id, customer_id=order.customer_id, status=CreditStatus.PENDING
        )
        # The starter normally sets these (findable before the first task runs); a run started
        # any other way gets them here. Each upsert is a visibility write, so only if missing.
        missing = _missing_identity_attributes(order)
        if missing:
            workflow.upsert_search_attributes(missing)

        # What the UI shows for the run while it runs (no command: replay-safe).
        workflow.set_current_details(ui.order_deciding(order.order_id))
        if workflow.patched(DECISION_PATCH):
            grants = await self._decide(order)
        else:
            # A local activity: no server round trip, which matters on a busy cluster.
            grants = await workflow.execute_local_activity_method(
                CreditActivities.evaluate_rules,
                order,
                start_to_close_timeout=DECIDE_TIMEOUT,
                summary=ui.activity_decide(),
            )
        self._state.grants = grants
        if not grants:
            held = self._state.decision is not None and bool(self._state.decision.held)
            self._publish(CreditStatus.HELD_OVER_MAX if held else CreditStatus.NO_RULE)
            return self._state

        workflow.set_current_details(ui.order_granting(_units(grants), _rule_ids(grants)))
        if not workflow.patched(GATEWAY_PATCH):
            return await self._first_release(input, grants)

        # A regular activity: while Polar is failing, operators see the pending activity
        # and its last error in the UI.
        try:
            self._state.ingest = await workflow.execute_activity_method(
                CreditActivities.ingest_order_grants,
                IngestGrantsInput(grants=grants),
                start_to_close_timeout=INGEST_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
                summary=ui.activity_ingest(_units(grants), len(grants)),
            )
        except ActivityError as err:
            await self._release_reservations(order)
            self._fail(order, err)
        assert self._state.ingest is not None  # set by the ingest just above
        if workflow.patched(PERIOD_PATCH) and self._state.ingest.granted_before(len(grants)):
            # Another order already credited this subscription period (a re-bill, a retried
            # invoice): Polar kept the first grant, and there is nothing new to verify.
            self._publish(CreditStatus.ALREADY_GRANTED)
            return self._state
        self._publish(CreditStatus.GRANTED)  # visible while Polar recomputes the balance

        self._state.verifications = await self._verify(input, grants)
        verified = all(v.verified for v in self._state.verifications)
        self._publish(CreditStatus.VERIFIED if verified else CreditStatus.UNVERIFIED)
        return self._state

    @workflow.query
    def state(self) -> OrderCreditsState | None:
        return self._state

    async def _decide(self, order: OrderFacts) -> list[Grant]:
        """The decision record, then each capped grant cut to what the customer's ledger
        allows; returns the grants to make."""
        assert self._state is not None
        step = OrderDecisionStep(order, ORDER_DECISION)
        try:
            decision = await step.run()
        except ActivityError as err:
            if step.decision is None:
                raise  # the first decision itself failed: nothing decided to record
            self._state.decision = step.decision
            self._fail(order, err)
        self._reserved = step.reserved
        self._state.decision = decision
        if decision.held:
            _report_held(order, decision.held)
        keys = granted_rule_keys(decision)
        if keys:
            workflow.upsert_search_attributes([sa.CREDIT_RULE_KEYS.value_set(keys)])
        return decision.grants

    async def _release_reservations(self, order: OrderFacts) -> None:
        """Polar refused the grants: give their units back to the customer's caps."""
        if not self._reserved:
            return
        await workflow.execute_activity_method(
            LedgerActivities.release_capped_units,
            ReserveUnitsInput(customer_id=order.customer_id, reservations=self._reserved),
            start_to_close_timeout=LOOKUP_TIMEOUT,
            retry_policy=RELEASE_RETRY,
            summary=ui.activity_release(sum(r.units for r in self._reserved)),
        )

    async def _verify(
        self, input: OrderCreditsInput, grants: list[Grant]
    ) -> list[MeterVerification]:
        """Verification observes, it never decides: the grant is in Polar, so whatever
        happens while checking (429, 5xx, 404, lag, a worker lost) ends `unverified` at
        worst, never `failed`, and never re-ingests."""
        policy = input.verification
        assert self._state is not None and self._state.ingest is not None
        meters = [
            MeterGrant(meter=group[0].meter, meter_id=group[0].meter_id, units=_units(group))
            for group in _by_meter(grants)
        ]
        return await verify_meters(
            input.order.customer_id, meters, self._state.ingest.stored_by, policy
        )

    def _fail(self, order: OrderFacts, err: ActivityError) -> None:
        assert self._state is not None
        reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
        self._state.failure = reason
        self._publish(CreditStatus.FAILED)
        raise ApplicationError(
            f"Credits for order {order.order_id} were not granted: {reason}",
            type=PolarErrorType.GRANT_REJECTED.value,
            non_retryable=True,
        ) from err

    def _publish(self, status: CreditStatus) -> None:
        """Set the status, and show it (with the units granted) to operators."""
        assert self._state is not None
        self._state.status = status.value
        self._published = status.value
        granted = self._state.ingest and status != CreditStatus.ALREADY_GRANTED
        units = _units(self._state.grants) if granted else 0
        workflow.upsert_search_attributes(
            [sa.CREDIT_STATUS.value_set(status.value), sa.CREDIT_UNITS.value_set(units)]
        )
        if status == CreditStatus.GRANTED:
            workflow.set_current_details(ui.order_verifying(units))
        else:
            rule_ids = _rule_ids(self._state.grants)
            workflow.set_current_details(ui.order_done(status.value, units, rule_ids))

    # -- the first release, kept so its runs replay unchanged ----------------------------

    async def _first_release(
        self, input: OrderCreditsInput, grants: list[Grant]
    ) -> OrderCreditsState:
        assert self._state is not None
        try:
            self._state.ingest = await workflow.execute_activity(
                "ingest_grants",
                grants,
                start_to_close_timeout=FIRST_RELEASE_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
                result_type=IngestResult,
                summary=ui.activity_ingest(_units(grants), len(grants)),
            )
        except ActivityError as err:
            self._fail(input.order, err)

        self._state.status = CreditStatus.GRANTED.value
        workflow.set_current_details(ui.order_verifying(_units(grants)))
        for meter_grants in _by_meter(grants):
            self._state.verifications.append(await self._poll_meter(input, meter_grants))
        verified = all(v.verified for v in self._state.verifications)
        self._publish(CreditStatus.VERIFIED if verified else CreditStatus.UNVERIFIED)
        return self._state

    async def _poll_meter(self, input: OrderCreditsInput, grants: list[Grant]) -> MeterVerification:
        policy = input.verification
        first = grants[0]
        result = MeterVerification(
            meter=first.meter,
            meter_id=first.meter_id,
            units_granted=_units(grants),
            verified=False,
        )
        check = MeterCheckInput(
            customer_id=first.customer_id,
            meter_id=first.meter_id,
            order_id=first.order_id,
            event_name=first.event_name,
            rule_ids=[g.rule_id for g in grants],
        )
        deadline = workflow.now() + timedelta(seconds=policy.timeout_seconds)
        interval = policy.first_interval_seconds
        while True:
            try:
                reading: MeterReading = await workflow.execute_local_activity(
                    "read_meter",
                    check,
                    start_to_close_timeout=FIRST_RELEASE_TIMEOUT,
                    retry_policy=METER_READ_RETRY,
                    result_type=MeterReading,
                    summary=ui.activity_read_meter(first.meter),
                )
                result.checks += 1
                result.balance = reading.balance
                result.consumed_units = reading.consumed_units
                result.credited_units = reading.credited_units
                if reading.includes_grant:
                    result.verified = True
                    return result
            except Exception:  # noqa: BLE001 - a failed read never fails a granted run
                result.checks += 1
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining <= 0:
                return result
            if self._published != CreditStatus.GRANTED:
                self._publish(CreditStatus.GRANTED)
            await workflow.sleep(min(interval, remaining), summary=ui.timer_next_check())
            interval = min(interval * 2, policy.max_interval_seconds)


def _report_held(order: OrderFacts, held: list[HeldGrant]) -> None:
    """Amounts above the per-grant maximum: a warning and a count (neither in replay)."""
    for grant in held:
        workflow.logger.warning(
            "order %s, rule %s: %s",
            for_log(order.order_id),
            for_log(grant.rule_id),
            grant.reason,
        )
    count_held("order", len(held))


def _missing_identity_attributes(order: OrderFacts) -> list[SearchAttributeUpdate[Any]]:
    present = workflow.info().typed_search_attributes
    wanted = sa.identity_values(order.order_id, order.customer_id, order.product_id)
    return [key.value_set(value) for key, value in wanted if present.get(key) is None]


def _by_meter(grants: list[Grant]) -> list[list[Grant]]:
    groups: dict[str, list[Grant]] = {}
    for grant in grants:
        groups.setdefault(grant.meter_id, []).append(grant)
    return list(groups.values())


def _units(grants: list[Grant]) -> int:
    return sum(g.units for g in grants)


def _rule_ids(grants: list[Grant]) -> list[str]:
    return [g.rule_id for g in grants]
