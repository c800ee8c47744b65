"""Encrypted histories, end to end: an API and a worker started with CREDITS_ENCRYPTION_KEYS
grant a paid order from its signed webhook, and the history Temporal holds has no order id,
customer id, amount or metadata value in any payload or memo; the codec endpoint (and the
Temporal CLI through it) reads them back for an operator; after a second key becomes active,
runs written under the first still read and new runs use the second."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.worker import Replayer

from polar_credits import search_attributes as sa
from polar_credits.codec import ENCODING, KEY_ID_METADATA, data_converter
from polar_credits.identity import order_workflow_id
from polar_credits.models.orders import OrderCreditsState
from polar_credits.settings import Settings
from polar_credits.worker import BUDGET_QUEUE_WORKFLOWS, ORDER_QUEUE_WORKFLOWS
from polar_credits.workflows.order_credits import OrderCreditsWorkflow
from tests.conftest import (
    BIN,
    CREDIT_PRODUCT_ID,
    OPERATOR_TOKEN,
    WEBHOOK_SECRET,
    Stack,
    credit_pack_order,
)
from tests.e2e.test_pipeline import order_paid_body
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, ServiceProcess, stop_process
from tests.support.signing import polar_signed_headers

KEY_A = base64.b64encode(os.urandom(32)).decode()
KEY_B = base64.b64encode(os.urandom(32)).decode()
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
UI_ORIGIN = "http://127.0.0.1:8233"  # TEMPORAL_UI_URL's default
CAMPAIGN = "launch"  # the launch-campaign rule reads this metadata value: it enters the run
POLLING = "worker polling task queue"
# The order's amounts a run reads (OrderFacts).
AMOUNTS = ("subtotal_amount", "net_amount", "total_amount")


def spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(BIN / "python"), "worker.py"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@dataclasses.dataclass
class EncryptedStack:
    """A worker process and an API process with encryption on, on their own task queue."""

    stack: Stack
    tmp: Path
    queue: str = dataclasses.field(default_factory=lambda: f"encrypted-{uuid.uuid4().hex[:8]}")
    port: int = dataclasses.field(default_factory=free_port)
    keys: str = f"a:{KEY_A}"
    active: str = "a"
    worker: subprocess.Popen[bytes] | None = None
    api: ServiceProcess | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        settings = self.stack.settings
        assert settings.polar_access_token is not None
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))}
        return {
            **clean,
            "PYTHONUNBUFFERED": "1",
            "POLAR_ACCESS_TOKEN": settings.polar_access_token.get_secret_value(),
            "POLAR_API_URL": self.stack.standin.base_url,
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "POLAR_RATE_LIMIT_PER_MINUTE": "6000",
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "CREDITS_RULES_FILE": str(settings.credits_rules_file),
            "CREDITS_TASK_QUEUE": self.queue,
            "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "CREDITS_API_PORT": str(self.port),
            "CREDITS_VERIFY_TIMEOUT_SECONDS": "20",
            "CREDITS_VERIFY_FIRST_CHECK_SECONDS": "0.5",
            # Not this test's subject: no reconciliation schedule in the shared test server.
            "CREDITS_RECONCILE_INTERVAL_SECONDS": "0",
            "CREDITS_ENCRYPTION_KEYS": self.keys,
            "CREDITS_ENCRYPTION_KEY_ID": self.active,
        }

    async def start(self) -> EncryptedStack:
        log_path = self.tmp / f"worker-{self.active}.log"
        self.worker = spawn_worker(self.env(), log_path)
        deadline = time.monotonic() + 60
        while POLLING not in log_path.read_text():
            assert self.worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        self.api = ServiceProcess(
            "api",
            ["-m", "api"],
            env=self.env(),
            ready_url=f"{self.api_url}/readyz",
            log_path=self.tmp / f"api-{self.active}.log",
        )
        await asyncio.to_thread(self.api.start)
        return self

    def stop(self) -> None:
        worker, self.worker = self.worker, None
        stop_process(worker)
        if self.api is not None:
            self.api.stop()

    def settings(self) -> Settings:
        return Settings(credits_encryption_keys=self.keys, credits_encryption_key_id=self.active)

    async def client(self) -> Client:
        """A client that reads payloads as the service does (with the codec)."""
        return await Client.connect(
            self.stack.settings.temporal_address, data_converter=data_converter(self.settings())
        )


@pytest.fixture(scope="module")
async def encrypted(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EncryptedStack]:
    started = EncryptedStack(stack, tmp_path_factory.mktemp("encrypted"))
    try:
        yield await started.start()
    finally:
        started.stop()


@dataclasses.dataclass
class PaidOrder:
    order_id: str
    customer_id: str
    workflow_id: str
    amounts: dict[str, int]


async def pay_through_the_webhook(encrypted: EncryptedStack) -> PaidOrder:
    """A paid order of the credit pack, posted (signed) to the encrypted stack's API."""
    standin = encrypted.stack.standin
    customer_id = standin.create_customer()["id"]
    order = standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)["order"]
    body = await order_paid_body(encrypted.stack, order["id"], metadata={"campaign": CAMPAIGN})
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{encrypted.api_url}/webhooks/polar",
            content=body,
            headers=polar_signed_headers(WEBHOOK_SECRET, body),
        )
    assert answer.status_code == 202, answer.text
    amounts = {k: order[k] for k in AMOUNTS if order.get(k)}
    return PaidOrder(order["id"], customer_id, order_workflow_id(order["id"]), amounts)


