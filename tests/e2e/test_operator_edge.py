"""The operator API's request edge against hostile and careless input, one table: what each
request is answered, and that nothing started in Temporal, nothing reached the stand-in and
nothing personal reached the API's log; for the clean cases, what did happen.

docs/operator/bad-input.md lists every case of CASES with its answer; a test keeps them equal.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import search_attributes as sa
from polar_credits.api.operator.temporal_errors import temporal_error
from polar_credits.identity import backfill_workflow_id, manual_grant_workflow_id
from tests.conftest import OPERATOR_TOKEN, Stack
from tests.e2e.test_operators import GRAFANA_TOKEN, cli, start_api, tokens_file, url_of
from tests.e2e.test_pipeline import grant_events
from tests.support.processes import ServiceProcess

BAD_INPUT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "operator" / "bad-input.md"
EMAIL_DOMAIN, NAME = "@edge-victims.example.com", "Edge Victim Person"
MIB = 1024 * 1024
BODY_TIMEOUT = 2.0  # the edge API's CREDITS_API_BODY_TIMEOUT_SECONDS
WRITE = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
READ = {"Authorization": f"Bearer {GRAFANA_TOKEN}"}
WRONG = {"Authorization": "Bearer not-a-token-0123456789"}
JSON = {"content-type": "application/json"}


@dataclass
class EdgeApi:
    url: str
    port: int
    process: ServiceProcess


@pytest.fixture(scope="module")
def edge_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeApi]:
    """The API on the session's Temporal and task queue, with a write and a read token and a
    short body timeout (the trickling client), its log to itself."""
    directory = tmp_path_factory.mktemp("operator-edge")
    api = start_api(
        stack,
        "api-operator-edge",
        directory,
        CREDITS_OPERATOR_TOKEN=OPERATOR_TOKEN,
        CREDITS_OPERATOR_TOKENS_FILE=str(tokens_file(directory)),
        CREDITS_API_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
    )
    try:
        url = url_of(api)
        yield EdgeApi(url, int(url.rsplit(":", 1)[1]), api)
    finally:
        api.stop()


# -- requests ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case's request names: a fresh customer (with an email and a name at the stand-in)
    and a fresh idempotency key, so what started (or not) is found by them."""

    customer_id: str
    key: str

    def grant(self, **changes: Any) -> dict[str, Any]:
        body = {
            "customer_id": self.customer_id,
            "meter": "api_calls",
            "units": 7,
            "reason": "operator edge test",
            "idempotency_key": self.key,
        }
        return {**body, **changes}

    def backfill(self, **changes: Any) -> dict[str, Any]:
        body = {
            "key": self.key,
            "customer_ids": [self.customer_id],
            "meter": "api_calls",
            "units": 3,
            "reason": "operator edge test",
        }
        return {**body, **changes}


