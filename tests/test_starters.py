"""What each starter hands Temporal, pinned against what each caller passed before the starters
existed (issue 17): workflow id, reuse or conflict policy, task queue, memo, search attributes,
UI text and timeouts. The end-to-end tests show the runs behave; this shows nothing changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from polar_credits import search_attributes as sa
from polar_credits import ui_summaries as ui
from polar_credits.backfills import BackfillInput, BackfillMeter, BackfillRequest
from polar_credits.models.allowances import (
    AllowanceState,
    SubscriptionFacts,
    SubscriptionObservation,
)
from polar_credits.models.facts import OrderFacts
from polar_credits.models.ledger import LedgerState, ReserveUnitsInput
from polar_credits.models.orders import OrderCreditsInput, RulesPreviewInput
from polar_credits.operator_grants import (
    GrantMeter,
    ManualGrantInput,
    RevokeInput,
    RevokeItem,
)
from polar_credits.reconciliation import ReconcileInput
from polar_credits.recovery import RecoverInput
from polar_credits.rule_keys import RegistryState, accepted_rules
from polar_credits.rules import parse_rules
from polar_credits.starters import budget, ledger, operator, orders, registry, runs
from polar_credits.starters.allowances import steer_allowance
from polar_credits.workflows.polar_budget import BudgetState, PermitRequest

QUEUE = "polar-credits"
TIMEOUT = timedelta(seconds=10)
FACTS = OrderFacts(
    order_id="ord_1",
    customer_id="cus_1",
    billing_reason="purchase",
    status="paid",
    product_id="prod_1",
)
RULES = parse_rules(
    '[meters.api]\nid = "m_1"\nevent_name = "credits"\n'
    '[[rules]]\nid = "monthly"\nmeter = "api"\nevery = "1 month"\nunits = 100\n'
)


class Recorder:
    """Stands in for the Temporal client: keeps what each call was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any, dict[str, Any]]] = []

    async def start_workflow(self, run: Any, arg: Any, **options: Any) -> Any:
        self.calls.append(("start_workflow", run, arg, options))
        return type("Handle", (), {"id": options["id"]})()

    async def execute_workflow(self, run: Any, arg: Any, **options: Any) -> Any:
        self.calls.append(("execute_workflow", run, arg, options))
        return "decision"

    async def execute_update_with_start_workflow(self, update: Any, arg: Any, **options: Any):
        self.calls.append(("execute_update_with_start_workflow", update, arg, options))

    def only(self) -> tuple[Any, dict[str, Any]]:
        [(_, _, arg, options)] = self.calls
        return arg, options


def attributes(pairs: list[SearchAttributePair]) -> TypedSearchAttributes:
    return TypedSearchAttributes(pairs)


def text(start: ui.StartText) -> dict[str, str]:
    return {"static_summary": start.summary, "static_details": start.details}


@pytest.mark.parametrize(
    ("via", "policy", "operator_name", "memo"),
    [
        (ui.VIA_WEBHOOK, WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, None, None),
        (ui.VIA_RECONCILIATION, WorkflowIDReusePolicy.REJECT_DUPLICATE, None, None),
        (
            ui.VIA_RERUN,
            WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            "ops",
            {"operator": "ops"},
        ),
    ],
)
async def test_order_runs(via: str, policy: Any, operator_name: str | None, memo: Any) -> None:
    client = Recorder()
    input = OrderCreditsInput(order=FACTS)
    await orders.start_order_run(
        client, input, task_queue=QUEUE, via=via, rpc_timeout=TIMEOUT, operator=operator_name
    )
    arg, options = client.only()
    assert arg is input
    assert options == {
        "id": "order-credits-ord_1",
        "task_queue": QUEUE,
        "id_reuse_policy": policy,
        "memo": memo,
        "search_attributes": attributes(sa.order_start_attributes(FACTS)),
        **text(ui.order_run(FACTS, via=via)),
        "rpc_timeout": TIMEOUT,
    }


