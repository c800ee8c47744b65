"""`POST /rules/preview` against hostile and odd input, one table over real HTTP: what each
request is answered, and that a refused one started no preview and reached nothing at Polar;
then the worker's side: a hostile id that reaches it anyway stays on the orders path, and
Polar's error bodies (which can quote a customer) stay out of logs and histories.

docs/operator/bad-input.md lists every case of CASES with its answer; a test keeps them equal.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from polar_credits.models.grants import PolarErrorType
from polar_credits.models.orders import RulesPreviewInput
from polar_credits.workflows.rules_preview import RulesPreviewWorkflow
from tests.conftest import CREDIT_PRODUCT_ID, OPERATOR_TOKEN, Stack
from tests.e2e.test_decision import order_json, preview_url
from tests.e2e.test_operator_grants import eventually
from tests.e2e.test_pipeline import grant_events
from tests.e2e.test_webhook_edge import assert_readme_lists
from tests.histories.record import history_texts

EMAIL, NAME = "preview.victim@example.com", "Preview Victim"
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
OVERFLOW_LOW, OVERFLOW_HIGH = "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"


@dataclass
class Placed:
    """A real paid order of the credit pack (10 units), of a customer Polar has details of."""

    customer_id: str
    order_id: str
    order: dict[str, Any]

    def posted(self, **changes: Any) -> dict[str, Any]:
        return {**json.loads(json.dumps(self.order)), **changes}

    def with_subscription(self, **dates: str) -> dict[str, Any]:
        return self.posted(subscription={"id": str(uuid.uuid4()), "status": "active", **dates})


@dataclass(frozen=True)
class Case:
    name: str
    body: Callable[[Placed], Any]
    status: int
    says: str = ""  # in the answer's detail
    units: int | None = None  # a 200's units


ID_RULE = "order_id must be a Polar order id"
CASES = [
    # -- order ids that are not ids -----------------------------------------------------
    Case("order_id shaped like a path to a customer",
         lambda p: {"order_id": f"../customers/{p.customer_id}"}, 422, ID_RULE),
    Case("order_id with a query and a fragment",
         lambda p: {"order_id": f"{p.order_id}?x=1#"}, 422, ID_RULE),
    Case("order_id that is the parent directory", lambda p: {"order_id": ".."}, 422, ID_RULE),
    Case("order_id with percent-encoded slashes",
         lambda p: {"order_id": f"{p.order_id}%2F..%2Fcustomers"}, 422, ID_RULE),
    Case("order_id with a newline and a forged log line",
         lambda p: {"order_id": p.order_id + "\n2026-12-01 INFO forged"}, 422, ID_RULE),
    Case("order_id with non-ASCII letters", lambda p: {"order_id": "commande-été"}, 422, ID_RULE),
    Case(
        "order_id with a lone surrogate",
        lambda p: {"order_id": "\ud800abc"},
        422,
        "lone surrogate",  # refused with the body, before any field is read
    ),
    Case("order_id of 257 characters", lambda p: {"order_id": "o" * 257}, 422, ID_RULE),
    Case("order_id of 100 KB", lambda p: {"order_id": "o" * 100_000}, 422, ID_RULE),
    Case("order_id empty", lambda p: {"order_id": ""}, 422, ID_RULE),
    Case("order_id blank", lambda p: {"order_id": "   "}, 422, ID_RULE),
    Case("order_id a number", lambda p: {"order_id": 12345}, 422, ID_RULE),
    Case("order_id null", lambda p: {"order_id": None}, 422, ID_RULE),
    Case("order_id a list", lambda p: {"order_id": [p.order_id]}, 422, ID_RULE),
    # -- posted orders whose dates overflow once converted to UTC -------------------------
    Case("order created_at 0001-01-01T00:00:00+01:00",
         lambda p: p.posted(created_at=OVERFLOW_LOW), 422, "out of range once converted to UTC"),
    Case("order created_at 9999-12-31T23:59:59-01:00",
         lambda p: p.posted(created_at=OVERFLOW_HIGH), 422, "created_at"),
    Case("subscription current_period_end 9999-12-31T23:59:59-01:00",
         lambda p: p.with_subscription(current_period_end=OVERFLOW_HIGH), 422,
         "current_period_end"),
    Case("subscription current_period_start 0001-01-01T00:00:00+01:00",
         lambda p: p.with_subscription(current_period_start=OVERFLOW_LOW), 422,
         "current_period_start"),
    Case("subscription modified_at 0001-01-01T00:00:00+01:00",
         lambda p: p.with_subscription(modified_at=OVERFLOW_LOW), 422, "modified_at"),
    Case("whole webhook body, created_at overflowing",
         lambda p: {"type": "order.paid", "data": p.posted(created_at=OVERFLOW_LOW)}, 422,
         "created_at"),
    # -- what must stay clean -------------------------------------------------------------
    Case("a valid order_id", lambda p: {"order_id": p.order_id}, 200, units=10),
    Case("a valid order_id with spaces around",
         lambda p: {"order_id": f"  {p.order_id} "}, 200, units=10),
    Case("an order_id Polar does not have, with . : @ + -",
         lambda p: {"order_id": f"no.such:order@x+{uuid.uuid4()}"}, 404, "Polar has no order"),
    Case("a posted order with dates at the edges of the range, in range in UTC",
         lambda p: p.with_subscription(
             current_period_start="0001-01-01T00:00:00-01:00",
             current_period_end="9999-12-31T23:59:59+01:00",
         ) | {"created_at": "2026-01-01T00:00:00+14:00"}, 200, units=10),
]  # fmt: skip


@pytest.fixture(scope="module")
async def placed(stack: Stack) -> Placed:
    customer_id = stack.standin.create_customer(email=EMAIL, name=NAME)["id"]
    order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
    order_id = order["order"]["id"]
    return Placed(customer_id, order_id, await order_json(stack, order_id))


def polar_calls(stack: Stack) -> dict[str, int]:
    return {
        endpoint: len(stack.standin.requests(endpoint))
        for endpoint in ("orders.get", "customers.get", "orders.list")
    }


async def previews_since(stack: Stack, since: datetime) -> list[str]:
    query = f"WorkflowType = 'RulesPreviewWorkflow' AND StartTime >= '{since.isoformat()}'"
    return [w.id async for w in stack.temporal.list_workflows(query)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_preview_edge(
    stack: Stack, http: httpx.AsyncClient, placed: Placed, case: Case
) -> None:
    since = datetime.now(UTC)
    calls_before = polar_calls(stack)

    # json.dumps escapes what UTF-8 cannot carry (a lone surrogate), as a client's JSON may.
    response = await http.post(
        preview_url(stack),
        content=json.dumps(case.body(placed)),
        headers=AUTH | {"content-type": "application/json"},
        timeout=60,
    )

    assert response.status_code == case.status, response.text
    assert EMAIL not in response.text and NAME not in response.text
    if case.status == 200:
        assert response.json()["units"] == case.units
    else:
        detail = response.json()["detail"]
        if isinstance(detail, list):  # a validation error: FastAPI's list of problems
            detail = " ".join(problem["msg"] for problem in detail)
        assert case.says in detail, response.text
    if case.status == 422:
        # Refused before the worker: no preview started, nothing asked of Polar.
        assert polar_calls(stack) == calls_before
        assert await previews_since(stack, since) == []
    else:
        # It went to Polar, on the orders path only.
        assert polar_calls(stack)["customers.get"] == calls_before["customers.get"]
    assert grant_events(stack, placed.customer_id) == [], "a preview grants nothing"
    assert EMAIL not in stack.api.log() and NAME not in stack.api.log()


@pytest.mark.parametrize(
    "hostile",
    ["../customers/{customer}", "{order}?x=1#", "..", "{order}/../../customers/{customer}"],
)
async def test_a_hostile_id_that_reaches_the_worker_stays_one_orders_path_segment(
    stack: Stack, placed: Placed, caplog: pytest.LogCaptureFixture, hostile: str
) -> None:
    """Belt and braces: the API refuses these, but a run started by other means (the CLI's
    Temporal access, an older API) still asks Polar for this very order id, nothing else."""
    caplog.set_level("INFO")
    order_id = hostile.format(customer=placed.customer_id, order=placed.order_id)
    calls_before = polar_calls(stack)
    with pytest.raises(WorkflowFailureError) as failed:
        await stack.temporal.execute_workflow(
            RulesPreviewWorkflow.run,
            RulesPreviewInput(order_id=order_id),
            id=f"rules-preview-{uuid.uuid4()}",
            task_queue=stack.settings.credits_task_queue,
        )
    cause = failed.value.cause
    assert getattr(getattr(cause, "cause", None), "type", None) == PolarErrorType.ORDER_NOT_FOUND
    calls = polar_calls(stack)
    assert calls["orders.get"] == calls_before["orders.get"] + 1, "one read of that id"
    assert calls["customers.get"] == calls_before["customers.get"], "never another path"
    assert EMAIL not in caplog.text and NAME not in caplog.text


@pytest.mark.parametrize(("fault", "answer"), [(500, 502), (422, 502), (404, 404)])
async def test_polar_error_bodies_stay_out_of_logs_answers_and_histories(
    stack: Stack,
    http: httpx.AsyncClient,
    placed: Placed,
    caplog: pytest.LogCaptureFixture,
    fault: int,
    answer: int,
) -> None:
    """Polar's error answer quotes the customer: the preview fails with Polar's status and
    the service's own words; no log line, traceback, answer or history holds the body."""
    caplog.set_level("INFO")
    quoted = f"customer {EMAIL} ({NAME}) cannot be read"
    since = datetime.now(UTC)
    stack.standin.add_fault("orders.get", fault, 3, detail=quoted)
    try:
        response = await http.post(
            preview_url(stack), json={"order_id": placed.order_id}, headers=AUTH, timeout=60
        )
    finally:
        stack.standin.clear_faults()

    assert response.status_code == answer, response.text
    assert str(fault) in response.json()["detail"] or answer == 404
    assert EMAIL not in response.text and NAME not in response.text
    assert "Completing activity as failed" in caplog.text, "the worker logged the failure"
    assert EMAIL not in caplog.text and NAME not in caplog.text
    assert EMAIL not in stack.api.log() and NAME not in stack.api.log()
    runs = await eventually(lambda: previews_since(stack, since), bool)
    assert runs, "the failed preview is found in Temporal"
    for workflow_id in runs:
        history = await stack.temporal.get_workflow_handle(workflow_id).fetch_history()
        text = "\n".join(history_texts(json.loads(history.to_json())))
        assert placed.order_id in text, "payloads are decoded: the order id is there"
        assert EMAIL not in text and NAME not in text


def test_readme_lists_every_case_with_its_answer() -> None:
    assert_readme_lists(CASES)