@dataclass
class Req:
    """One request. `raw`: sent over a bare socket (a body that lies about its length, arrives
    slowly or is chunked wrongly), `chunks` then being the body's pieces."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    raw: bool = False
    chunks: list[bytes] = field(default_factory=list)
    pause: float = 0.0  # between raw chunks
    twice: bool = False  # two identical requests at once


def post(path: str, payload: Any, headers: dict[str, str]) -> Req:
    return Req("POST", path, {**headers, **JSON}, json.dumps(payload).encode())


def text_post(path: str, text: str, headers: dict[str, str] = WRITE) -> Req:
    return Req("POST", path, {**headers, **JSON}, text.encode())


def grant_text(c: Ctx, field_name: str, literal: str) -> str:
    """The grant's JSON with one field's value replaced by a literal JSON text."""
    body = c.grant(**{field_name: "@@@"})
    return json.dumps(body).replace('"@@@"', literal, 1)


def declared(path: str, length: int, headers: dict[str, str], sent: int = 1024) -> Req:
    return Req("POST", path, {**headers, **JSON, "content-length": str(length)}, raw=True,
               chunks=[b"x" * sent])  # fmt: skip


def streamed(path: str, size: int, headers: dict[str, str]) -> Req:
    """`size` bytes announced and sent in 64 KiB pieces (as fast as the server takes them)."""
    piece = 64 * 1024
    return Req("POST", path, {**headers, **JSON, "content-length": str(size)}, raw=True,
               chunks=[b"x" * min(piece, size - at) for at in range(0, size, piece)])  # fmt: skip


def chunked(path: str, pieces: list[bytes], headers: dict[str, str] = WRITE) -> Req:
    return Req("POST", path, {**headers, **JSON, "transfer-encoding": "chunked"}, raw=True,
               chunks=pieces)  # fmt: skip


def twice(req: Req) -> Req:
    req.twice = True
    return req


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def many_ids(c: Ctx, count: int) -> list[str]:
    return [f"{c.customer_id}-{i:05d}-".ljust(256, "x") for i in range(count)]


async def send_raw(port: int, req: Req) -> tuple[int, str]:
    return await asyncio.to_thread(_send_raw, port, req)


def _send_raw(port: int, req: Req) -> tuple[int, str]:
    """Sends the head, then the chunks until the server answers or hangs up (a server that
    answers before the body is in may reset the connection; what it answered is still read),
    and returns the answer's status and body."""
    head = [f"{req.method} {req.path} HTTP/1.1", "Host: edge", "Connection: close"]
    head += [f"{k}: {v}" for k, v in req.headers.items()]
    pending = [("\r\n".join(head) + "\r\n\r\n").encode(), *req.chunks]
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            writable = [sock] if pending else []
            readable, ready, _ = select.select([sock], writable, [], 1.0)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
                pending = []  # answered: the rest of the body is not wanted
            elif ready:
                try:
                    sock.sendall(pending.pop(0))
                except (BrokenPipeError, ConnectionResetError):
                    pending = []
                if req.pause and pending:
                    time.sleep(req.pause)
    head_text, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
    assert head_text, "no answer at all"
    return int(head_text.split()[1]), body


async def send(http: httpx.AsyncClient, api: EdgeApi, req: Req) -> tuple[int, str]:
    if req.raw:
        return await send_raw(api.port, req)
    response = await http.request(
        req.method, f"{api.url}{req.path}", headers=req.headers, content=req.body
    )
    return response.status_code, response.text


# -- the table --------------------------------------------------------------------------------

Build = Callable[[Ctx], Req]


@dataclass(frozen=True)
class Case:
    """`started`: the clean cases' run (kind of workflow id), granted once."""

    name: str
    build: Build
    status: int
    started: str | None = None


G, B, R = "/grants", "/backfills", "/rules/preview"

