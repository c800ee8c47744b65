"""Two ways an allowance run was made to grant what it must not (issue 16, items 6 and 7), end
to end: signed webhooks into the API, the worker, the stand-in as Polar.

- A takeover: a signed `order.paid` of customer B naming customer A's subscription once moved
  the run (and the period's units) to B. A subscription's customer never changes in Polar:
  the run refuses the message, shows it, and the period stays A's.
- Per-seat amounts with no bound: 2,000 units a seat × 2^53 seats once reached Polar as
  -1.8e19 units and left the run failing its workflow task forever. The period is now held
  (recorded with its amount, `held_over_max`), nothing is sent, and the run goes on.

The months themselves pass only on the time-skipping server
(tests/workflows/test_subscription_allowance.py shows the next period granting after a held
one); here every check is what the stand-in, the run and the operator API show right away.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from temporalio.api.enums.v1 import EventType

from polar_credits.grant_limit import MAX_GRANT_UNITS
from polar_credits.identity import order_workflow_id
from tests.conftest import SEAT_HEAVY_PRODUCT_ID, YEARLY_PRODUCT_ID, Stack
from tests.e2e.test_allowance_webhooks import subscription_create_order
from tests.e2e.test_allowances import (
    MONTHLY,
    allowance_events,
    one_month_after,
    run_of,
    run_state,
    signalled,
    standin_on_real_time,  # noqa: F401 - the autouse fixture: both clocks on real time
)
from tests.e2e.test_operator_grants import AUTH, eventually, show
from tests.e2e.test_pipeline import (
    balance,
    grant_events,
    order_paid_body,
    post_signed,
    result_of,
)

PER_SEAT = 2000  # the enterprise-monthly rule, on "Enterprise yearly"


def customer(stack: Stack, label: str) -> tuple[str, str, str]:
    """A customer with an email and a name, which no log may hold: (id, email, name)."""
    suffix = uuid.uuid4().hex[:8]
    email, name = f"{label}.{suffix}@example.com", f"{label.title()} Person{suffix}"
    return stack.standin.create_customer(email=email, name=name)["id"], email, name


def logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> str:
    """The API's log and the worker's (it runs in the test process)."""
    return stack.api.log() + "\n" + caplog.text


async def workflow_task_failures(stack: Stack, workflow_id: str) -> int:
    handle = stack.temporal.get_workflow_handle(workflow_id)
    return len(
        [
            event
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
    )


async def test_another_customers_paid_order_cannot_take_over_a_subscription(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    a, a_email, a_name = customer(stack, "owner")
    b, b_email, b_name = customer(stack, "intruder")
    made = stack.standin.subscribe(a, YEARLY_PRODUCT_ID)
    sub = made["subscription"]
    handle = run_of(stack, sub["id"])
    signalled(made, handle.id)
    granted = await run_state(handle, lambda s: s.grants_total == 1, "A's first month")
    assert await balance(stack, a) == MONTHLY

    # B's paid order, signed as Polar signs it, naming A's subscription.
    placed = subscription_create_order(stack, b, sub)
    order_id = placed["order"]["id"]
    answer = await post_signed(stack, http, await order_paid_body(stack, order_id))
    # The webhook cannot know the run's customer without asking the run: it delivers, the run
    # (the authority on its subscription) refuses. Polar must not retry: a 2xx.
    assert answer.status_code == 202, answer.text
    assert answer.json()["allowance_workflow_id"] == handle.id

    state = await run_state(handle, lambda s: s.refused_total == 1, "the refusal")
    assert state.facts is not None and state.facts.customer_id == a
    assert (state.status, state.grants_total, state.units_total) == ("active", 1, MONTHLY)
    assert state.next_grant_at == granted.next_grant_at  # the next period is A's, as before
    [refusal] = state.refused
    assert f"order {order_id}" in refusal and f"names customer {b}" in refusal
    assert f"the subscription's customer is {a}" in refusal

    # B's own order run grants nothing (a cadence rule grants on its timer, not on orders).
    assert (await result_of(stack, order_workflow_id(order_id))).status == "no_rule"
    assert grant_events(stack, b) == []
    assert len(allowance_events(stack, a)) == 1 and await balance(stack, a) == MONTHLY

    # The operator API shows the run as it is: A's, with the refusal in its state.
    detail = await show(stack, http, handle.id)
    assert (detail["kind"], detail["status"], detail["customer_id"]) == ("allowance", "active", a)
    assert detail["state"]["refused_total"] == 1 and detail["state"]["refused"] == [refusal]

    # Flagged in the worker's log, by ids only.
    text = logs(stack, caplog)
    assert f"names customer {b}, but the subscription's customer is {a}" in text
    for personal in (a_email, a_name, b_email, b_name):
        assert personal not in text, f"{personal!r} in a log"


@pytest.mark.parametrize("seats", [2**53, 10**9], ids=["2^53 seats", "10^9 seats"])
async def test_a_per_seat_allowance_above_the_maximum_is_held_never_sent_and_not_stuck(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, seats: int
) -> None:
    caplog.set_level("INFO")
    owner, email, name = customer(stack, "enterprise")
    made = stack.standin.subscribe(owner, SEAT_HEAVY_PRODUCT_ID, seats=seats)
    sub = made["subscription"]
    handle = run_of(stack, sub["id"])
    signalled(made, handle.id)

    state = await run_state(handle, lambda s: s.held_total == 1, "the held period")
    computed = PER_SEAT * seats
    assert computed > MAX_GRANT_UNITS
    [held] = state.held
    assert (held.rule_id, held.units) == ("enterprise-monthly", computed)
    assert f"{computed} units is above the per-grant maximum" in held.reason
    assert (state.status, state.grants_total, state.units_total) == ("held_over_max", 0, 0)
    # Never sent to Polar.
    assert grant_events(stack, owner) == [] and await balance(stack, owner) == 0
    # Not stuck: no workflow task failed, and the run waits for its next period.
    assert await workflow_task_failures(stack, handle.id) == 0
    assert state.next_grant_at == one_month_after(sub["started_at"])

    # Where an operator looks: the list filtered on the status, and the run's detail.
    async def held_runs() -> list[dict]:
        listed = await http.get(
            f"{stack.api_url}/grants",
            params={"status": "held_over_max", "subscription_id": sub["id"]},
            headers=AUTH,
        )
        assert listed.status_code == 200, listed.text
        return listed.json()["grants"]

    [row] = await eventually(held_runs, bool)  # visibility follows a moment later
    assert (row["id"], row["kind"], row["units"]) == (handle.id, "allowance", 0)
    detail = await show(stack, http, handle.id)
    assert detail["state"]["held"][0]["units"] == computed

    # The seats corrected: the run takes the message and its next period counts 3 seats (the
    # time-skipping test shows that period granting).
    fixed = stack.standin.update_subscription(sub["id"], seats=3)
    signalled(fixed, handle.id)
    state = await run_state(
        handle, lambda s: [r.units for r in s.rules] == [3 * PER_SEAT], "after the seat change"
    )
    assert state.next_grant_at == one_month_after(sub["started_at"])
    assert await workflow_task_failures(stack, handle.id) == 0
    assert grant_events(stack, owner) == []

    text = logs(stack, caplog)
    assert f"{computed} units is above the per-grant maximum" in text  # the warning
    assert email not in text and name not in text
