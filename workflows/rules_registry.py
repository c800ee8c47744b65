"""The rules registry: one long-running run (id `polar-credits-rules`) holding every rule key
an accepted rules file ever had, and the products its rule granted for. Workers read it at
start-up to refuse a file that drops a key which has granted (polar_credits/rule_keys.py).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.rule_keys import REGISTRY_MEMO, AcceptedRules, RegistryState
    from polar_credits.workflows.policies import HISTORY_LIMIT, should_continue_as_new


@workflow.defn
class RulesRegistryWorkflow:
    @workflow.init
    def __init__(self, state: RegistryState) -> None:
        # Set before any handler runs: signal-with-start delivers its signal before `run`.
        self._state = state

    @workflow.run
    async def run(self, state: RegistryState) -> None:
        self._publish()
        limit = state.history_limit or HISTORY_LIMIT
        await workflow.wait_condition(lambda: should_continue_as_new(limit))
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self._state)

    @workflow.signal
    def accept(self, accepted: AcceptedRules) -> None:
        """A worker started with this rules file."""
        self._state.accept(accepted)
        self._publish()

    @workflow.query
    def accepted(self) -> RegistryState:
        """Everything ever accepted: each key with its products and the versions that had it."""
        return self._state

    def _publish(self) -> None:
        # The memo is readable without a worker: a worker checks it before it polls.
        workflow.upsert_memo({REGISTRY_MEMO: self._state.memo()})
        workflow.set_current_details(
            ui.registry_current(len(self._state.keys), len(self._state.versions))
        )
