"""Activities of the subscription allowance run: which cadence rules apply, and one period's
grant through the gateway (with the balance read that a capped rule needs).

Only numbers and ids leave these activities: the subscription's customer details never reach
the workflow history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from polar_credits.activities.credits import heartbeating
from polar_credits.activities.gateway import PolarGateway
from polar_credits.events import allowance_event
from polar_credits.grant_limit import held_reason, over_max
from polar_credits.identity import allowance_external_id
from polar_credits.logsafe import for_log
from polar_credits.models.allowances import (
    AllowanceGrant,
    AllowanceGrantInput,
    AllowanceRule,
    AllowanceRulesInput,
)
from polar_credits.models.grants import PolarErrorType
from polar_credits.rules import (
    RulesFile,
    capped_units,
    decide_allowance_rules,
    period_units,
    reads_balance,
)
from polar_credits.worker_metrics import record_grants


def within_max(units: int) -> int:
    """The period's amount, or, above the per-grant maximum (units per seat × a huge seat
    count), the named error that makes the run hold the period: nothing is sent, no retry."""
    if over_max(units):
        raise ApplicationError(
            held_reason(units),
            units,
            type=PolarErrorType.GRANT_OVER_MAX.value,
            non_retryable=True,
            # An outcome, not a fault: the run logs the warning; the SDK logs it at DEBUG.
            category=ApplicationErrorCategory.BENIGN,
        )
    return units


class AllowanceActivities:
    """Holds the gateway and the rules; the worker registers its bound methods."""

    def __init__(self, gateway: PolarGateway, rules: RulesFile) -> None:
        self._gateway = gateway
        self._rules = rules

    @activity.defn(name="allowance_rules")
    async def allowance_rules(self, input: AllowanceRulesInput) -> list[AllowanceRule]:
        return decide_allowance_rules(self._rules, input.facts)

    @activity.defn(name="grant_allowance")
    async def grant_allowance(self, input: AllowanceGrantInput) -> AllowanceGrant:
        """One period of one rule. Polar dedupes the event by its external id (subscription,
        rule, period start), so a retry, a second run or a reset grants nothing twice; the
        first amount Polar stored stands."""
        rule = input.rule
        external_id = allowance_external_id(
            input.subscription_id, rule.rule_key or rule.rule_id, input.period_start
        )
        balance_seen = None
        if reads_balance(rule):
            row = await heartbeating(self._gateway.customer_meter(input.customer_id, rule.meter_id))
            units, balance_seen = capped_units(
                rule,
                row.balance if row else 0.0,
                row.modified_at if row else None,
                input.recent,
            )
        else:
            units = period_units(rule)
        within_max(units)
        grant = AllowanceGrant(
            rule_id=rule.rule_id,
            period_start=input.period_start,
            units=units,
            external_id=external_id,
            balance_seen=balance_seen,
        )
        if units <= 0:
            return grant  # the cap is reached: nothing to ingest
        outcome = await heartbeating(
            self._gateway.ingest([allowance_event(input, units, external_id)])
        )
        grant.stored_by = outcome.stored_by.isoformat()
        record_grants([(rule.rule_id, rule.meter, units)])
        grant.already_granted = (
            activity.info().attempt == 1 and outcome.inserted == 0 and outcome.duplicates == 1
        )
        activity.logger.info(
            "allowance %s for subscription %s, period %s: %d unit(s)%s",
            rule.rule_id,
            for_log(input.subscription_id),
            input.period_start,
            units,
            " (already in Polar)" if grant.already_granted else "",
        )
        return grant

    def all(self) -> list[Callable[..., Any]]:
        return [self.allowance_rules, self.grant_allowance]
