"""Operators by name, over HTTP against a real API process (named tokens from all three
sources), the session's worker, stand-in and Temporal: a read token is refused (403) on every
route that changes something, each manual grant, revoke, rerun, backfill and reconciliation
records the token's name (in its run's memo, in GET and in the CLI), and a page token the API
never issued is refused at once (422, CLI exit 2), told apart from Temporal being down (503,
CLI exit 5)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from temporalio.client import Client
from typer.testing import CliRunner

from polar_credits.api.app import create_app
from polar_credits.api.operator.auth import require_operator
from polar_credits.cli import app as cli_app
from polar_credits.identity import order_workflow_id
from polar_credits.settings import Settings
from tests.conftest import CREDIT_PRODUCT_ID, OPERATOR_TOKEN, WEBHOOK_SECRET, Stack
from tests.e2e.test_operator_grants import eventually, new_customer, order_paid_body
from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.signing import polar_signed_headers
from tests.support.temporal import TemporalProcess

# alice (write) from CREDITS_OPERATOR_TOKENS, with ':' in her token; grafana (read) from
# CREDITS_OPERATOR_TOKENS_FILE; the session's CREDITS_OPERATOR_TOKEN is "operator" (write).
ALICE_TOKEN = "alice-" + "write:token:0123456789"
GRAFANA_TOKEN = "grafana-" + "read-token-0123456789"
ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
GRAFANA = {"Authorization": f"Bearer {GRAFANA_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
NO_TOKENS = {
    "CREDITS_OPERATOR_TOKEN": "",
    "CREDITS_OPERATOR_TOKENS": "",
    "CREDITS_OPERATOR_TOKENS_FILE": "",
}

# Routes that every request may reach without an operator token.
PUBLIC = {"/openapi.json", "/webhooks/polar", "/healthz", "/readyz", "/metrics"}
PUBLIC |= {"/docs", "/redoc", "/docs/assets"}
# A browser's CORS preflight carries no credentials: the codec routes answer it without a token.
PUBLIC_PREFLIGHTS = {"/codec/decode", "/codec/encode"}
# POSTs that change nothing, so a read token may call them: a rules preview grants nothing and
# reserves nothing; the payload codec's routes (issue 15 §3) only translate payloads.
READ_ONLY_POSTS = {"/rules/preview", "/codec/decode", "/codec/encode"}
PATH_VALUES = {"key": "walk-key-1", "workflow_id": "polar-credits-reconcile-walk"}


def tokens_file(directory: Path) -> Path:
    path = directory / "operators.toml"
    path.write_text(f'[[tokens]]\nname = "grafana"\nscope = "read"\ntoken = "{GRAFANA_TOKEN}"\n')
    return path


def api_env(stack: Stack, port: int, **extra: str) -> dict[str, str]:
    rules_path = stack.settings.credits_rules_file
    assert rules_path is not None
    return {
        "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "CREDITS_TASK_QUEUE": stack.settings.credits_task_queue,
        "CREDITS_VERIFY_TIMEOUT_SECONDS": str(stack.settings.credits_verify_timeout_seconds),
        "CREDITS_VERIFY_FIRST_CHECK_SECONDS": "0.5",
        "CREDITS_API_PORT": str(port),
        "CREDITS_RULES_FILE": str(rules_path),
        **extra,
    }


def start_api(stack: Stack, name: str, directory: Path, **env: str) -> ServiceProcess:
    """The API as its own process on the session's Temporal and task queue, with `env` added
    (operator tokens, timeouts), ready and logging to `directory`/api.log."""
    port = free_port()
    return ServiceProcess(
        name,
        ["-m", "api"],
        env=api_env(stack, port, **env),
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=directory / "api.log",
    ).start()


def url_of(api: ServiceProcess) -> str:
    return api.ready_url.removesuffix("/readyz")


@pytest.fixture(scope="module")
def named_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API with the three sources of operator tokens, on the session's task queue."""
    directory = tmp_path_factory.mktemp("named-api")
    api = start_api(
        stack,
        "api-named-operators",
        directory,
        CREDITS_OPERATOR_TOKEN=OPERATOR_TOKEN,
        CREDITS_OPERATOR_TOKENS=f"alice:write:{ALICE_TOKEN}",
        CREDITS_OPERATOR_TOKENS_FILE=str(tokens_file(directory)),
    )
    try:
        yield url_of(api)
    finally:
        api.stop()
    log = api.log()
    for token in (ALICE_TOKEN, GRAFANA_TOKEN, OPERATOR_TOKEN):
        assert token not in log, "an operator token reached the API's log"