CASES = [
    # -- tokens, before anything else ------------------------------------------------------
    Case("POST /grants with no token", lambda c: post(G, c.grant(), {}), 401),
    Case("POST /grants with a wrong token", lambda c: post(G, c.grant(), WRONG), 401),
    Case("POST /grants with a Basic authorization", lambda c: post(
        G, c.grant(), {"Authorization": f"Basic {OPERATOR_TOKEN}"}), 401),
    Case("POST /grants with a read token", lambda c: post(G, c.grant(), READ), 403),
    Case("POST /backfills with a read token", lambda c: post(B, c.backfill(), READ), 403),
    Case("POST /grants/{id}/revoke with a read token", lambda c: post(
        f"{G}/{manual_grant_workflow_id(c.key)}/revoke", {}, READ), 403),
    Case("POST /reconcile with no token", lambda c: Req("POST", "/reconcile"), 401),
    Case("POST /orders/{id}/rerun with a wrong token", lambda c: Req(
        "POST", f"/orders/{c.key}/rerun", WRONG), 401),
    Case("GET /grants with a wrong token", lambda c: Req("GET", G, WRONG), 401),
    Case("GET /backfills/{key} with no token", lambda c: Req("GET", f"{B}/{c.key}"), 401),
    Case("POST /rules/preview with no token", lambda c: post(R, {"order_id": c.key}, {}), 401),
    # -- sizes and time ----------------------------------------------------------------------
    Case("14 MB body to POST /backfills with no token", lambda c: streamed(B, 14 * MIB, {}),
         401),
    Case("declares 50 MB and sends 1 KB, no token", lambda c: declared(B, 50 * MIB, {}), 401),
    Case("declares 50 MB and sends 1 KB, a write token", lambda c: declared(
        B, 50 * MIB, WRITE), 413),
    Case("POST /grants over 1 MiB, chunked (no Content-Length)", lambda c: chunked(
        G, [chunk(b"x" * 256 * 1024) for _ in range(5)] + [b"0\r\n\r\n"]), 413),
    Case("a rules preview of 3 MB", lambda c: post(
        R, {"order_id": c.key + "x" * 3 * MIB}, WRITE), 413),
    Case("backfill of 10,000 ids of 256 characters", lambda c: post(
        B, c.backfill(customer_ids=many_ids(c, 10_000)), WRITE), 413),
    Case("backfill of 3,000 ids of 256 characters (a run input over 512 KiB)", lambda c: post(
        B, c.backfill(customer_ids=many_ids(c, 3_000)), WRITE), 413),
    Case("a body trickled a byte every half second", lambda c: Req(
        "POST", G, {**WRITE, **JSON, "content-length": "200"}, raw=True,
        chunks=[b"{"] * 30, pause=0.5), 408),
    Case("POST /grants with bad chunked encoding", lambda c: chunked(
        G, [b"zz\r\n{}\r\n0\r\n\r\n"]), 400),
    # -- text and numbers no encoder writes ----------------------------------------------------
    Case("lone surrogate in `reason`", lambda c: text_post(G, grant_text(c, "reason", '"\\ud800"')),
         422),
    Case("lone surrogate in `idempotency_key`", lambda c: text_post(
        G, grant_text(c, "idempotency_key", '"k\\udfff"')), 422),
    Case("lone surrogate in `meter`", lambda c: text_post(G, grant_text(c, "meter", '"\\ud800"')),
         422),
    Case("lone surrogate in a backfill's `customer_ids`", lambda c: text_post(
        B, json.dumps(c.backfill()).replace(c.customer_id, "\\ud800", 1)), 422),
    Case("lone surrogate in a field name", lambda c: text_post(
        G, json.dumps(c.grant()).replace('"reason"', '"\\ud800"', 1)), 422),
    Case("`units` NaN", lambda c: text_post(G, grant_text(c, "units", "NaN")), 422),
    Case("`units` Infinity", lambda c: text_post(G, grant_text(c, "units", "Infinity")), 422),
    Case("`units` -Infinity in a revoke", lambda c: text_post(
        f"{G}/{manual_grant_workflow_id(c.key)}/revoke", '{"units": -Infinity}'), 422),
    Case("`reason` of arrays nested 100,000 deep", lambda c: text_post(
        G, grant_text(c, "reason", "[" * 100_000 + "]" * 100_000)), 422),
    Case("a grant's JSON truncated", lambda c: text_post(G, json.dumps(c.grant())[:-5]), 422),
    Case("not JSON at all", lambda c: text_post(B, "key=x&units=3"), 422),
    Case("a field name of 100,000 characters", lambda c: post(
        G, c.grant(**{"f" * 100_000: 1}), WRITE), 422),
    # -- strict inputs -------------------------------------------------------------------------
    Case('`"units": true`', lambda c: post(G, c.grant(units=True), WRITE), 422),
    Case('`"units": "10"`', lambda c: post(G, c.grant(units="10"), WRITE), 422),
    Case('`"units": 1.0`', lambda c: post(G, c.grant(units=1.0), WRITE), 422),
    Case('`"units": "10"` in a backfill', lambda c: post(B, c.backfill(units="10"), WRITE), 422),
    Case('`"allow_negative": "yes"` in a revoke', lambda c: post(
        f"{G}/{manual_grant_workflow_id(c.key)}/revoke", {"allow_negative": "yes"}, WRITE), 422),
    Case("`reason` given as a number", lambda c: post(G, c.grant(reason=12), WRITE), 422),
    Case("`idempotency_key` given as a number", lambda c: post(
        G, c.grant(idempotency_key=12345), WRITE), 422),
    Case("a backfill customer id with a space and a quote", lambda c: post(
        B, c.backfill(customer_ids=[c.customer_id + "' OR 'x"]), WRITE), 422),
    Case("a backfill customer id of 300 characters", lambda c: post(
        B, c.backfill(customer_ids=["c" * 300]), WRITE), 422),
    # -- dates and page tokens -----------------------------------------------------------------
    Case("started_after=0001-01-01T00:00:00+01:00", lambda c: Req(
        "GET", f"{G}?customer_id={c.customer_id}&started_after=0001-01-01T00:00:00%2B01:00",
        WRITE), 422),
    Case("started_before=9999-12-31T23:59:59-01:00", lambda c: Req(
        "GET", f"{G}?customer_id={c.customer_id}&started_before=9999-12-31T23:59:59-01:00",
        WRITE), 422),
    Case("page_token=AAAA", lambda c: Req("GET", f"{G}?page_token=AAAA", READ), 422),
    Case("page_token=@@@", lambda c: Req("GET", f"{G}?page_token=@@@", READ), 422),
    # -- method confusion ----------------------------------------------------------------------
    Case("PUT /grants", lambda c: Req("PUT", G, WRITE, b"{}"), 405),
    Case("DELETE /backfills/{key}", lambda c: Req("DELETE", f"{B}/{c.key}", WRITE), 405),
    Case("GET /rules/preview", lambda c: Req("GET", R, WRITE), 405),
    # -- clean: what must keep working ---------------------------------------------------------
    Case("a manual grant", lambda c: post(G, c.grant(), WRITE), 201, started="manual"),
    Case("the same grant twice at once (one idempotency key)", lambda c: twice(
        post(G, c.grant(), WRITE)), 201, started="manual"),
    Case("GET /grants with dates in range, offsets included", lambda c: Req(
        "GET", f"{G}?customer_id={c.customer_id}&started_after=2020-01-01T00:00:00%2B01:00"
        "&started_before=9999-12-31T00:00:00-01:00", READ), 200),
]  # fmt: skip


