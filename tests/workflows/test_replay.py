"""Replay: every recorded history still replays on today's workflow code, so a change that
would break the runs in flight (a different command sequence) fails here first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.customer_ledger import CustomerLedgerWorkflow
from workflows.manual_grant import ManualGrantWorkflow
from workflows.order_credits import OrderCreditsWorkflow
from workflows.polar_budget import PolarBudgetWorkflow
from workflows.revoke_grant import RevokeGrantWorkflow
from workflows.subscription_allowance import SubscriptionAllowanceWorkflow

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


@pytest.fixture
def recorded(request: pytest.FixtureRequest) -> WorkflowHistory:
    path: Path = request.param
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


@pytest.mark.parametrize("recorded", HISTORIES, ids=[p.stem for p in HISTORIES], indirect=True)
async def test_recorded_history_replays(recorded: WorkflowHistory) -> None:
    history = recorded
    replayer = Replayer(
        workflows=[
            OrderCreditsWorkflow,
            PolarBudgetWorkflow,
            SubscriptionAllowanceWorkflow,
            ManualGrantWorkflow,
            RevokeGrantWorkflow,
            CustomerLedgerWorkflow,
        ]
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{history.workflow_id}: {result.replay_failure}"
