"""`make chaos`: N orders through the real API while everything that can go wrong does.

Starts a private stack with `make run`'s command lines (tools.stack), on free
127.0.0.1 ports in a temporary directory, with:

- the stand-in at Polar's sandbox preset (100 requests/min), a short balance lag, and the
  service told its share is POLAR_RATE_LIMIT_PER_MINUTE=60;
- TWO worker processes on the same task queue.

Then it posts N signed `order.paid` deliveries, open loop, shuffled, with ~10 % duplicates
(same webhook-id or a new one, some concurrent with the original) and ~1 % poisoned orders
(a customer id Polar does not know), re-posting any non-2xx answer with backoff as Polar
does. Meanwhile:

- Polar fails: random 5xx, hangs past the SDK's timeout, answers lost after the batch was
  stored, dropped connections, bursts of 429 with retry-after, and one of each for sure;
- each worker is SIGKILLed at random moments and started again;
- the Temporal dev server is stopped once by PID and started again with the same command
  line and SQLite file (the API answers 503 meanwhile).

Re-posts follow Polar's rule (anything but 2xx, or no answer within 10 s, is retried with the
same webhook-id and a fresh signature), on a compressed schedule: 1 s doubling to 15 s,
10 attempts in all (~1.5 min instead of Polar's ~30 min).

At the end it waits (bounded) for every order run to close and checks what a user would:
exactly one grant per non-poisoned order, nothing doubled or missing, no failed run but the
poisoned ones (failed with Polar's 422), every other run `verified` or `unverified`. A failed
check prints a loud banner and exits 1. Every process is stopped by PID at the end, also on
Ctrl-C or error. tests/e2e/test_chaos.py runs a small variant of this same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from polar_credits import search_attributes as sa
from tests.support.signing import polar_signed_headers
from tools.bench.pipeline import (
    RULE_ID,
    Delivery,
    Orders,
    admin,
    bench_config,
    bench_env,
    count,
    is_2xx,
    peak_in_window,
    percentile,
    post,
    standin_order_templates,
)
from tools.stack import (
    STANDIN_TOKEN,
    STANDIN_WEBHOOK_SECRET,
    Child,
    Interrupted,
    Stack,
    StackConfig,
    StackError,
    start_stack,
    temporal_healthy,
    worker_command,
)

ORDER_WORKFLOW = "OrderCreditsWorkflow"
ORDER_RUNS = f"WorkflowType = '{ORDER_WORKFLOW}'"
OPEN_ORDER_RUNS = f"{ORDER_RUNS} AND ExecutionStatus = 'Running'"
GRANT_EVENT = "api_usage"
GRANT_UNITS = 10  # examples/demo-rules.toml: the seeded Starter pack grants 10
POLAR_READS = ("customer_meters.list", "events.list")
POLAR_CALLS = ("events.ingest", *POLAR_READS)
SANDBOX_LIMIT = 100  # the stand-in's --preset sandbox, requests/min per organization
SETUP_RATE_LIMIT = 100_000  # while the harness creates customers through /v1
OK_STATUSES = ("verified", "unverified")
BANNER_WIDTH = 78


# --- Options ------------------------------------------------------------------------------


@dataclass
class ChaosOptions:
    orders: int = 2000
    seed: int | None = None
    rate: float = 10.0  # deliveries/s, open loop
    customers: int | None = None  # default: max(5, orders // 20)
    duplicate_share: float = 0.10
    poisoned_share: float = 0.01
    # Polar's faults, per call.
    error_rate: float = 0.05  # 5xx on events.ingest, customer_meters.list, events.list
    hang_rate: float = 0.01  # no answer until the client gives up
    lost_answer_rate: float = 0.02  # events.ingest stored, answer sent after the timeout
    drop_rate: float = 0.01  # connection closed without an answer
    burst_every: float = 20.0  # seconds between bursts of 429
    burst_size: int = 3
    burst_retry_after: int = 3
    # Processes.
    workers: int = 2
    kills_per_worker: int = 3
    temporal_down: float = 10.0  # seconds between stopping Temporal and starting it again
    # Service settings.
    polar_timeout: float = 3.0
    rate_limit_share: int = 60
    balance_lag: int = 2
    verify_first_check: float = 3.0
    verify_timeout: float = 120.0
    # Harness.
    repost_attempts: int = 10  # Polar: 10 attempts in all
    repost_max_wait: float = 15.0
    chaos_tail: float = 15.0  # seconds after the last delivery that kills may still happen
    drain_timeout: float = 900.0
    progress_every: float = 10.0
    json: Path | None = None
    keep_data: bool = False

    def customer_count(self) -> int:
        return self.customers or max(5, self.orders // 20)

    def poisoned_count(self) -> int:
        return max(1, round(self.orders * self.poisoned_share))

    def duplicate_count(self) -> int:
        return round(self.orders * self.duplicate_share)


# (flag, ChaosOptions field, type, help); defaults come from ChaosOptions.
FLAGS: list[tuple[str, str, type, str]] = [
    ("--orders", "orders", int, "orders to grant"),
    ("--seed", "seed", int, "random seed, to replay a run (default: a random one, printed)"),
    ("--rate", "rate", float, "deliveries posted per second, open loop"),
    ("--customers", "customers", int, "stand-in customers (default: max(5, orders / 20))"),
    ("--duplicates", "duplicate_share", float, "extra deliveries, as a share of the orders"),
    ("--poisoned", "poisoned_share", float, "orders naming an unknown customer (at least 1)"),
    ("--error-rate", "error_rate", float, "5xx answers per Polar call"),
    ("--hang-rate", "hang_rate", float, "Polar calls that hang past the SDK timeout"),
    ("--lost-answer-rate", "lost_answer_rate", float, "ingests stored, answered too late"),
    ("--drop-rate", "drop_rate", float, "Polar calls whose connection is dropped"),
    ("--burst-every", "burst_every", float, "seconds between bursts of 429"),
    ("--burst-size", "burst_size", int, "429 answers per burst"),
    ("--burst-retry-after", "burst_retry_after", int, "retry-after of a burst's 429s"),
    ("--workers", "workers", int, "worker processes"),
    ("--kills-per-worker", "kills_per_worker", int, "SIGKILLs per worker"),
    ("--temporal-down", "temporal_down", float, "seconds Temporal stays stopped"),
    ("--polar-timeout", "polar_timeout", float, "POLAR_TIMEOUT_SECONDS"),
    ("--rate-limit-share", "rate_limit_share", int, "POLAR_RATE_LIMIT_PER_MINUTE"),
    ("--balance-lag", "balance_lag", int, "the stand-in's balance lag, seconds"),
    ("--verify-first-check", "verify_first_check", float, "CREDITS_VERIFY_FIRST_CHECK_SECONDS"),
    ("--verify-timeout", "verify_timeout", float, "CREDITS_VERIFY_TIMEOUT_SECONDS"),
    ("--drain-timeout", "drain_timeout", float, "longest wait for the runs to close, seconds"),
]
SHARES = ("duplicate_share", "poisoned_share", "error_rate", "hang_rate", "lost_answer_rate",
          "drop_rate")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> ChaosOptions:
    defaults = ChaosOptions()
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.chaos",
        description="Chaos run on a private local stack: orders through Polar faults, worker "
        "kills and a Temporal restart; checks that each order is granted exactly once.",
    )
    for flag, name, kind, text in FLAGS:
        default = getattr(defaults, name)
        shown = "" if default is None else " (%(default)s)"
        metavar = flag[2:].upper().replace("-", "_")
        parser.add_argument(
            flag, dest=name, type=kind, default=default, metavar=metavar, help=text + shown
        )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the temporary directory (logs, databases)"
    )
    args = parser.parse_args(argv)
    if args.orders < 2:
        parser.error("--orders must be at least 2")
    positive = ("rate", "burst_every", "burst_size", "polar_timeout", "rate_limit_share",
                "verify_timeout", "drain_timeout", "workers")  # fmt: skip
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"{name} must be above 0")
    if args.kills_per_worker < 0 or args.temporal_down < 0 or args.balance_lag < 0:
        parser.error("--kills-per-worker, --temporal-down and --balance-lag must be >= 0")
    for name in SHARES:
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"{name} must be between 0 and 1")
    return dataclasses.replace(defaults, **vars(args))


# --- The plan: what is posted, and when what breaks ---------------------------------------


@dataclass
class Posting:
    """One delivery attempt series (Polar re-posts the same webhook until a 2xx)."""

    order_id: str
    customer_id: str
    body: bytes
    webhook_id: str
    kind: str  # original, same-id (Polar's retry / redelivery), new-id
    statuses: list[int | None] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, one per attempt

    @property
    def acknowledged(self) -> bool:
        return bool(self.statuses) and is_2xx(self.statuses[-1])


@dataclass
class Order:
    order_id: str
    customer_id: str
    poisoned: bool

    @property
    def external_id(self) -> str:
        return f"polar-credits:order:{self.order_id}:rule:{RULE_ID}"


@dataclass
class Plan:
    orders: list[Order]
    postings: list[Posting]  # in posting order
    kills: dict[str, list[tuple[float, float]]]  # worker -> [(at s, down s)]
    temporal_stop_at: float
    bursts: list[tuple[float, str]]  # (at s, endpoint)
    one_shots: list[tuple[float, dict[str, Any]]]  # (at s, fault)
    post_seconds: float


def webhook_id_of(delivery: Delivery) -> str:
    return delivery.headers["webhook-id"]


def poisoned_template(template: dict[str, Any]) -> dict[str, Any]:
    """The same order JSON, for a customer id that does not exist in Polar."""
    ghost = str(uuid.uuid4())
    customer = {**template.get("customer", {}), "id": ghost}
    return {**template, "customer_id": ghost, "customer": customer}


def make_plan(
    opts: ChaosOptions, rng: random.Random, templates: list[dict[str, Any]], workers: list[str]
) -> Plan:
    factory = Orders(templates, STANDIN_WEBHOOK_SECRET)
    poisoned_at = set(rng.sample(range(opts.orders), opts.poisoned_count()))
    orders: list[Order] = []
    originals: list[Posting] = []
    for i in range(opts.orders):
        template = poisoned_template(rng.choice(templates)) if i in poisoned_at else None
        d = factory.next(template)
        orders.append(Order(d.order_id, d.customer_id, i in poisoned_at))
        originals.append(Posting(d.order_id, d.customer_id, d.body, webhook_id_of(d), "original"))

    postings = list(originals)
    rng.shuffle(postings)  # out of order
    for n, source in enumerate(rng.sample(originals, min(opts.duplicate_count(), opts.orders))):
        same = n % 2 == 0
        dup = Posting(
            source.order_id,
            source.customer_id,
            source.body,
            source.webhook_id if same else f"msg_{uuid.uuid4().hex[:24]}",
            "same-id" if same else "new-id",
        )
        if n % 3 == 0:  # right behind the original: concurrent deliveries of one order
            postings.insert(postings.index(source) + 1, dup)
        else:  # anywhere, possibly before the original
            postings.insert(rng.randrange(len(postings) + 1), dup)

    post_seconds = len(postings) / opts.rate
    window = post_seconds + opts.chaos_tail
    kills = {}
    for name in workers:
        at = sorted(rng.uniform(0.1 * window, window) for _ in range(opts.kills_per_worker))
        kills[name] = [(t, rng.uniform(0.5, 3.0)) for t in at]
    temporal_stop_at = max(2.0, rng.uniform(0.3, 0.5) * post_seconds)
    bursts = []
    t = rng.uniform(0.3, 1.0) * opts.burst_every
    endpoints = ("events.ingest", "customer_meters.list")
    while t < window:
        bursts.append((t, endpoints[len(bursts) % 2]))
        t += rng.uniform(0.5, 1.5) * opts.burst_every
    # One of each fault for sure, early enough that calls still come afterwards.
    hang_seconds = opts.polar_timeout * 4
    lost_delay_ms = int(opts.polar_timeout * 1000 * 2)
    one_shot_faults = [
        {"endpoint": "events.ingest", "status": 503},
        {"endpoint": "events.ingest", "status": None, "hang": True, "hang_seconds": hang_seconds},
        {"endpoint": "events.ingest", "status": None, "response_delay_ms": lost_delay_ms},
        {"endpoint": "events.ingest", "status": None, "drop": True},
        {"endpoint": "customer_meters.list", "status": 503},
    ]
    one_shots = [
        (rng.uniform(0.05, 0.6) * post_seconds, {**f, "count": 1}) for f in one_shot_faults
    ]
    return Plan(
        orders=orders,
        postings=postings,
        kills=kills,
        temporal_stop_at=temporal_stop_at,
        bursts=bursts,
        one_shots=sorted(one_shots, key=lambda x: x[0]),
        post_seconds=post_seconds,
    )


def rate_faults(opts: ChaosOptions, seed: int) -> list[dict[str, Any]]:
    """Faults that fire at random on every call, for the whole run."""
    faults = []
    for n, endpoint in enumerate(POLAR_CALLS):
        base = {"endpoint": endpoint, "count": 1}
        kinds: list[tuple[float, dict[str, Any]]] = [
            (opts.error_rate, {"status": 503 if n % 2 == 0 else 500}),
            (
                opts.hang_rate,
                {"status": None, "hang": True, "hang_seconds": opts.polar_timeout * 4},
            ),
            (opts.drop_rate, {"status": None, "drop": True}),
        ]
        if endpoint == "events.ingest":
            kinds.append(
                (
                    opts.lost_answer_rate,
                    {"status": None, "response_delay_ms": int(opts.polar_timeout * 2000)},
                )
            )
        for k, (rate, fault) in enumerate(kinds):
            if rate > 0:
                faults.append({**base, **fault, "rate": rate, "seed": seed * 100 + n * 10 + k})
    return faults


# --- The run ------------------------------------------------------------------------------


@dataclass
class WorkerSlot:
    name: str
    child: Child
    kills: int = 0
    restarts: int = 0
    unexpected_exits: int = 0
    # Held while the harness kills or restarts it: then its exit is not a surprise.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started_at: float = -60.0  # run clock; the first workers started before the run


@dataclass
class ChaosReport:
    seed: int
    options: dict[str, Any]
    data_dir: str
    orders: int = 0
    poisoned: list[str] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    ack_ms: dict[str, float] = field(default_factory=dict)  # every attempt's answer time
    reposts: int = 0
    reposted_deliveries: int = 0
    given_up: int = 0
    polar_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    polar_429: int = 0
    polar_5xx: int = 0
    peak_calls_per_minute: int = 0
    faults: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, Any] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    grants: dict[str, Any] = field(default_factory=dict)
    runs_by_status: dict[str, int] = field(default_factory=dict)
    poisoned_runs: dict[str, str] = field(default_factory=dict)  # order id -> failure
    bad_runs: dict[str, str] = field(default_factory=dict)  # order id -> what is wrong
    warnings: list[str] = field(default_factory=list)  # worth a look, not a failed check
    open_runs: int = 0
    post_seconds: float = 0.0
    wall_seconds: float = 0.0
    drain_seconds: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.failed_checks

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})


class Chaos:
    def __init__(
        self, opts: ChaosOptions, seed: int, stack: Stack, config: StackConfig, report: ChaosReport
    ) -> None:
        self.opts, self.seed, self.stack, self.config = opts, seed, stack, config
        self.report = report
        self.rng = random.Random(seed)
        self.temporal_child = next(c for c in stack.children if c.name == "temporal")
        self.services = [c for c in stack.children if c.name in ("standin", "api")]
        self.workers: list[WorkerSlot] = []
        self.temporal_up = asyncio.Event()
        self.temporal_up.set()
        self.temporal_stopping = False
        self.temporal_restarts = 0
        self.temporal_down_seconds = 0.0
        self.t0 = 0.0
        self.restarting: set[asyncio.Task] = set()
        self.bursts_armed = 0
        self.posted = 0  # deliveries whose first attempt has gone out
        self.bursts_skipped = 0

    # -- helpers -----------------------------------------------------------------------
    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def event(self, text: str) -> None:
        line = f"[t+{self.now():6.1f}s] {text}"
        self.report.timeline.append(line)
        print(f"  {line}", flush=True)

    async def sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))

    async def wait_exit(self, process: subprocess.Popen, within: float) -> bool:
        deadline = time.monotonic() + within
        while process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    # -- processes -----------------------------------------------------------------------
    def start_worker(self, name: str) -> Child:
        # From the event loop's thread: children die with the thread that started them.
        return self.stack.start(name, worker_command())

    async def restart_worker(self, slot: WorkerSlot) -> None:
        await self.temporal_up.wait()  # a worker started without Temporal exits at once
        slot.restarts += 1
        slot.child = self.start_worker(f"{slot.name}-restart{slot.restarts}")
        slot.started_at = self.now()
        self.event(f"started {slot.name} again (pid {slot.child.process.pid})")

    async def kill_worker_at(self, slot: WorkerSlot, schedule: list[tuple[float, float]]) -> None:
        for at, down in schedule:
            await self.sleep_until(at)
            # A kill that fell due while the worker was down waits until it has worked a bit.
            await self.sleep_until(slot.started_at + self.rng.uniform(2.0, 5.0))
            async with slot.lock:
                process = slot.child.process
                if process.poll() is None:
                    process.kill()  # SIGKILL: no clean-up, in-flight activities are lost
                    await self.wait_exit(process, 10)
                    slot.kills += 1
                    self.event(f"SIGKILL {slot.name} (pid {process.pid}); back in {down:.1f} s")
                await asyncio.sleep(down)
                await self.restart_worker(slot)

    async def restart_temporal(self, at: float) -> None:
        await self.sleep_until(at)
        old = self.temporal_child
        argv = list(old.process.args)  # the very same command line, database included
        self.temporal_stopping = True
        self.temporal_up.clear()
        stopped_at = time.monotonic()
        old.process.terminate()
        if not await self.wait_exit(old.process, 15):
            old.process.kill()
            await self.wait_exit(old.process, 10)
        self.event(
            f"stopped Temporal (pid {old.process.pid}); down for {self.opts.temporal_down:g} s"
        )
        await asyncio.sleep(self.opts.temporal_down)
        self.temporal_restarts += 1
        self.temporal_child = self.stack.start(f"temporal-restart{self.temporal_restarts}", argv)
        self.temporal_stopping = False
        deadline = time.monotonic() + 90
        address, env = self.config.temporal_address, self.stack.env
        while not await asyncio.to_thread(temporal_healthy, address, env):
            if self.temporal_child.process.poll() is not None:
                raise self.temporal_child.exited_error("after its restart")
            if time.monotonic() > deadline:
                raise StackError("Temporal did not come back within 90 s of its restart")
            await asyncio.sleep(0.3)
        self.temporal_down_seconds = time.monotonic() - stopped_at
        self.temporal_up.set()
        self.event(
            f"Temporal serving again (pid {self.temporal_child.process.pid}) after "
            f"{self.temporal_down_seconds:.1f} s"
        )

    async def monitor(self) -> None:
        """Anything that dies on its own: the run is void (services) or noted (workers)."""
        while True:
            for child in self.services:
                if child.process.poll() is not None:
                    raise child.exited_error("during the chaos run")
            if not self.temporal_stopping and self.temporal_child.process.poll() is not None:
                raise self.temporal_child.exited_error("during the chaos run")
            for slot in self.workers:
                if not slot.lock.locked() and slot.child.process.poll() is not None:
                    await slot.lock.acquire()
                    slot.unexpected_exits += 1
                    self.event(
                        f"!! {slot.name} exited on its own with status "
                        f"{slot.child.process.returncode}; see {slot.child.log_path}"
                    )
                    task = asyncio.create_task(self._restart_and_release(slot))
                    self.restarting.add(task)
                    task.add_done_callback(self.restarting.discard)
            await asyncio.sleep(0.5)

    async def _restart_and_release(self, slot: WorkerSlot) -> None:
        try:
            await asyncio.sleep(1.0)
            await self.restart_worker(slot)
        finally:
            slot.lock.release()

    # -- Polar's faults ------------------------------------------------------------------
    async def arm(self, standin: httpx.AsyncClient, fault: dict[str, Any]) -> None:
        await admin(standin, "POST", "/admin/faults", fault)

    async def bursts_and_one_shots(self, standin: httpx.AsyncClient, plan: Plan) -> None:
        timed: list[tuple[float, str, dict[str, Any]]] = [
            (
                at,
                "429 burst",
                {
                    "endpoint": endpoint,
                    "status": 429,
                    "count": self.opts.burst_size,
                    "retry_after": self.opts.burst_retry_after,
                },
            )
            for at, endpoint in plan.bursts
        ]
        timed += [(at, "one-shot", fault) for at, fault in plan.one_shots]
        for at, what, fault in sorted(timed, key=lambda x: x[0]):
            await self.sleep_until(at)
            if what == "429 burst" and await self.burst_pending(standin):
                # The service calls less often than bursts come: never starve it for good.
                self.bursts_skipped += 1
                self.event("429 burst skipped: the previous one is not used up yet")
                continue
            await self.arm(standin, fault)
            self.bursts_armed += what == "429 burst"
            self.event(f"armed {what} on {fault['endpoint']}: {describe_fault(fault)}")

    async def burst_pending(self, standin: httpx.AsyncClient) -> bool:
        faults = (await admin(standin, "GET", "/admin/faults"))["faults"]
        return any(f["rate"] is None and f["status"] == 429 for f in faults)

    # -- deliveries ----------------------------------------------------------------------
    async def deliver(self, client: httpx.AsyncClient, url: str, posting: Posting) -> None:
        """Post until a 2xx, as Polar does (fresh signature, same webhook-id, backoff)."""
        wait = 1.0
        loop = asyncio.get_running_loop()
        for attempt in range(self.opts.repost_attempts):
            headers = polar_signed_headers(
                STANDIN_WEBHOOK_SECRET, posting.body, webhook_id=posting.webhook_id
            )
            delivery = Delivery(posting.order_id, posting.customer_id, posting.body, headers)
            answer = await post(client, url, delivery, loop.time())
            posting.statuses.append(answer.status)
            posting.latencies.append(answer.latency)
            if is_2xx(answer.status):
                return
            if attempt + 1 < self.opts.repost_attempts:
                await asyncio.sleep(wait * self.rng.uniform(0.8, 1.2))
                wait = min(wait * 2, self.opts.repost_max_wait)

    async def post_all(self, client: httpx.AsyncClient, url: str, postings: list[Posting]) -> None:
        tasks = []
        for i, posting in enumerate(postings):
            await self.sleep_until(i / self.opts.rate)
            tasks.append(asyncio.create_task(self.deliver(client, url, posting)))
            self.posted += 1
        await asyncio.gather(*tasks)

    # -- progress and drain ----------------------------------------------------------------
    async def try_count(self, temporal: Client, query: str) -> int | None:
        if not self.temporal_up.is_set():
            return None
        try:
            return await asyncio.wait_for(count(temporal, query), 5)
        except (RPCError, TimeoutError, RuntimeError):
            return None

    async def progress(self, temporal: Client, postings: list[Posting]) -> None:
        while True:
            await asyncio.sleep(self.opts.progress_every)
            acked = sum(1 for p in postings if p.acknowledged)
            non_2xx = sum(1 for p in postings for s in p.statuses if not is_2xx(s))
            runs = await self.try_count(temporal, ORDER_RUNS)
            running = await self.try_count(temporal, OPEN_ORDER_RUNS)
            kills = sum(s.kills for s in self.workers)
            print(
                f"  [t+{self.now():6.1f}s] deliveries {self.posted}/{len(postings)} posted, "
                f"{acked} acknowledged, {non_2xx} non-2xx answers | order runs "
                f"{'?' if runs is None else runs} started, "
                f"{'?' if running is None else running} open | kills {kills}, "
                f"Temporal {'up' if self.temporal_up.is_set() else 'DOWN'}",
                flush=True,
            )

    async def drain(self, temporal: Client, expected_runs: int) -> tuple[int, float]:
        started = time.monotonic()
        running: int | None = None
        while True:
            runs = await self.try_count(temporal, ORDER_RUNS)
            running = await self.try_count(temporal, OPEN_ORDER_RUNS)
            elapsed = time.monotonic() - started
            if running == 0 and runs is not None and runs >= expected_runs:
                return 0, elapsed
            if elapsed > self.opts.drain_timeout:
                return (running if running is not None else -1), elapsed
            await asyncio.sleep(1.0)

    # -- the whole run -----------------------------------------------------------------
    async def run(self) -> None:
        opts, report = self.opts, self.report
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
        async with (
            httpx.AsyncClient(limits=limits, timeout=10.0) as api,  # Polar waits 10 s
            httpx.AsyncClient(
                base_url=self.config.standin_url,
                timeout=60.0,
                headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
            ) as standin,
        ):
            temporal = await Client.connect(
                self.config.temporal_address, namespace=self.config.namespace
            )
            # The first worker is start_stack's; the others start here.
            self.workers.append(WorkerSlot("worker-1", self._child("worker")))
            for n in range(2, opts.workers + 1):
                self.workers.append(WorkerSlot(f"worker-{n}", self.start_worker(f"worker-{n}")))

            print(f"Creating {opts.customer_count()} customers with a paid order each", flush=True)
            limit = (await admin(standin, "GET", "/admin/rate-limit"))["per_minute"]
            await admin(standin, "POST", "/admin/rate-limit", {"per_minute": SETUP_RATE_LIMIT})
            templates = await standin_order_templates(standin, opts.customer_count())
            # Back to the preset, with a fresh window: the service starts with a full budget.
            await admin(standin, "POST", "/admin/rate-limit", {"per_minute": limit})
            plan = make_plan(opts, self.rng, templates, [w.name for w in self.workers])
            report.orders = len(plan.orders)
            report.poisoned = [o.order_id for o in plan.orders if o.poisoned]
            report.deliveries = dict(Counter(p.kind for p in plan.postings))
            report.post_seconds = round(plan.post_seconds, 1)
            for fault in rate_faults(opts, self.seed):
                await self.arm(standin, fault)
            print(chaos_summary(opts, plan), flush=True)

            run_started_wall = time.time()
            self.t0 = asyncio.get_running_loop().time()
            monitor = asyncio.create_task(self.monitor())
            progress = asyncio.create_task(self.progress(temporal, plan.postings))
            background = [monitor, progress]
            try:
                chaos = [
                    asyncio.create_task(self.restart_temporal(plan.temporal_stop_at)),
                    asyncio.create_task(self.bursts_and_one_shots(standin, plan)),
                    *(
                        asyncio.create_task(self.kill_worker_at(slot, plan.kills[slot.name]))
                        for slot in self.workers
                    ),
                ]
                url = f"{self.config.api_url}/webhooks/polar"
                work = asyncio.gather(self.post_all(api, url, plan.postings), *chaos)
                # The monitor raises if a service dies: that ends the run at once.
                await first_failure(work, monitor)
                self.event("every delivery answered and every planned fault done; draining")
                report.open_runs, drain = await first_failure(
                    self.drain(temporal, len(plan.orders)), monitor
                )
                report.drain_seconds = round(drain, 1)
                report.wall_seconds = round(self.now(), 1)
                self.event(
                    f"{'all order runs closed' if report.open_runs == 0 else 'DRAIN BOUND HIT'}"
                    f" after draining {drain:.0f} s"
                )
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)

            await self.collect(standin, temporal, plan, run_started_wall)

    def _child(self, name: str) -> Child:
        return next(c for c in self.stack.children if c.name == name)

    # -- figures and checks -------------------------------------------------------------
    async def collect(
        self, standin: httpx.AsyncClient, temporal: Client, plan: Plan, since: float
    ) -> None:
        report = self.report
        postings = plan.postings
        report.answers = dict(
            Counter(str(s) if s is not None else "no answer" for p in postings for s in p.statuses)
        )
        report.reposts = sum(len(p.statuses) - 1 for p in postings)
        report.reposted_deliveries = sum(1 for p in postings if len(p.statuses) > 1)
        report.given_up = sum(1 for p in postings if not p.acknowledged)
        latencies = [x * 1000 for p in postings for x in p.latencies]
        report.ack_ms = {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies, default=0.0), 1),
        }

        requests = [
            r
            for r in (await admin(standin, "GET", "/admin/requests"))["requests"]
            if r["at"] >= since
        ]
        calls: dict[str, Counter] = {}
        for r in requests:
            calls.setdefault(r["endpoint"], Counter())[str(r["status"])] += 1
        report.polar_calls = {k: dict(sorted(v.items())) for k, v in sorted(calls.items())}
        report.polar_429 = sum(1 for r in requests if r["status"] == 429)
        report.polar_5xx = sum(1 for r in requests if 500 <= r["status"] < 600)
        report.peak_calls_per_minute = peak_in_window([r["at"] for r in requests], 60.0)

        remaining = (await admin(standin, "GET", "/admin/faults"))["faults"]
        left_429 = sum(f["count"] for f in remaining if f["rate"] is None and f["status"] == 429)
        one_shots_left = Counter(
            f["endpoint"] for f in remaining if f["rate"] is None and f["status"] != 429
        )
        one_shots_armed = Counter(fault["endpoint"] for _, fault in plan.one_shots)
        report.faults = {
            "rate_faults": len(rate_faults(self.opts, self.seed)),
            "bursts_armed": self.bursts_armed,
            "bursts_skipped": self.bursts_skipped,
            "burst_429s_armed": self.bursts_armed * self.opts.burst_size,
            "burst_429s_served": self.bursts_armed * self.opts.burst_size - left_429,
            "one_shots_armed": dict(one_shots_armed),
            "one_shots_fired": {k: n - one_shots_left[k] for k, n in one_shots_armed.items()},
        }
        report.processes = {
            "workers": {
                s.name: {
                    "kills": s.kills,
                    "restarts": s.restarts,
                    "unexpected_exits": s.unexpected_exits,
                }
                for s in self.workers
            },
            "worker_kills": sum(s.kills for s in self.workers),
            "worker_restarts": sum(s.restarts for s in self.workers),
            "worker_unexpected_exits": sum(s.unexpected_exits for s in self.workers),
            "temporal_restarts": self.temporal_restarts,
            "temporal_down_seconds": round(self.temporal_down_seconds, 1),
        }

        for slot in self.workers:
            if slot.unexpected_exits:
                report.warnings.append(
                    f"{slot.name} exited on its own {slot.unexpected_exits} time(s) (the harness "
                    f"started it again); see its logs in {self.config.log_dir}"
                )
        share = self.opts.rate_limit_share
        if report.peak_calls_per_minute > share:
            report.warnings.append(
                f"the service made {report.peak_calls_per_minute} Polar calls within 60 s, "
                f"above its share of {share}/min"
            )

        events = (await admin(standin, "GET", "/admin/events"))["events"]
        check_grants(report, plan.orders, [e for e in events if e["name"] == GRANT_EVENT])
        await check_runs(report, temporal, plan.orders)


async def first_failure(work: Awaitable[Any], watchdog: asyncio.Task) -> Any:
    """Await `work`, unless `watchdog` fails first (then cancel the work and raise)."""
    work_task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({work_task, watchdog}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled (Ctrl-C): take the work down with us, quietly
        work_task.cancel()
        with contextlib.suppress(BaseException):
            await work_task
        raise
    if work_task in done:
        return work_task.result()
    work_task.cancel()
    with contextlib.suppress(BaseException):
        await work_task
    watchdog.result()  # raises its error
    raise StackError("the process monitor stopped unexpectedly")


def describe_fault(fault: dict[str, Any]) -> str:
    if fault.get("status") == 429:
        return f"{fault['count']} x 429, retry-after {fault['retry_after']} s"
    if fault.get("hang"):
        return "hang past the client's timeout"
    if fault.get("response_delay_ms"):
        return f"store, then answer after {fault['response_delay_ms']} ms (lost answer)"
    if fault.get("drop"):
        return "drop the connection"
    return f"{fault.get('status')}"


def check_grants(report: ChaosReport, orders: list[Order], events: list[dict[str, Any]]) -> None:
    expected = {o.external_id: o for o in orders if not o.poisoned}
    poisoned = {o.order_id for o in orders if o.poisoned}
    by_external = Counter(e["external_id"] for e in events)
    by_order = Counter((e.get("metadata") or {}).get("order_id") for e in events)
    duplicates = max(
        sum(n - 1 for n in by_external.values() if n > 1),
        sum(n - 1 for n in by_order.values() if n > 1),
    )
    missing = [x for x in expected if x not in by_external]
    unexpected = [x for x in by_external if x not in expected]
    granted_poisoned = [o for o in poisoned if by_order.get(o)]
    malformed = []
    for e in events:
        order = expected.get(e["external_id"])
        meta = e.get("metadata") or {}
        problems = []
        if meta.get("units") != -GRANT_UNITS:
            problems.append(f"units {meta.get('units')!r}")
        if meta.get("source") != "polar-credits":
            problems.append(f"source {meta.get('source')!r}")
        if meta.get("rule_id") != RULE_ID:
            problems.append(f"rule_id {meta.get('rule_id')!r}")
        if not meta.get("reason"):
            problems.append("no reason")
        if order is not None and meta.get("order_id") != order.order_id:
            problems.append(f"order_id {meta.get('order_id')!r}")
        if order is not None and e.get("customer_id") != order.customer_id:
            problems.append("wrong customer")
        if problems:
            malformed.append(f"{e['external_id']}: {', '.join(problems)}")
    report.grants = {
        "expected": len(expected),
        "events": len(events),
        "distinct_external_ids": len(by_external),
        "duplicates": duplicates,
        "missing": len(missing),
        "unexpected": len(unexpected),
        "granted_poisoned": len(granted_poisoned),
        "malformed": len(malformed),
        "examples": (missing[:3] + unexpected[:3] + malformed[:3]),
    }
    n, p = len(orders), len(poisoned)
    report.check(
        "grants",
        len(events) == len(expected) and by_external.keys() == expected.keys(),
        f"{len(events)} {GRANT_EVENT} events for {n} orders - {p} poisoned = {len(expected)} "
        "expected",
    )
    report.check("no duplicate grant", duplicates == 0, f"{duplicates} duplicates")
    report.check(
        "no missing grant", not missing, f"{len(missing)} missing {short(missing)}".rstrip()
    )
    report.check(
        "no unexpected grant",
        not unexpected and not granted_poisoned,
        f"{len(unexpected)} unknown external ids, {len(granted_poisoned)} poisoned orders granted",
    )
    report.check(
        "grants are well formed",
        not malformed,
        f"{len(malformed)} malformed {short(malformed)}".rstrip(),
    )


async def check_runs(report: ChaosReport, temporal: Client, orders: list[Order]) -> None:
    semaphore = asyncio.Semaphore(16)

    async def look(order: Order) -> tuple[Order, str, str | None, str | None]:
        """(order, execution status, CreditStatus, failure text)."""
        handle = temporal.get_workflow_handle(f"order-credits-{order.order_id}")
        async with semaphore:
            try:
                described = await handle.describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return order, "not found", None, None
                raise
            status = described.status.name.lower() if described.status else "unknown"
            credit = described.typed_search_attributes.get(sa.CREDIT_STATUS)
            failure = None
            if described.status == WorkflowExecutionStatus.FAILED:
                try:
                    await asyncio.wait_for(handle.result(), 30)
                except WorkflowFailureError as err:
                    failure = failure_text(err)
            return order, status, credit, failure

    looked = await asyncio.gather(*(look(o) for o in orders))
    total_runs = await count(temporal, ORDER_RUNS)
    report.open_runs = await count(temporal, OPEN_ORDER_RUNS)
    by_status: Counter = Counter()
    for order, status, credit, failure in looked:
        by_status[credit if status == "completed" else status] += 1
        if order.poisoned:
            report.poisoned_runs[order.order_id] = f"{status}, CreditStatus {credit}: {failure}"
            if status != "failed" or credit != "failed" or "422" not in (failure or ""):
                report.bad_runs[order.order_id] = (
                    f"poisoned order: expected failed with a 422 and CreditStatus failed, got "
                    f"{status}, CreditStatus {credit}, reason {failure!r}"
                )
        elif status != "completed" or credit not in OK_STATUSES:
            report.bad_runs[order.order_id] = f"{status}, CreditStatus {credit}" + (
                f": {failure}" if failure else ""
            )
    report.runs_by_status = dict(by_status.most_common())
    poisoned = [o for o in orders if o.poisoned]
    failed_ok = [o for o in poisoned if o.order_id not in report.bad_runs]
    wrong_failed = [oid for oid, why in report.bad_runs.items() if why.startswith("failed")]
    not_ok = [o for o in orders if not o.poisoned and o.order_id in report.bad_runs]
    # A delivery for an order whose run failed starts a new run (the webhook's reuse policy:
    # failed runs re-run on redelivery), so a poisoned order redelivered after its run failed
    # has two failed runs. Any other order has exactly one run.
    failed_ids = [
        w.id async for w in temporal.list_workflows(f"{ORDER_RUNS} AND ExecutionStatus = 'Failed'")
    ]
    poisoned_ids = {f"order-credits-{o.order_id}" for o in orders if o.poisoned}
    reruns = len(failed_ids) - len(set(failed_ids))
    stray_failures = sorted(set(failed_ids) - poisoned_ids)
    report.check(
        "every run closed",
        report.open_runs == 0 and total_runs == len(orders) + reruns and not stray_failures,
        f"{total_runs} order runs for {len(orders)} orders ({reruns} re-run of a failed "
        f"poisoned order on redelivery), {report.open_runs} still open"
        + (f", failed runs of other orders: {stray_failures[:3]}" if stray_failures else ""),
    )
    report.check(
        "poisoned runs failed with 422",
        len(failed_ok) == len(poisoned),
        f"{len(failed_ok)} of {len(poisoned)} failed with Polar's 422 and CreditStatus failed",
    )
    report.check(
        "no other run failed",
        not wrong_failed,
        f"{len(wrong_failed)} non-poisoned runs failed {short(wrong_failed)}".rstrip(),
    )
    report.check(
        "every other run verified or unverified",
        not not_ok,
        f"{len(orders) - len(poisoned) - len(not_ok)} of {len(orders) - len(poisoned)}"
        + (f"; e.g. {report.bad_runs[not_ok[0].order_id]}" if not_ok else ""),
    )


def failure_text(err: BaseException) -> str:
    parts: list[str] = []
    cause: BaseException | None = err
    while cause is not None and len(parts) < 8:
        parts.append(str(getattr(cause, "message", None) or cause))
        cause = cause.__cause__
    return " <- ".join(parts)


def short(items: list[str], n: int = 3) -> str:
    return f"(e.g. {', '.join(items[:n])})" if items else ""


# --- Report -------------------------------------------------------------------------------


def chaos_summary(opts: ChaosOptions, plan: Plan) -> str:
    kinds = Counter(p.kind for p in plan.postings)
    poisoned = sum(o.poisoned for o in plan.orders)
    kills = ", ".join(
        f"{name} at " + " ".join(f"{t:.0f}s" for t, _ in times)
        for name, times in plan.kills.items()
    )
    return "\n".join(
        [
            f"Chaos plan: {len(plan.orders)} orders ({poisoned} poisoned), "
            f"{len(plan.postings)} deliveries ({kinds['same-id']} same-id and {kinds['new-id']} "
            f"new-id duplicates), shuffled, {opts.rate:g}/s for {plan.post_seconds:.0f} s",
            f"  Polar: sandbox preset ({SANDBOX_LIMIT}/min), service share "
            f"{opts.rate_limit_share}/min, balance lag {opts.balance_lag} s, SDK timeout "
            f"{opts.polar_timeout:g} s; per call {opts.error_rate:.0%} 5xx, "
            f"{opts.hang_rate:.0%} hang, {opts.drop_rate:.0%} drop, ingest "
            f"{opts.lost_answer_rate:.0%} lost answers; {len(plan.bursts)} bursts of "
            f"{opts.burst_size} x 429; {len(plan.one_shots)} one-shots",
            f"  kills: {kills or 'none'}; Temporal stopped at {plan.temporal_stop_at:.0f}s for "
            f"{opts.temporal_down:g} s",
        ]
    )


def render(report: ChaosReport) -> str:
    r = report
    calls = "; ".join(
        f"{endpoint} {sum(st.values())} ("
        + ", ".join(f"{code}: {n}" for code, n in st.items())
        + ")"
        for endpoint, st in r.polar_calls.items()
    )
    service_calls = sum(sum(st.values()) for st in r.polar_calls.values())
    granted = r.grants.get("events", 0)
    procs = r.processes
    share = r.options["rate_limit_share"]
    peak_note = "" if r.peak_calls_per_minute <= share else f"  <-- above the {share}/min share"
    lines = [
        "",
        f"polar-credits chaos run (seed {r.seed}), data in {r.data_dir}",
        f"  wall time      : {r.wall_seconds:.0f} s from the first delivery to the last run "
        f"closed (posting {r.post_seconds:.0f} s, drain {r.drain_seconds:.0f} s)",
        f"  orders         : {r.orders}, of which {len(r.poisoned)} poisoned; deliveries "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.deliveries.items())),
        "  webhook answers: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(r.answers.items()))
        + f"; re-posted {r.reposts} times ({r.reposted_deliveries} deliveries), "
        f"given up {r.given_up}",
        f"  answer times   : p50 {r.ack_ms.get('p50')} ms, p99 {r.ack_ms.get('p99')} ms, "
        f"max {r.ack_ms.get('max')} ms (Polar gives up after 10 s)",
        f"  Polar calls    : {service_calls} in all ({service_calls / max(granted, 1):.2f} per "
        f"grant): {calls}",
        f"  429 answers    : {r.polar_429} ({r.faults.get('bursts_armed')} bursts, "
        f"{r.faults.get('burst_429s_served')} of their {r.faults.get('burst_429s_armed')} 429s "
        f"served, {r.faults.get('bursts_skipped')} skipped); "
        f"5xx answers {r.polar_5xx}; one-shot faults fired "
        + ", ".join(
            f"{endpoint} {fired} of {r.faults['one_shots_armed'][endpoint]}"
            for endpoint, fired in r.faults.get("one_shots_fired", {}).items()
        ),
        f"  peak Polar calls in any 60 s: {r.peak_calls_per_minute} (service share {share}/min, "
        f"sandbox limit {SANDBOX_LIMIT}/min){peak_note}",
        f"  processes      : {procs.get('worker_kills')} worker SIGKILLs, "
        f"{procs.get('worker_restarts')} worker restarts, "
        f"{procs.get('worker_unexpected_exits')} workers exited on their own; Temporal "
        f"restarted {procs.get('temporal_restarts')} time(s), down "
        f"{procs.get('temporal_down_seconds')} s",
        "  runs by status : " + ", ".join(f"{k} {v}" for k, v in r.runs_by_status.items()),
        f"  grants         : {r.grants.get('events')} events, {r.grants.get('expected')} expected, "
        f"{r.grants.get('duplicates')} duplicates, {r.grants.get('missing')} missing, "
        f"{r.grants.get('unexpected')} unexpected",
        "",
        "checks:",
    ]
    for c in r.checks:
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
    for warning in r.warnings:
        lines.append(f"  WARN  {warning}")
    if r.bad_runs:
        lines.append("runs that are not as they should be (first 10):")
        for order_id, why in list(r.bad_runs.items())[:10]:
            lines.append(f"  order-credits-{order_id}: {why}")
    return "\n".join(lines)


def loud(title: str, details: list[str]) -> str:
    bar = "#" * BANNER_WIDTH
    body = [f"###  {title}"] + [f"###    - {d}" for d in details]
    return "\n".join(["", bar, bar, *(line[: BANNER_WIDTH * 2] for line in body), bar, bar, ""])


# --- Entry points -------------------------------------------------------------------------


def chaos_env(opts: ChaosOptions, config: StackConfig) -> dict[str, str]:
    env = bench_env(config)
    env.update(
        STANDIN_PRESET="sandbox",  # read by `python -m tools.standin serve`
        POLAR_RATE_LIMIT_PER_MINUTE=str(opts.rate_limit_share),
        POLAR_TIMEOUT_SECONDS=f"{opts.polar_timeout:g}",
        CREDITS_VERIFY_FIRST_CHECK_SECONDS=f"{opts.verify_first_check:g}",
        CREDITS_VERIFY_TIMEOUT_SECONDS=f"{opts.verify_timeout:g}",
    )
    return env


@contextlib.contextmanager
def chaos_stack(opts: ChaosOptions) -> Iterator[Chaos]:
    """A started private stack and its Chaos driver; on the way out, every process it
    started (restarts included) is stopped by PID, whatever happened.

    Raises StackError when the stack itself cannot run (the run is void, not failed)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1, 10**9)
    data_dir = Path(tempfile.mkdtemp(prefix="polar-credits-chaos-"))
    config = dataclasses.replace(bench_config(data_dir), standin_balance_lag=opts.balance_lag)
    stack = Stack(config.log_dir, chaos_env(opts, config))
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    report = ChaosReport(seed=seed, options=options, data_dir=str(data_dir))
    keep = opts.keep_data
    try:
        print(f"Starting a private stack in {data_dir} (seed {seed})", flush=True)
        start_stack(stack, config)
        yield Chaos(opts, seed, stack, config, report)
    except BaseException:
        keep = True
        raise
    finally:
        # Workers and the API first, Temporal last (whichever of its runs is alive).
        stack.children.sort(key=lambda c: 0 if c.name.startswith("temporal") else 1)
        stack.stop_all()
        if keep or not report.ok or report.warnings:
            print(f"data and logs kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def run_chaos(opts: ChaosOptions) -> ChaosReport:
    """The whole chaos run, from a program with no event loop running."""
    with chaos_stack(opts) as chaos:
        asyncio.run(chaos.run())
    return chaos.report


async def run_chaos_async(opts: ChaosOptions) -> ChaosReport:
    """The same, from a running event loop (tests). Starting and stopping block it."""
    with chaos_stack(opts) as chaos:
        await chaos.run()
    return chaos.report


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        report = run_chaos(opts)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: the chaos run's processes are stopped", flush=True)
        return 130
    except StackError as exc:
        print(loud("CHAOS RUN VOID: the stack itself broke", [str(exc).splitlines()[0]]))
        print(f"chaos: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        traceback.print_exc()
        print(loud("CHAOS RUN VOID: the harness crashed", ["see the traceback above"]))
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(report), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
        print(f"results written to {opts.json}", flush=True)
    if not report.ok:
        failed = report.failed_checks
        print(
            loud(
                f"CHAOS RUN FAILED: {len(failed)} of {len(report.checks)} checks failed",
                [f"{c['name']}: {c['detail']}" for c in failed],
            ),
            flush=True,
        )
        return 1
    print(f"\nCHAOS RUN PASSED: all {len(report.checks)} checks hold.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
