"""A customer's ledger of capped grants: `max_units_per_customer` without races.

One long-lived run per customer (an entity workflow), reached by update-with-start from an
activity of the order run. Temporal delivers a run's updates one at a time, and `reserve`
never awaits, so two orders of one customer arriving together are served one after the other:
the second sees the first's units. Reservations are keyed by the grant's external id, so a
retried reservation is the same reservation; `release` gives back the units of a grant Polar
refused. The run continues as new when its history grows, carrying the totals.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.models.ledger import (
        CapReservation,
        LedgerState,
        ReserveUnitsInput,
        ReserveUnitsResult,
    )
    from polar_credits.rules import cap_outcome
    from polar_credits.workflows.policies import HISTORY_LIMIT, should_continue_as_new

# Reservations are remembered so that a retried one counts once; retries come within minutes,
# so the next run carries only the most recent ones (the totals are carried whole). A retry
# older than that would count twice: a customer then gets less, never more than the cap.
MAX_RESERVATIONS_CARRIED = 1000


def reservation_slot(reservation: CapReservation) -> str:
    """Where the ledger keeps a grant's reservation."""
    return f"{reservation.rule_key} {reservation.grant_id}"


@workflow.defn
class CustomerLedgerWorkflow:
    # The input is taken here, not in `run`: the update that started the run (update-with-
    # start) is handled before `run` begins, and must see the totals carried over.
    @workflow.init
    def __init__(self, state: LedgerState) -> None:
        self._state = state

    @workflow.run
    async def run(self, state: LedgerState) -> None:
        limit = state.history_limit or HISTORY_LIMIT
        workflow.set_current_details(
            ui.ledger_current(state.customer_key, len(state.totals), state.runs)
        )
        await workflow.wait_condition(lambda: should_continue_as_new(limit))
        # Updates accepted before this point finish first; later ones go to the next run.
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._state.runs += 1
        recent = list(self._state.reservations.items())[-MAX_RESERVATIONS_CARRIED:]
        self._state.reservations = dict(recent)
        workflow.continue_as_new(self._state)

    @workflow.update
    def reserve(self, input: ReserveUnitsInput) -> ReserveUnitsResult:
        """Units each capped grant may have: what is left of its rule's cap for the customer.
        Idempotent per grant; a dry run only reads."""
        result = ReserveUnitsResult()
        for reservation in input.reservations:
            slot = reservation_slot(reservation)
            held = self._state.totals.get(reservation.rule_key, 0)
            if slot in self._state.reservations:  # the same grant again: the same answer
                allowed = self._state.reservations[slot]
                outcome = cap_outcome(reservation, held - allowed)
                outcome.allowed = allowed
            else:
                outcome = cap_outcome(reservation, held)
                if not input.dry_run:
                    self._state.reservations[slot] = outcome.allowed
                    self._state.totals[reservation.rule_key] = held + outcome.allowed
            result.outcomes.append(outcome)
        return result

    @workflow.update
    def release(self, input: ReserveUnitsInput) -> ReserveUnitsResult:
        """Give back the units of grants Polar refused; releasing twice releases once."""
        result = ReserveUnitsResult()
        for reservation in input.reservations:
            units = self._state.reservations.pop(reservation_slot(reservation), None)
            if units is None:
                continue
            total = self._state.totals.get(reservation.rule_key, 0) - units
            self._state.totals[reservation.rule_key] = max(total, 0)
            outcome = cap_outcome(reservation, self._state.totals[reservation.rule_key])
            outcome.allowed = 0
            result.outcomes.append(outcome)
        return result

    @workflow.query
    def state(self) -> LedgerState:
        return self._state