async def test_an_allowance_run_is_started_with_its_first_message() -> None:
    client = Recorder()
    facts = SubscriptionFacts(
        subscription_id="sub_1", customer_id="cus_1", product_id=None, status="active"
    )
    observation = SubscriptionObservation(facts=facts, event_type="subscription.created")
    delivery = await steer_allowance(
        client, RULES, observation, task_queue=QUEUE, deadline=5.0, via=ui.VIA_RECOVER
    )
    assert delivery.outcome == "signalled"
    arg, options = client.only()
    assert arg == AllowanceState(subscription_id="sub_1")
    assert options == {
        "id": "subscription-allowance-sub_1",
        "task_queue": QUEUE,
        "start_signal": "observe",
        "start_signal_args": [observation],
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        "search_attributes": attributes(
            [
                SearchAttributePair(sa.CREDIT_STATUS, "waiting_for_payment"),
                *(
                    SearchAttributePair(key, value)
                    for key, value in sa.subscription_values("sub_1", "cus_1", None)
                ),
            ]
        ),
        **text(ui.allowance_start("sub_1", "cus_1", None, via=ui.VIA_RECOVER)),
        "rpc_timeout": timedelta(seconds=5.0),
    }


METER = GrantMeter(name="api", meter_id="m_1", event_name="credits", property="units")


async def test_a_manual_grant() -> None:
    client = Recorder()
    input = ManualGrantInput(
        key="promo-1", customer_id="cus_1", meter=METER, units=25, reason="r", request_sha256="f"
    )
    await operator.start_manual_grant_run(
        client,
        input,
        task_queue=QUEUE,
        operator="ops",
        via=ui.VIA_OPERATOR_API,
        rpc_timeout=TIMEOUT,
    )
    _, options = client.only()
    assert options == {
        "id": "manual-grant-promo-1",
        "task_queue": QUEUE,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "memo": {"request_sha256": "f", "operator": "ops"},
        "search_attributes": attributes(
            [
                SearchAttributePair(sa.CREDIT_STATUS, "pending"),
                SearchAttributePair(sa.POLAR_CUSTOMER_ID, "cus_1"),
            ]
        ),
        **text(ui.manual_grant_start("promo-1", "cus_1", "api", 25, via=ui.VIA_OPERATOR_API)),
        "rpc_timeout": TIMEOUT,
    }


async def test_a_revoke() -> None:
    client = Recorder()
    input = RevokeInput(
        grant_id="order-credits-ord_1",
        customer_id="cus_1",
        items=[RevokeItem(external_id="x", meter=METER, units=10)],
        reason="r",
        units=4,
        order_id="ord_1",
    )
    await operator.start_revoke_run(
        client,
        input,
        task_queue=QUEUE,
        operator="ops",
        via=ui.VIA_OPERATOR_API,
        rpc_timeout=TIMEOUT,
    )
    _, options = client.only()
    assert options == {
        "id": "revoke-order-credits-ord_1",
        "task_queue": QUEUE,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        "memo": {"operator": "ops"},
        "search_attributes": attributes(
            [
                SearchAttributePair(sa.CREDIT_STATUS, "pending"),
                SearchAttributePair(sa.POLAR_ORDER_ID, "ord_1"),
                SearchAttributePair(sa.POLAR_CUSTOMER_ID, "cus_1"),
            ]
        ),
        **text(ui.revoke_start("order-credits-ord_1", "cus_1", 4, False, via=ui.VIA_OPERATOR_API)),
        "rpc_timeout": TIMEOUT,
    }


async def test_a_backfill() -> None:
    client = Recorder()
    request = BackfillRequest(
        key="spring-2026",
        target="customers",
        meter=BackfillMeter(name="api", meter_id="m_1", event_name="credits"),
        units=5,
        reason="promo",
        customer_ids=["cus_1", "cus_2"],
    )
    await operator.start_backfill_run(
        client,
        BackfillInput(request=request),
        task_queue=QUEUE,
        fingerprint="f",
        operator="ops",
        via=ui.VIA_OPERATOR_API,
        rpc_timeout=TIMEOUT,
    )
    _, options = client.only()
    assert options == {
        "id": "backfill-spring-2026",
        "task_queue": QUEUE,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        "memo": {
            "request_sha256": "f",
            "target": "customers",
            "product_id": None,
            "customers_listed": 2,
            "meter": "api",
            "units": 5,
            "reason": "promo",
            "operator": "ops",
        },
        **text(
            ui.backfill_start(
                "spring-2026", "customers", "api", 5, None, 2, via=ui.VIA_OPERATOR_API
            )
        ),
        "rpc_timeout": TIMEOUT,
    }


