"""`make bench` (second part): a burst of paid orders under Polar's sandbox rate limit.

The scenario of the issue: N orders are paid at once (a promotion, the start of a month) while
the merchant's own application keeps ingesting its customers' usage with the same Polar
organization. Polar's sandbox allows 100 requests a minute for the whole organization; the
service's share is POLAR_RATE_LIMIT_PER_MINUTE=60, the merchant's traffic is 25 calls a minute.

1. A private stack with `make run`'s command lines (tools.stack): file-backed Temporal
   dev server, the stand-in with `--preset sandbox` and `--balance-lag 15`, the worker and the
   API, on free 127.0.0.1 ports, in a temporary directory.
2. The floor of that dev server: N bare workflows (no activities, in-process worker, own task
   queue) started at once; the time until the last one closes.
3. C customers and N paid orders created in the stand-in without delivery, then N signed
   `order.paid` webhooks posted at once (--concurrency in flight). Like Polar, a non-2xx
   delivery is re-posted with backoff (2 s doubling, at most 10 attempts; then it is lost).
4. Beside it, the merchant: `events.ingest` of one positive `api_usage` event for a random
   customer per call, through polar-sdk with the same token, 25 calls a minute, until every
   run is closed; a 429 is waited out for its retry-after (then the same batch is sent again)
   and counted. Its events postpone those customers' recomputation, as on Polar.
5. Figures: time until every grant is ingested and every run verified, the service's Polar
   calls by kind (the stand-in's request log minus the merchant's calls counted here), 429s,
   the call floor, runs by status, history sizes, calls per grant.
6. The same burst against tools/bench/naive.py (ingest inline in the webhook handler, 500 on any
   Polar error) with a fresh stand-in; this harness plays Polar's retries for it.
7. Both side by side with the targets. On the service's side, a failed run, a grant missing
   or doubled, or a burst not finished within --bound prints a loud banner and exits 1 (the
   naive side's losses are what it is there to show: MISS, not a harness failure).

Every process is stopped by PID at the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from polar.base import PolarClientError, PolarNetworkError, PolarRateLimitError, PolarServerError
from polar.v2026_10 import PolarAsync
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from polar_credits import search_attributes as sa
from tests.support.signing import polar_signed_headers
from tools.bench.pipeline import (
    RULE_ID,
    Delivery,
    add_output_options,
    admin,
    bench_config,
    bench_env,
    count,
    is_2xx,
    machine_info,
    peak_in_window,
    post,
    run_guarded,
    summary_ms,
)
from tools.stack import (
    STANDIN_TOKEN,
    STANDIN_WEBHOOK_SECRET,
    Stack,
    StackConfig,
    StackError,
    http_ok,
    standin_command,
    start_stack,
)
from tools.standin.payloads import webhook_body
from tools.standin.seed import DEMO_EVENT_NAME, DEMO_PRODUCT_ID

# --- The scenario ---------------------------------------------------------------------------

PRESET = "sandbox"  # the stand-in's rate limit: Polar's sandbox, 100 requests/min/organization
ORG_LIMIT_PER_MINUTE = 100
SERVICE_BUDGET_PER_MINUTE = 60  # POLAR_RATE_LIMIT_PER_MINUTE: the service's share
BALANCE_LAG_SECONDS = 15  # the stand-in recomputes balances 15 s after a customer's last event
FIRST_CHECK_SECONDS = 16  # CREDITS_VERIFY_FIRST_CHECK_SECONDS
MERCHANT_CALLS_PER_MINUTE = 25
MERCHANT_EVENTS_PER_CALL = 1  # more per call postpones recomputation of balances (debounce)
GRANT_UNITS = 10  # examples/demo-rules.toml: the Starter pack grants 10
ORDER_WORKFLOW = "OrderCreditsWorkflow"
BARE_WORKFLOW = "BurstBareWorkflow"

# Polar's delivery retries (POLAR_FACTS.md): 10 attempts, 2 s doubling.
MAX_ATTEMPTS = 10
FIRST_RETRY_SECONDS = 2.0
POLAR_WEBHOOK_TIMEOUT = 10.0  # Polar waits at most 10 s for an answer

# The call floor: one ingest per 10 MiB of grants, one meter read per 100 customers per round.
MAX_INGEST_BYTES = 10 * 1024 * 1024
METER_PAGE = 100
VERIFY_ROUNDS = 1

# Targets from the issue.
MAX_SERVICE_429_SHARE = 0.01
MAX_CALLS_PER_GRANT = 0.1
TIME_FACTOR = 1.5

POLL_SECONDS = 1.0
EVENTS_POLL_SECONDS = 15.0  # GET /admin/events (all events at once) only this often
PROGRESS_SECONDS = 15.0
HISTORY_SAMPLES = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.burst",
        description="A burst of paid orders under Polar's sandbox rate limit, the service "
        "against a naive inline handler, on private local stacks (make bench).",
    )
    parser.add_argument("--orders", type=int, help="paid orders in the burst (2000)")
    parser.add_argument("--customers", type=int, help="customers the orders go to (500)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 orders, 50 customers")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="webhook deliveries in flight at once (%(default)s)",
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=1800.0,
        help="longest wait, from the first post, for each side to finish (%(default)s s)",
    )
    parser.add_argument(
        "--skip-naive", action="store_true", help="measure the service only (no naive side)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (%(default)s)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.orders is None:
        args.orders = 200 if args.quick else 2000
    if args.customers is None:
        args.customers = 50 if args.quick else 500
    for name in ("orders", "customers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.bound <= 0:
        parser.error("--bound must be above 0")
    return args


# --- Pure helpers (tests/test_bench_burst.py) -------------------------------------------------


def retry_delays(max_attempts: int = MAX_ATTEMPTS, first: float = FIRST_RETRY_SECONDS) -> list:
    """Waits between Polar's delivery attempts: 2, 4, 8, ... s (max_attempts - 1 of them)."""
    return [first * 2**i for i in range(max_attempts - 1)]


