"""The webhook edge against hostile and odd input, one table: what each request is answered,
and that nothing started and nothing reached Polar, or (for what is tolerated) what did.

docs/operator/bad-input.md lists every case of CASES with its answer; a test keeps them equal.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from polar_credits.identity import order_workflow_id
from polar_credits.models.orders import OrderCreditsState
from tests.conftest import CREDIT_PRODUCT_ID, WEBHOOK_SECRET, Stack
from tests.e2e.test_pipeline import assert_no_run, grant_events, order_paid_body
from tests.support.signing import polar_signed_headers

BAD_INPUT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "operator" / "bad-input.md"
EMAIL, NAME = "edge.victim@example.com", "Victim Person"
MIB = 1024 * 1024


@dataclass
class Delivery:
    """One request: `order` is what the body holds, if it is an order."""

    body: bytes
    headers: dict[str, str]
    order_id: str | None
    method: str = "POST"
    chunked: bool = False

    def redelivered(self) -> Delivery:
        """The same body, signed afresh, as Polar signs each attempt."""
        headers = polar_signed_headers(WEBHOOK_SECRET, self.body)
        return Delivery(self.body, headers, self.order_id)


Build = Callable[["Order"], Delivery]


@dataclass
class Order:
    """A Polar order.paid payload for a fresh customer, ready to be bent."""

    customer_id: str
    template: dict[str, Any]
    data: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.data = copy.deepcopy(self.template)
        self.data["id"] = str(uuid.uuid4())
        self.data["customer_id"] = self.customer_id
        self.data["customer"]["id"] = self.customer_id

    def envelope(self, **top: Any) -> dict[str, Any]:
        return {
            "type": "order.paid",
            "timestamp": self.data["created_at"],
            "api_version": "2026-10",
            "data": self.data,
            **top,
        }

    def signed(self, body: bytes | None = None, **signing: Any) -> Delivery:
        body = json.dumps(self.envelope()).encode() if body is None else body
        headers = polar_signed_headers(WEBHOOK_SECRET, body, **signing)
        return Delivery(body, headers, self.data.get("id"))

    def changed(self, **changes: Any) -> Delivery:
        self.data.update(changes)
        return self.signed()

    def raw(self, text: str) -> Delivery:
        return self.signed(text.encode())


def sign_bytes(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """Standard Webhooks over raw bytes, for bodies that are not UTF-8."""
    webhook_id, ts = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    mac = hmac.new(secret.encode(), f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256)
    signature = "v1," + base64.b64encode(mac.digest()).decode()
    return {"webhook-id": webhook_id, "webhook-timestamp": ts, "webhook-signature": signature}


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


def replaced(headers: dict[str, str], **values: str) -> dict[str, str]:
    return {**headers, **{k.replace("_", "-"): v for k, v in values.items()}}


def nested(depth: int, opening: str, closing: str) -> str:
    return opening * depth + "1" + closing * depth


def signature_of_other_body(o: Order) -> Delivery:
    good = o.signed()
    o.data["net_amount"] = 1
    return Delivery(json.dumps(o.envelope()).encode(), good.headers, o.data["id"])


def deep_metadata(o: Order, depth: int) -> Delivery:
    body = json.dumps(o.envelope()).replace(
        '"metadata": {}', '"metadata": ' + nested(depth, '{"a":', "}"), 1
    )
    return o.raw(body)


def in_body(o: Order, old: str, new: str) -> Delivery:
    text = json.dumps(o.envelope())
    assert old in text
    return o.raw(text.replace(old, new, 1))


def chunked_oversized(o: Order) -> Delivery:
    delivery = o.signed(json.dumps(o.envelope(padding="x" * (MIB + 10))).encode())
    delivery.chunked = True
    return delivery


@dataclass(frozen=True)
class Case:
    """`answer`: the body's status for a 2xx; `run`: how the started run ends."""

    name: str
    build: Build
    status: int
    outcome: str  # the `outcome` label counted in polar_credits_webhooks_total
    answer: str | None = None
    run: str | None = None


