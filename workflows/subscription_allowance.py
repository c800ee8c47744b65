"""The per-subscription allowance run: grants on a cadence Polar does not bill (rules with
`every`, e.g. monthly credits on a yearly plan), steered by the subscription's webhooks.

One run per subscription (its id derived from the subscription id), started or signalled by
the API with signal-with-start, so a webhook that arrives before the run exists is not lost.
Every message carries the subscription as Polar showed it; the run keeps the newest by the
subscription's own `modified_at` (an ended subscription stays ended), so deliveries arriving
twice, late or out of order change nothing. A subscription's customer never changes in Polar:
a message naming another customer is refused (recorded in the state, logged, counted) and
changes nothing. Grant periods are counted from the subscription's start with durable timers;
each is keyed in Polar on (subscription, rule, period start), so no crash, replay, reset or
second run grants a period twice. The run continues as new before its history grows large,
carrying its state. A period whose amount comes out above the
per-grant maximum (polar_credits/grant_limit.py) is held: recorded, shown, never sent; the run
goes on to the next period.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from polar_credits import search_attributes as sa
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.allowance import AllowanceActivities
    from polar_credits.cadence import parse_cadence
    from polar_credits.logsafe import for_log
    from polar_credits.models.allowances import (
        AllowanceGrant,
        AllowanceGrantInput,
        AllowanceRule,
        AllowanceRulesInput,
        AllowanceState,
        AllowanceStatus,
        SubscriptionFacts,
        SubscriptionObservation,
    )
    from polar_credits.models.decisions import HeldGrant
    from polar_credits.models.grants import PolarErrorType
    from polar_credits.worker_metrics import count_held, count_refused
    from polar_credits.workflows.allowance_schedule import (
        decision_fields,
        ended,
        ends_at,
        meter_of,
        newer,
        next_due,
        parse_time,
        periods_from_now,
        stamp,
    )
    from polar_credits.workflows.policies import (
        DECIDE_TIMEOUT,
        HEARTBEAT_TIMEOUT,
        HISTORY_LIMIT,
        INGEST_TIMEOUT,
        UNTIL_DONE_RETRY,
        should_continue_as_new,
    )

# Statuses in which a due period is granted; others hold it (past_due, incomplete) or end
# the run (allowance_schedule.ENDED_STATUSES). A paused subscription's periods are skipped,
# not made up.
GOOD_STANDING = frozenset({"active", "trialing"})
# What the state keeps of the past, so it stays small across continue-as-new.
GRANTS_KEPT = 24
SKIPS_KEPT = 24
HELD_KEPT = 24
REFUSED_KEPT = 24


@workflow.defn
class SubscriptionAllowanceWorkflow:
    def __init__(self) -> None:
        self._inbox: list[SubscriptionObservation] = []
        self._state = AllowanceState(subscription_id="")
        self._rules_stale = True
        self._decided_at: datetime | None = None
        self._history_limit = HISTORY_LIMIT

    @workflow.signal
    def observe(self, observation: SubscriptionObservation) -> None:
        """A subscription webhook or a paid subscription order, as the API received it."""
        self._inbox.append(observation)

    @workflow.query
    def state(self) -> AllowanceState:
        return self._state

    @workflow.run
    async def run(self, input: AllowanceState) -> AllowanceState:
        self._state = input
        self._history_limit = input.history_limit or HISTORY_LIMIT
        self._rules_stale = input.facts is not None
        self._publish()
        workflow.set_current_details(ui.allowance_waiting(input.status))
        await workflow.wait_condition(lambda: bool(self._inbox) or self._state.facts is not None)
        while True:
            if should_continue_as_new(self._history_limit):
                self._continue_as_new()
            self._take_inbox()
            facts = self._state.facts
            assert facts is not None
            if ended(facts):
                return self._finish("the subscription ended")
            now = workflow.now()
            if self._rules_stale:
                await self._decide_rules()
                continue
            if not self._state.paid:
                await self._wait(AllowanceStatus.WAITING_FOR_PAYMENT, None)
                continue
            if not self._state.begun:
                self._state.begun = True
                self._adopt(self._state.rules, at_once=True)
            rule, index, due = self._next_due()
            ends = ends_at(facts)
            if ends is not None and (due is None or due >= ends):
                if now >= ends:
                    return self._finish("the subscription ended at the end of its period")
                await self._wait(AllowanceStatus.ENDING, ends, grant_at=None)
                continue
            if rule is None or due is None:
                await self._wait(self._standing(facts), None)  # no cadence rule applies now
                continue
            if due > now:
                await self._wait(self._standing(facts), due, grant_at=due)
                continue
            if self._decided_at is None or self._decided_at < due:
                self._rules_stale = True  # each grant uses the rules as they are when it is due
                continue
            await self._handle_due_period(rule, index, due, now)

    # -- one due period -------------------------------------------------------------------

    async def _handle_due_period(
        self, rule: AllowanceRule, index: int, due: datetime, now: datetime
    ) -> None:
        """A period that is due: skipped (passed while held, or paused), held (the
        subscription is not in good standing or not paid that far), or granted."""
        facts = self._state.facts
        assert facts is not None and self._state.anchor is not None
        cadence = parse_cadence(rule.every)
        anchor = parse_time(self._state.anchor)
        period = stamp(due)
        if cadence.start(anchor, index + 1) <= now:
            self._skip(rule, index, period, "its period passed while the grant was held")
            return
        if facts.status == "paused":
            self._skip(rule, index, period, "the subscription was paused")
            return
        if facts.status not in GOOD_STANDING:
            await self._wait(AllowanceStatus.HELD, None, f"the subscription is {facts.status}")
            return
        paid_through = self._state.paid_through
        if paid_through is not None and due >= parse_time(paid_through):
            await self._wait(
                AllowanceStatus.HELD,
                None,
                f"the period from {paid_through} is not paid yet",
            )
            return
        await self._grant(rule, index, period)

    async def _grant(self, rule: AllowanceRule, index: int, period: str) -> None:
        state = self._state
        assert state.facts is not None
        recent = [g for g in state.grants if meter_of(state, g.rule_id) == rule.meter_id]
        workflow.set_current_details(ui.allowance_granting(rule.units, rule.rule_id, period))
        try:
            grant: AllowanceGrant = await workflow.execute_activity_method(
                AllowanceActivities.grant_allowance,
                AllowanceGrantInput(
                    subscription_id=state.subscription_id,
                    customer_id=state.facts.customer_id,
                    rule=rule,
                    period_start=period,
                    recent=recent,
                ),
                start_to_close_timeout=INGEST_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
                summary=ui.activity_grant_allowance(rule.units, rule.rule_id, period),
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == PolarErrorType.GRANT_OVER_MAX:
                self._hold(rule, index, period, cause)
                return
            # Polar refused the event for good (a 422): this period is lost, visibly; the
            # next one is tried as usual.
            reason = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            self._skip(rule, index, period, f"Polar rejected the grant: {reason}")
            workflow.logger.warning(
                "allowance %s, period %s rejected: %s", rule.rule_id, period, reason
            )
            return
        state.next_period[rule.rule_id] = index + 1
        if rule.rule_id in state.holding:
            state.holding = [r for r in state.holding if r != rule.rule_id]
        state.grants = (state.grants + [grant])[-GRANTS_KEPT:]
        state.grants_total += 1
        if not grant.already_granted:
            state.units_total += grant.units
        self._publish()

    def _hold(self, rule: AllowanceRule, index: int, period: str, cause: ApplicationError) -> None:
        """The period's amount is above the per-grant maximum: nothing was sent. Recorded
        where an operator sees it (state, status, log, metric); the next period goes on."""
        state = self._state
        details = cause.details
        units = details[0] if details and isinstance(details[0], int) else 0
        held = HeldGrant(
            rule_id=rule.rule_id, units=units, reason=cause.message, period_start=period
        )
        state.next_period[rule.rule_id] = index + 1
        state.held = (state.held + [held])[-HELD_KEPT:]
        state.held_total += 1
        if rule.rule_id not in state.holding:
            state.holding = state.holding + [rule.rule_id]
        workflow.logger.warning(
            "subscription %s: allowance %s, period %s: %s",
            for_log(state.subscription_id),
            for_log(rule.rule_id),
            period,
            cause.message,
        )
        count_held("allowance", 1)
        self._set_status(AllowanceStatus.HELD_OVER_MAX)

    def _skip(self, rule: AllowanceRule, index: int, period: str, why: str) -> None:
        self._state.next_period[rule.rule_id] = index + 1
        self._state.skipped = (self._state.skipped + [f"{rule.rule_id}@{period}: {why}"])[
            -SKIPS_KEPT:
        ]

    # -- rules and periods ----------------------------------------------------------------

    async def _decide_rules(self) -> None:
        assert self._state.facts is not None
        workflow.set_current_details(ui.allowance_deciding())
        rules: list[AllowanceRule] = await workflow.execute_local_activity_method(
            AllowanceActivities.allowance_rules,
            AllowanceRulesInput(facts=self._state.facts),
            start_to_close_timeout=DECIDE_TIMEOUT,
            summary=ui.activity_decide(),
        )
        self._rules_stale = False
        self._decided_at = workflow.now()
        trialing = self._state.facts.status == "trialing"
        if self._state.begun:
            # A rule that applies once a trial converts grants its period at once; one that
            # applies after a product change waits for the next period.
            self._adopt(rules, at_once=self._state.decided_trialing and not trialing)
        self._state.decided_trialing = trialing
        self._state.rules = rules
        if self._state.holding:
            # A held rule that no longer applies (a product change) holds nothing any more.
            applying = {rule.rule_id for rule in rules}
            self._state.holding = [r for r in self._state.holding if r in applying]

    def _adopt(self, rules: list[AllowanceRule], at_once: bool) -> None:
        """Rules that apply from now: at first, the period holding now is granted at once;
        a rule that starts to apply later (a product change) begins with the next period."""
        assert self._state.anchor is not None
        self._state.next_period = periods_from_now(
            rules, self._state.next_period, parse_time(self._state.anchor), workflow.now(), at_once
        )

    def _next_due(self) -> tuple[AllowanceRule | None, int, datetime | None]:
        assert self._state.anchor is not None
        return next_due(self._state.rules, self._state.next_period, parse_time(self._state.anchor))

    # -- messages -------------------------------------------------------------------------

    def _take_inbox(self) -> None:
        """Fold the messages in: the newest snapshot wins by Polar's own `modified_at`, an
        ended subscription stays ended, and a paid order is remembered whatever its age."""
        state = self._state
        while self._inbox:
            observation = self._inbox.pop(0)
            facts = observation.facts
            if state.facts is not None and facts.customer_id != state.facts.customer_id:
                self._refuse(observation, state.facts.customer_id)
                continue
            if not state.subscription_id:
                state.subscription_id = facts.subscription_id
            if observation.paid_order_id is not None:
                state.paid = True
                end = facts.current_period_end
                if end is not None and (state.paid_through is None or end > state.paid_through):
                    state.paid_through = end
            if observation.paid_through is not None:
                # A recovery read the subscription from Polar (only its observations carry
                # this field, so runs started before it replay unchanged).
                state.paid = True
                end = observation.paid_through
                if state.paid_through is None or end > state.paid_through:
                    state.paid_through = end
            if state.anchor is None:
                state.anchor = facts.started_at or facts.current_period_start
            current = state.facts
            if current is not None and not newer(facts, current):
                continue
            if current is None or decision_fields(facts) != decision_fields(current):
                self._rules_stale = True
            state.facts = facts
        if state.anchor is None and state.facts is not None:
            state.anchor = state.facts.modified_at or stamp(workflow.now())

    def _refuse(self, observation: SubscriptionObservation, customer_id: str) -> None:
        """A message naming another customer than the subscription's: a subscription's
        customer never changes in Polar, so it is refused whole (no payment, no facts), and
        flagged. Ids only: no personal data."""
        state = self._state
        what = for_log(observation.event_type or "message", 60)
        if observation.paid_order_id is not None:
            what += f" (order {for_log(observation.paid_order_id)})"
        why = (
            f"names customer {for_log(observation.facts.customer_id)}, but the subscription's "
            f"customer is {for_log(customer_id)}: refused, nothing granted"
        )
        state.refused = (state.refused + [f"{what}: {why}"])[-REFUSED_KEPT:]
        state.refused_total += 1
        workflow.logger.warning("subscription %s: %s %s", for_log(state.subscription_id), what, why)
        count_refused("customer_mismatch")

    async def _wait(
        self,
        status: AllowanceStatus,
        until: datetime | None,
        why: str | None = None,
        *,
        grant_at: datetime | None = None,
    ) -> None:
        """Wait for a message, or until `until`; shows the state and next grant meanwhile."""
        if status == AllowanceStatus.HELD_OVER_MAX and why is None and self._state.held:
            why = self._state.held[-1].reason
        self._state.next_grant_at = stamp(grant_at) if grant_at else None
        self._state.held_because = why
        self._set_status(status)
        state = self._state
        workflow.set_current_details(
            ui.allowance_waiting(
                status.value,
                grant_at=grant_at,
                until=until,
                why=why,
                grants_total=state.grants_total,
                units_total=state.units_total,
                held_total=state.held_total,
                refused_total=state.refused_total,
            )
        )
        timeout = None
        timer = None
        if until is not None:
            timeout = max(until - workflow.now(), timedelta(0))
            timer = ui.timer_next_period(until) if grant_at else ui.timer_subscription_ends(until)
        try:
            await workflow.wait_condition(
                lambda: bool(self._inbox), timeout=timeout, timeout_summary=timer
            )
        except TimeoutError:
            pass

    # -- what operators see ---------------------------------------------------------------

    def _standing(self, facts: SubscriptionFacts) -> AllowanceStatus:
        if facts.status == "paused":
            return AllowanceStatus.PAUSED
        if self._state.holding:
            return AllowanceStatus.HELD_OVER_MAX
        return AllowanceStatus.ENDING if facts.cancel_at_period_end else AllowanceStatus.ACTIVE

    def _set_status(self, status: AllowanceStatus) -> None:
        if self._state.status != status.value:
            self._state.status = status.value
            self._publish()

    def _publish(self) -> None:
        attributes: list[SearchAttributeUpdate[Any]] = [
            sa.CREDIT_STATUS.value_set(self._state.status),
            sa.CREDIT_UNITS.value_set(self._state.units_total),
        ]
        facts = self._state.facts
        if facts is not None:
            attributes += [
                key.value_set(value)
                for key, value in sa.subscription_values(
                    facts.subscription_id, facts.customer_id, facts.product_id
                )
            ]
        workflow.upsert_search_attributes(attributes)

    def _finish(self, why: str) -> AllowanceState:
        self._state.next_grant_at = None
        self._state.held_because = why
        self._set_status(AllowanceStatus.ENDED)
        workflow.set_current_details(
            ui.allowance_done(why, self._state.grants_total, self._state.units_total)
        )
        return self._state

    def _continue_as_new(self) -> None:
        self._take_inbox()
        carried = replace(self._state, runs=self._state.runs + 1)
        workflow.continue_as_new(carried)