async def test_one_off_runs() -> None:
    client = Recorder()
    workflow_id, decision = await runs.run_preview(
        client, RulesPreviewInput(order_id="ord_1"), task_queue=QUEUE
    )
    assert decision == "decision" and workflow_id.startswith("rules-preview-")
    await runs.start_reconcile_now(client, ReconcileInput(task_queue=QUEUE), operator="ops")
    await runs.start_recovery(client, RecoverInput(task_queue=QUEUE, since_seconds=7200.0))
    preview, reconcile, recover = (options for *_, options in client.calls)
    assert preview == {
        "id": workflow_id,
        "task_queue": QUEUE,
        "execution_timeout": timedelta(seconds=60),
        **text(ui.rules_preview_start("ord_1")),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    assert reconcile.pop("id").startswith(f"polar-credits-reconcile-now-{stamp}T")
    assert reconcile == {
        "task_queue": QUEUE,
        "execution_timeout": timedelta(hours=1),
        "memo": {"operator": "ops"},
        **text(ui.reconcile_start(scheduled=False)),
    }
    assert recover.pop("id").startswith(f"polar-credits-recover-{stamp}T")
    assert recover == {
        "task_queue": QUEUE,
        "execution_timeout": timedelta(hours=12),
        **text(ui.recover_start(7200.0, subscriptions=True)),
    }
    action = runs.reconcile_schedule_action(ReconcileInput(task_queue=QUEUE))
    assert (action.id, action.task_queue, action.execution_timeout) == (
        "polar-credits-reconcile",
        QUEUE,
        timedelta(hours=1),
    )


async def test_runs_started_on_first_use() -> None:
    client = Recorder()
    await ledger.reserve_with_start(
        client, ReserveUnitsInput(customer_id="cus_1", reservations=[]), task_queue=QUEUE
    )
    await budget.request_permit(
        client, PermitRequest(per_minute=60), task_queue=QUEUE, rpc_timeout=TIMEOUT
    )
    await registry.record_rule_keys(client, QUEUE, RULES)
    (_, _, _, reserve), (_, _, _, permit), (_, _, state, start) = client.calls
    ledger_start = reserve["start_workflow_operation"]._start_workflow_input
    assert (ledger_start.id, ledger_start.task_queue, ledger_start.id_conflict_policy) == (
        "customer-ledger-cus_1",
        QUEUE,
        WorkflowIDConflictPolicy.USE_EXISTING,
    )
    assert ledger_start.args == [LedgerState(customer_key="cus_1")]
    assert ledger_start.search_attributes == attributes(
        [SearchAttributePair(sa.POLAR_CUSTOMER_ID, "cus_1")]
    )
    assert ledger_start.static_summary == ui.ledger_start("cus_1").summary
    budget_start = permit["start_workflow_operation"]._start_workflow_input
    assert (budget_start.id, budget_start.task_queue, budget_start.id_conflict_policy) == (
        "polar-credits-budget-polar-credits",
        "polar-credits-budget",
        WorkflowIDConflictPolicy.USE_EXISTING,
    )
    assert budget_start.args == [BudgetState(per_minute=60)]
    assert budget_start.static_summary == ui.budget_start("polar-credits-budget", 60).summary
    assert permit["rpc_timeout"] == TIMEOUT
    assert state == RegistryState()
    assert start == {
        "id": "polar-credits-rules",
        "task_queue": QUEUE,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "start_signal": "accept",
        "start_signal_args": [accepted_rules(RULES)],
        **text(ui.rules_registry_start(QUEUE)),
    }