CASES = [
    # -- signatures, headers, timestamps ------------------------------------------------
    Case("signed with another secret", lambda o: Delivery(
        (d := o.signed()).body, polar_signed_headers("whsec_not_the_secret", d.body), d.order_id
    ), 403, "bad_signature"),
    Case("no webhook headers at all", lambda o: Delivery(
        (d := o.signed()).body, {"content-type": "application/json"}, d.order_id
    ), 403, "bad_signature"),
    Case("no webhook-id header", lambda o: Delivery(
        (d := o.signed()).body, without(d.headers, "webhook-id"), d.order_id
    ), 403, "bad_signature"),
    Case("no webhook-signature header", lambda o: Delivery(
        (d := o.signed()).body, without(d.headers, "webhook-signature"), d.order_id
    ), 403, "bad_signature"),
    Case("signature that is not base64", lambda o: Delivery(
        (d := o.signed()).body, replaced(d.headers, webhook_signature="v1,@@not base64@@"),
        d.order_id,
    ), 403, "bad_signature"),
    Case("only a signature scheme other than v1", lambda o: Delivery(
        (d := o.signed()).body,
        replaced(d.headers, webhook_signature=d.headers["webhook-signature"].replace("v1,", "v2,")),
        d.order_id,
    ), 403, "bad_signature"),
    Case("valid signature of another body", signature_of_other_body, 403, "bad_signature"),
    Case("timestamp 6 minutes old", lambda o: o.signed(timestamp=time.time() - 360),
         403, "bad_signature"),
    Case("timestamp 6 minutes ahead", lambda o: o.signed(timestamp=time.time() + 360),
         403, "bad_signature"),
    Case("timestamp that is not a number", lambda o: Delivery(
        (d := o.signed()).body, replaced(d.headers, webhook_timestamp="yesterday"), d.order_id
    ), 403, "bad_signature"),
    # -- sizes -----------------------------------------------------------------------------
    Case("body over 1 MiB", lambda o: o.signed(
        json.dumps(o.envelope(padding="x" * (MIB + 10))).encode()
    ), 413, "too_large"),
    Case("body over 1 MiB, chunked (no Content-Length)", chunked_oversized, 413, "too_large"),
    Case("empty body, signed", lambda o: o.raw(""), 400, "bad_request"),
    # -- encodings -------------------------------------------------------------------------
    Case("body in Latin-1, not UTF-8", lambda o: Delivery(
        (b := json.dumps(o.envelope(note="café"), ensure_ascii=False).encode("latin-1")),
        sign_bytes(b), o.data["id"],
    ), 403, "bad_signature"),
    Case("body in UTF-16", lambda o: Delivery(
        (b := json.dumps(o.envelope()).encode("utf-16")), sign_bytes(b), o.data["id"]
    ), 403, "bad_signature"),
    Case("lone surrogate escape in the order id", lambda o: in_body(
        o, f'"id": "{o.data["id"]}"', '"id": "\\ud800abc"'
    ), 400, "bad_request"),
    Case("lone surrogate escape in a metadata key", lambda o: in_body(
        o, '"metadata": {}', '"metadata": {"\\udfff": "x"}'
    ), 400, "bad_request"),
    Case("UTF-8 byte-order mark before the JSON", lambda o: o.signed(
        b"\xef\xbb\xbf" + json.dumps(o.envelope()).encode()
    ), 202, "started", answer="started", run="verified"),
    Case("non-ASCII order id and metadata (accents, emoji)", lambda o: o.changed(
        id="commande-été-🎉-" + o.data["id"], metadata={"note": "für dich ✨"}
    ), 202, "started", answer="started", run="verified"),
    # -- JSON shapes -----------------------------------------------------------------------
    Case("truncated JSON", lambda o: o.signed(json.dumps(o.envelope()).encode()[:-7]),
         400, "bad_request"),
    Case("top level is an array", lambda o: o.raw(json.dumps([o.envelope()])),
         400, "bad_request"),
    Case("top level is a string", lambda o: o.raw('"order.paid"'), 400, "bad_request"),
    Case("no `type`", lambda o: o.raw(json.dumps({"data": o.data})), 400, "bad_request"),
    Case("`type` is a number", lambda o: o.raw(json.dumps({"type": 7, "data": o.data})),
         400, "bad_request"),
    Case("order.paid without `data`", lambda o: o.raw(json.dumps({"type": "order.paid"})),
         400, "bad_request"),
    Case("`data` is a list", lambda o: o.raw(json.dumps({"type": "order.paid", "data": []})),
         400, "bad_request"),
    Case("order without an id", lambda o: (o.data.pop("id"), o.signed())[1],
         400, "bad_request"),
    Case("order id is a number", lambda o: o.changed(id=12345), 400, "bad_request"),
    Case("customer_id is null", lambda o: o.changed(customer_id=None), 400, "bad_request"),
    Case("an amount is a string", lambda o: o.changed(net_amount="1000"), 400, "bad_request"),
    Case("an amount is a fraction", lambda o: o.changed(net_amount=10.5), 400, "bad_request"),
    Case("metadata is a list", lambda o: o.changed(metadata=["a"]), 400, "bad_request"),
    Case("arrays nested 100,000 deep", lambda o: o.raw(
        json.dumps(o.envelope(extra="@")).replace('"@"', nested(100_000, "[", "]"), 1)
    ), 400, "bad_request"),
    Case("metadata objects nested 100,000 deep", lambda o: deep_metadata(o, 100_000),
         400, "bad_request"),
    Case("metadata objects nested 40 deep", lambda o: deep_metadata(o, 40),
         400, "bad_request"),
    # -- numbers ---------------------------------------------------------------------------
    Case("an amount of 10^30", lambda o: o.changed(net_amount=10**30), 400, "bad_request"),
    Case("an integer of 5,000 digits", lambda o: in_body(
        o, '"net_amount": ', '"net_amount": ' + "9" * 5000 + ", \"was\": "
    ), 400, "bad_request"),
    Case("NaN and Infinity in fields the service does not read", lambda o: in_body(
        o, '"metadata": {}', '"metadata": {}, "score": NaN, "limit": Infinity'
    ), 202, "started", answer="started", run="verified"),
    # -- values the service does not know (yet) -------------------------------------------
    Case("an event type Polar does not have", lambda o: o.raw(
        json.dumps(o.envelope(type="order.teleported"))
    ), 202, "ignored", answer="ignored"),
    Case("an event type the service does not act on (order.created)", lambda o: o.raw(
        json.dumps(o.envelope(type="order.created"))
    ), 202, "ignored", answer="ignored"),
    Case("a billing_reason Polar adds later", lambda o: o.changed(
        billing_reason="subscription_gift"
    ), 202, "ignored", answer="ignored"),
    Case("an order status Polar adds later", lambda o: o.changed(status="settled"),
         202, "ignored", answer="ignored"),
    Case("a subscription status Polar adds later", lambda o: o.changed(
        subscription={"id": str(uuid.uuid4()), "status": "hibernating"}
    ), 202, "started", answer="started", run="verified"),
    Case("new fields everywhere, a new api_version and currency", lambda o: o.signed(
        json.dumps({**o.envelope(api_version="2031-01", hologram=True),
                    "data": {**o.data, "currency": "xau", "loyalty": {"tier": 3}}}).encode()
    ), 202, "started", answer="started", run="verified"),
    # -- identifiers -----------------------------------------------------------------------
    Case("order id of 1,500 characters", lambda o: o.changed(id="o" * 1476 + o.data["id"]),
         202, "started", answer="started", run="verified"),
    Case("order id with a newline, a carriage return and ANSI escapes", lambda o: o.changed(
        id=o.data["id"] + "\n2026-11-30 INFO forged line\r\x1b[31mred\x1b[0m"
    ), 202, "started", answer="started", run="verified"),
    Case("order id shaped like a path and a query", lambda o: o.changed(
        id="../../namespaces/x/" + o.data["id"] + "?a=b#c"
    ), 202, "started", answer="started", run="verified"),
    Case("order id over 4,096 characters", lambda o: o.changed(id="o" * 5000),
         200, "refused", answer="refused"),
    Case("customer id over 2 KB", lambda o: o.changed(customer_id="c" * 2100),
         200, "refused", answer="refused"),
    Case("product id over 2 KB", lambda o: o.changed(product_id="p" * 2100),
         200, "refused", answer="refused"),
    Case("900 KB of non-ASCII metadata under keys no rule names", lambda o: o.signed(
        json.dumps(o.envelope() | {"data": {**o.data, "metadata": {
            f"k{i}": "é" * 450 for i in range(1000)
        }}}, ensure_ascii=False).encode()
    ), 202, "started", answer="started", run="verified"),
    Case("a rule's metadata key with a value over 500 characters", lambda o: o.changed(
        metadata={"campaign": "l" * 600}
    ), 200, "refused", answer="refused"),
    # -- method ----------------------------------------------------------------------------
    Case("GET instead of POST", lambda o: Delivery(b"", {}, o.data["id"], method="GET"),
         405, "none"),
]  # fmt: skip


