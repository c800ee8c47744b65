"""`python -m tools.standin <command>`: the operator CLI, run as a subprocess against a real
stand-in that delivers its webhooks to a local receiver."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.standin.conftest import WEBHOOK_SECRET, WebhookReceiver
from tests.support.net import free_port
from tests.support.standin import REPO_ROOT, StandinProcess
from tools.standin import cli
from tools.standin.__main__ import _parser
from tools.standin.seed import DEMO_METER_ID, DEMO_PRODUCT_ID

CLI_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def receiver_for_cli() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, receiver_for_cli: WebhookReceiver
) -> Iterator[StandinProcess]:
    """A stand-in of this module's own, with no balance lag, delivering to the receiver."""
    process = StandinProcess(
        tmp_path_factory.mktemp("standin-cli") / "standin.sqlite3",
        webhook_url=receiver_for_cli.url,
        webhook_secret=WEBHOOK_SECRET,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def _no_leftover_cli_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "target" in request.fixturenames:
        request.getfixturevalue("target").clear_faults()


def run_cli(
    *args: str, standin: StandinProcess | None = None, url: str | None = None, token: str = ""
) -> subprocess.CompletedProcess[str]:
    connection: list[str] = []
    if standin is not None:
        connection = ["--url", standin.base_url, "--token", token or standin.token]
    elif url is not None:
        connection = ["--url", url]
    return subprocess.run(
        [sys.executable, "-m", "tools.standin", *args, *connection],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def ok(*args: str, standin: StandinProcess) -> str:
    done = run_cli(*args, standin=standin)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    assert done.stderr == ""
    return done.stdout


def first_id(output: str) -> str:
    return output.split()[0]


def ingest(standin: StandinProcess, customer_id: str, units: int) -> dict:
    response = httpx.post(
        f"{standin.base_url}/v1/events/ingest",
        headers={"Authorization": f"Bearer {standin.token}"},
        json={
            "events": [
                {
                    "name": "api_usage",
                    "customer_id": customer_id,
                    "external_id": f"cli-test-{uuid.uuid4().hex}",
                    "metadata": {"units": units},
                }
            ]
        },
    )
    return {"status": response.status_code}


# -- customers, orders, balances -----------------------------------------------------------
def test_create_customer_buy_and_read_the_balance(
    target: StandinProcess, receiver_for_cli: WebhookReceiver
):
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    created = ok("customer", "create", "--email", email, "--name", "Ada Lovelace", standin=target)
    customer_id = first_id(created)
    assert target.admin("GET", f"/v1/customers/{customer_id}")["email"] == email
    # Never a customer's email or name in the short output.
    assert email not in created and "Ada" not in created
    listed = ok("customer", "list", standin=target)
    assert customer_id in listed and email not in listed

    seen_before = len(receiver_for_cli.deliveries)
    bought = ok("buy", customer_id, standin=target)
    order_line, delivery_line = bought.splitlines()[:2]
    order_id = order_line.split()[1]
    assert order_line.startswith(f"order {order_id}  paid  purchase  amount 1900 usd")
    assert f"customer {customer_id}  product {DEMO_PRODUCT_ID}" in order_line
    assert delivery_line.strip().startswith("webhook order.paid -> 200 (msg_")
    delivered = receiver_for_cli.deliveries[seen_before:]
    assert len(delivered) == 1
    assert json.loads(delivered[0]["body"])["data"]["id"] == order_id
    assert order_id in ok("orders", "--customer", customer_id, standin=target)

    balance = ok("balance", customer_id, standin=target)
    assert "consumed 0  credited 0  balance 0  last recompute" in balance
    # A grant as the service makes it: a negative event, so the balance goes up.
    assert ingest(target, customer_id, -10) == {"status": 200}
    ok("meter", "credit", customer_id, "--units", "5", standin=target)
    balance = ok("balance", customer_id, standin=target)
    assert "consumed -10  credited 5  balance 15  last recompute 20" in balance

    events = ok("events", "--customer", customer_id, standin=target)
    names = [line.split()[2] for line in events.splitlines()]
    assert names == ["api_usage", "meter.credited"]
    assert "units -10" in events and f"meter {DEMO_METER_ID}" in events

    ok("meter", "reset", customer_id, standin=target)
    assert "consumed 0  credited 0  balance 0" in ok("balance", customer_id, standin=target)


def test_buy_without_delivery_then_send_the_webhook_by_hand(
    target: StandinProcess, receiver_for_cli: WebhookReceiver
):
    customer_id = first_id(ok("customer", "create", standin=target))
    seen_before = len(receiver_for_cli.deliveries)
    bought = ok("buy", customer_id, DEMO_PRODUCT_ID, "--no-deliver", standin=target)
    order_id = bought.split()[1]
    assert "no webhook sent" in bought
    assert len(receiver_for_cli.deliveries) == seen_before

    sent = ok("webhook", "send", order_id, "--webhook-id", "msg_cli_same", standin=target)
    assert sent.strip() == "order.paid -> 200 (msg_cli_same)"
    again = ok("webhook", "send", order_id, "--webhook-id", "msg_cli_same", standin=target)
    assert again == sent
    ids = [d["headers"]["webhook-id"] for d in receiver_for_cli.deliveries[seen_before:]]
    assert ids == ["msg_cli_same", "msg_cli_same"]


def test_products_and_meters_are_created_and_listed(target: StandinProcess):
    meter = ok("meter", "create", "Exports", "--event-name", "exports", standin=target)
    meter_id = first_id(meter)
    assert meter.strip() == f"{meter_id}  'Exports'  event exports  sum(units)"
    assert meter_id in ok("meter", "list", standin=target)
    assert DEMO_METER_ID in ok("meter", "list", standin=target)

    one_time = ok("product", "create", "Credits pack", "--price", "900", standin=target)
    assert one_time.split("  ")[1:] == ["'Credits pack'", "price 900 usd", "one-time\n"]
    plan = ok("product", "create", "Pro plan", "--price", "2900", "--interval", "year",
              standin=target)  # fmt: skip
    assert "'Pro plan'  price 2900 usd  every 1 year" in plan
    listed = ok("product", "list", standin=target)
    for product_id in (first_id(one_time), first_id(plan), DEMO_PRODUCT_ID):
        assert product_id in listed


def test_json_prints_the_servers_answer(target: StandinProcess):
    customer = json.loads(ok("customer", "create", "--json", standin=target))
    bought = json.loads(ok("buy", customer["id"], "--json", standin=target))
    assert bought["order"]["customer_id"] == customer["id"]
    assert bought["delivery"]["status_code"] == 200
    meters = json.loads(ok("balance", customer["id"], "--json", standin=target))
    assert meters["items"][0]["meter_id"] == DEMO_METER_ID
    faults = json.loads(ok("fault", "list", "--json", standin=target))
    assert faults == {"faults": []}


# -- faults ----------------------------------------------------------------------------------
def test_fault_add_list_clear_changes_what_the_server_does(target: StandinProcess):
    customer_id = first_id(ok("customer", "create", standin=target))
    added = ok("fault", "add", "events.ingest", "--count", "2", standin=target)
    assert added.strip() == "events.ingest  status 503  2 left"
    ok("fault", "add", "events.ingest", "--status", "429", "--retry-after", "7", standin=target)
    assert target.admin("GET", "/admin/faults")["faults"][1]["retry_after"] == 7
    assert ok("fault", "list", standin=target).splitlines() == [
        "events.ingest  status 503  2 left",
        "events.ingest  status 429  1 left  retry-after 7",
    ]
    assert ingest(target, customer_id, -1) == {"status": 503}
    assert "events.ingest  status 503  1 left" in ok("fault", "list", standin=target)
    assert ok("fault", "clear", standin=target).strip() == "all faults cleared"
    assert ok("fault", "list", standin=target).strip() == "no fault armed"
    assert target.admin("GET", "/admin/faults") == {"faults": []}
    assert ingest(target, customer_id, -1) == {"status": 200}
    counted = ok("requests", "events.ingest", standin=target)
    assert "events.ingest  503  x1" in counted and "events.ingest  200  x" in counted

    # A latency-only fault answers normally, just late.
    latency = ok("fault", "add", "customers.list", "--latency-ms", "50", standin=target)
    assert latency.strip() == "customers.list  1 left  latency ms 50"


def test_fault_add_refuses_a_status_the_server_does_not_inject(target: StandinProcess):
    done = run_cli("fault", "add", "events.ingest", "--status", "418", standin=target)
    assert done.returncode == 1
    assert done.stderr.startswith("tools.standin fault: cannot add a fault: the stand-in answered")
    assert "status must be one of" in done.stderr
    assert target.admin("GET", "/admin/faults") == {"faults": []}


# -- subscriptions, refunds, the clock -----------------------------------------------------
def test_subscription_lifecycle_commands(target: StandinProcess, receiver_for_cli: WebhookReceiver):
    customer_id = first_id(ok("customer", "create", standin=target))
    product_id = first_id(
        ok(
            "product",
            "create",
            "Monthly",
            "--price",
            "2900",
            "--interval",
            "month",
            "--metered-meter",
            DEMO_METER_ID,
            standin=target,
        )  # fmt: skip
    )
    seen_before = len(receiver_for_cli.deliveries)
    started = ok("subscribe", customer_id, product_id, "--seats", "2", standin=target).splitlines()
    subscription_id = started[0].split()[1]
    assert started[0].startswith(f"subscription {subscription_id}  active  every 1 month")
    assert "amount 2900 usd" in started[0] and "seats 2" in started[0]
    assert "subscription_create  amount 2900 usd" in started[1]
    webhooks = [line.split()[1] for line in started[2:]]
    assert webhooks[0] == "subscription.created" and webhooks[-1] == "order.paid"
    assert all(" -> 200 (msg_" in line for line in started[2:])
    assert len(receiver_for_cli.deliveries) - seen_before == len(webhooks)

    renewed = ok("renew", subscription_id, standin=target)
    assert "paid  subscription_cycle  amount 2900 usd" in renewed
    assert "webhook subscription.cycled -> 200" in renewed

    team_id = first_id(
        ok("product", "create", "Team", "--price", "4900", "--interval", "month", standin=target)
    )
    updated = ok("update", subscription_id, "--product", team_id, "--seats", "4", standin=target)
    assert updated.startswith(f"subscription {subscription_id}  active  every 1 month")
    assert "amount 4900 usd" in updated and f"product {team_id}  seats 4" in updated
    assert [line.split()[1] for line in updated.splitlines()[1:]] == ["subscription.updated"]
    assert "webhook subscription.updated -> 200 (msg_" in updated
    assert "seats 2" in ok("update", subscription_id, "--seats", "2", standin=target)
    nothing = run_cli("update", subscription_id, standin=target)
    assert nothing.returncode == 1
    assert (
        nothing.stderr
        == "tools.standin update: update needs --product PRODUCT_ID, --seats N or both\n"
    )

    canceled = ok("cancel", subscription_id, standin=target)
    assert canceled.startswith(f"subscription {subscription_id}  active")
    assert "cancels at period end" in canceled
    assert "webhook subscription.canceled -> 200" in canceled
    uncanceled = ok("uncancel", subscription_id, standin=target)
    assert "cancels at period end" not in uncanceled
    assert "webhook subscription.uncanceled -> 200" in uncanceled

    failed = ok("fail-renewal", subscription_id, standin=target)
    assert failed.startswith(f"subscription {subscription_id}  past_due")
    assert "pending  subscription_cycle" in failed
    retried = ok("retry-payment", subscription_id, standin=target)
    assert retried.startswith(f"subscription {subscription_id}  active")
    assert "paid  subscription_cycle" in retried

    assert f"{subscription_id}  paused" in ok("pause", subscription_id, standin=target)
    assert f"{subscription_id}  active" in ok("resume", subscription_id, standin=target)
    revoked = ok("revoke", subscription_id, standin=target)
    assert revoked.startswith(f"subscription {subscription_id}  canceled")
    assert "webhook subscription.revoked -> 200" in revoked

    listed = ok("subscriptions", "--customer", customer_id, standin=target).splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"subscription {subscription_id}  canceled")
    orders = ok("orders", "--customer", customer_id, standin=target)
    assert orders.count("subscription_cycle") == 2 and orders.count("subscription_create") == 1

    again = run_cli("uncancel", subscription_id, standin=target)
    assert again.returncode == 1
    assert again.stderr.startswith(
        "tools.standin uncancel: cannot uncancel a subscription: the stand-in answered 409: "
    )


def test_refund_in_part_then_in_full(target: StandinProcess):
    customer_id = first_id(ok("customer", "create", standin=target))
    order_id = ok("buy", customer_id, standin=target).split()[1]
    part = ok("refund", order_id, "--amount", "500", standin=target)
    assert part.startswith(f"order {order_id}  partially_refunded  purchase  amount 1900 usd")
    assert "refunded 500" in part and "webhook order.refunded -> 200" in part
    rest = ok("refund", order_id, standin=target)
    assert rest.startswith(f"order {order_id}  refunded  purchase") and "refunded 1900" in rest
    refund = json.loads(ok("orders", "--customer", customer_id, "--json", standin=target))
    assert refund["items"][0]["refunded_amount"] == 1900
    too_much = run_cli("refund", order_id, "--amount", "1", standin=target)
    assert too_much.returncode == 1 and "cannot refund an order" in too_much.stderr


def test_advancing_the_clock_renews_what_falls_due(
    fresh_standin, receiver_for_cli: WebhookReceiver
):
    standin = fresh_standin(webhook_url=receiver_for_cli.url, webhook_secret=WEBHOOK_SECRET)
    customer_id = first_id(ok("customer", "create", standin=standin))
    product_id = first_id(ok("product", "create", "Weekly", "--interval", "week", standin=standin))
    subscription_id = ok("subscribe", customer_id, product_id, standin=standin).split()[1]
    before = ok("clock", standin=standin)
    assert before.startswith("now 20") and "mode real" in before

    advanced = ok("clock", "advance", "--days", "8", standin=standin)
    assert "1 renewal(s) fell due:" in advanced
    assert f"subscription {subscription_id}  active  every 1 week" in advanced
    assert "paid  subscription_cycle" in advanced
    assert ok("clock", "advance", "--seconds", "60", standin=standin).count("\n") == 1

    real = run_cli("clock", "set", "--at", "2030-01-01T00:00:00Z", standin=standin)
    assert real.returncode == 1
    assert "answered 409: the clock is real: start with --clock manual" in real.stderr


# -- webhooks, rate limit ----------------------------------------------------------------------
def test_webhook_target_mode_and_deliveries(fresh_standin, receiver_for_cli: WebhookReceiver):
    standin = fresh_standin(webhook_url=receiver_for_cli.url, webhook_secret=WEBHOOK_SECRET)
    shown = ok("webhook", "target", standin=standin)
    assert f"url {receiver_for_cli.url}" in shown
    assert "enabled True  consecutive_failed_events 0" in shown

    assert ok("webhook", "mode", standin=standin).strip() == (
        "duplicate 0  reorder False  delay_ms 0"
    )
    assert ok("webhook", "mode", "--duplicate", "1", standin=standin).strip() == (
        "duplicate 1  reorder False  delay_ms 0"
    )
    # Options not given keep their value.
    assert ok("webhook", "mode", "--reorder", standin=standin).strip() == (
        "duplicate 1  reorder True  delay_ms 0"
    )
    ok("webhook", "mode", "--duplicate", "0", "--in-order", standin=standin)

    customer_id = first_id(ok("customer", "create", standin=standin))
    order_id = ok("buy", customer_id, standin=standin).split()[1]
    assert order_id
    deliveries = ok("deliveries", standin=standin).splitlines()
    assert len(deliveries) == 1
    assert deliveries[0].startswith("order.paid -> 200 (event ") and "  ok  at 20" in deliveries[0]


def test_rate_limit_is_shown_and_set(fresh_standin):
    standin = fresh_standin()
    assert ok("rate-limit", standin=standin).startswith("per_minute 500")
    assert ok("rate-limit", "--per-minute", "2", standin=standin).startswith("per_minute 2")
    ok("customer", "list", standin=standin)
    ok("customer", "list", standin=standin)
    limited = run_cli("customer", "list", standin=standin)
    assert limited.returncode == 1
    assert "cannot list customers: rate limited (429, retry-after" in limited.stderr


def test_rate_hang_and_drop_faults_are_armed(target: StandinProcess):
    ok("fault", "add", "events.ingest", "--rate", "0.25", standin=target)
    ok("fault", "add", "customer_meters.list", "--hang-seconds", "2", standin=target)
    ok("fault", "add", "orders.list", "--drop", standin=target)
    assert ok("fault", "list", standin=target).splitlines() == [
        "events.ingest  status 503  rate 0.25 until cleared",
        "customer_meters.list  1 left  hang 2 s",
        "orders.list  1 left  drop",
    ]
    faults = target.admin("GET", "/admin/faults")["faults"]
    assert [f["rate"] for f in faults] == [0.25, None, None]
    assert faults[1]["hang"] and faults[2]["drop"]


# -- errors ----------------------------------------------------------------------------------
def test_unreachable_stand_in_is_one_line_and_exit_1():
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("balance", "some-customer", url=url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert f"no stand-in at {url}: start it with `make run`" in done.stderr
    assert "python -m tools.standin serve" in done.stderr


def test_server_errors_are_named(target: StandinProcess):
    done = run_cli("buy", "no-such-customer", standin=target)
    assert done.returncode == 1
    assert done.stderr == (
        "tools.standin buy: cannot create a paid order: the stand-in answered 404: "
        "customer_id and product_id must name existing rows\n"
    )
    wrong = run_cli("fault", "list", standin=target, token="wrong-token")
    assert wrong.returncode == 1
    assert "refused the token (401): pass --token or set STANDIN_TOKEN" in wrong.stderr


def test_a_route_the_server_lacks_is_named_as_unsupported():
    request = httpx.Request("POST", "http://127.0.0.1:1/admin/clock/advance")
    missing = httpx.Response(404, json={"detail": "Not Found"}, request=request)
    message = cli._http_error("advance the clock", "POST", "/admin/clock/advance", missing)
    assert message.startswith("this stand-in does not support advance the clock")
    # A 404 about a row, not a route, keeps the server's detail.
    row = httpx.Response(
        404, json={"error": "ResourceNotFound", "detail": "Not found"}, request=request
    )
    assert cli._http_error("refund an order", "POST", "/admin/orders/x/refund", row) == (
        "cannot refund an order: the stand-in answered 404: Not found"
    )


# -- help ------------------------------------------------------------------------------------
def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_commands(sub, (*prefix, name))
            return
    yield prefix


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]):
    leaves = [c for c in _leaf_commands(_parser()) if c != ("serve",)]
    assert len(leaves) > 25
    for command in leaves:
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args([*command, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "example:\n  python -m tools.standin " + " ".join(command) in text, command
        assert "--url" in text and "--json" in text


def test_top_level_help_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "tools.standin", "--help"],
        cwd=Path(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0
    for command in ("serve", "customer", "buy", "balance", "fault", "webhook"):
        assert f"\n    {command} " in done.stdout