async def granted(client: Client, workflow_id: str) -> OrderCreditsState:
    handle = client.get_workflow_handle(workflow_id, result_type=OrderCreditsState)
    return await asyncio.wait_for(handle.result(), timeout=60)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every payload of a history (inputs, results, memos, failures, headers, summaries),
    except search attributes: those are indexed by the server and meant to be readable."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.name == "SearchAttributes":
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif isinstance(value, Message):
            items = [value]
        else:
            items = list(value)
        for item in items:
            if isinstance(item, Message):
                yield from payloads_in(item)


async def raw_history(plain: Client, workflow_id: str) -> History:
    """As anyone with access to Temporal (its database, its UI without a codec) reads it."""
    history = await plain.get_workflow_handle(workflow_id).fetch_history()
    return History(events=history.events)


def core_bookkeeping(history: History) -> list[Payload]:
    """What the SDK's core writes itself, in clear, not through the codec: a patch marker's
    patch name (`workflow.patched("decision-record")`), a local activity marker's own record
    (its type, attempt and times; its result goes through the codec)."""
    found: list[Payload] = []
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_patch":
            found += [p for details in marker.details.values() for p in details.payloads]
        elif marker.marker_name == "core_local_activity":
            found += marker.details["data"].payloads
    return found


def codec_request(payload: Payload) -> dict:
    """A Payloads message in protobuf JSON, as the Temporal UI posts it."""
    metadata = {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()}
    return {"payloads": [{"metadata": metadata, "data": base64.b64encode(payload.data).decode()}]}


def grant_events_of(encrypted: EncryptedStack, customer_id: str) -> list[dict]:
    return [
        e
        for e in encrypted.stack.standin.events(customer_id=customer_id)
        if e["name"] == "api_usage"
    ]


def secrets_of(order: PaidOrder) -> list[bytes]:
    return [
        order.order_id.encode(),
        order.customer_id.encode(),
        f'"{CAMPAIGN}"'.encode(),
        *(f'"{name}":{value}'.encode() for name, value in order.amounts.items()),
    ]