def cli(api_url: str, token: str, *args: str) -> Any:
    env = {"CREDITS_API_URL": api_url, "CREDITS_OPERATOR_TOKEN": token}
    return CliRunner().invoke(cli_app, list(args), env={**os.environ, **env})


async def memo_of(stack: Stack, workflow_id: str) -> dict[str, Any]:
    description = await stack.temporal.get_workflow_handle(workflow_id).describe()
    return await description.memo()


# -- every route, by scope ----------------------------------------------------------------------


def operator_routes() -> list[tuple[str, str]]:
    """(method, path with values) of every route of the app that needs an operator token; and
    no route is left that needs none but is not PUBLIC, so a new route cannot escape."""
    settings = Settings(polar_webhook_secret=WEBHOOK_SECRET, credits_operator_token=OPERATOR_TOKEN)
    app = create_app(settings, temporal=object())  # type: ignore[arg-type]

    def calls(dependant: Any) -> list[Any]:
        found = []
        for sub in dependant.dependencies if dependant is not None else []:
            found += [sub.call, *calls(sub)]
        return found

    routes, unguarded = [], set()
    for route in iter_route_contexts(app.routes):
        if require_operator not in calls(getattr(route, "dependant", None)):
            if route.methods != {"OPTIONS"} or route.path not in PUBLIC_PREFLIGHTS:
                unguarded.add(route.path)
            continue
        path = route.path.format_map({**dict.fromkeys(route.param_convertors, "x1"), **PATH_VALUES})
        routes += [(method, path) for method in sorted(route.methods or ())]
    assert unguarded <= PUBLIC, f"routes with no operator token: {unguarded - PUBLIC}"
    assert len(routes) >= 10, routes
    return routes


def is_write(method: str, path: str) -> bool:
    return method not in {"GET", "HEAD"} and path not in READ_ONLY_POSTS


async def test_a_read_token_is_refused_on_every_write_route_and_accepted_on_reads(
    stack: Stack, named_api: str, http: httpx.AsyncClient
) -> None:
    routes = operator_routes()
    writes = [(m, p) for m, p in routes if is_write(m, p)]
    assert ("POST", "/grants") in writes and ("POST", "/reconcile") in writes
    assert ("POST", "/backfills") in writes and ("POST", "/orders/x1/rerun") in writes
    assert ("POST", "/grants/x1/revoke") in writes
    for method, path in routes:
        url = f"{named_api}{path}"
        read = await http.request(method, url, json={}, headers=GRAFANA)
        if is_write(method, path):
            assert read.status_code == 403, (method, path, read.text)
            assert "write token" in read.json()["detail"] and "grafana" in read.json()["detail"]
        else:
            assert read.status_code not in (401, 403), (method, path, read.text)
        for headers in ({}, {"Authorization": "Bearer not-a-token-0123456789"}, {"X": "y"}):
            refused = await http.request(method, url, json={}, headers=headers)
            assert refused.status_code == 401, (method, path, refused.text)
    # What the read token was refused started nothing.
    assert (await http.get(f"{named_api}/backfills/walk-key-1", headers=GRAFANA)).status_code == 404


