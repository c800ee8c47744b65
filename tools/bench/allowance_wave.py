"""A month-start wave of allowance grants under Polar's sandbox rate limit.

Rules with `every = "1 month"` grant through one long-running run per subscription
(workflows/subscription_allowance.py), each on a timer counted from the subscription's
`started_at`. When many subscriptions started at the same moment, all their next periods come
due at once. The claim measured: the grants of such a wave go through the worker's one gateway
to Polar batched and paced (a small fraction of a call per grant, no 429 storm, never more
than the service's share in any minute), and each period is granted exactly once.

1. A private stack with `make run`'s command lines (tools.stack): file-backed Temporal
   dev server, the stand-in with `--preset sandbox` (100 calls a minute for the organization),
   the worker with POLAR_RATE_LIMIT_PER_MINUTE=60, the API, on free 127.0.0.1 ports, in a
   temporary directory. Its rules file holds one rule: a monthly allowance on a yearly
   product, both (and the meter) created in the stand-in for this run.
2. The floor of that dev server: N bare workflows, each sleeping until one common moment
   (in-process worker, own task queue); the time from that moment until the last one closes.
3. Phase 1, the first paid orders: C customers and N subscriptions, each with its first
   `order.paid` (billing_reason subscription_create) created in the stand-in without delivery.
   Every subscription snapshot says `started_at` = `current_period_start` = the wave moment
   minus one month, `current_period_end` a year later. The signed webhooks are posted at once
   (--concurrency in flight; a non-2xx re-posted as Polar does, 2 s doubling, 10 attempts).
   Each starts an order run (no rule matches: it ends `no_rule`) and signal-with-starts the
   subscription's allowance run, which grants period 0 at once. The wave moment is chosen so
   that all of this is over before it (--lead; checked).
4. Phase 2, the wave: at started_at + 1 month every run's timer fires at the same moment.
   Measured: the time from that moment until every period-1 grant is in Polar (the stand-in's
   events, keyed `polar-credits:subscription:<sub>:allowance:<rule>:period:<start>`), the
   service's Polar calls by kind and their 429s (the stand-in's request log: this harness
   calls only the stand-in's admin API), calls per grant, the busiest 60 s.
5. Checked: every subscription has exactly periods 0 and 1 granted, once each, with the
   rule's units; no run failed; every allowance run is `active` with CreditUnits of two
   periods, and a sample queried with `state` shows next_grant_at = started_at + 2 months.
   A failed run, a grant missing, doubled or out of place, a 429 storm (>= 1% of the calls),
   a minute over the service's share, a phase not finished within --bound, or a first phase
   that overran the wave prints a loud banner and exits 1.

Every process is stopped by PID at the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from polar_credits import search_attributes as sa
from polar_credits.cadence import Cadence, parse_cadence
from polar_credits.identity import allowance_external_id, allowance_workflow_id
from polar_credits.models.allowances import AllowanceState
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow
from tools.bench.burst import (
    CLOSED_STATUSES,
    ORG_LIMIT_PER_MINUTE,
    PRESET,
    SERVICE_BUDGET_PER_MINUTE,
    Order,
    Outcome,
    by_endpoint,
    check_rate_limit,
    deliver_all,
    delivery_figures,
    jsonable,
    render,
    secs,
    standin_events,
    standin_requests,
    stats,
    subtract,
)
from tools.bench.pipeline import (
    add_output_options,
    admin,
    bench_config,
    bench_env,
    count,
    machine_info,
    peak_in_window,
    percentile,
    run_guarded,
)
from tools.stack import (
    STANDIN_TOKEN,
    Stack,
    StackConfig,
    StackError,
    start_stack,
)
from tools.standin.payloads import webhook_body

# --- The scenario ---------------------------------------------------------------------------

RULE_ID = "wave-monthly-allowance"
EVERY = "1 month"
GRANT_UNITS = 100
METER_KEY = "wave_credits"
EVENT_NAME = "wave_usage"
PROPERTY = "units"
YEARLY_PRICE = 19000
ALLOWANCE_WORKFLOW = "SubscriptionAllowanceWorkflow"
ORDER_WORKFLOW = "OrderCreditsWorkflow"
BARE_WORKFLOW = "WaveBareTimerWorkflow"
ALLOWANCE_RUNS = f'WorkflowType = "{ALLOWANCE_WORKFLOW}"'
ORDER_RUNS = f'WorkflowType = "{ORDER_WORKFLOW}"'

# activities/gateway/scheduler.py: one ingest call takes at most this many events, this many bytes.
MAX_BATCH_EVENTS = 5000
MAX_BATCH_BYTES = 8 * 1024 * 1024

# The wave moment: this long after the first order is created, at least. On a 2-core VM
# phase 1 (create, post, two runs and a grant per subscription) took about 0.12 s a
# subscription (2026-11-30: 242 s for 2,000); 0.2 s and the margin cover a slower day.
LEAD_MARGIN_SECONDS = 120.0
LEAD_PER_SUBSCRIPTION = 0.2
# The bare-timer floor: its common moment comes this long after its first start.
FLOOR_LEAD_MARGIN = 20.0
FLOOR_LEAD_PER_WORKFLOW = 0.04

# Targets of the claim.
MAX_SERVICE_429_SHARE = 0.01
MAX_CALLS_PER_GRANT = 0.1

POLL_SECONDS = 2.0
EVENTS_POLL_SECONDS = 15.0
PROGRESS_SECONDS = 15.0
STATE_SAMPLES = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.allowance_wave",
        description="A month-start wave of allowance grants (rules with every) under Polar's "
        "sandbox rate limit, on a private local stack.",
    )
    parser.add_argument("--subscriptions", type=int, help="subscriptions in the wave (2000)")
    parser.add_argument("--customers", type=int, help="customers they belong to (500)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 200 subscriptions, 50 customers"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="webhook deliveries in flight at once in phase 1 (%(default)s)",
    )
    parser.add_argument(
        "--lead",
        type=float,
        help=f"seconds from the first order to the wave moment ({LEAD_MARGIN_SECONDS:g} + "
        f"{LEAD_PER_SUBSCRIPTION:g} x subscriptions)",
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=1800.0,
        help="longest wait for each phase to finish (%(default)s s)",
    )
    parser.add_argument(
        "--skip-floor", action="store_true", help="do not measure the bare-timer floor first"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (%(default)s)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.subscriptions is None:
        args.subscriptions = 200 if args.quick else 2000
    if args.customers is None:
        args.customers = 50 if args.quick else 500
    for name in ("subscriptions", "customers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.lead is None:
        args.lead = lead_seconds(args.subscriptions)
    if args.lead <= 0 or args.bound <= 0:
        parser.error("--lead and --bound must be above 0")
    return args


# --- Pure helpers (tests/test_bench_allowance_wave.py) ----------------------------------------


def lead_seconds(
    subscriptions: int,
    margin: float = LEAD_MARGIN_SECONDS,
    per_subscription: float = LEAD_PER_SUBSCRIPTION,
) -> float:
    return margin + per_subscription * subscriptions


def stamp(moment: datetime) -> str:
    """A period start as the service spells it in grant keys (whole seconds, UTC, Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wave_moment(now: float, lead: float) -> datetime:
    """The first whole second at least `lead` s after `now`."""
    return datetime.fromtimestamp(math.ceil(now + lead), UTC)


def anchor_for_wave(wave: datetime, every: str = EVERY) -> datetime:
    """The `started_at` whose period 1 starts exactly at `wave`.

    Counted like the service (polar_credits.cadence): months clamp to the month's last day,
    so some moments (Mar 29-31, the 31st after a 30-day month) are no period 1 of any start.
    Raises ValueError for those."""
    cadence = parse_cadence(every)
    anchor = cadence.start(wave, -1)  # going back may clamp too (Mar 31 -> Feb 28)
    if cadence.start(anchor, 1) != wave:
        raise ValueError(
            f"no subscription started one period ({cadence}) before {stamp(wave)} has its "
            "next period then (months clamp to their last day): run it on another day, or "
            "with another --lead"
        )
    return anchor


def grant_periods(anchor: datetime, every: str = EVERY, count: int = 3) -> list[str]:
    """The first `count` period starts of a subscription started at `anchor`."""
    cadence = parse_cadence(every)
    return [stamp(cadence.start(anchor, i)) for i in range(count)]


def subscription_snapshot(
    subscription_id: str, anchor: datetime, modified_at: datetime
) -> dict[str, Any]:
    """The subscription as the stand-in's order records it (`/admin/orders` subscription)."""
    return {
        "id": subscription_id,
        "status": "active",
        "recurring_interval": "year",
        "recurring_interval_count": 1,
        "started_at": anchor.isoformat(),
        "current_period_start": anchor.isoformat(),
        "current_period_end": Cadence(1, "year").start(anchor, 1).isoformat(),
        "modified_at": modified_at.isoformat(),
        "cancel_at_period_end": False,
    }


def rules_toml(meter_id: str, product_id: str) -> str:
    return f"""# tools/bench/allowance_wave.py: one monthly allowance on a yearly product.
[meters.{METER_KEY}]
id = "{meter_id}"
event_name = "{EVENT_NAME}"
property = "{PROPERTY}"

[[rules]]
id = "{RULE_ID}"
meter = "{METER_KEY}"
units = {GRANT_UNITS}
every = "{EVERY}"
products = ["{product_id}"]
"""


def wave_floor(
    grants: int, grant_bytes: int, budget_per_minute: float = SERVICE_BUDGET_PER_MINUTE
) -> dict[str, Any]:
    """The fewest ingest calls the wave needs (the gateway's batch limits), and how long they
    take at the service's share: calls = max(ceil(N / 5000), ceil(bytes / 8 MiB))."""
    calls = max(1, math.ceil(grants / MAX_BATCH_EVENTS), math.ceil(grant_bytes / MAX_BATCH_BYTES))
    return {
        "formula": "max(ceil(grants / 5000 events), ceil(grant bytes / 8 MiB)) calls "
        "at the service's share",
        "grants": grants,
        "grant_bytes": grant_bytes,
        "events_per_call": min(grants, MAX_BATCH_EVENTS),
        "calls": calls,
        "budget_per_minute": budget_per_minute,
        "seconds": calls * 60.0 / budget_per_minute,
    }


def grant_event(subscription_id: str, customer_id: str, period: str) -> dict[str, Any]:
    """One period's grant as activities/allowance.py sends it (for the byte count)."""
    return {
        "name": EVENT_NAME,
        "customer_id": customer_id,
        "external_id": allowance_external_id(subscription_id, RULE_ID, period),
        "metadata": {
            PROPERTY: -GRANT_UNITS,
            "rule_id": RULE_ID,
            "subscription_id": subscription_id,
            "period_start": period,
            "reason": "allowance",
            "source": "polar-credits",
        },
    }


def period_check(
    events: list[dict[str, Any]], subscriptions: Iterable[str], periods: list[str]
) -> dict[str, Any]:
    """How many times each subscription's periods are granted in Polar.

    An allowance grant is an event of the rule's meter with reason `allowance` and negative
    units; it belongs to a subscription and period by its metadata (so a grant under another
    key still counts: that is how a doubled grant would look), and it is also counted per
    external id (which Polar keeps unique). A grant of a known subscription for a period not in
    `periods` is `extra` (granted too early, or a period made up); one for an unknown
    subscription is `stray`. `complete`: subscriptions with every period in `periods` granted
    once and nothing else."""
    wanted = set(subscriptions)
    per: Counter[tuple[str, str]] = Counter()
    per_external: Counter[str] = Counter()
    first_at: dict[tuple[str, str], float] = {}
    extra: Counter[str] = Counter()
    stray = wrong_key = wrong_units = 0
    for event in events:
        metadata = event.get("metadata") or {}
        units = metadata.get(PROPERTY)
        if event.get("name") != EVENT_NAME or metadata.get("reason") != "allowance":
            continue
        if not isinstance(units, int | float) or units >= 0:
            continue
        subscription_id = metadata.get("subscription_id")
        period = metadata.get("period_start")
        if subscription_id not in wanted:
            stray += 1
            continue
        if period not in periods:
            extra[subscription_id] += 1
            continue
        key = (subscription_id, period)
        per[key] += 1
        external_id = event.get("external_id")
        per_external[external_id] += 1
        if external_id != allowance_external_id(subscription_id, RULE_ID, period):
            wrong_key += 1
        if units != -GRANT_UNITS:
            wrong_units += 1
        at = event.get("ingested_at")
        if at is not None and (key not in first_at or at < first_at[key]):
            first_at[key] = at
    by_period = []
    for period in periods:
        counts = [per[(s, period)] for s in wanted]
        times = [first_at[(s, period)] for s in wanted if (s, period) in first_at]
        by_period.append(
            {
                "period": period,
                "granted_once": sum(1 for n in counts if n == 1),
                "missing": sum(1 for n in counts if n == 0),
                "doubled": sum(1 for n in counts if n > 1),
                "ingested_at": sorted(times),
            }
        )
    complete = sum(1 for s in wanted if extra[s] == 0 and all(per[(s, p)] == 1 for p in periods))
    return {
        "subscriptions": len(wanted),
        "periods": by_period,
        "complete": complete,
        "extra": sum(extra.values()),
        "stray": stray,
        "wrong_key": wrong_key,
        "wrong_units": wrong_units,
        "max_per_external_id": max(per_external.values(), default=0),
    }


def in_window(requests: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The stand-in's logged /v1 calls with start <= at < end."""
    return [r for r in requests if start <= r["at"] < end]


def call_figures(requests: list[dict[str, Any]], grants: int) -> dict[str, Any]:
    """The service's Polar calls in one phase: by kind and status, 429s, per grant, batches."""
    calls = subtract(by_endpoint(requests))
    total = sum(sum(s.values()) for s in calls.values())
    rejected = sum(s.get("429", 0) for s in calls.values())
    ingest_ok = calls.get("events.ingest", {}).get("200", 0)
    accepted = [r["at"] for r in requests if r["status"] != 429]
    return {
        "calls": calls,
        "total": total,
        "rate_limited": rejected,
        "share_429": rejected / total if total else 0.0,
        "per_grant": total / grants if grants else math.nan,
        "events_per_ingest": grants / ingest_ok if ingest_ok else math.nan,
        "peak_accepted_per_60s": peak_in_window(accepted),
        "first_at": min((r["at"] for r in requests), default=None),
        "last_at": max((r["at"] for r in requests), default=None),
    }


def spread(times: list[float], origin: float) -> dict[str, float]:
    """Seconds after `origin`: first, p50, p90, last."""
    offsets = [t - origin for t in times]
    return {
        "n": len(offsets),
        "first": min(offsets) if offsets else math.nan,
        "p50": percentile(offsets, 50),
        "p90": percentile(offsets, 90),
        "last": max(offsets) if offsets else math.nan,
    }


# --- The stack ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Catalogue:
    meter_id: str
    product_id: str
    rules_file: Path


def stack_config(data_dir: Path) -> StackConfig:
    # Grants are not verified on a cadence: Polar's recomputation lag changes nothing here.
    return bench_config(data_dir)


def service_env(config: StackConfig, rules_file: Path) -> dict[str, str]:
    env = bench_env(config)
    env.update(
        STANDIN_PRESET=PRESET,  # read by `python -m tools.standin serve`: make run's command line
        POLAR_RATE_LIMIT_PER_MINUTE=str(SERVICE_BUDGET_PER_MINUTE),
        CREDITS_RULES_FILE=str(rules_file),
    )
    return env


def write_catalogue(data_dir: Path) -> Catalogue:
    """The rules file, before the worker and the API read it; the meter and the product get
    these ids in the stand-in once it runs (create_catalogue)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    catalogue = Catalogue(str(uuid.uuid4()), str(uuid.uuid4()), data_dir / "wave-rules.toml")
    catalogue.rules_file.write_text(rules_toml(catalogue.meter_id, catalogue.product_id))
    return catalogue


async def create_catalogue(standin: httpx.AsyncClient, catalogue: Catalogue) -> None:
    await admin(
        standin,
        "POST",
        "/admin/meters",
        {
            "id": catalogue.meter_id,
            "name": "Wave credits",
            "event_name": EVENT_NAME,
            "property": PROPERTY,
        },
    )
    await admin(
        standin,
        "POST",
        "/admin/products",
        {
            "id": catalogue.product_id,
            "name": "Wave yearly",
            "price_amount": YEARLY_PRICE,
            "recurring_interval": "year",
        },
    )


# --- The bare-timer floor -------------------------------------------------------------------


@workflow.defn(name=BARE_WORKFLOW, sandboxed=False)
class BareTimerWorkflow:
    """A timer until a common moment, then completion: what a wave costs the dev server, at
    least."""

    @workflow.run
    async def run(self, at: float) -> None:
        delay = at - workflow.now().timestamp()
        if delay > 0:
            await workflow.sleep(delay)


async def timer_floor(temporal: Client, n: int, concurrency: int, bound: float) -> dict[str, Any]:
    task_queue = f"wave-bare-{secrets.token_hex(4)}"
    lead = FLOOR_LEAD_MARGIN + FLOOR_LEAD_PER_WORKFLOW * n
    sem = asyncio.Semaphore(concurrency)
    query = f'WorkflowType = "{BARE_WORKFLOW}"'
    at = math.ceil(time.time() + lead)

    async def start(i: int) -> None:
        async with sem:
            await temporal.start_workflow(
                BARE_WORKFLOW, at, id=f"wave-bare-{i}-{task_queue}", task_queue=task_queue
            )

    async with Worker(temporal, task_queue=task_queue, workflows=[BareTimerWorkflow]):
        t0 = time.time()
        await asyncio.gather(*(start(i) for i in range(n)))
        started_in = time.time() - t0
        deadline = time.monotonic() + max(0.0, at - time.time()) + bound
        done = 0
        while time.monotonic() < deadline:
            done = await count(temporal, f'{query} AND ExecutionStatus = "Completed"')
            if done >= n:
                break
            await asyncio.sleep(0.5)
    closes = []
    async for execution in temporal.list_workflows(query):
        if execution.close_time is not None:
            closes.append(execution.close_time.timestamp())
    on_time = t0 + started_in < at
    figures = spread(closes, at)
    return {
        "workflows": n,
        "completed": done,
        "starts_seconds": started_in,
        "all_started_before_the_moment": on_time,
        "closed_after": figures,
        "seconds": figures["last"] if done >= n and on_time else math.nan,
    }


# --- Phase 1: the first paid orders -------------------------------------------------------


@dataclasses.dataclass
class Subscription:
    subscription_id: str
    customer_id: str
    order: Order


async def create_customers(standin: httpx.AsyncClient, n: int, concurrency: int = 8) -> list[str]:
    sem = asyncio.Semaphore(concurrency)
    tag = secrets.token_hex(4)

    async def customer(i: int) -> str:
        async with sem:
            body = {"email": f"wave-{tag}-{i}@example.com", "name": "Wave Subscriber"}
            return (await admin(standin, "POST", "/admin/customers", body))["id"]

    return list(await asyncio.gather(*(customer(i) for i in range(n))))


async def create_subscriptions(
    standin: httpx.AsyncClient,
    customer_ids: list[str],
    n: int,
    product_id: str,
    anchor: datetime,
    concurrency: int = 8,
) -> list[Subscription]:
    """N first orders (subscription_create) in the stand-in, not delivered: the admin API only,
    so no Polar call (and no rate-limit slot) is spent on them."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Subscription:
        customer_id = customer_ids[i % len(customer_ids)]
        subscription_id = str(uuid.uuid4())
        snapshot = subscription_snapshot(subscription_id, anchor, datetime.now(UTC))
        async with sem:
            created = await admin(
                standin,
                "POST",
                "/admin/orders",
                {
                    "customer_id": customer_id,
                    "product_id": product_id,
                    "billing_reason": "subscription_create",
                    "subscription": snapshot,
                    "deliver": False,
                },
            )
        data = created["order"]  # the same JSON as GET /v1/orders/{id}, without spending a call
        payload = webhook_body("order.paid", data, time.time())
        body = json.dumps(payload, separators=(",", ":")).encode()
        order = Order(data["id"], customer_id, body, f"msg_{secrets.token_hex(12)}")
        return Subscription(subscription_id, customer_id, order)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def runs_of(temporal: Client, query: str) -> dict[str, Any]:
    """How the runs of one workflow type stand: execution status and CreditStatus."""
    executions: Counter[str] = Counter()
    credit: Counter[str] = Counter()
    total = 0
    async for execution in temporal.list_workflows(query):
        total += 1
        executions[CLOSED_STATUSES.get(execution.status, str(execution.status))] += 1
        credit[execution.typed_search_attributes.get(sa.CREDIT_STATUS) or "(unset)"] += 1
    return {
        "total": total,
        "execution_status": dict(sorted(executions.items())),
        "credit_status": dict(sorted(credit.items())),
    }


async def sample_states(
    temporal: Client, subscription_ids: list[str], next_grant_at: str, grants_total: int
) -> dict[str, Any]:
    """The `state` query of sampled runs: active, with this next grant and this many grants."""
    good = 0
    seen: Counter[str] = Counter()
    for subscription_id in subscription_ids:
        handle = temporal.get_workflow_handle(allowance_workflow_id(subscription_id))
        state: AllowanceState = await handle.query(SubscriptionAllowanceWorkflow.state)
        ok = (
            state.status == "active"
            and state.next_grant_at == next_grant_at
            and state.grants_total == grants_total
            and state.units_total == grants_total * GRANT_UNITS
            and not state.skipped
        )
        good += ok
        seen[
            f"{state.status}, next {state.next_grant_at}, {state.grants_total} grants, "
            f"{state.units_total} units, {len(state.skipped)} skipped"
        ] += 1
    return {
        "sampled": len(subscription_ids),
        "as_expected": good,
        "expected": f"active, next_grant_at {next_grant_at}, {grants_total} grants",
        "seen": dict(seen),
    }


async def history_sample(
    temporal: Client, subscription_ids: list[str], wave: float
) -> dict[str, Any]:
    """Sampled allowance runs: history size, and when the period-1 timer fired and its grant
    activity was scheduled and completed, in seconds after the wave moment."""
    events, tasks, fired, scheduled, completed = [], [], [], [], []
    for subscription_id in subscription_ids:
        handle = temporal.get_workflow_handle(allowance_workflow_id(subscription_id))
        history = await handle.fetch_history()
        kinds = Counter(e.event_type for e in history.events)
        events.append(float(len(history.events)))
        tasks.append(float(kinds[EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]))

        def after(kind: int, history: Any = history) -> list[float]:
            return [
                e.event_time.ToDatetime(tzinfo=UTC).timestamp() - wave
                for e in history.events
                if e.event_type == kind
            ]

        timers = [t for t in after(EventType.EVENT_TYPE_TIMER_FIRED) if t > -1]
        if timers:
            fired.append(min(timers))
        sched = [t for t in after(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) if t > -1]
        if sched:
            scheduled.append(min(sched))
        done = [t for t in after(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) if t > -1]
        if done:
            completed.append(min(done))
    return {
        "sampled": len(subscription_ids),
        "events": stats(events),
        "workflow_tasks_completed": stats(tasks),
        "timer_fired": stats(fired),
        "grant_scheduled": stats(scheduled),
        "grant_completed": stats(completed),
    }


async def wait_for(
    label: str,
    bound: float,
    done: Any,
    progress: Any,
    check_alive: Any,
) -> tuple[bool, float]:
    """Poll `done()` until it is true or `bound` s pass; print `progress()` now and then."""
    started = time.monotonic()
    next_report = started + PROGRESS_SECONDS
    while True:
        check_alive()
        if await done():
            return True, time.monotonic() - started
        now = time.monotonic()
        if now - started > bound:
            return False, now - started
        if now >= next_report:
            print(f"    {label} +{now - started:.0f}s: {await progress()}", flush=True)
            next_report = now + PROGRESS_SECONDS
        await asyncio.sleep(POLL_SECONDS)


async def measure(
    args: argparse.Namespace, config: StackConfig, stack: Stack, catalogue: Catalogue
) -> dict[str, Any]:
    n = args.subscriptions
    rng = random.Random(args.seed)
    result: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=config.standin_url,
        timeout=60.0,
        headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
    ) as standin:
        await check_rate_limit(standin)
        await create_catalogue(standin, catalogue)
        temporal = await Client.connect(config.temporal_address, namespace=config.namespace)

        if args.skip_floor:
            result["floor_temporal"] = None
        else:
            print(
                f"[1/3] dev-server floor: {n} bare workflows, each a timer until one common "
                "moment (in-process worker)",
                flush=True,
            )
            floor = await timer_floor(temporal, n, args.concurrency, args.bound)
            result["floor_temporal"] = floor
            print(
                f"    {floor['completed']}/{n} closed; starts took {floor['starts_seconds']:.1f}"
                f" s; the last closed {secs(floor['closed_after']['last'])} after the moment",
                flush=True,
            )

        # -- phase 1 --------------------------------------------------------------------
        customer_ids = await create_customers(standin, args.customers)
        created_at = time.time()
        wave_at = wave_moment(created_at, args.lead)
        try:
            anchor = anchor_for_wave(wave_at)
        except ValueError as exc:
            raise StackError(str(exc)) from None
        periods = grant_periods(anchor)
        wave = wave_at.timestamp()
        print(
            f"[2/3] phase 1: {n} subscriptions of {args.customers} customers, started_at "
            f"{periods[0]}; their first order.paid posted at once ({args.concurrency} in "
            f"flight); the wave at {periods[1]}, {args.lead:.0f} s from now",
            flush=True,
        )
        subs = await create_subscriptions(
            standin, customer_ids, n, catalogue.product_id, anchor, concurrency=8
        )
        created_in = time.time() - created_at
        ids = [s.subscription_id for s in subs]
        owner = {s.subscription_id: s.customer_id for s in subs}
        outcomes = {s.order.order_id: Outcome(s.order.order_id) for s in subs}
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )

        async def events_now(checked: list[str]) -> dict[str, Any]:
            return period_check(await standin_events(standin), ids, checked)

        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
            t0 = time.time()
            delivery = asyncio.create_task(
                deliver_all(
                    client,
                    f"{config.api_url}/webhooks/polar",
                    [s.order for s in subs],
                    outcomes,
                    args.concurrency,
                )
            )

            async def phase1_done() -> bool:
                if not delivery.done():
                    return False
                delivery.result()  # re-raise a harness error
                acked = sum(1 for o in outcomes.values() if o.acked)
                if await count(temporal, f'{ORDER_RUNS} AND ExecutionStatus = "Running"'):
                    return False
                if await count(temporal, ORDER_RUNS) < acked:
                    return False
                units = await count(temporal, f"{ALLOWANCE_RUNS} AND CreditUnits >= {GRANT_UNITS}")
                if units < acked:
                    return False
                found = await events_now(periods[:1])
                return found["periods"][0]["granted_once"] + found["periods"][0]["doubled"] >= (
                    acked
                )

            async def phase1_progress() -> str:
                acked = sum(1 for o in outcomes.values() if o.acked)
                reposts = sum(max(0, o.attempts - 1) for o in outcomes.values())
                granted = await count(
                    temporal, f"{ALLOWANCE_RUNS} AND CreditUnits >= {GRANT_UNITS}"
                )
                orders = await count(temporal, f'{ORDER_RUNS} AND ExecutionStatus = "Running"')
                return (
                    f"{acked}/{n} acked, {reposts} re-posts; {orders} order runs open; "
                    f"{granted} allowance runs granted period 0; wave in "
                    f"{wave - time.time():.0f} s"
                )

            try:
                finished1, _ = await wait_for(
                    "phase 1",
                    args.bound,
                    phase1_done,
                    phase1_progress,
                    lambda: stack.check_alive("during phase 1"),
                )
            finally:
                if not delivery.done():
                    delivery.cancel()
                await asyncio.gather(delivery, return_exceptions=True)
        ended1 = time.time()
        grants1 = await events_now(periods[:1])
        requests1 = in_window(await standin_requests(standin), t0, ended1 + 1)
        p0 = grants1["periods"][0]
        sample = rng.sample(ids, min(STATE_SAMPLES, n))
        states1 = await sample_states(temporal, sample, periods[1], 1)
        result["phase1"] = {
            "finished": finished1,
            "t0": t0,
            "create_seconds": created_in,
            "ended_seconds": ended1 - t0,
            "spare_seconds": wave - ended1,
            "deliveries": delivery_figures(outcomes, t0),
            "grants": {k: v for k, v in grants1.items() if k != "periods"}
            | {"period": {k: v for k, v in p0.items() if k != "ingested_at"}},
            "ingested": spread(p0["ingested_at"], t0),
            "calls": call_figures(requests1, n),
            "order_runs": await runs_of(temporal, ORDER_RUNS),
            "allowance_runs": await runs_of(temporal, ALLOWANCE_RUNS),
            "states": states1,
        }
        r1 = result["phase1"]
        print(
            f"    phase 1 {'done' if finished1 else 'NOT done'} {r1['ended_seconds']:.1f} s "
            f"after the first post: period 0 granted once for {p0['granted_once']}/{n}; "
            f"{r1['calls']['total']} Polar calls; {r1['spare_seconds']:.0f} s before the wave",
            flush=True,
        )

        # -- phase 2: the wave ------------------------------------------------------------
        if wave - time.time() > 0:
            print(
                f"[3/3] the wave: waiting {wave - time.time():.0f} s for {periods[1]}", flush=True
            )
        await asyncio.sleep(max(0.0, wave - time.time()))
        stack.check_alive("before the wave")
        print(f"    the wave at {periods[1]}: {n} timers due at once", flush=True)
        events_at = [0.0]

        async def wave_done() -> bool:
            granted = await count(
                temporal, f"{ALLOWANCE_RUNS} AND CreditUnits >= {2 * GRANT_UNITS}"
            )
            if granted < n:
                return False
            if time.monotonic() - events_at[0] < 5.0:
                return False
            events_at[0] = time.monotonic()
            found = await events_now(periods[:2])
            return found["periods"][1]["missing"] == 0

        async def wave_progress() -> str:
            granted = await count(
                temporal, f"{ALLOWANCE_RUNS} AND CreditUnits >= {2 * GRANT_UNITS}"
            )
            calls = sum(1 for r in await standin_requests(standin) if r["at"] >= wave)
            return f"{granted}/{n} runs granted period 1; {calls} Polar calls since the wave"

        finished2, _ = await wait_for(
            "wave",
            args.bound,
            wave_done,
            wave_progress,
            lambda: stack.check_alive("during the wave"),
        )
        await asyncio.sleep(2.0)  # a doubled grant would be in flight now, if any
        ended2 = time.time()
        grants2 = await events_now(periods[:2])
        requests2 = in_window(await standin_requests(standin), wave, ended2)
        p1 = grants2["periods"][1]
        events = [grant_event(s, owner[s], periods[1]) for s in ids]
        grant_bytes = len(json.dumps({"events": events}).encode())
        result["phase2"] = {
            "finished": finished2,
            "wave": wave,
            "wave_at": periods[1],
            "ended_seconds": ended2 - wave,
            "grants": {k: v for k, v in grants2.items() if k != "periods"}
            | {
                "periods": [
                    {k: v for k, v in p.items() if k != "ingested_at"} for p in grants2["periods"]
                ]
            },
            "ingested": spread(p1["ingested_at"], wave),
            "calls": call_figures(requests2, n),
            "floor_budget": wave_floor(n, grant_bytes),
            "allowance_runs": await runs_of(temporal, ALLOWANCE_RUNS),
            "credit_units_two_periods": await count(
                temporal, f"{ALLOWANCE_RUNS} AND CreditUnits = {2 * GRANT_UNITS}"
            ),
            "states": await sample_states(temporal, sample, periods[2], 2),
            "history": await history_sample(temporal, sample, wave),
        }
        result["periods"] = periods
        return result