def service_external_id(order_id: str) -> str:
    return f"polar-credits:order:{order_id}:rule:{RULE_ID}"


def naive_external_id(order_id: str) -> str:
    return order_id  # tools/bench/naive.py: the order id is the idempotency key


def floor_grant_events(orders: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The grant events of (order id, customer id) pairs, as the service sends them."""
    return [
        {
            "name": DEMO_EVENT_NAME,
            "customer_id": customer_id,
            "external_id": service_external_id(order_id),
            "metadata": {
                "units": -GRANT_UNITS,
                "order_id": order_id,
                "rule_id": RULE_ID,
                "reason": "purchase",
                "source": "polar-credits",
            },
        }
        for order_id, customer_id in orders
    ]


def call_floor(
    grant_bytes: int,
    customers: int,
    budget_per_minute: float,
    rounds: int = VERIFY_ROUNDS,
) -> dict[str, Any]:
    """The fewest Polar calls the burst needs, and how long they take at the budget.

    calls = ceil(grant_bytes / 10 MiB)        events.ingest (Polar's body limit)
          + rounds * ceil(customers / 100)    customer_meters.list (100 customers a page)
    seconds = calls / (budget_per_minute / 60)
    """
    ingest = max(1, math.ceil(grant_bytes / MAX_INGEST_BYTES))
    reads = rounds * max(1, math.ceil(customers / METER_PAGE))
    calls = ingest + reads
    return {
        "formula": "ceil(grant bytes / 10 MiB) + rounds x ceil(customers / 100)",
        "grant_bytes": grant_bytes,
        "customers": customers,
        "rounds": rounds,
        "ingest_calls": ingest,
        "meter_reads": reads,
        "calls": calls,
        "budget_per_minute": budget_per_minute,
        "seconds": calls * 60.0 / budget_per_minute,
    }


def time_bound(
    floor_seconds: float, bare_seconds: float, lag: float = BALANCE_LAG_SECONDS
) -> float:
    return TIME_FACTOR * max(floor_seconds, bare_seconds) + lag


def grant_check(events: list[dict[str, Any]], expected: dict[str, str]) -> dict[str, Any]:
    """How many times each expected grant is in Polar.

    expected: order id -> external id. A grant event is one with negative units; it belongs to
    an order by its metadata order_id (so a grant under another external id still counts:
    that is how a doubled grant would look), and per external id (which Polar keeps unique).
    """
    per_order: Counter[str] = Counter()
    per_external: Counter[str] = Counter()
    stray = 0
    last_ingest: float | None = None
    wanted = set(expected.values())
    for event in events:
        metadata = event.get("metadata") or {}
        units = metadata.get("units")
        if event.get("name") != DEMO_EVENT_NAME or not isinstance(units, int | float):
            continue
        if units >= 0:
            continue
        order_id = metadata.get("order_id")
        if order_id not in expected:
            stray += 1
            continue
        per_order[order_id] += 1
        if event.get("external_id") in wanted:
            per_external[event["external_id"]] += 1
            at = event.get("ingested_at")
            if at is not None and (last_ingest is None or at > last_ingest):
                last_ingest = at
    once = sum(1 for o in expected if per_order[o] == 1)
    return {
        "expected": len(expected),
        "granted_once": once,
        "missing": sum(1 for o in expected if per_order[o] == 0),
        "doubled": sum(1 for o in expected if per_order[o] > 1),
        "max_per_external_id": max(per_external.values(), default=0),
        "expected_external_ids_found": len(per_external),
        "stray_grant_events": stray,
        "last_ingested_at": last_ingest,
    }


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(values),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def by_endpoint(requests: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """The stand-in's request log as {endpoint: Counter(status)}."""
    table: dict[str, Counter[str]] = {}
    for r in requests:
        table.setdefault(r["endpoint"], Counter())[str(r["status"])] += 1
    return table


def subtract(
    after: dict[str, Counter[str]], *befores: dict[str, Counter[str]]
) -> dict[str, dict[str, int]]:
    """after - befores, per endpoint and status, without empty entries."""
    out: dict[str, dict[str, int]] = {}
    for endpoint, statuses in after.items():
        left = Counter(statuses)
        for before in befores:
            left.subtract(before.get(endpoint, Counter()))
        kept = {s: n for s, n in sorted(left.items()) if n}
        if kept:
            out[endpoint] = kept
    return out


# --- The stacks -------------------------------------------------------------------------------


def start_standin(stack: Stack, config: StackConfig, webhook_url: str) -> None:
    """The stand-in with make run's command line, plus `--preset sandbox`."""
    argv = standin_command(
        config.data_dir / "standin.sqlite3",
        webhook_url=webhook_url,
        port=config.standin_port,
        balance_lag=config.standin_balance_lag,
    ) + ["--preset", PRESET]
    standin = stack.start("standin", argv)
    stack.wait_ready(standin, lambda: http_ok(f"{config.standin_url}/healthz"), "GET /healthz")


def naive_command(port: int) -> list[str]:
    return [
        "python", "-m", "uvicorn", "--factory", "tools.bench.naive:app_from_env",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--no-access-log",
        "--log-level", "warning",
    ]  # fmt: skip


def start_naive_stack(stack: Stack, config: StackConfig) -> str:
    """A fresh stand-in (own database) and the naive handler; returns the handler's base URL."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{config.api_port}"
    start_standin(stack, config, f"{url}/webhooks/polar")
    naive = stack.start("naive", naive_command(config.api_port))
    stack.wait_ready(naive, lambda: http_ok(f"{url}/healthz"), "GET /healthz")
    return url


def stack_config(data_dir: Path) -> StackConfig:
    return dataclasses.replace(bench_config(data_dir), standin_balance_lag=BALANCE_LAG_SECONDS)


def service_env(config: StackConfig) -> dict[str, str]:
    env = bench_env(config)
    env.update(
        STANDIN_PRESET=PRESET,  # read by `python -m tools.standin serve`: make run's command line
        POLAR_RATE_LIMIT_PER_MINUTE=str(SERVICE_BUDGET_PER_MINUTE),
        CREDITS_VERIFY_FIRST_CHECK_SECONDS=str(FIRST_CHECK_SECONDS),
    )
    return env


# --- The bare-workflow floor ----------------------------------------------------------------


@workflow.defn(name=BARE_WORKFLOW, sandboxed=False)
class BareWorkflow:
    """Nothing but a start and a completion: what the dev server needs per run, at least."""

    @workflow.run
    async def run(self) -> None:
        return None


async def bare_floor(temporal: Client, n: int, concurrency: int, bound: float) -> dict[str, Any]:
    task_queue = f"burst-bare-{secrets.token_hex(4)}"
    query = f'WorkflowType = "{BARE_WORKFLOW}" AND ExecutionStatus = "Completed"'
    sem = asyncio.Semaphore(concurrency)

    async def start(i: int) -> None:
        async with sem:
            await temporal.start_workflow(
                BARE_WORKFLOW, id=f"burst-bare-{i}-{task_queue}", task_queue=task_queue
            )

    async with Worker(temporal, task_queue=task_queue, workflows=[BareWorkflow]):
        t0 = time.time()
        await asyncio.gather(*(start(i) for i in range(n)))
        started_in = time.time() - t0
        deadline = time.monotonic() + bound
        done = 0
        while time.monotonic() < deadline:
            done = await count(temporal, query)
            if done >= n:
                break
            await asyncio.sleep(0.25)
    last_close = None
    async for execution in temporal.list_workflows(f'WorkflowType = "{BARE_WORKFLOW}"'):
        if execution.close_time is not None:
            at = execution.close_time.timestamp()
            last_close = at if last_close is None else max(last_close, at)
    seconds = (last_close - t0) if last_close is not None and done >= n else math.nan
    return {"workflows": n, "completed": done, "starts_seconds": started_in, "seconds": seconds}


# --- Orders and deliveries -----------------------------------------------------------------


@dataclass
class Order:
    order_id: str
    customer_id: str
    body: bytes
    webhook_id: str  # stable across retries, as Polar's


async def create_burst(
    standin: httpx.AsyncClient, customers: int, orders: int, concurrency: int = 8
) -> tuple[list[str], list[Order]]:
    """Customers and paid orders in the stand-in, not delivered: the admin API only, so no
    Polar call (and no rate-limit slot) is spent before the burst."""
    sem = asyncio.Semaphore(concurrency)
    tag = secrets.token_hex(4)

    async def customer(i: int) -> str:
        async with sem:
            body = {"email": f"burst-{tag}-{i}@example.com", "name": "Burst Buyer"}
            return (await admin(standin, "POST", "/admin/customers", body))["id"]

    customer_ids = list(await asyncio.gather(*(customer(i) for i in range(customers))))

    async def order(i: int) -> Order:
        customer_id = customer_ids[i % len(customer_ids)]
        async with sem:
            created = await admin(
                standin,
                "POST",
                "/admin/orders",
                {"customer_id": customer_id, "product_id": DEMO_PRODUCT_ID, "deliver": False},
            )
        data = created["order"]  # the same JSON as GET /v1/orders/{id}, without spending a call
        payload = webhook_body("order.paid", data, time.time())
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Order(data["id"], customer_id, body, f"msg_{secrets.token_hex(12)}")

    return customer_ids, list(await asyncio.gather(*(order(i) for i in range(orders))))


@dataclass
class Outcome:
    order_id: str
    attempts: int = 0
    statuses: list[str] = field(default_factory=list)
    acked: bool = False
    acked_at: float | None = None  # time.time()
    latencies: list[float] = field(default_factory=list)  # seconds, request only

    @property
    def settled(self) -> bool:
        return self.acked or self.attempts >= MAX_ATTEMPTS


async def deliver_all(
    client: httpx.AsyncClient,
    url: str,
    orders: list[Order],
    outcomes: dict[str, Outcome],
    concurrency: int,
) -> None:
    """Polar's side of the burst: all at once, non-2xx re-posted after 2, 4, 8 ... s, signed
    afresh each time with the same webhook-id; after MAX_ATTEMPTS the delivery is lost."""
    sem = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    delays = retry_delays()

    async def deliver(order: Order) -> None:
        outcome = outcomes[order.order_id]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            async with sem:
                headers = polar_signed_headers(
                    STANDIN_WEBHOOK_SECRET, order.body, webhook_id=order.webhook_id
                )
                delivery = Delivery(order.order_id, order.customer_id, order.body, headers)
                answer = await post(client, url, delivery, loop.time())
            outcome.attempts = attempt
            outcome.statuses.append(str(answer.status) if answer.status else "error")
            outcome.latencies.append(answer.latency)
            if is_2xx(answer.status):
                outcome.acked = True
                outcome.acked_at = time.time()
                return
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(delays[attempt - 1])

    await asyncio.gather(*(deliver(o) for o in orders))


def delivery_figures(outcomes: dict[str, Outcome], t0: float) -> dict[str, Any]:
    values = list(outcomes.values())
    acked = [o for o in values if o.acked]
    statuses = Counter(s for o in values for s in o.statuses)
    return {
        "deliveries": len(values),
        "acked": len(acked),
        "lost": sum(1 for o in values if not o.acked and o.attempts >= MAX_ATTEMPTS),
        "unsettled": sum(1 for o in values if not o.settled),
        "attempts": sum(o.attempts for o in values),
        "reposts": sum(max(0, o.attempts - 1) for o in values),
        "redelivered_orders": sum(1 for o in values if o.attempts > 1),
        "statuses": dict(sorted(statuses.items())),
        "all_acked_seconds": (max(o.acked_at for o in acked) - t0)
        if acked and len(acked) == len(values)
        else math.nan,
        "first_attempt_ms": summary_ms([o.latencies[0] for o in values if o.latencies]),
    }


# --- The merchant's own traffic ------------------------------------------------------------


@dataclass
class Merchant:
    """The merchant's application: usage events for its customers, same organization token."""

    calls: int = 0  # requests Polar answered (any status)
    ok_times: list[float] = field(default_factory=list)  # time.time() of accepted calls
    statuses: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    transport_errors: int = 0  # no answer (not in the stand-in's log)
    events_inserted: int = 0
    waited_429_seconds: float = 0.0

    def answered(self, status: int) -> None:
        self.calls += 1
        self.statuses[str(status)] += 1


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return True as soon as stop is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    return stop.is_set()


async def merchant_traffic(
    polar: PolarAsync,
    customer_ids: list[str],
    stats: Merchant,
    stop: asyncio.Event,
    rng: random.Random,
    per_minute: float = MERCHANT_CALLS_PER_MINUTE,
) -> None:
    loop = asyncio.get_running_loop()
    interval = 60.0 / per_minute
    next_at = loop.time()
    while not stop.is_set():
        if await wait_or_stop(stop, next_at - loop.time()):
            return
        batch = [
            {
                "name": DEMO_EVENT_NAME,
                "customer_id": rng.choice(customer_ids),
                "external_id": f"merchant-usage:{secrets.token_hex(8)}",
                "metadata": {"units": rng.randint(1, 5), "source": "merchant-app"},
            }
            for _ in range(MERCHANT_EVENTS_PER_CALL)
        ]
        while True:  # the same batch (same external ids) until Polar takes it
            sent = time.time()
            try:
                answer = await polar.events.ingest(events=batch)
            except PolarRateLimitError as exc:
                stats.answered(429)
                stats.rate_limited += 1
                wait = float(exc.retry_after) if exc.retry_after is not None else 60.0
                stats.waited_429_seconds += wait
                if await wait_or_stop(stop, wait):
                    return
                continue
            except (PolarClientError, PolarServerError) as exc:
                stats.answered(getattr(exc, "status_code", 0))
            except PolarNetworkError:
                stats.transport_errors += 1
            else:
                stats.answered(200)
                stats.ok_times.append(sent)
                stats.events_inserted += answer.inserted
                break
            if await wait_or_stop(stop, 2.0):
                return
        next_at = max(next_at + interval, loop.time())


def merchant_figures(stats: Merchant) -> dict[str, Any]:
    return {
        "calls": stats.calls,
        "accepted": len(stats.ok_times),
        "rate_limited": stats.rate_limited,
        "statuses": dict(stats.statuses),
        "transport_errors": stats.transport_errors,
        "events_inserted": stats.events_inserted,
        "waited_429_seconds": stats.waited_429_seconds,
    }


# --- One side of the burst ------------------------------------------------------------------


@dataclass
class Side:
    name: str  # "polar-credits" or "naive"
    post_url: str
    standin: httpx.AsyncClient
    standin_url: str
    external_id: Callable[[str], str]
    check_alive: Callable[[], None]
    # Once every delivery is settled, given how many were accepted: is this side done?
    # (service: every run closed; naive: yes, its handler answers after the ingest)
    closed: Callable[[int], Awaitable[bool]]
    status_line: Callable[[], Awaitable[str]]


async def standin_requests(standin: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await admin(standin, "GET", "/admin/requests"))["requests"]


async def standin_events(standin: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await admin(standin, "GET", "/admin/events"))["events"]


async def check_rate_limit(standin: httpx.AsyncClient) -> None:
    state = await admin(standin, "GET", "/admin/rate-limit")
    if state.get("per_minute") != ORG_LIMIT_PER_MINUTE:
        raise StackError(f"the stand-in's rate limit is {state}, not the sandbox preset")


async def run_burst(
    side: Side,
    orders: list[Order],
    customer_ids: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Post the burst, run the merchant beside it, wait (bounded) until the side is done."""
    expected = {o.order_id: side.external_id(o.order_id) for o in orders}
    before = by_endpoint(await standin_requests(side.standin))
    outcomes = {o.order_id: Outcome(o.order_id) for o in orders}
    merchant = Merchant()
    stop = asyncio.Event()
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    print(
        f"    {side.name}: posting {len(orders)} order.paid webhooks at once "
        f"({args.concurrency} in flight); merchant traffic {MERCHANT_CALLS_PER_MINUTE} calls/min",
        flush=True,
    )
    async with (
        httpx.AsyncClient(limits=limits, timeout=POLAR_WEBHOOK_TIMEOUT) as client,
        PolarAsync(
            STANDIN_TOKEN, base_url=side.standin_url, timeout=POLAR_WEBHOOK_TIMEOUT
        ) as polar,
    ):
        t0 = time.time()
        started = time.monotonic()
        merchant_task = asyncio.create_task(
            merchant_traffic(polar, customer_ids, merchant, stop, random.Random(args.seed))
        )
        delivery_task = asyncio.create_task(
            deliver_all(client, side.post_url, orders, outcomes, args.concurrency)
        )
        finished = False
        ingested_seen = 0
        next_events = started + EVENTS_POLL_SECONDS
        next_report = started + PROGRESS_SECONDS
        try:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                side.check_alive()
                now = time.monotonic()
                if delivery_task.done():
                    delivery_task.result()  # re-raise a harness error
                    if await side.closed(sum(1 for o in outcomes.values() if o.acked)):
                        finished = True
                        break
                if now - started > args.bound:
                    break
                if now >= next_events:
                    seen = grant_check(await standin_events(side.standin), expected)
                    ingested_seen = seen["expected_external_ids_found"]
                    next_events = now + EVENTS_POLL_SECONDS
                if now >= next_report:
                    acked = sum(1 for o in outcomes.values() if o.acked)
                    reposts = sum(max(0, o.attempts - 1) for o in outcomes.values())
                    print(
                        f"    {side.name} t+{now - started:.0f}s: {acked}/{len(orders)} acked, "
                        f"{reposts} re-posts, grants ingested {ingested_seen} (as of the last "
                        f"look), {await side.status_line()}; merchant {merchant.calls} calls, "
                        f"{merchant.rate_limited} x 429",
                        flush=True,
                    )
                    next_report = now + PROGRESS_SECONDS
        finally:
            stop.set()
            if not delivery_task.done():
                delivery_task.cancel()
            await asyncio.gather(merchant_task, delivery_task, return_exceptions=True)
        ended = time.time()
    requests = await standin_requests(side.standin)
    events = await standin_events(side.standin)
    grants = grant_check(events, expected)
    after = by_endpoint(requests)
    merchant_log = {"events.ingest": merchant.statuses}
    calls = subtract(after, before, merchant_log)
    total_calls = sum(sum(s.values()) for s in calls.values())
    calls_429 = sum(s.get("429", 0) for s in calls.values())
    # Calls that took a slot of the organization's limit (everyone's), in the busiest 60 s.
    accepted = [r["at"] for r in requests if r["status"] != 429 and r["at"] >= t0 - 1]
    last_ingest = grants["last_ingested_at"]
    all_ingested = grants["missing"] == 0 and last_ingest is not None
    return {
        "finished": finished,
        "elapsed_seconds": ended - t0,
        "t0": t0,
        "deliveries": delivery_figures(outcomes, t0),
        "grants": grants,
        "all_ingested_seconds": (last_ingest - t0) if all_ingested else math.nan,
        "last_ingest_seconds": (last_ingest - t0) if last_ingest is not None else math.nan,
        "calls": calls,
        "calls_total": total_calls,
        "calls_429": calls_429,
        "calls_per_grant": total_calls / len(orders),
        "org_peak_accepted_per_60s": peak_in_window(accepted),
        "merchant_peak_accepted_per_60s": peak_in_window(merchant.ok_times),
        "merchant": merchant_figures(merchant),
        "merchant_events_in_polar": sum(
            1 for e in events if (e.get("external_id") or "").startswith("merchant-usage:")
        ),
    }


# --- The service side ------------------------------------------------------------------------

ORDER_RUNS = f'WorkflowType = "{ORDER_WORKFLOW}"'
CLOSED_STATUSES = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CANCELED: "canceled",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
    WorkflowExecutionStatus.RUNNING: "running",
}


async def order_runs(temporal: Client, t0: float) -> dict[str, Any]:
    """Every order run: how it ended (execution status and CreditStatus), and when."""
    executions: Counter[str] = Counter()
    credit: Counter[str] = Counter()
    last_close: float | None = None
    verified_last: float | None = None
    ids: list[str] = []
    async for execution in temporal.list_workflows(ORDER_RUNS):
        ids.append(execution.id)
        status = CLOSED_STATUSES.get(execution.status, str(execution.status))
        executions[status] += 1
        credit[execution.typed_search_attributes.get(sa.CREDIT_STATUS) or "(unset)"] += 1
        if execution.close_time is not None:
            at = execution.close_time.timestamp()
            last_close = at if last_close is None else max(last_close, at)
            if execution.typed_search_attributes.get(sa.CREDIT_STATUS) == "verified":
                verified_last = at if verified_last is None else max(verified_last, at)
    return {
        "total": len(ids),
        "ids": ids,
        "execution_status": dict(sorted(executions.items())),
        "credit_status": dict(sorted(credit.items())),
        "last_close_seconds": (last_close - t0) if last_close is not None else math.nan,
        "last_verified_seconds": (verified_last - t0) if verified_last is not None else math.nan,
    }


async def history_sample(temporal: Client, ids: list[str], rng: random.Random) -> dict[str, Any]:
    sample = rng.sample(ids, min(HISTORY_SAMPLES, len(ids)))
    events, tasks, activities = [], [], []
    for workflow_id in sample:
        history = await temporal.get_workflow_handle(workflow_id).fetch_history()
        kinds = Counter(e.event_type for e in history.events)
        events.append(float(len(history.events)))
        tasks.append(float(kinds[EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]))
        activities.append(float(kinds[EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]))
    return {
        "sampled": len(sample),
        "events": stats(events),
        "workflow_tasks_completed": stats(tasks),
        "activities_scheduled": stats(activities),
    }


async def service_side(
    args: argparse.Namespace, config: StackConfig, stack: Stack
) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=config.standin_url,
        timeout=60.0,
        headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
    ) as standin:
        await check_rate_limit(standin)
        temporal = await Client.connect(config.temporal_address, namespace=config.namespace)

        print(
            f"[1/3] dev-server floor: {args.orders} bare workflows started at once "
            f"({args.concurrency} starts in flight), in-process worker",
            flush=True,
        )
        bare = await bare_floor(temporal, args.orders, args.concurrency, args.bound)
        print(
            f"    {bare['completed']}/{bare['workflows']} closed; the last "
            f"{bare['seconds']:.1f} s after the first start",
            flush=True,
        )

        print(
            f"[2/3] polar-credits: {args.customers} customers, {args.orders} paid orders "
            "(stand-in admin API, not delivered), then the burst",
            flush=True,
        )
        customer_ids, orders = await create_burst(standin, args.customers, args.orders)
        with_orders = len({o.customer_id for o in orders})
        events = floor_grant_events((o.order_id, o.customer_id) for o in orders)
        grant_bytes = len(json.dumps({"events": events}).encode())
        floor = call_floor(grant_bytes, with_orders, SERVICE_BUDGET_PER_MINUTE)
        running = f'{ORDER_RUNS} AND ExecutionStatus = "Running"'

        async def closed(acked: int) -> bool:
            # A lost delivery starts no run: it shows as a missing grant, not as a wait.
            return (
                await count(temporal, running) == 0 and await count(temporal, ORDER_RUNS) >= acked
            )

        async def status_line() -> str:
            open_runs = await count(temporal, running)
            verified = await count(temporal, f'{ORDER_RUNS} AND CreditStatus = "verified"')
            return f"{open_runs} runs open, {verified} verified"

        side = Side(
            name="polar-credits",
            post_url=f"{config.api_url}/webhooks/polar",
            standin=standin,
            standin_url=config.standin_url,
            external_id=service_external_id,
            check_alive=lambda: stack.check_alive("during the burst"),
            closed=closed,
            status_line=status_line,
        )
        result = await run_burst(side, orders, customer_ids, args)
        runs = await order_runs(temporal, result["t0"])
        result["runs"] = {k: v for k, v in runs.items() if k != "ids"}
        result["history"] = await history_sample(temporal, runs["ids"], random.Random(args.seed))
        result["bare"] = bare
        result["floor"] = floor
        result["customers_with_orders"] = with_orders
        result["bound_seconds"] = time_bound(floor["seconds"], bare["seconds"])
        verified = runs["credit_status"].get("verified", 0)
        result["all_verified_seconds"] = (
            runs["last_close_seconds"] if verified == len(orders) else math.nan
        )
        return result


# --- The naive side --------------------------------------------------------------------------


async def naive_side(
    args: argparse.Namespace, config: StackConfig, stack: Stack, naive_url: str
) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=config.standin_url,
        timeout=60.0,
        headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
    ) as standin:
        await check_rate_limit(standin)
        print(
            f"[3/3] naive inline handler (tools/bench/naive.py), fresh stand-in: {args.customers} "
            f"customers, {args.orders} paid orders, then the same burst",
            flush=True,
        )
        customer_ids, orders = await create_burst(standin, args.customers, args.orders)

        async def closed(acked: int) -> bool:
            return True  # its 2xx comes after the ingest: settled deliveries are all there is

        async def status_line() -> str:
            return "no runs (inline)"

        side = Side(
            name="naive",
            post_url=f"{naive_url}/webhooks/polar",
            standin=standin,
            standin_url=config.standin_url,
            external_id=naive_external_id,
            check_alive=lambda: stack.check_alive("during the burst"),
            closed=closed,
            status_line=status_line,
        )
        result = await run_burst(side, orders, customer_ids, args)
        # It never verifies; its balances can show the grants one lag after the last ingest.
        result["all_verified_seconds"] = result["all_ingested_seconds"] + BALANCE_LAG_SECONDS
        return result


# --- Report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def secs(value: float) -> str:
    return "never" if value is None or math.isnan(value) else f"{value:.1f} s"


def failed_runs(result: dict[str, Any]) -> int:
    runs = result.get("runs")
    if runs is None:
        return 0
    bad = sum(
        n
        for status, n in runs["execution_status"].items()
        if status in ("failed", "terminated", "timed_out", "canceled")
    )
    return max(bad, runs["credit_status"].get("failed", 0))


def calls_text(calls: dict[str, dict[str, int]]) -> str:
    parts = []
    for endpoint, statuses in sorted(calls.items()):
        total = sum(statuses.values())
        extra = ", ".join(f"{s} x{n}" for s, n in statuses.items() if s != "200")
        parts.append(f"{endpoint} {total}" + (f" ({extra})" if extra else ""))
    return "; ".join(parts) or "none"


def side_rows(r: dict[str, Any], n: int, bound: float, service: bool) -> list[tuple]:
    """(figure, measured, target, verdict or '') for one side."""
    grants = r["grants"]
    merchant = r["merchant"]
    deliveries = r["deliveries"]
    share = r["calls_429"] / r["calls_total"] if r["calls_total"] else 0.0
    once = grants["granted_once"] == n and grants["max_per_external_id"] <= 1
    if service:
        verified = r["runs"]["credit_status"].get("verified", 0)
        runs_cell = (f"{verified}/{n} verified", verdict(verified == n))
        failed = failed_runs(r)
        failed_cell = f"{failed} failed, {deliveries['lost']} lost"
        lost_ok = failed == 0 and deliveries["lost"] == 0
        time_label = f"{secs(r['all_verified_seconds'])}"
    else:
        runs_cell = ("n/a (verifies nothing)", "MISS")
        failed_cell = f"{deliveries['lost']} lost"
        lost_ok = deliveries["lost"] == 0 and grants["missing"] == 0
        time_label = f"{secs(r['all_verified_seconds'])} (ingest + lag)"
    return [
        (
            "granted exactly once",
            f"{grants['granted_once']}/{n} (missing {grants['missing']}, "
            f"doubled {grants['doubled']})",
            f"{n}/{n}",
            verdict(once),
        ),
        ("runs verified", runs_cell[0], f"{n}/{n}", runs_cell[1]),
        ("runs failed / deliveries lost", failed_cell, "0", verdict(lost_ok)),
        (
            "merchant calls answered 429",
            f"{merchant['rate_limited']} of {merchant['calls']}",
            "0",
            verdict(merchant["rate_limited"] == 0),
        ),
        (
            "service calls answered 429",
            f"{r['calls_429']} of {r['calls_total']} ({share:.1%})",
            f"< {MAX_SERVICE_429_SHARE:.0%}",
            verdict(share < MAX_SERVICE_429_SHARE),
        ),
        (
            "Polar calls per grant",
            f"{r['calls_per_grant']:.3f}",
            f"<= {MAX_CALLS_PER_GRANT:g}",
            verdict(r["calls_per_grant"] <= MAX_CALLS_PER_GRANT),
        ),
        (
            "first post -> all verified",
            time_label,
            f"<= {bound:.1f} s",
            verdict(r["all_verified_seconds"] <= bound),
        ),
        ("first post -> all acked (2xx)", secs(r["deliveries"]["all_acked_seconds"]), "", ""),
        (
            "webhook answer p50 / p99 (1st attempt)",
            f"{deliveries['first_attempt_ms']['p50']:.0f} / "
            f"{deliveries['first_attempt_ms']['p99']:.0f} ms",
            "",
            "",
        ),
        ("first post -> all grants ingested", secs(r["all_ingested_seconds"]), "", ""),
        (
            "deliveries re-posted (orders / posts)",
            f"{deliveries['redelivered_orders']} / {deliveries['reposts']}",
            "",
            "",
        ),
        ("Polar calls by the service", calls_text(r["calls"]), "", ""),
        (
            "org calls accepted, peak 60 s",
            f"{r['org_peak_accepted_per_60s']} (merchant {r['merchant_peak_accepted_per_60s']})",
            f"<= {ORG_LIMIT_PER_MINUTE}",
            "",
        ),
        (
            "merchant: calls accepted / 429 wait",
            f"{merchant['accepted']} / {merchant['waited_429_seconds']:.0f} s",
            "",
            "",
        ),
    ]


def render(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def table(results: dict[str, Any], n: int) -> str:
    service = results["service"]
    bound = service["bound_seconds"]
    left = side_rows(service, n, bound, service=True)
    naive = results.get("naive")
    if naive is None:
        return render(
            ("figure", "polar-credits", "target", ""),
            [(f, m, t, v) for f, m, t, v in left],
        )
    right = side_rows(naive, n, bound, service=False)
    rows = [(f, m, v, nm, nv, t) for (f, m, t, v), (_, nm, _, nv) in zip(left, right, strict=True)]
    return render(("figure", "polar-credits", "", "naive inline", "", "target"), rows)


def details(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    s = results["service"]
    floor, bare, runs, history = s["floor"], s["bare"], s["runs"], s["history"]
    ev, wft = history["events"], history["workflow_tasks_completed"]
    act = history["activities_scheduled"]
    return [
        f"  burst   : {args.orders} orders for {s['customers_with_orders']} customers "
        f"({args.customers} in all), {args.concurrency} deliveries in flight; Polar sandbox "
        f"limit {ORG_LIMIT_PER_MINUTE}/min, service budget {SERVICE_BUDGET_PER_MINUTE}/min, "
        f"merchant {MERCHANT_CALLS_PER_MINUTE} calls/min, balance lag {BALANCE_LAG_SECONDS} s",
        f"  floor   : calls = ceil(grant bytes / 10 MiB) + rounds x ceil(customers / 100) = "
        f"ceil({floor['grant_bytes']:,} B / 10 MiB) + {floor['rounds']} x "
        f"ceil({floor['customers']} / 100) = {floor['calls']} calls -> "
        f"{floor['seconds']:.1f} s at {SERVICE_BUDGET_PER_MINUTE}/min",
        f"  Temporal: {bare['workflows']} bare workflows closed in {secs(bare['seconds'])} "
        f"(starts took {bare['starts_seconds']:.1f} s); time target = {TIME_FACTOR:g} x "
        f"max({floor['seconds']:.1f}, {bare['seconds']:.1f}) + {BALANCE_LAG_SECONDS} s lag = "
        f"{s['bound_seconds']:.1f} s",
        f"  runs    : {runs['total']} order runs; execution {runs['execution_status']}; "
        f"CreditStatus {runs['credit_status']}",
        f"  history : {history['sampled']} sampled runs: events mean {ev['mean']:.1f} "
        f"(min {ev['min']:.0f}, max {ev['max']:.0f}); WorkflowTaskCompleted mean "
        f"{wft['mean']:.1f} (min {wft['min']:.0f}, max {wft['max']:.0f}); activities "
        f"scheduled mean {act['mean']:.1f}",
    ]


def problems(result: dict[str, Any], n: int, bound: float) -> list[str]:
    """What makes the service's burst a failure, not a miss."""
    found = []
    deliveries, grants = result["deliveries"], result["grants"]
    runs = result.get("runs") or {}
    if not result["finished"]:
        found.append(
            f"not finished within --bound {bound:.0f} s: "
            f"{runs.get('execution_status', {}).get('running', '?')} runs still open, "
            f"{deliveries['unsettled']} deliveries unsettled"
        )
    if failed := failed_runs(result):
        found.append(f"{failed} runs failed (execution {runs['execution_status']})")
    if deliveries["lost"]:
        found.append(f"{deliveries['lost']} deliveries lost after {MAX_ATTEMPTS} attempts")
    if grants["missing"]:
        found.append(f"{grants['missing']} of {n} grants missing in Polar")
    if grants["doubled"] or grants["max_per_external_id"] > 1:
        found.append(f"{grants['doubled']} grants doubled")
    if grants["stray_grant_events"]:
        found.append(f"{grants['stray_grant_events']} grant events for no order of the burst")
    if runs and runs["total"] != n:
        found.append(f"{runs['total']} order runs for {n} orders")
    return found


def loud(lines: list[str]) -> str:
    bar = "!" * 78
    body = [f"!!  {line}" for line in lines]
    return "\n".join(["", bar, "!!  BURST BENCHMARK FAILED", *body, bar])


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    machine = results["machine"]
    lines = [
        "",
        f"polar-credits burst benchmark, {machine['date']}",
        f"  machine : {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['physical_cores']} cores), {machine['ram_gib']} GiB RAM",
        f"  software: {machine['python']}, {machine['os']}, {machine['temporal']}",
        *details(results, args),
        "",
        table(results, args.orders),
    ]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- Main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    data_dir = Path(tempfile.mkdtemp(prefix="polar-credits-burst-"))
    service_config = stack_config(data_dir / "service")
    stacks = [Stack(service_config.log_dir, service_env(service_config))]

    def body() -> int:
        print(f"Starting the service's private stack in {service_config.data_dir}", flush=True)
        start_stack(stacks[0], service_config)
        results: dict[str, Any] = {"machine": machine}
        results["service"] = asyncio.run(service_side(args, service_config, stacks[0]))
        stacks[0].check_alive("during the burst")
        stacks[0].stop_all()  # the naive side gets the machine to itself, as this one did
        if not args.skip_naive:
            naive_config = stack_config(data_dir / "naive")
            stacks.append(Stack(naive_config.log_dir, bench_env(naive_config)))
            print(f"Starting the naive side in {naive_config.data_dir}", flush=True)
            url = start_naive_stack(stacks[1], naive_config)
            results["naive"] = asyncio.run(naive_side(args, naive_config, stacks[1], url))
            stacks[1].check_alive("during the burst")
        results["settings"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        }
        print(report(results, args), flush=True)
        found = problems(results["service"], args.orders, args.bound)
        if args.json:
            results["problems"] = found
            args.json.write_text(json.dumps(jsonable(results), indent=2) + "\n")
            print(f"\nresults written to {args.json}")
        if found:
            print(loud(found), flush=True)
            return 1
        return 0

    return run_guarded(body, stacks, data_dir, args.keep_data)


if __name__ == "__main__":
    sys.exit(main())