async def runs_for(stack: Stack, c: Ctx) -> list[str]:
    """Every run this case could have started: by customer (visibility) and by key (ids)."""
    query = f"{sa.POLAR_CUSTOMER_ID.name} = '{c.customer_id}'"
    found = [w.id async for w in stack.temporal.list_workflows(query)]
    for workflow_id in (manual_grant_workflow_id(c.key), backfill_workflow_id(c.key)):
        try:
            await stack.temporal.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            assert err.status == RPCStatusCode.NOT_FOUND
        else:
            found.append(workflow_id)
    return sorted(set(found))


def standin_saw(stack: Stack, c: Ctx) -> list[dict[str, Any]]:
    """The stand-in's requests and events that name this case's customer or key."""
    seen = [e for e in stack.standin.events(customer_id=c.customer_id)]
    for endpoint in ("events.ingest", "customers.get", "orders.get"):
        seen += [
            r for r in stack.standin.requests(endpoint)
            if c.customer_id in json.dumps(r) or c.key in json.dumps(r)
        ]  # fmt: skip
    return seen


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_operator_edge(
    stack: Stack, edge_api: EdgeApi, http: httpx.AsyncClient, case: Case
) -> None:
    email = f"{uuid.uuid4().hex[:10]}{EMAIL_DOMAIN}"
    customer = stack.standin.create_customer(email=email, name=NAME)["id"]
    c = Ctx(customer_id=customer, key=f"edge-{uuid.uuid4().hex[:12]}")
    req = case.build(c)
    log_before = len(edge_api.process.log())

    if req.twice:
        (s1, t1), (s2, t2) = await asyncio.gather(
            send(http, edge_api, req), send(http, edge_api, req)
        )
        assert sorted([s1, s2]) == [200, 201], (t1, t2)
        assert json.loads(t1)["id"] == json.loads(t2)["id"], "both name the one run"
        status, text = (s1, t1) if s1 == 201 else (s2, t2)
    else:
        status, text = await send(http, edge_api, req)

    assert status == case.status, text[:2000]
    # The app's refusals say why; 405 (routing) and 400 (the HTTP parser) come before the app.
    if status >= 400 and status not in (400, 405):
        detail = json.loads(text)["detail"]
        assert detail, "every refusal says why"
        if isinstance(detail, list):  # a validation error: no input echoed, ASCII only
            assert text.isascii() and all(set(e) == {"type", "loc", "msg"} for e in detail)
    added = edge_api.process.log()[log_before:]
    assert "Traceback" not in added, added[-3000:]
    assert EMAIL_DOMAIN not in added and NAME not in added and EMAIL_DOMAIN not in text
    assert OPERATOR_TOKEN not in added and GRAFANA_TOKEN not in added

    if case.started is None:
        assert await runs_for(stack, c) == [], "nothing started in Temporal"
        assert standin_saw(stack, c) == [], "nothing reached the stand-in"
        return
    # A clean grant: one run for the key, which grants exactly once.
    assert await runs_for(stack, c) == [manual_grant_workflow_id(c.key)]
    handle = stack.temporal.get_workflow_handle(manual_grant_workflow_id(c.key))
    await asyncio.wait_for(handle.result(), timeout=60)
    assert [e["metadata"]["units"] for e in grant_events(stack, customer)] == [-7]