# --- Report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def calls_text(calls: dict[str, dict[str, int]]) -> str:
    parts = []
    for endpoint, statuses in sorted(calls.items()):
        total = sum(statuses.values())
        extra = ", ".join(f"{s} x{n}" for s, n in statuses.items() if s != "200")
        parts.append(f"{endpoint} {total}" + (f" ({extra})" if extra else ""))
    return "; ".join(parts) or "none"


def once_text(period: dict[str, Any], n: int) -> str:
    return (
        f"{period['granted_once']}/{n} (missing {period['missing']}, doubled {period['doubled']})"
    )


def runs_text(runs: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in runs["execution_status"].items()) or "none"


def statuses_text(runs: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in runs["credit_status"].items()) or "none"


def failed_runs(runs: dict[str, Any]) -> int:
    return sum(
        n
        for status, n in runs["execution_status"].items()
        if status in ("failed", "terminated", "timed_out", "canceled")
    )


def rows(results: dict[str, Any], n: int) -> list[tuple]:
    """(figure, phase 1, verdict, phase 2, verdict, target)."""
    r1, r2 = results["phase1"], results["phase2"]
    c1, c2 = r1["calls"], r2["calls"]
    p0 = r1["grants"]["period"]
    p0_after, p1 = r2["grants"]["periods"]
    floor, temporal = r2["floor_budget"], results.get("floor_temporal")
    s1, s2 = r1["states"], r2["states"]
    d = r1["deliveries"]
    i1, i2 = r1["ingested"], r2["ingested"]
    temporal_text = (
        f"{n} bare timers closed {secs(temporal['seconds'])} after their moment"
        if temporal
        else "not measured"
    )
    return [
        (
            "period granted exactly once",
            f"period 0: {once_text(p0, n)}",
            verdict(p0["granted_once"] == n),
            f"period 1: {once_text(p1, n)}",
            verdict(p1["granted_once"] == n),
            f"{n}/{n}",
        ),
        (
            "subscriptions with exactly periods 0+1",
            "",
            "",
            f"{r2['grants']['complete']}/{n} (period 0 still once: {p0_after['granted_once']}; "
            f"extra {r2['grants']['extra']}, stray {r2['grants']['stray']})",
            verdict(r2["grants"]["complete"] == n),
            f"{n}/{n}",
        ),
        (
            "grants in Polar: first / p50 / last",
            f"{i1['first']:.1f} / {i1['p50']:.1f} / {i1['last']:.1f} s after the first post",
            "",
            f"{i2['first']:.1f} / {i2['p50']:.1f} / {i2['last']:.1f} s after the wave moment",
            "",
            "",
        ),
        (
            "Polar calls by the service",
            calls_text(c1["calls"]),
            "",
            calls_text(c2["calls"]),
            "",
            "",
        ),
        (
            "Polar calls per grant",
            f"{c1['per_grant']:.3f}",
            verdict(c1["per_grant"] <= MAX_CALLS_PER_GRANT),
            f"{c2['per_grant']:.3f}",
            verdict(c2["per_grant"] <= MAX_CALLS_PER_GRANT),
            f"<= {MAX_CALLS_PER_GRANT:g}",
        ),
        (
            "grants per ingest call (mean)",
            f"{c1['events_per_ingest']:.1f}",
            "",
            f"{c2['events_per_ingest']:.1f}",
            "",
            "",
        ),
        (
            "service calls answered 429",
            f"{c1['rate_limited']} of {c1['total']} ({c1['share_429']:.1%})",
            verdict(c1["share_429"] < MAX_SERVICE_429_SHARE),
            f"{c2['rate_limited']} of {c2['total']} ({c2['share_429']:.1%})",
            verdict(c2["share_429"] < MAX_SERVICE_429_SHARE),
            f"< {MAX_SERVICE_429_SHARE:.0%} (0 expected)",
        ),
        (
            "calls accepted in the busiest 60 s",
            str(c1["peak_accepted_per_60s"]),
            verdict(c1["peak_accepted_per_60s"] <= SERVICE_BUDGET_PER_MINUTE),
            str(c2["peak_accepted_per_60s"]),
            verdict(c2["peak_accepted_per_60s"] <= SERVICE_BUDGET_PER_MINUTE),
            f"<= {SERVICE_BUDGET_PER_MINUTE} (share; org limit {ORG_LIMIT_PER_MINUTE})",
        ),
        (
            "wave: budget floor / Temporal floor",
            "",
            "",
            f"{floor['calls']} call(s) -> {floor['seconds']:.1f} s / {temporal_text}",
            "",
            "",
        ),
        (
            "runs (execution status)",
            f"orders {runs_text(r1['order_runs'])} ({statuses_text(r1['order_runs'])}); "
            f"allowance {runs_text(r1['allowance_runs'])}",
            verdict(failed_runs(r1["order_runs"]) == 0 and failed_runs(r1["allowance_runs"]) == 0),
            f"allowance {runs_text(r2['allowance_runs'])} "
            f"({statuses_text(r2['allowance_runs'])}), {r2['credit_units_two_periods']} with "
            f"CreditUnits {2 * GRANT_UNITS}",
            verdict(
                failed_runs(r2["allowance_runs"]) == 0
                and r2["allowance_runs"]["credit_status"].get("active", 0) == n
                and r2["credit_units_two_periods"] == n
            ),
            f"{n} running, active",
        ),
        (
            "state query (sampled)",
            f"{s1['as_expected']}/{s1['sampled']}: {s1['expected']}",
            verdict(s1["as_expected"] == s1["sampled"]),
            f"{s2['as_expected']}/{s2['sampled']}: {s2['expected']}",
            verdict(s2["as_expected"] == s2["sampled"]),
            "all",
        ),
        (
            "deliveries: acked / re-posted / lost",
            f"{d['acked']}/{n} / {d['reposts']} / {d['lost']}; all acked "
            f"{secs(d['all_acked_seconds'])} (1st answer p50/p99 "
            f"{d['first_attempt_ms']['p50']:.0f}/{d['first_attempt_ms']['p99']:.0f} ms)",
            verdict(d["acked"] == n),
            "",
            "",
            f"{n}/{n}",
        ),
        (
            "phase over before the wave moment",
            f"{r1['ended_seconds']:.1f} s after the first post, {r1['spare_seconds']:.0f} s "
            "to spare",
            verdict(r1["spare_seconds"] > 0),
            "",
            "",
            "> 0 s to spare",
        ),
    ]