@pytest.fixture(scope="module")
async def template(stack: Stack) -> AsyncIterator[dict[str, Any]]:
    """A real paid order of the credit pack, as the stand-in (like Polar) serialises it,
    with personal data where Polar has it."""
    customer = stack.standin.create_customer(email=EMAIL, name=NAME)["id"]
    placed = stack.standin.create_paid_order(customer, CREDIT_PRODUCT_ID, deliver=False)
    yield json.loads(await order_paid_body(stack, placed["order"]["id"]))["data"]


async def send(http: httpx.AsyncClient, url: str, delivery: Delivery) -> httpx.Response:
    if delivery.method == "GET":
        return await http.get(url)
    if delivery.chunked:

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(delivery.body), 64 * 1024):
                yield delivery.body[start : start + 64 * 1024]

        return await http.post(url, content=chunks(), headers=delivery.headers)
    return await http.post(url, content=delivery.body, headers=delivery.headers)


def metric(metrics_text: str, sample: str) -> int:
    """The value of one Prometheus sample (`name{label="value"}`), 0 when absent."""
    line = next((x for x in metrics_text.splitlines() if x.startswith(sample + " ")), None)
    return int(float(line.rsplit(" ", 1)[1])) if line else 0


def counter(metrics_text: str, outcome: str) -> int:
    return metric(metrics_text, f'polar_credits_webhooks_total{{outcome="{outcome}"}}')