async def test_an_encrypted_run_grants_and_its_history_shows_no_order_data(
    encrypted: EncryptedStack,
) -> None:
    order = await pay_through_the_webhook(encrypted)
    reader = await encrypted.client()
    state = await granted(reader, order.workflow_id)
    assert state.status == "verified", state
    assert sorted(g.rule_id for g in state.grants) == ["launch-campaign", "starter-bonus"]
    assert len(order.amounts) >= 2, order.amounts  # the pack has a price: amounts to hide

    plain = await Client.connect(encrypted.stack.settings.temporal_address)
    history = await raw_history(plain, order.workflow_id)
    payloads = list(payloads_in(history))
    bookkeeping = core_bookkeeping(history)
    assert len(payloads) - len(bookkeeping) >= 5  # input, activities' arguments and results...
    for payload in payloads:
        if payload not in bookkeeping:
            assert payload.metadata["encoding"] == ENCODING, payload
            assert payload.metadata[KEY_ID_METADATA] == b"a"
    stored = b"".join(p.SerializeToString() for p in payloads)
    # What the same payloads hold once decrypted: the test would see a leak.
    codec = data_converter(encrypted.settings()).payload_codec
    assert codec is not None
    readable = b"".join(p.data for p in await codec.decode(payloads))
    for secret in secrets_of(order):
        assert secret in readable, secret
        assert secret not in stored, secret

    # Search attributes are not encrypted (the server indexes them): operators find the run
    # by its order id, as docs/operator/encrypted-histories.md says.
    started = history.events[0].workflow_execution_started_event_attributes
    assert sa.POLAR_ORDER_ID.name in started.search_attributes.indexed_fields