async def test_unauthenticated_14_mb_bodies_leave_the_api_s_memory_alone(
    edge_api: EdgeApi,
) -> None:
    """Thirty 14 MB bodies with no token: each answered 401 from its headers, none held."""
    status_file = Path(f"/proc/{edge_api.process.pid}/status")

    def rss_kib() -> int:
        line = next(x for x in status_file.read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])

    req = streamed(B, 14 * MIB, {})
    for _ in range(3):  # warm up: the first requests allocate what every request reuses
        assert (await send_raw(edge_api.port, req))[0] == 401
    before = rss_kib()
    for _ in range(30):
        assert (await send_raw(edge_api.port, req))[0] == 401
    grown = rss_kib() - before
    assert grown < 4 * 1024, f"the API grew by {grown} KiB over 30 unauthenticated 14 MB bodies"


async def test_the_cli_exits_with_its_usage_code_for_a_request_too_large(
    stack: Stack, edge_api: EdgeApi
) -> None:
    """A backfill Temporal would refuse (input over 512 KiB) is the operator's to split:
    exit 2, not 5 ("try again"); an out-of-range date is a usage error too."""
    c = Ctx(customer_id=stack.standin.create_customer()["id"], key=f"edge-{uuid.uuid4().hex[:12]}")
    args = ["backfill", "start", "--key", c.key, "--meter", "api_calls", "--units", "1"]
    args += ["--reason", "too many"]
    for customer_id in many_ids(c, 3_000):
        args += ["--customer", customer_id]
    result = await asyncio.to_thread(cli, edge_api.url, OPERATOR_TOKEN, *args)
    assert result.exit_code == 2, result.output
    assert "413" in result.output and "512 KiB" in result.output
    dated = await asyncio.to_thread(
        cli, edge_api.url, OPERATOR_TOKEN, "grants", "list", "--since", "0001-01-01T00:00:00+01:00"
    )
    assert dated.exit_code == 2, dated.output
    assert await runs_for(stack, c) == []


@pytest.mark.parametrize(
    ("code", "answer"),
    [
        (RPCStatusCode.INVALID_ARGUMENT, 422),
        (RPCStatusCode.OUT_OF_RANGE, 422),
        (RPCStatusCode.FAILED_PRECONDITION, 422),
        (RPCStatusCode.UNAVAILABLE, 503),
        (RPCStatusCode.DEADLINE_EXCEEDED, 503),
        (RPCStatusCode.RESOURCE_EXHAUSTED, 503),
    ],
)
def test_temporal_s_permanent_refusals_are_not_outages(code: RPCStatusCode, answer: int) -> None:
    """Temporal's own error, as its client raises it (Blob data size exceeds limit, as the
    dev server words it): only what may pass with time is a 503."""
    refused = temporal_error(RPCError("Blob data size exceeds limit.", code, b""))
    assert refused.status_code == answer
    assert ("Blob data size exceeds limit" in refused.detail) == (answer == 422)


async def test_docs_document_the_edge_answers(edge_api: EdgeApi, http: httpx.AsyncClient) -> None:
    paths = (await http.get(f"{edge_api.url}/openapi.json")).json()["paths"]
    for path, method in [
        (G, "post"),
        (B, "post"),
        (R, "post"),
        (f"{G}/{{grant_id}}/revoke", "post"),
    ]:
        answers = paths[path][method]["responses"]
        assert {"401", "408", "413", "422"} <= set(answers), (path, sorted(answers))
    assert {"401", "422"} <= set(paths[G]["get"]["responses"])
    assert "413" not in paths[G]["get"]["responses"], "a GET takes no body"


def test_readme_lists_every_case_with_its_answer() -> None:
    table = BAD_INPUT_PAGE.read_text().split("## The operator API", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0]: cells[1]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith(("| ---", "| request |"))
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for case in CASES:
        assert case.name in rows, f"the bad-input page's operator table lacks {case.name!r}"
        assert rows[case.name].startswith(str(case.status)), (case.name, rows[case.name])
    assert len(rows) == len(CASES), "the bad-input page lists a case the table does not have"
