"""Temporal lost and rebuilt from Polar, end to end: a private dev server, the stand-in, the API
and a worker, each its own process. Orders are granted, one is paid while its webhook is lost,
one is still in flight (the worker is stopped before it runs); monthly allowances run for two
yearly subscriptions (one whose webhooks were lost), and a third subscription has ended. Then
Temporal stops and its database is deleted; an empty one starts on the same port, a new worker
starts, and `polar-credits recover --since 27d` (the CLI, as a subprocess) rebuilds the runs:
the subscriptions' periods began before that window, so their runs are paid by their standing.
Every order is granted exactly once, every allowance period that was due exactly once, the
allowance runs go on to their next period, and a second `recover --since 60d` (which also lists
the older orders, the ended subscription's first one among them) changes nothing.

Clocks: the stand-in runs a manual clock set about a month back, so a subscription's second
month falls due (on Temporal's real clock) 40 s after it was created: the recovered run
must grant it once, on its timer or at once, whichever the machine's speed makes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from polar_credits.cadence import parse_cadence
from polar_credits.identity import allowance_workflow_id, order_workflow_id
from polar_credits.models.allowances import AllowanceState
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow
from tests.conftest import (
    CREDIT_PRODUCT_ID,
    METER_ID,
    TEST_RULES,
    WEBHOOK_SECRET,
    YEARLY_PRODUCT_ID,
)
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, ServiceProcess
from tests.support.standin import StandinProcess
from tests.support.temporal import TemporalProcess

BIN = Path(sys.executable).parent
QUEUE = "credits-recover-test"
PACK_UNITS = 10  # the starter-bonus rule on the credit pack
MONTHLY = 100  # the monthly-on-yearly rule
MONTH = parse_cadence("1 month")
# The second month of the subscriptions falls due this long after they are created: enough
# for the loss and the recovery on a busy machine, short enough for a modest test.
LEAD = timedelta(seconds=40)
SETTLE_SECONDS = 45.0


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Rig:
    tmp: Path
    temporal: TemporalProcess
    standin: StandinProcess
    api: ServiceProcess
    env: dict[str, str]  # the service's settings, for the worker and the CLI
    worker: ServiceProcess | None = None

    def start_worker(self) -> None:
        port = free_port()
        self.worker = ServiceProcess(
            "worker",
            ["worker.py"],
            env={**self.env, "CREDITS_WORKER_METRICS_PORT": str(port)},
            ready_url=f"http://127.0.0.1:{port}/metrics",
            log_path=self.tmp / "worker.log",
        ).start()

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def lose_temporal(self) -> None:
        """Stop the server, delete its database, start an empty one on the same port (the
        search attributes registered by its command line, as the stack does)."""
        port = self.temporal.port
        self.temporal.stop()
        for path in self.temporal.db.parent.glob(self.temporal.db.name + "*"):
            path.unlink()
        assert not self.temporal.db.exists()
        self.temporal.start()
        assert self.temporal.port == port

    def recover(self, since: str = "60d") -> dict[str, Any]:
        """`polar-credits recover --since … --json` as an operator runs it."""
        done = subprocess.run(
            [str(BIN / "polar-credits"), "recover", "--since", since, "--json"],
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def allowance_events(self, customer_id: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.standin.events(customer_id)
            if e["name"] == "api_usage" and e["metadata"].get("reason") == "allowance"
        ]

    def order_events(self, customer_id: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.standin.events(customer_id)
            if e["name"] == "api_usage" and e["metadata"].get("reason") != "allowance"
        ]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rules = tmp_path / "rules.toml"
    rules.write_text(TEST_RULES)
    data = tmp_path / "temporal"
    data.mkdir()
    started: list[Any] = []
    try:
        temporal = TemporalProcess(data).start()
        started.append(temporal)
        back = datetime.now(UTC).replace(microsecond=0) - timedelta(days=40)
        standin = StandinProcess(
            tmp_path / "standin.sqlite3",
            extra_args=["--clock", "manual", "--clock-start", stamp(back)],
        ).start()
        started.append(standin)
        standin.create_meter(name="API calls", event_name="api_usage", id=METER_ID)
        standin.create_product(name="Credit pack", id=CREDIT_PRODUCT_ID)
        standin.create_product(
            name="Pro yearly", id=YEARLY_PRODUCT_ID, price_amount=29000, recurring_interval="year"
        )
        api_port = free_port()
        env = {
            "POLAR_ACCESS_TOKEN": standin.token,
            "POLAR_API_URL": standin.base_url,
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "POLAR_RATE_LIMIT_PER_MINUTE": "6000",
            "TEMPORAL_ADDRESS": temporal.address,
            "CREDITS_TASK_QUEUE": QUEUE,
            "CREDITS_RULES_FILE": str(rules),
            "CREDITS_VERIFY_TIMEOUT_SECONDS": "5",
            "CREDITS_VERIFY_FIRST_CHECK_SECONDS": "0.5",
            # No reconciliation schedule: only `recover` may repair what was lost.
            "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
            "CREDITS_API_PORT": str(api_port),
        }
        api = ServiceProcess(
            "api",
            ["-m", "api"],
            env=env,
            ready_url=f"http://127.0.0.1:{api_port}/readyz",
            log_path=tmp_path / "api.log",
        ).start()
        started.append(api)
        standin.set_webhook_target(f"http://127.0.0.1:{api_port}/webhooks/polar", WEBHOOK_SECRET)
        rig = Rig(tmp_path, temporal, standin, api, env)
        started.append(rig)
        rig.start_worker()
        yield rig
    finally:
        for part in reversed(started):
            if isinstance(part, Rig):
                part.stop_worker()
            else:
                part.stop()


@pytest.fixture
async def temporal_of(rig: Rig) -> AsyncIterator[Any]:
    """A client to whichever server runs now (a new one after the loss)."""

    async def connect() -> Client:
        return await Client.connect(rig.temporal.address)

    yield connect


async def until(check: Any, what: str, seconds: float = SETTLE_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {seconds:.0f} s")
        await asyncio.sleep(0.2)


async def allowance_state(client: Client, subscription_id: str) -> AllowanceState | None:
    handle = client.get_workflow_handle(
        allowance_workflow_id(subscription_id), result_type=AllowanceState
    )
    try:
        return await handle.query(SubscriptionAllowanceWorkflow.state)
    except Exception:  # noqa: BLE001 not started yet
        return None


def periods(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["metadata"]["period_start"] for e in events)


async def test_runs_are_rebuilt_from_polar_and_grant_nothing_twice(
    rig: Rig, temporal_of: Any
) -> None:
    standin = rig.standin
    client = await temporal_of()

    # 1. An order granted through the webhook, its run completed.
    granted = standin.create_customer()["id"]
    placed = standin.create_paid_order(granted, CREDIT_PRODUCT_ID)
    assert placed["delivery"]["status_code"] == 202, placed["delivery"]
    await client.get_workflow_handle(order_workflow_id(placed["order"]["id"])).result()
    assert len(rig.order_events(granted)) == 1

    # 2. Yearly subscriptions with a monthly allowance, started about a month back on Polar's
    # clock: the first month is granted at once, the second falls due LEAD from now.
    due = datetime.now(UTC).replace(microsecond=0) + LEAD
    anchor = MONTH.start(due, -1)
    if MONTH.start(anchor, 1) != due:
        # On the 29th-31st after a shorter month no start is one month before: the second
        # month would be due days ago (months are clamped at their end, as billing does).
        pytest.skip(f"no subscription start is exactly one month before {stamp(due)}")
    standin.clock_set(stamp(anchor))
    running_customer = standin.create_customer()["id"]
    first_paid = [standin.subscribe(running_customer, YEARLY_PRODUCT_ID)]
    running = first_paid[0]["subscription"]
    assert stamp(datetime.fromisoformat(running["started_at"])) == stamp(anchor)
    await until(
        lambda: _granted_once(client, running["id"]), "the running subscription's first month"
    )

    # A third one ended before the loss (revoked): its run ended with its first month.
    ended_customer = standin.create_customer()["id"]
    first_paid.append(standin.subscribe(ended_customer, YEARLY_PRODUCT_ID))
    ended = first_paid[-1]["subscription"]
    await until(lambda: _granted_once(client, ended["id"]), "the ended subscription's month")
    standin.subscription_action(ended["id"], "revoke")
    await asyncio.wait_for(
        client.get_workflow_handle(allowance_workflow_id(ended["id"])).result(), SETTLE_SECONDS
    )

    # 3. Webhooks lost (no endpoint): a subscription Temporal never saw, and (days later on
    # Polar's clock) a paid order.
    standin.admin("POST", "/admin/webhook-target", {"url": None, "secret": None})
    unseen_customer = standin.create_customer()["id"]
    first_paid.append(standin.subscribe(unseen_customer, YEARLY_PRODUCT_ID))
    unseen = first_paid[-1]["subscription"]
    standin.clock_set(stamp(anchor + timedelta(days=5)))
    missed = standin.create_customer()["id"]
    missed_order = standin.create_paid_order(missed, CREDIT_PRODUCT_ID)["order"]
    standin.set_webhook_target(rig.standin.webhook_url, WEBHOOK_SECRET)

    # 4. An order in flight: its webhook started the run, but no worker ran it.
    rig.stop_worker()
    in_flight = standin.create_customer()["id"]
    sent = standin.create_paid_order(in_flight, CREDIT_PRODUCT_ID)
    assert sent["delivery"]["body"]["status"] == "started", sent["delivery"]
    described = await client.get_workflow_handle(order_workflow_id(sent["order"]["id"])).describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert rig.order_events(in_flight) == [] and rig.order_events(missed) == []
    assert rig.allowance_events(unseen_customer) == []

    # 5. Temporal is lost: its database deleted, an empty server on the same port.
    rig.lose_temporal()
    client = await temporal_of()
    assert [w async for w in client.list_workflows()] == []
    rig.start_worker()

    # 6. Recover, 27 days back: the missed and the in-flight orders are in the window (the
    # subscriptions' first orders and the first order are older), their runs restarted; the
    # two live subscriptions' allowance runs back, paid by their standing (their periods
    # began before the window); none for the ended one.
    report = rig.recover("27d")
    assert report["status"] == "completed" and report["complete"], report
    assert (report["orders"], report["orders_started"], report["orders_already_running"]) == (
        2,
        2,
        0,
    ), report
    assert (report["subscriptions"], report["allowances_started"]) == (2, 2), report
    assert report["allowances_told_paid"] == 0, report

    # Every order granted exactly once: the missed one and the one in flight now, the one
    # granted before still once.
    for order_id in (missed_order["id"], sent["order"]["id"]):
        await asyncio.wait_for(
            client.get_workflow_handle(order_workflow_id(order_id)).result(), SETTLE_SECONDS
        )
    for customer, order_id in (
        (granted, placed["order"]["id"]),
        (missed, missed_order["id"]),
        (in_flight, sent["order"]["id"]),
    ):
        [event] = rig.order_events(customer)
        assert event["metadata"]["units"] == -PACK_UNITS
        assert event["metadata"]["order_id"] == order_id

    # 7. The allowance runs go on: the second month is granted once (on its timer, or at once
    # when the recovery ended after it fell due), and each run then waits for the third.
    third = stamp(MONTH.start(anchor, 2))
    for subscription in (running, unseen):
        state = await until(
            lambda s=subscription["id"]: _waiting_for(client, s, third),
            f"subscription {subscription['id']}: the second month",
            seconds=SETTLE_SECONDS + LEAD.total_seconds(),
        )
        assert state.status == "active"
    # The month granted before the loss is not granted again; the unseen subscription's
    # first month was due when the recovery ran (unless the machine took longer than LEAD).
    assert periods(rig.allowance_events(running_customer)) == [
        stamp(anchor),
        stamp(MONTH.start(anchor, 1)),
    ]
    unseen_periods = periods(rig.allowance_events(unseen_customer))
    assert unseen_periods[-1] == stamp(MONTH.start(anchor, 1))
    assert unseen_periods in ([stamp(anchor), stamp(MONTH.start(anchor, 1))], unseen_periods[-1:])
    assert periods(rig.allowance_events(ended_customer)) == [stamp(anchor)]
    with pytest.raises(RPCError):  # no run for it
        await client.get_workflow_handle(allowance_workflow_id(ended["id"])).describe()
    for customer in (running_customer, unseen_customer):
        events = rig.allowance_events(customer)
        assert all(e["metadata"]["units"] == -MONTHLY for e in events)
        assert len({e["external_id"] for e in events}) == len(events)

    # 8. A second recovery, reaching further back, changes nothing in Polar: the first order
    # and the subscriptions' first orders are restarted (their grants are Polar's duplicates,
    # or none), the paid orders reach the running allowance runs, and the ended
    # subscription's old order starts no run for it.
    before = standin.events()
    totals = {
        s["id"]: (await allowance_state(client, s["id"])).grants_total for s in (running, unseen)
    }
    again = rig.recover("60d")
    assert (again["orders_started"], again["orders_already_running"]) == (4, 2), again
    assert (again["allowances_started"], again["allowances_already_running"]) == (0, 2), again
    assert again["allowances_told_paid"] == 2, again
    first_orders = [placed["order"]["id"], *(made["order"]["id"] for made in first_paid)]
    for order_id in first_orders:
        await asyncio.wait_for(
            client.get_workflow_handle(order_workflow_id(order_id)).result(), SETTLE_SECONDS
        )
    with pytest.raises(RPCError):
        await client.get_workflow_handle(allowance_workflow_id(ended["id"])).describe()
    for subscription in (running, unseen):
        # A query sees every signal delivered before it, handled: the recovery's messages
        # started no grant (none pending) and changed nothing the run shows.
        handle = client.get_workflow_handle(allowance_workflow_id(subscription["id"]))
        state = await handle.query(SubscriptionAllowanceWorkflow.state)
        assert (state.grants_total, state.next_grant_at) == (totals[subscription["id"]], third)
        assert not (await handle.describe()).raw_description.pending_activities
    assert standin.events() == before
    # Polar's customers' emails and names never reach a history.
    for workflow_id in (
        report["workflow_id"],
        allowance_workflow_id(running["id"]),
        allowance_workflow_id(unseen["id"]),
    ):
        history = (await client.get_workflow_handle(workflow_id).fetch_history()).to_json()
        assert "@example.com" not in history and "Test Buyer" not in history


async def _granted_once(client: Client, subscription_id: str) -> bool:
    state = await allowance_state(client, subscription_id)
    return state is not None and state.grants_total == 1


async def _waiting_for(client: Client, subscription_id: str, next_at: str) -> Any:
    state = await allowance_state(client, subscription_id)
    return state if state is not None and state.next_grant_at == next_at else None
