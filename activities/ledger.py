"""Activities that reach a customer's ledger run (workflows/customer_ledger.py).

A workflow cannot call the Temporal client, and an update (unlike a signal) answers: so the
order run reserves through this activity, which holds the worker's client and sends an
update-with-start (start the ledger if it is not running, then reserve, in one call:
polar_credits/starters/ledger.py).
Retrying the activity is safe: the ledger counts a grant's reservation once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from polar_credits.identity import ledger_workflow_id
from polar_credits.models.ledger import LedgerState, ReserveUnitsInput, ReserveUnitsResult
from polar_credits.rules import cap_outcome
from polar_credits.starters.ledger import release_reservations, reserve_with_start
from polar_credits.workflows.customer_ledger import (
    CustomerLedgerWorkflow,
    reservation_slot,
)


class LedgerActivities:
    """Holds the worker's Temporal client and its task queue (where the ledgers run)."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    @activity.defn(name="reserve_capped_units")
    async def reserve_capped_units(self, input: ReserveUnitsInput) -> ReserveUnitsResult:
        """Reserve each capped grant's units in the customer's ledger; a dry run (a preview)
        reads the ledger's totals instead and reserves nothing, nor starts a ledger."""
        if input.dry_run:
            return await self._read_only(input)
        return await reserve_with_start(self._client, input, task_queue=self._task_queue)

    @activity.defn(name="release_capped_units")
    async def release_capped_units(self, input: ReserveUnitsInput) -> ReserveUnitsResult:
        """Give back reservations of grants Polar refused (a 422): they were never granted."""
        try:
            return await release_reservations(self._client, input)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return ReserveUnitsResult()  # no ledger: nothing was reserved
            raise

    async def _read_only(self, input: ReserveUnitsInput) -> ReserveUnitsResult:
        handle = self._client.get_workflow_handle(ledger_workflow_id(input.customer_id))
        try:
            state = await handle.query(CustomerLedgerWorkflow.state)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            state = LedgerState(customer_key="")
        outcomes = []
        for reservation in input.reservations:
            total = state.totals.get(reservation.rule_key, 0)
            held = state.reservations.get(reservation_slot(reservation))
            if held is None:
                outcomes.append(cap_outcome(reservation, total))
                continue
            # This very grant is already reserved (a preview of an order that was granted).
            outcome = cap_outcome(reservation, total - held)
            outcome.allowed = held
            outcomes.append(outcome)
        return ReserveUnitsResult(outcomes=outcomes)

    def all(self) -> list[Callable[..., Any]]:
        return [self.reserve_capped_units, self.release_capped_units]
