"""Activities of the operator's own grants: a manual grant's event, a revoke's balance read
and its compensating events. Every Polar call goes through the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from polar_credits.activities.credits import heartbeating, ingest_result
from polar_credits.activities.gateway import PolarGateway
from polar_credits.events import manual_grant_event, revoke_events
from polar_credits.logsafe import for_log
from polar_credits.models.grants import IngestResult
from polar_credits.operator_grants import (
    BalanceReadInput,
    BalanceReadResult,
    ManualGrantIngestInput,
    MeterBalance,
    RevokeIngestInput,
)
from polar_credits.worker_metrics import record_grants

# The `rule` label of the grant metrics for an operator's manual grant.
MANUAL_RULE_LABEL = "manual"

BALANCE_UNREADABLE = "BalanceUnreadable"


class OperatorActivities:
    """Holds the gateway; the worker registers its bound methods."""

    def __init__(self, gateway: PolarGateway) -> None:
        self._gateway = gateway

    @activity.defn(name="ingest_manual_grant")
    async def ingest_manual_grant(self, input: ManualGrantIngestInput) -> IngestResult:
        """The negative event that raises the balance; keyed on the idempotency key, so a
        retry or a second run grants nothing twice."""
        outcome = await heartbeating(self._gateway.ingest([manual_grant_event(input)]))
        record_grants([(MANUAL_RULE_LABEL, input.meter.name, input.units)])
        activity.logger.info(
            "manual grant %s for customer %s confirmed by Polar",
            for_log(input.external_id),
            for_log(input.customer_id),
        )
        return ingest_result(outcome)

    @activity.defn(name="read_revoke_balances")
    async def read_revoke_balances(self, input: BalanceReadInput) -> BalanceReadResult:
        """The customer's balance on each meter (Polar's sign: remaining credit is positive).
        A meter Polar does not show is an error, never a guessed zero."""
        balances = []
        for meter_id in input.meter_ids:
            row = await heartbeating(self._gateway.customer_meter(input.customer_id, meter_id))
            if row is None:
                raise ApplicationError(
                    f"Polar shows no meter {meter_id} for customer {input.customer_id}: the "
                    "balance cannot be read, so nothing was revoked",
                    type=BALANCE_UNREADABLE,
                    non_retryable=True,
                )
            balances.append(MeterBalance(meter_id=meter_id, balance=row.balance))
        return BalanceReadResult(balances=balances)

    @activity.defn(name="ingest_revoke")
    async def ingest_revoke(self, input: RevokeIngestInput) -> IngestResult:
        """The compensating positive events, each keyed on the grant event it revokes."""
        events = revoke_events(input)
        outcome = await heartbeating(self._gateway.ingest(events))
        activity.logger.info(
            "revoke of %s confirmed by Polar (%d event(s))", for_log(input.grant_id), len(events)
        )
        return ingest_result(outcome)

    def all(self) -> list[Callable[..., Any]]:
        return [self.ingest_manual_grant, self.read_revoke_balances, self.ingest_revoke]

