"""The rules registry run's starter: one run per deployment (task queue), started on first use
by the signal that records an accepted rules file (signal-with-start, joining the running one)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from polar_credits import ui_summaries as ui
from polar_credits.identity import registry_workflow_id
from polar_credits.rule_keys import RegistryState, accepted_rules
from polar_credits.rules import RulesFile
from polar_credits.workflows.rules_registry import RulesRegistryWorkflow


async def record_rule_keys(client: Client, task_queue: str, rules: RulesFile) -> None:
    """Tell the registry (started on first use) that this file was accepted."""
    text = ui.rules_registry_start(task_queue)
    await client.start_workflow(
        RulesRegistryWorkflow.run,
        RegistryState(),
        id=registry_workflow_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="accept",
        start_signal_args=[accepted_rules(rules)],
        static_summary=text.summary,
        static_details=text.details,
    )