async def test_with_no_token_configured_every_operator_route_is_off(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    port = free_port()
    api = ServiceProcess(
        "api-without-operators",
        ["-m", "api"],
        env=api_env(stack, port, **NO_TOKENS),
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=tmp_path / "api.log",
    ).start()
    try:
        for method, path in operator_routes():
            for headers in ({}, ALICE, OPERATOR):
                off = await http.request(
                    method, f"http://127.0.0.1:{port}{path}", json={}, headers=headers
                )
                assert off.status_code == 404, (method, path, off.text)
                assert "CREDITS_OPERATOR_TOKENS" in off.json()["detail"]
    finally:
        api.stop()


# -- who started it -----------------------------------------------------------------------------


async def test_a_manual_grant_and_its_revoke_record_who_started_each(
    stack: Stack, named_api: str, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    key = f"named-{uuid.uuid4().hex[:8]}"
    body = {
        "customer_id": customer_id,
        "meter": "api_calls",
        "units": 9,
        "reason": "goodwill",
        "idempotency_key": key,
    }
    refused = await http.post(f"{named_api}/grants", json=body, headers=GRAFANA)
    assert refused.status_code == 403
    made = await http.post(f"{named_api}/grants", json=body, headers=ALICE)
    assert made.status_code == 201, made.text
    grant_id = made.json()["id"]
    assert made.json()["started_by"] == "alice"
    assert (await memo_of(stack, grant_id))["operator"] == "alice"
    # The same request by another operator answers with alice's grant, still hers.
    again = await http.post(f"{named_api}/grants", json=body, headers=OPERATOR)
    assert (again.status_code, again.json()["started_by"]) == (200, "alice")
    shown = await eventually(
        lambda: http.get(f"{named_api}/grants/{grant_id}", headers=GRAFANA),
        lambda r: r.json()["status"] == "verified",
    )
    assert shown.json()["started_by"] == "alice"

    revoke_url = f"{named_api}/grants/{grant_id}/revoke"
    assert (await http.post(revoke_url, json={}, headers=GRAFANA)).status_code == 403
    revoked = await http.post(revoke_url, json={"units": 4}, headers=OPERATOR)
    assert revoked.status_code == 201, revoked.text
    revoke = revoked.json()
    assert (revoke["status"], revoke["started_by"]) == ("revoked", "operator")
    assert (await memo_of(stack, revoke["id"]))["operator"] == "operator"
    shown_revoke = await http.get(f"{named_api}/grants/{revoke['id']}", headers=GRAFANA)
    assert shown_revoke.json()["started_by"] == "operator"

    # The CLI, with the read token: it shows who; it may not revoke (exit 2, not 5).
    table = await asyncio.to_thread(cli, named_api, GRAFANA_TOKEN, "grants", "show", grant_id)
    assert table.exit_code == 0, table.output
    assert "started_by" in table.output and "alice" in table.output
    as_json = await asyncio.to_thread(
        cli, named_api, GRAFANA_TOKEN, "grants", "show", revoke["id"], "--json"
    )
    assert json.loads(as_json.output)["started_by"] == "operator"
    denied = await asyncio.to_thread(cli, named_api, GRAFANA_TOKEN, "grants", "revoke", grant_id)
    assert denied.exit_code == 2, denied.output
    assert "403" in denied.output and "write token" in denied.output


async def test_a_rerun_records_its_operator_and_a_webhook_run_none(
    stack: Stack, named_api: str, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    placed = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
    order_id = placed["order"]["id"]
    ghost = str(uuid.uuid4())  # a customer Polar does not know yet: the run fails with 422
    body = await order_paid_body(stack, order_id, customer_id=ghost)
    delivered = await http.post(
        f"{named_api}/webhooks/polar",
        content=body,
        headers=polar_signed_headers(WEBHOOK_SECRET, body),
    )
    assert delivered.status_code == 202, delivered.text
    run_id = order_workflow_id(order_id)
    failed = await eventually(
        lambda: http.get(f"{named_api}/grants/{run_id}", headers=GRAFANA),
        lambda r: r.json()["execution_status"] != "running",
    )
    assert failed.json()["status"] == "failed"
    assert failed.json()["started_by"] is None, "a webhook's run names no operator"

    new_customer(stack, id=ghost)
    rerun_url = f"{named_api}/orders/{order_id}/rerun"
    assert (await http.post(rerun_url, headers=GRAFANA)).status_code == 403
    rerun = await http.post(rerun_url, headers=ALICE)
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["started_by"] == "alice"
    assert (await memo_of(stack, run_id))["operator"] == "alice"
    detail = await eventually(
        lambda: http.get(f"{named_api}/grants/{run_id}", headers=GRAFANA),
        lambda r: r.json()["execution_status"] != "running",
    )
    assert (detail.json()["status"], detail.json()["started_by"]) == ("verified", "alice")
    shown = await asyncio.to_thread(cli, named_api, GRAFANA_TOKEN, "grants", "show", run_id)
    assert shown.exit_code == 0 and "alice" in shown.output, shown.output


async def test_a_backfill_records_its_operator(
    stack: Stack, named_api: str, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    key = f"named-{uuid.uuid4().hex[:8]}"
    body = {
        "key": key,
        "customer_ids": [customer_id],
        "meter": "api_calls",
        "units": 3,
        "reason": "launch gift",
    }
    refused = await http.post(f"{named_api}/backfills", json=body, headers=GRAFANA)
    assert refused.status_code == 403
    assert (await http.get(f"{named_api}/backfills/{key}", headers=GRAFANA)).status_code == 404
    started = await http.post(f"{named_api}/backfills", json=body, headers=ALICE)
    assert started.status_code == 202, started.text
    assert started.json()["started_by"] == "alice"
    assert (await memo_of(stack, started.json()["workflow_id"]))["operator"] == "alice"
    done = await eventually(
        lambda: http.get(f"{named_api}/backfills/{key}", headers=GRAFANA),
        lambda r: r.json()["status"] != "running",
    )
    assert (done.json()["status"], done.json()["started_by"]) == ("completed", "alice")
    status = await asyncio.to_thread(cli, named_api, GRAFANA_TOKEN, "backfill", "status", key)
    assert status.exit_code == 0 and "started_by" in status.output, status.output
    assert "alice" in status.output
    denied = await asyncio.to_thread(
        cli, named_api, GRAFANA_TOKEN, "backfill", "start", "--key", f"{key}-2",
        "--customer", customer_id, "--meter", "api_calls", "--units", "1", "--reason", "r",
    )  # fmt: skip
    assert denied.exit_code == 2, denied.output


async def test_a_reconciliation_records_its_operator(
    stack: Stack, named_api: str, http: httpx.AsyncClient
) -> None:
    assert (await http.post(f"{named_api}/reconcile", headers=GRAFANA)).status_code == 403
    started = await http.post(f"{named_api}/reconcile", headers=ALICE)
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["started_by"] == "alice"
    assert (await memo_of(stack, run["workflow_id"]))["operator"] == "alice"
    shown = await http.get(f"{named_api}/reconcile/{run['workflow_id']}", headers=GRAFANA)
    assert shown.status_code == 200 and shown.json()["started_by"] == "alice"

    now = await asyncio.to_thread(cli, named_api, OPERATOR_TOKEN, "reconcile", "now", "--json")
    assert now.exit_code == 0, now.output
    assert json.loads(now.output)["started_by"] == "operator"
    table = await asyncio.to_thread(cli, named_api, ALICE_TOKEN, "reconcile", "now")
    assert table.exit_code == 0 and "started_by" in table.output and "alice" in table.output
    denied = await asyncio.to_thread(cli, named_api, GRAFANA_TOKEN, "reconcile", "now")
    assert denied.exit_code == 2, denied.output


# -- page tokens --------------------------------------------------------------------------------


async def two_pages(http: httpx.AsyncClient, api_url: str, customer_id: str) -> dict[str, Any]:
    """The first page of one grant, of a customer with two."""
    params = {"customer_id": customer_id, "limit": 1}
    page = await eventually(
        lambda: http.get(f"{api_url}/grants", params=params, headers=GRAFANA),
        lambda r: r.status_code == 200 and r.json()["next_page_token"] is not None,
    )
    assert page.status_code == 200 and page.json()["next_page_token"], page.text
    return page.json()


async def test_a_page_token_the_api_never_issued_is_refused_at_once(
    stack: Stack, named_api: str, http: httpx.AsyncClient
) -> None:
    customer_id = new_customer(stack)
    for n in (1, 2):
        key = f"pages-{n}-{uuid.uuid4().hex[:8]}"
        body = {"customer_id": customer_id, "meter": "api_calls", "units": n}
        body |= {"reason": "pages", "idempotency_key": key}
        made = await http.post(f"{named_api}/grants", json=body, headers=ALICE)
        assert made.status_code == 201, made.text
    first = await two_pages(http, named_api, customer_id)
    issued = first["next_page_token"]
    url = f"{named_api}/grants"
    second = await http.get(
        url, params={"customer_id": customer_id, "limit": 1, "page_token": issued}, headers=GRAFANA
    )
    assert second.status_code == 200, second.text
    assert second.json()["grants"][0]["id"] != first["grants"][0]["id"]

    tampered = issued[:-2] + ("AA" if not issued.endswith("AA") else "BB")
    for page_token in ("@@@", "", "Z2FyYmFnZQ", "eyJ4IjoxfQ", tampered, "%%%not-base64"):
        refused = await http.get(
            url, params={"customer_id": customer_id, "page_token": page_token}, headers=GRAFANA
        )
        assert refused.status_code == 422, (page_token, refused.text)
        assert "page_token" in refused.json()["detail"]
    # Another API process (another replica) accepts a token this one issued.
    on_the_session_api = await http.get(
        f"{stack.api_url}/grants",
        params={"customer_id": customer_id, "limit": 1, "page_token": issued},
        headers=OPERATOR,
    )
    assert on_the_session_api.status_code == 200, on_the_session_api.text

    bad = await asyncio.to_thread(
        cli, named_api, GRAFANA_TOKEN, "grants", "list", "--customer", customer_id,
        "--page-token", "@@@",
    )  # fmt: skip
    assert bad.exit_code == 2, bad.output  # USAGE, not UNAVAILABLE (5)
    assert "page_token" in bad.output and "unavailable" not in bad.output.lower()


@pytest.fixture
def own_temporal(tmp_path: Path) -> Iterator[TemporalProcess]:
    process = TemporalProcess(tmp_path)
    try:
        yield process.start()
    finally:
        process.stop()


async def test_a_real_outage_still_answers_503_and_a_bad_token_still_422(
    own_temporal: TemporalProcess, tmp_path: Path
) -> None:
    port = free_port()
    api = ServiceProcess(
        "api-own-temporal",
        ["-m", "api"],
        env={
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TEMPORAL_ADDRESS": own_temporal.address,
            "CREDITS_TASK_QUEUE": "no-worker",
            "CREDITS_API_PORT": str(port),
            "CREDITS_RULES_FILE": "",
            **NO_TOKENS,
            "CREDITS_OPERATOR_TOKENS": f"grafana:read:{GRAFANA_TOKEN}",
        },
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=tmp_path / "api.log",
    ).start()
    api_url = f"http://127.0.0.1:{port}"
    try:
        client = await Client.connect(own_temporal.address)
        for n in range(3):  # runs no worker takes: listed all the same
            await client.start_workflow(
                "ManualGrantWorkflow", id=f"manual-grant-outage-{n}", task_queue="no-worker"
            )
        async with httpx.AsyncClient(timeout=60) as http:
            page = await eventually(
                lambda: http.get(f"{api_url}/grants", params={"limit": 1}, headers=GRAFANA),
                lambda r: r.status_code == 200 and r.json()["next_page_token"] is not None,
            )
            issued = page.json()["next_page_token"]
            assert issued, page.text

            own_temporal.stop()
            mistaken = await http.get(
                f"{api_url}/grants", params={"limit": 1, "page_token": "@@@"}, headers=GRAFANA
            )
            assert mistaken.status_code == 422, mistaken.text
        # A page token it did issue, while Temporal is down: the API's 503, the CLI's "try
        # again" (exit 5).
        unavailable = await asyncio.to_thread(
            cli, api_url, GRAFANA_TOKEN, "grants", "list", "--limit", "1", "--page-token", issued
        )
        assert unavailable.exit_code == 5, unavailable.output
        assert "503" in unavailable.output and "Temporal is unavailable" in unavailable.output
        usage = await asyncio.to_thread(
            cli, api_url, GRAFANA_TOKEN, "grants", "list", "--page-token", "@@@"
        )
        assert usage.exit_code == 2, usage.output
    finally:
        api.stop()