async def test_a_memo_is_encrypted_too(encrypted: EncryptedStack) -> None:
    customer_id = encrypted.stack.standin.create_customer()["id"]
    key = f"encrypted-memo-{uuid.uuid4().hex[:8]}"
    body = {
        "customer_id": customer_id,
        "meter": "api_calls",
        "units": 7,
        "reason": "support-goodwill-gesture",
        "idempotency_key": key,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(f"{encrypted.api_url}/grants", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    workflow_id = answer.json()["id"]

    plain = await Client.connect(encrypted.stack.settings.temporal_address)
    started = (await raw_history(plain, workflow_id)).events[0]
    memo = started.workflow_execution_started_event_attributes.memo.fields
    assert memo, "the manual grant's run carries its request's fingerprint in its memo"
    for payload in memo.values():
        assert payload.metadata["encoding"] == ENCODING
    # The service reads its own memo back (a repeated request is compared with it).
    async with httpx.AsyncClient(timeout=30) as http:
        again = await http.post(f"{encrypted.api_url}/grants", json=body, headers=AUTH)
    assert again.status_code == 200, again.text
    stored = b"".join(
        p.SerializeToString() for p in payloads_in(await raw_history(plain, workflow_id))
    )
    for secret in (customer_id, "support-goodwill-gesture"):
        assert secret.encode() not in stored


async def test_the_codec_endpoint_reads_what_the_worker_wrote_for_an_operator_only(
    encrypted: EncryptedStack, stack: Stack
) -> None:
    order = await pay_through_the_webhook(encrypted)
    await granted(await encrypted.client(), order.workflow_id)
    plain = await Client.connect(stack.settings.temporal_address)
    started = (await raw_history(plain, order.workflow_id)).events[0]
    [stored] = started.workflow_execution_started_event_attributes.input.payloads
    body = codec_request(stored)
    decode = f"{encrypted.api_url}/codec/decode"
    headers = {**AUTH, "Origin": UI_ORIGIN, "X-Namespace": "default"}
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(decode, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == UI_ORIGIN
        [decoded] = answer.json()["payloads"]
        assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain"
        run_input = json.loads(base64.b64decode(decoded["data"]))
        assert run_input["order"]["order_id"] == order.order_id

        # What the endpoint encodes, it decodes (the UI encodes a signal's or a start's input).
        encoded = await http.post(
            f"{encrypted.api_url}/codec/encode", json=answer.json(), headers=AUTH
        )
        assert encoded.status_code == 200, encoded.text
        [sealed] = encoded.json()["payloads"]
        assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCODING
        again = await http.post(decode, json=encoded.json(), headers=AUTH)
        assert again.json() == answer.json()

        # No token, or a wrong one: 401, with the CORS headers the browser needs to show it.
        for auth in ({}, {"Authorization": "Bearer not-the-token"}):
            refused = await http.post(decode, json=body, headers={"Origin": UI_ORIGIN, **auth})
            assert refused.status_code == 401, refused.text
            assert refused.headers["access-control-allow-origin"] == UI_ORIGIN

        # The browser's preflight from the UI is answered without a token; another origin's
        # is refused.
        preflight = await http.options(
            decode,
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,authorization,x-namespace",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
        allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "authorization", "x-namespace"} <= allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        elsewhere = await http.options(
            decode,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in elsewhere.headers

        # A payload that fails, or a body that is not a Payloads message: 400, never a 500.
        tampered = {
            "payloads": [{**body["payloads"][0], "data": base64.b64encode(b"x" * 40).decode()}]
        }
        for bad, why in (
            (json.dumps(tampered).encode(), "does not decrypt"),
            (b"{not json", "not JSON"),
            (b'{"payloads": 3}', "not a Payloads message"),
            (b"[]", "expected an object"),
        ):
            answer = await http.post(decode, content=bad, headers=AUTH)
            assert answer.status_code == 400, answer.text
            assert why in answer.json()["detail"]
        too_large = await http.post(decode, content=b" " * (5 * 1024 * 1024), headers=AUTH)
        assert too_large.status_code == 413


def run_input(shown: str) -> dict:
    """The run's input payload in `temporal workflow show --output json`, bytes decoded."""
    started = json.loads(shown)["events"][0]["workflowExecutionStartedEventAttributes"]
    [payload] = started["input"]["payloads"]
    return {
        "metadata": {k: base64.b64decode(v) for k, v in payload["metadata"].items()},
        "data": base64.b64decode(payload["data"]),
    }


async def test_the_temporal_cli_shows_an_encrypted_run_through_the_codec_endpoint(
    encrypted: EncryptedStack,
) -> None:
    order = await pay_through_the_webhook(encrypted)
    await granted(await encrypted.client(), order.workflow_id)
    argv = [
        str(BIN / "temporal"), "workflow", "show", "--workflow-id", order.workflow_id,
        "--address", encrypted.stack.settings.temporal_address, "--output", "json",
    ]  # fmt: skip
    without = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
    assert without.returncode == 0, without.stderr
    assert run_input(without.stdout)["metadata"]["encoding"] == b"binary/encrypted"
    codec = ["--codec-endpoint", f"{encrypted.api_url}/codec"]
    with_codec = await asyncio.to_thread(
        subprocess.run,
        [*argv, *codec, "--codec-auth", f"Bearer {OPERATOR_TOKEN}"],
        capture_output=True,
        text=True,
    )
    assert with_codec.returncode == 0, with_codec.stderr
    shown = run_input(with_codec.stdout)
    assert shown["metadata"]["encoding"] == b"json/plain"
    assert json.loads(shown["data"])["order"]["order_id"] == order.order_id


async def test_the_codec_endpoint_is_not_there_while_encryption_is_off(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{stack.api_url}/codec/decode", json={"payloads": []}, headers=AUTH
        )
    assert answer.status_code == 404
    assert "CREDITS_ENCRYPTION_KEYS" in answer.json()["detail"]


async def test_a_worker_without_the_key_of_what_it_must_read_at_start_stops_clearly(
    encrypted: EncryptedStack,
) -> None:
    # The rules registry's memo, which a worker reads before it polls, was written under key a.
    env = {
        **encrypted.env(),
        "CREDITS_ENCRYPTION_KEYS": f"z:{base64.b64encode(os.urandom(32)).decode()}",
        "CREDITS_ENCRYPTION_KEY_ID": "z",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "python"), "worker.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "key 'a'" in done.stderr and "CREDITS_ENCRYPTION_KEYS" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_after_a_second_key_runs_under_the_first_still_read_and_new_runs_use_it(
    encrypted: EncryptedStack,
) -> None:
    under_a = await pay_through_the_webhook(encrypted)
    assert (await granted(await encrypted.client(), under_a.workflow_id)).status == "verified"

    # Rotation: B is added and made active; A stays configured to read what it wrote.
    encrypted.stop()
    encrypted.keys, encrypted.active = f"a:{KEY_A},b:{KEY_B}", "b"
    await encrypted.start()
    reader = await encrypted.client()
    old = await granted(reader, under_a.workflow_id)
    assert (old.order_id, old.status) == (under_a.order_id, "verified")

    under_b = await pay_through_the_webhook(encrypted)
    assert (await granted(reader, under_b.workflow_id)).status == "verified"
    plain = await Client.connect(encrypted.stack.settings.temporal_address)
    written = await raw_history(plain, under_b.workflow_id)
    bookkeeping = core_bookkeeping(written)
    key_ids = {p.metadata[KEY_ID_METADATA] for p in payloads_in(written) if p not in bookkeeping}
    assert key_ids == {b"b"}

    # The API reads both through its codec endpoint, and the replayer (what a deploy's replay
    # test runs) replays both runs with the codec.
    async with httpx.AsyncClient(timeout=10) as http:
        for order in (under_a, under_b):
            history = await raw_history(plain, order.workflow_id)
            [stored] = history.events[0].workflow_execution_started_event_attributes.input.payloads
            answer = await http.post(
                f"{encrypted.api_url}/codec/decode", json=codec_request(stored), headers=AUTH
            )
            assert answer.status_code == 200, answer.text
            assert order.order_id in base64.b64decode(answer.json()["payloads"][0]["data"]).decode()
    replayer = Replayer(
        workflows=[*ORDER_QUEUE_WORKFLOWS, *BUDGET_QUEUE_WORKFLOWS],
        data_converter=data_converter(encrypted.settings()),
    )
    for order in (under_a, under_b):
        history = await reader.get_workflow_handle(order.workflow_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, result.replay_failure


async def test_a_run_under_a_key_the_worker_lacks_fails_loudly_and_resumes_once_it_is_added(
    encrypted: EncryptedStack,
) -> None:
    key_c = base64.b64encode(os.urandom(32)).decode()
    # Another process (say, an API already given a new key) starts a run under key c.
    writer = await Client.connect(
        encrypted.stack.settings.temporal_address,
        data_converter=data_converter(
            Settings(credits_encryption_keys=f"c:{key_c}", credits_encryption_key_id="c")
        ),
    )
    customer_id = encrypted.stack.standin.create_customer()["id"]
    order_id = str(uuid.uuid4())
    handle = await writer.start_workflow(
        OrderCreditsWorkflow.run,
        credit_pack_order(customer_id, order_id, timeout_seconds=20, first_interval_seconds=0.5),
        id=order_workflow_id(order_id),
        task_queue=encrypted.queue,
    )
    # The worker cannot read it: its workflow task fails, naming the key, and nothing runs.
    deadline = time.monotonic() + 30
    failure: Failure | None = None
    while failure is None:
        assert time.monotonic() < deadline, "no workflow task failure"
        await asyncio.sleep(0.2)
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_task_failed_event_attributes"):
                failure = event.workflow_task_failed_event_attributes.failure
    assert failure.application_failure_info.type == "PayloadDecryptionError"
    # Its message is encrypted like any failure's; an operator (or the UI's codec) reads it.
    error = await data_converter(encrypted.settings()).decode_failure(failure)
    assert "key 'c'" in str(error) and "CREDITS_ENCRYPTION_KEYS" in str(error), error
    assert grant_events_of(encrypted, customer_id) == []

    # Once the worker is given key c, the same run carries on and grants.
    encrypted.stop()
    encrypted.keys = f"{encrypted.keys},c:{key_c}"
    await encrypted.start()
    state = await granted(await encrypted.client(), handle.id)
    assert state.status == "verified", state
    assert len(grant_events_of(encrypted, customer_id)) == 1
