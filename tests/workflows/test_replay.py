"""Replay: every recorded history still replays on today's workflow code, so a change that
would break the runs in flight (a different command sequence) fails here first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from polar_credits.codec import data_converter
from polar_credits.settings import Settings
from polar_credits.worker import BUDGET_QUEUE_WORKFLOWS, ORDER_QUEUE_WORKFLOWS

WORKFLOWS = [*ORDER_QUEUE_WORKFLOWS, *BUDGET_QUEUE_WORKFLOWS]
HISTORIES = sorted((Path(__file__).parent.parent / "histories").glob("*.json"))


def test_histories_of_each_release_are_recorded() -> None:
    names = [path.name for path in HISTORIES]
    assert any(n.startswith("order_credits_v1_") for n in names)
    assert any(n.startswith("order_credits_v2_") for n in names)
    assert any(n.startswith("order_credits_v3_") for n in names)
    # v4: the decision record, the first-order lookup and the customer ledger's cap.
    assert "order_credits_v4_kit_first_order_capped.json" in names
    assert "order_credits_v4_kit_rejected_released.json" in names
    assert any(n.startswith("customer_ledger_v1_") for n in names)
    assert any(n.startswith("subscription_allowance_v1_") for n in names)
    assert any(n.startswith("manual_grant_v1_") for n in names)
    assert any(n.startswith("revoke_grant_v1_") for n in names)
    # Recorded by tests/histories/record_operations.py; the long-running ones (registry,
    # budget) while open and across continue-as-new, as a deploy meets them.
    for prefix in ("backfill", "reconcile", "rules_preview", "rules_registry", "polar_budget"):
        assert any(n.startswith(f"{prefix}_v1_") for n in names), prefix
    assert "backfill_v1_continued_as_new_2.json" in names
    assert "rules_registry_v1_continued_as_new_2.json" in names
    assert "polar_budget_v1_continued_as_new_2.json" in names


def test_every_workflow_a_worker_runs_has_recorded_histories() -> None:
    recorded = {
        json.loads(path.read_text())["events"][0]["workflowExecutionStartedEventAttributes"][
            "workflowType"
        ]["name"]
        for path in HISTORIES
    }
    missing = {w.__name__ for w in WORKFLOWS} - recorded
    assert not missing, f"record histories of {sorted(missing)} (tests/histories/record_*.py)"


@pytest.fixture
def recorded(request: pytest.FixtureRequest) -> WorkflowHistory:
    path: Path = request.param
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


@pytest.mark.parametrize("recorded", HISTORIES, ids=[p.stem for p in HISTORIES], indirect=True)
async def test_recorded_history_replays(recorded: WorkflowHistory) -> None:
    history = recorded
    replayer = Replayer(workflows=WORKFLOWS)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{history.workflow_id}: {result.replay_failure}"


# Encryption turned on over runs written before it (docs/operator/encrypted-histories.md): the codec
# reads their plain payloads as they are. The key is a test's own: any 32 bytes.
ENCRYPTION_ON = Settings(
    credits_encryption_keys="test:" + "a2V5LWZvci10aGUtcmVwbGF5LXRlc3Qtb25seS0wMDA=",
    credits_encryption_key_id="test",
)


@pytest.mark.parametrize("recorded", HISTORIES, ids=[p.stem for p in HISTORIES], indirect=True)
async def test_recorded_history_replays_with_encryption_on(recorded: WorkflowHistory) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=data_converter(ENCRYPTION_ON))
    result = await replayer.replay_workflow(recorded, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{recorded.workflow_id}: {result.replay_failure}"