async def ingest_calls(stack: Stack) -> int:
    return len(stack.standin.requests("events.ingest"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_webhook_edge(
    stack: Stack, http: httpx.AsyncClient, template: dict[str, Any], case: Case
) -> None:
    customer_id = stack.standin.create_customer()["id"]
    delivery = case.build(Order(customer_id, template))
    url = f"{stack.api_url}/webhooks/polar"
    metrics_before = (await http.get(f"{stack.api_url}/metrics")).text
    ingests_before = await ingest_calls(stack)

    response = await send(http, url, delivery)

    assert response.status_code == case.status, response.text
    assert WEBHOOK_SECRET not in response.text and EMAIL not in response.text
    if case.outcome != "none":
        metrics_after = (await http.get(f"{stack.api_url}/metrics")).text
        assert counter(metrics_after, case.outcome) == counter(metrics_before, case.outcome) + 1
    if response.status_code >= 400:
        assert response.json()["detail"], "every refusal says why"
    else:
        assert response.json()["status"] == case.answer, response.text
        if case.answer != "started":
            assert response.json()["detail"] or case.answer == "ignored"

    if case.run is None:
        # Nothing started, nothing reached Polar.
        if delivery.order_id is not None and isinstance(delivery.order_id, str):
            await assert_no_run(stack, delivery.order_id)
        assert await ingest_calls(stack) == ingests_before
        assert grant_events(stack, customer_id) == []
        return

    answer = response.json()
    workflow_id = answer["workflow_id"]
    assert workflow_id == order_workflow_id(delivery.order_id)
    assert len(workflow_id.encode()) <= 214, "within Temporal's id limit whatever the order id"
    # The link opens this run's page: one path segment for the id, no query, no fragment.
    link = httpx.URL(answer["ui_url"])
    assert link.raw_path.decode().split("/")[1:] == [
        "namespaces",
        "default",
        "workflows",
        quote(workflow_id, safe=""),
    ]
    assert not link.query and not link.fragment
    handle = stack.temporal.get_workflow_handle(workflow_id, result_type=OrderCreditsState)
    try:
        state = await asyncio.wait_for(handle.result(), timeout=60)
    except WorkflowFailureError as err:  # pragma: no cover - shown when it happens
        raise AssertionError(f"{case.name}: run failed: {err.cause}") from err
    assert state.status == case.run
    assert state.order_id == delivery.order_id
    assert len(grant_events(stack, customer_id)) == 1, "granted exactly once"
    # A second delivery of the same order is a duplicate, whatever its id holds.
    again = await send(http, url, delivery.redelivered())
    assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text


async def test_unknown_values_are_counted_and_logged_for_operators(
    stack: Stack, http: httpx.AsyncClient, template: dict[str, Any]
) -> None:
    order = Order(stack.standin.create_customer()["id"], template)
    sample = 'polar_credits_webhook_unknown_values_total{field="billing_reason"}'

    def unknown_count(text: str) -> int:
        return metric(text, sample)

    before = unknown_count((await http.get(f"{stack.api_url}/metrics")).text)
    response = await send(
        http, f"{stack.api_url}/webhooks/polar", order.changed(billing_reason="subscription_gift")
    )
    assert response.status_code == 202
    assert "subscription_gift" in response.json()["detail"]
    after = unknown_count((await http.get(f"{stack.api_url}/metrics")).text)
    assert after == before + 1
    assert f"order {order.data['id']}: ignored, unknown billing_reason 'subscription_gift'" in (
        stack.api.log()
    )
    await assert_no_run(stack, order.data["id"])


async def test_logs_hold_ids_escaped_and_no_traceback(
    stack: Stack,
    http: httpx.AsyncClient,
    template: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    order = Order(stack.standin.create_customer()["id"], template)
    forged = "\n2026-11-30 00:00:00,000 INFO polar_credits.api order x: started\r\x1b[2J"
    plain_id = order.data["id"]
    delivery = order.changed(id=plain_id + forged)
    response = await send(http, f"{stack.api_url}/webhooks/polar", delivery)
    assert response.status_code == 202
    handle = stack.temporal.get_workflow_handle(response.json()["workflow_id"])
    await asyncio.wait_for(handle.result(), timeout=60)

    api_log = stack.api.log()
    assert "\x1b" not in api_log and "\r" not in api_log
    assert not re.search(r"^2026-11-30 00:00:00,000", api_log, re.M), "no forged line"
    assert plain_id + "\\n2026-11-30" in api_log, "the id is shown, escaped"
    # The worker (in this process here) logs the same id escaped too.
    worker_lines = [r.getMessage() for r in caplog.records if plain_id in r.getMessage()]
    assert worker_lines
    assert not any(c in line for line in worker_lines for c in "\n\r\x1b")
    assert "Traceback" not in api_log


async def test_clients_that_disconnect_leave_no_trace(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """Anyone can open a connection, promise a body and leave: that is not worth a log line."""
    host, port = "127.0.0.1", httpx.URL(stack.api_url).port
    log_before = len(stack.api.log())
    before = counter((await http.get(f"{stack.api_url}/metrics")).text, "client_disconnected")
    for _ in range(100):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /webhooks/polar HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10\r\n\r\n{"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.5)

    added = stack.api.log()[log_before:]
    assert "Traceback" not in added and "Exception" not in added, added[:2000]
    assert len(added) < 2000, "at most a line or two, not one per connection"
    after = counter((await http.get(f"{stack.api_url}/metrics")).text, "client_disconnected")
    assert after > before, "counted for operators"
    assert (await http.get(f"{stack.api_url}/healthz")).status_code == 200


async def test_a_failed_order_runs_again_when_redelivered(
    stack: Stack, http: httpx.AsyncClient, template: dict[str, Any]
) -> None:
    """A customer missing at Polar fails the run; once restored, Polar's redelivery (the
    dashboard's "Redeliver", or its API) starts a new run. A run that granted is never
    run again."""
    ghost = str(uuid.uuid4())
    order = Order(ghost, template)
    delivery = order.signed()
    url = f"{stack.api_url}/webhooks/polar"
    assert (await send(http, url, delivery)).status_code == 202
    handle = stack.temporal.get_workflow_handle(order_workflow_id(order.data["id"]))
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=60)

    stack.standin.create_customer(id=ghost)
    redelivered = await send(http, url, delivery.redelivered())
    assert redelivered.status_code == 202 and redelivered.json()["status"] == "started"
    rerun = stack.temporal.get_workflow_handle(
        order_workflow_id(order.data["id"]), result_type=OrderCreditsState
    )
    state = await asyncio.wait_for(rerun.result(), timeout=60)
    assert state.status == "verified"
    assert len(grant_events(stack, ghost)) == 1

    once_more = await send(http, url, delivery.redelivered())
    assert once_more.status_code == 200 and once_more.json()["status"] == "duplicate"
    runs = [
        w
        async for w in stack.temporal.list_workflows(
            f"WorkflowId = '{order_workflow_id(order.data['id'])}'"
        )
    ]
    assert sorted(w.status.name for w in runs) == ["COMPLETED", "FAILED"]
    assert len(grant_events(stack, ghost)) == 1


def assert_readme_lists(cases: list[Any]) -> None:
    """The "Bad input" tables (docs/operator/bad-input.md) hold a row per case (`name`), whose
    answer starts with the case's status and, for a 2xx, its body's `status` (`answer`)."""
    section = BAD_INPUT_PAGE.read_text()
    rows = {
        cells[0]: cells[1]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for case in cases:
        assert case.name in rows, f"the bad-input page's table lacks {case.name!r}"
        body_status = getattr(case, "answer", None)
        answer = f"{case.status}" + (f" `{body_status}`" if body_status else "")
        assert rows[case.name].startswith(answer), (case.name, rows[case.name], answer)


def test_readme_lists_every_case_with_its_answer() -> None:
    assert_readme_lists(CASES)