def details(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    r1, r2 = results["phase1"], results["phase2"]
    h = r2["history"]
    floor = r2["floor_budget"]
    temporal = results.get("floor_temporal")
    lines = [
        f"  scenario: {args.subscriptions} subscriptions of {args.customers} customers, one "
        f'monthly allowance rule ({GRANT_UNITS} units, every = "{EVERY}") on a yearly '
        f"product; Polar sandbox limit {ORG_LIMIT_PER_MINUTE}/min, service share "
        f"{SERVICE_BUDGET_PER_MINUTE}/min; {args.concurrency} deliveries in flight",
        f"  periods : started_at {results['periods'][0]}, wave (period 1) "
        f"{results['periods'][1]}, next (period 2) {results['periods'][2]}; lead "
        f"{args.lead:.0f} s (orders created in {r1['create_seconds']:.1f} s)",
        f"  floor   : {floor['formula']} = max(ceil({floor['grants']} / 5000), "
        f"ceil({floor['grant_bytes']:,} B / 8 MiB)) = {floor['calls']} call(s) -> "
        f"{floor['seconds']:.1f} s at {SERVICE_BUDGET_PER_MINUTE}/min",
    ]
    if temporal:
        ca = temporal["closed_after"]
        lines.append(
            f"  Temporal: {temporal['workflows']} bare workflows, one timer each until a common "
            f"moment (starts took {temporal['starts_seconds']:.1f} s): closed after it "
            f"p50 {ca['p50']:.1f} s, last {secs(temporal['seconds'])}"
        )
    lines.append(
        f"  sampled : {h['sampled']} allowance runs after the wave: period-1 timer fired "
        f"{h['timer_fired']['mean']:.1f} s after the moment (max {h['timer_fired']['max']:.1f}),"
        f" grant activity scheduled {h['grant_scheduled']['mean']:.1f} s (max "
        f"{h['grant_scheduled']['max']:.1f}), completed {h['grant_completed']['mean']:.1f} s "
        f"(max {h['grant_completed']['max']:.1f}); history {h['events']['mean']:.0f} events, "
        f"{h['workflow_tasks_completed']['mean']:.0f} workflow tasks"
    )
    return lines


def claim(results: dict[str, Any], n: int) -> str:
    r2 = results["phase2"]
    c2 = r2["calls"]
    floor = r2["floor_budget"]
    wave_s = r2["ingested"]["last"]
    ratio = wave_s / floor["seconds"] if floor["seconds"] else math.nan
    return (
        f"Claim checked: {r2['grants']['complete']}/{n} subscriptions have periods 0 and 1 "
        f"granted exactly once; the wave's {n} grants took {c2['total']} Polar calls "
        f"({c2['per_grant']:.3f} a grant, {c2['events_per_ingest']:.1f} grants an ingest call) "
        f"with {c2['rate_limited']} answered 429 and at most {c2['peak_accepted_per_60s']} in "
        f"any 60 s (share {SERVICE_BUDGET_PER_MINUTE}); the last grant was in Polar "
        f"{secs(wave_s)} after the wave moment, {ratio:.0f}x the budget floor of "
        f"{floor['seconds']:.1f} s."
    )


def problems(results: dict[str, Any], n: int, bound: float) -> list[str]:
    """What makes the run a failure."""
    found = []
    r1, r2 = results["phase1"], results["phase2"]
    if not r1["finished"]:
        found.append(f"phase 1 not finished within --bound {bound:.0f} s")
    if r1["spare_seconds"] <= 0:
        found.append(
            f"phase 1 ended {-r1['spare_seconds']:.0f} s after the wave moment: the wave is not "
            "clean (raise --lead)"
        )
    d = r1["deliveries"]
    if d["lost"] or d["acked"] != n:
        found.append(f"{n - d['acked']} of {n} deliveries never acknowledged ({d['lost']} lost)")
    if not r2["finished"]:
        found.append(f"the wave not finished within --bound {bound:.0f} s")
    for label, runs in (
        ("order", r1["order_runs"]),
        ("allowance (phase 1)", r1["allowance_runs"]),
        ("allowance (after the wave)", r2["allowance_runs"]),
    ):
        if failed := failed_runs(runs):
            found.append(f"{failed} {label} runs failed ({runs['execution_status']})")
    if r1["order_runs"]["total"] != n:
        found.append(f"{r1['order_runs']['total']} order runs for {n} orders")
    if r2["allowance_runs"]["total"] != n:
        found.append(f"{r2['allowance_runs']['total']} allowance runs for {n} subscriptions")
    if (active := r2["allowance_runs"]["credit_status"].get("active", 0)) != n:
        found.append(f"{active} of {n} allowance runs active after the wave")
    if r2["credit_units_two_periods"] != n:
        found.append(
            f"{r2['credit_units_two_periods']} of {n} runs show CreditUnits {2 * GRANT_UNITS}"
        )
    for phase, grants in (("phase 1", r1["grants"]), ("the wave", r2["grants"])):
        periods = [grants["period"]] if "period" in grants else grants["periods"]
        for p in periods:
            if p["missing"]:
                found.append(f"{phase}: {p['missing']} grants for {p['period']} missing")
            if p["doubled"]:
                found.append(f"{phase}: {p['doubled']} grants for {p['period']} doubled")
        for key, what in (
            ("extra", "grants for a period not due"),
            ("stray", "grants for no subscription of the run"),
            ("wrong_key", "grants under an unexpected external id"),
            ("wrong_units", f"grants of other than {GRANT_UNITS} units"),
        ):
            if grants[key]:
                found.append(f"{phase}: {grants[key]} {what}")
        if grants["max_per_external_id"] > 1:
            found.append(f"{phase}: an external id stored {grants['max_per_external_id']} times")
    if r2["grants"]["complete"] != n:
        found.append(f"{n - r2['grants']['complete']} subscriptions without exactly periods 0+1")
    for phase, r in (("phase 1", r1), ("the wave", r2)):
        c = r["calls"]
        if c["share_429"] >= MAX_SERVICE_429_SHARE:
            found.append(f"{phase}: 429 storm, {c['rate_limited']} of {c['total']} calls")
        if c["peak_accepted_per_60s"] > SERVICE_BUDGET_PER_MINUTE:
            found.append(
                f"{phase}: {c['peak_accepted_per_60s']} calls in 60 s, over the share of "
                f"{SERVICE_BUDGET_PER_MINUTE}"
            )
        s = r["states"]
        if s["as_expected"] != s["sampled"]:
            found.append(
                f"{phase}: {s['sampled'] - s['as_expected']} of {s['sampled']} sampled runs "
                f"not '{s['expected']}': {s['seen']}"
            )
    return found


def loud(lines: list[str]) -> str:
    bar = "!" * 78
    body = [f"!!  {line}" for line in lines]
    return "\n".join(["", bar, "!!  ALLOWANCE WAVE BENCHMARK FAILED", *body, bar])


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    machine = results["machine"]
    header = ("figure", "phase 1: first paid orders", "", "phase 2: the wave", "", "target")
    return "\n".join(
        [
            "",
            f"polar-credits allowance wave benchmark, {machine['date']}",
            f"  machine : {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
            f"({machine['physical_cores']} cores), {machine['ram_gib']} GiB RAM",
            f"  software: {machine['python']}, {machine['os']}, {machine['temporal']}",
            *details(results, args),
            "",
            render(header, rows(results, args.subscriptions)),
            "",
            claim(results, args.subscriptions),
        ]
    )


# --- Main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # the same check runs again when the orders are made; fail before any start
        anchor_for_wave(wave_moment(time.time(), args.lead))
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    machine = machine_info()
    data_dir = Path(tempfile.mkdtemp(prefix="polar-credits-wave-"))
    config = stack_config(data_dir / "service")
    catalogue = write_catalogue(config.data_dir)
    stacks = [Stack(config.log_dir, service_env(config, catalogue.rules_file))]

    def body() -> int:
        print(f"Starting the private stack in {config.data_dir}", flush=True)
        start_stack(stacks[0], config)
        results: dict[str, Any] = {"machine": machine}
        results |= asyncio.run(measure(args, config, stacks[0], catalogue))
        stacks[0].check_alive("after the wave")
        results["settings"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        }
        print(report(results, args), flush=True)
        found = problems(results, args.subscriptions, args.bound)
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
