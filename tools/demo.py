"""`make demo`: one simulated purchase through the running local stack, end to end.

A made-up customer buys the stand-in's "Starter pack"; the stand-in sends the signed
order.paid webhook to the API; the workflow grants the credits and verifies the balance.
The customer's email and name are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid

import httpx
from temporalio.client import WorkflowFailureError

from polar_credits.models.orders import OrderCreditsState
from polar_credits.settings import SettingsError, load_settings
from polar_credits.temporal_client import (
    TemporalUnreachable,
    connect_temporal,
    dev_server_env,
    resolve_temporal,
)
from tools.stack import (
    STANDIN_TOKEN,
    default_api_url,
    default_standin_url,
    default_temporal_address,
)
from tools.standin.seed import DEMO_METER_ID, DEMO_PRODUCT_ID, DEMO_PRODUCT_NAME

RESULT_TIMEOUT_SECONDS = 180.0


class DemoError(Exception):
    """The demo cannot go on; the message says what is wrong and what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="Simulate a purchase against the local stack started by `make run`.",
    )
    parser.add_argument("--api", default=default_api_url(), help="API base URL (%(default)s)")
    parser.add_argument(
        "--standin", default=default_standin_url(), help="Polar stand-in base URL (%(default)s)"
    )
    parser.add_argument(
        "--temporal",
        default=default_temporal_address(),
        help="Temporal gRPC host:port (%(default)s)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("TEMPORAL_NAMESPACE") or "default",
        help="Temporal namespace (%(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=RESULT_TIMEOUT_SECONDS,
        help="seconds to wait for the workflow result (%(default)s)",
    )
    return parser.parse_args(argv)


def check_running(http: httpx.Client, name: str, url: str) -> None:
    try:
        http.get(f"{url}/healthz", timeout=3.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise DemoError(
            f"The {name} does not answer at {url} ({type(exc).__name__}). Is the local stack "
            "running? Start it with `make run` in another terminal (without POLAR_ACCESS_TOKEN, "
            "so it starts the Polar stand-in)."
        ) from None


def standin_call(http: httpx.Client, method: str, url: str, **kwargs: object) -> dict:
    response = http.request(method, url, headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
                            **kwargs)  # fmt: skip
    if response.status_code >= 300:
        raise DemoError(
            f"The stand-in answered {response.status_code} to {method} {url}: {response.text[:500]}"
        )
    return response.json()


def simulate_purchase(http: httpx.Client, standin: str) -> tuple[str, dict, dict]:
    """Create a customer and a paid order; returns (customer id, order, webhook delivery)."""
    customer = standin_call(
        http,
        "POST",
        f"{standin}/admin/customers",
        json={"email": f"demo-{uuid.uuid4().hex[:12]}@example.com", "name": "Demo Customer"},
    )
    customer_id = customer["id"]
    print(f"Customer created in the stand-in: {customer_id}")
    answer = standin_call(
        http,
        "POST",
        f"{standin}/admin/orders",
        json={"customer_id": customer_id, "product_id": DEMO_PRODUCT_ID, "deliver": True},
    )
    return customer_id, answer["order"], answer.get("delivery") or {}


def standin_balance(http: httpx.Client, standin: str, customer_id: str) -> float | None:
    page = standin_call(
        http,
        "GET",
        f"{standin}/v1/customer-meters/",
        params={"customer_id": customer_id, "meter_id": DEMO_METER_ID},
    )
    items = page.get("items") or []
    return items[0].get("balance") if items else None


async def workflow_result(
    address: str, namespace: str, workflow_id: str, wait_seconds: float
) -> OrderCreditsState:
    try:
        settings = load_settings().model_copy(
            update={"temporal_address": address, "temporal_namespace": namespace}
        )
        # The local stack's dev server: no TLS or profile meant for another cluster.
        connection = resolve_temporal(settings, dev_server_env(os.environ))
        client = await connect_temporal(settings, connection=connection)
    except (SettingsError, TemporalUnreachable) as exc:
        raise DemoError(f"Cannot use Temporal: {exc}") from None
    handle = client.get_workflow_handle(workflow_id, result_type=OrderCreditsState)
    try:
        async with asyncio.timeout(wait_seconds):
            return await handle.result()
    except TimeoutError:
        raise DemoError(
            f"The workflow has not finished after {wait_seconds:.0f} s; it may still be verifying "
            "the balance. Follow it in the Temporal UI (link above)."
        ) from None
    except WorkflowFailureError as exc:
        raise DemoError(f"The workflow failed: {exc.cause or exc}") from None


def number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def run(args: argparse.Namespace) -> int:
    api, standin = args.api.rstrip("/"), args.standin.rstrip("/")
    with httpx.Client(timeout=30.0) as http:
        check_running(http, "API", api)
        check_running(http, "Polar stand-in", standin)
        customer_id, order, delivery = simulate_purchase(http, standin)
        print(f"Paid order {order['id']} for {DEMO_PRODUCT_NAME!r}; order.paid webhook sent")

        status_code = delivery.get("status_code")
        body = delivery.get("body") if isinstance(delivery.get("body"), dict) else {}
        print(f"API answered {status_code}: {body.get('status', 'no status')}")
        if not isinstance(status_code, int) or not 200 <= status_code < 300:
            raise DemoError(
                f"The API did not accept the webhook (answer: {status_code} "
                f"{delivery.get('body')}). See the API log in <data dir>/logs/api.log."
            )
        workflow_id = body.get("workflow_id")
        if not workflow_id:
            raise DemoError(f"The API's answer names no workflow: {body}")
        print(f"Workflow id: {workflow_id}")
        if body.get("ui_url"):
            print(f"Temporal UI: {body['ui_url']}")

        print(f"Waiting for the workflow result (up to {args.timeout:.0f} s)...", flush=True)
        state = asyncio.run(
            workflow_result(args.temporal, args.namespace, workflow_id, args.timeout)
        )
        print(f"Final status: {state.status}")
        if state.failure:
            print(f"Failure: {state.failure}")
        for grant in state.grants:
            print(f"Granted {grant.units} units of {grant.meter} (rule {grant.rule_id})")
        for check in state.verifications:
            print(f"Balance on meter {check.meter} (from the workflow): {number(check.balance)}")
        print(
            "Balance on meter api_calls (from the stand-in): "
            f"{number(standin_balance(http, standin, customer_id))}"
        )
    return 0 if state.status in ("verified", "granted") else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except DemoError as exc:
        print(f"polar-credits demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
