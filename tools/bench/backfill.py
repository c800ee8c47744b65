"""A backfill of many customers under Polar's sandbox rate limit, surviving a worker SIGKILL.

1. A private stack with `make run`'s command lines (tools.stack): file-backed Temporal
   dev server, the stand-in with `--preset sandbox` (100 calls a minute for the organization),
   the worker with POLAR_RATE_LIMIT_PER_MINUTE=60, the API with an operator token, on free
   127.0.0.1 ports, in a temporary directory. Reconciliation is off, as in every benchmark
   (tools.bench.pipeline.bench_env): its listings would share the budget and blur the figures.
2. N customers, each with an active subscription to one product, made through the stand-in's
   admin API (no Polar call, no webhook).
3. `POST /backfills` for that product. Once about half the customers are granted, the worker
   is killed with SIGKILL (by its PID) at the worst moment: the stand-in has stored the next
   page's grants and holds back its answer (a fault on `events.ingest`). A new worker starts.
4. Checked: the backfill completes; the stand-in holds exactly one grant per customer (N
   events, 0 duplicates, the right units); the report adds up (granted + already granted =
   N, nothing rejected), and the page stored when the worker died was found already granted;
   the service's Polar calls in any 60 s never exceed its share (60), counted from the
   stand-in's own request log.

`python -m tools.bench.backfill [--customers 5000]`; exit status 1 and a loud banner on any miss.
The smaller run in `make test` (tests/e2e/test_backfill_scale.py) runs the same scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tools.bench.burst import ORG_LIMIT_PER_MINUTE, PRESET, SERVICE_BUDGET_PER_MINUTE
from tools.bench.pipeline import (
    add_output_options,
    admin,
    bench_config,
    bench_env,
    machine_info,
    peak_in_window,
    run_guarded,
)
from tools.stack import (
    STANDIN_TOKEN,
    Stack,
    StackConfig,
    StackError,
    start_stack,
    worker_command,
)

OPERATOR_TOKEN = "bench-operator-token"
EVENT_NAME = "backfill_credits"
UNITS = 40
KILL_AT_SHARE = 0.5  # SIGKILL the worker once about this share of the customers is granted
CREATE_CONCURRENCY = 8
POLL_SECONDS = 0.25
# Polar holds back its answer to the page ingested when the worker is killed (less than
# polar-sdk's 10 s timeout): the worker dies after Polar stored the page, before it knew.
ANSWER_DELAY_MS = 8000


@dataclass
class Catalogue:
    meter_id: str
    product_id: str
    rules_file: Path


@dataclass
class Outcome:
    customers: int
    status: str = "not started"
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    setup_seconds: float = 0.0
    killed_at_customers: int | None = None
    worker_restarts: int = 0
    events: int = 0
    distinct_external_ids: int = 0
    customers_granted_once: int = 0
    customers_granted_twice_or_more: int = 0
    customers_missing: int = 0
    wrong_units: int = 0
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    rate_limited: int = 0
    peak_calls_per_60s: int = 0

    def problems(self) -> list[str]:
        n = self.customers
        found = []
        if self.status != "completed":
            found.append(f"the backfill ended {self.status}, not completed")
        if self.killed_at_customers is None:
            found.append("the worker was never killed mid-way")
        if self.events != n or self.distinct_external_ids != n:
            found.append(f"{self.events} grant events ({self.distinct_external_ids} ids), not {n}")
        if self.customers_granted_once != n:
            found.append(
                f"{self.customers_granted_once}/{n} customers granted exactly once "
                f"({self.customers_missing} missing, {self.customers_granted_twice_or_more} more)"
            )
        if self.wrong_units:
            found.append(f"{self.wrong_units} grants with the wrong units")
        report = self.report
        counted = report.get("granted", 0) + report.get("already_granted", 0)
        counted += report.get("unattributed", 0)
        if counted != n or report.get("rejected_total"):
            found.append(f"the report does not add up to {n}: {report}")
        if not report.get("already_granted"):
            found.append("the page stored when the worker died was not found already granted")
        if self.peak_calls_per_60s > SERVICE_BUDGET_PER_MINUTE:
            found.append(
                f"{self.peak_calls_per_60s} Polar calls in 60 s, over the share of "
                f"{SERVICE_BUDGET_PER_MINUTE}"
            )
        return found


def write_catalogue(data_dir: Path) -> Catalogue:
    data_dir.mkdir(parents=True, exist_ok=True)
    catalogue = Catalogue(str(uuid.uuid4()), str(uuid.uuid4()), data_dir / "backfill-rules.toml")
    catalogue.rules_file.write_text(
        "# No rule: the product's orders grant nothing; the backfill grants on the meter.\n"
        "rules = []\n\n"
        "[meters.credits]\n"
        f'id = "{catalogue.meter_id}"\n'
        f'event_name = "{EVENT_NAME}"\n'
        'property = "units"\n'
    )
    return catalogue


def service_env(config: StackConfig, catalogue: Catalogue) -> dict[str, str]:
    env = bench_env(config)
    env.update(
        STANDIN_PRESET=PRESET,
        POLAR_RATE_LIMIT_PER_MINUTE=str(SERVICE_BUDGET_PER_MINUTE),
        CREDITS_RULES_FILE=str(catalogue.rules_file),
        CREDITS_OPERATOR_TOKEN=OPERATOR_TOKEN,
    )
    return env


async def create_subscribers(standin: httpx.AsyncClient, catalogue: Catalogue, n: int) -> list[str]:
    await admin(
        standin,
        "POST",
        "/admin/meters",
        {"id": catalogue.meter_id, "name": "Credits", "event_name": EVENT_NAME},
    )
    await admin(
        standin,
        "POST",
        "/admin/products",
        {
            "id": catalogue.product_id,
            "name": "Backfilled plan",
            "price_amount": 1000,
            "recurring_interval": "month",
        },
    )
    # No webhooks: the subscriptions' own events are not what is measured.
    await admin(standin, "POST", "/admin/webhook-target", {"url": None, "secret": None})
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)
    tag = uuid.uuid4().hex[:8]

    async def one(i: int) -> str:
        async with sem:
            body = {"email": f"backfill-{tag}-{i}@example.com", "name": "Backfilled Customer"}
            customer = (await admin(standin, "POST", "/admin/customers", body))["id"]
            await admin(
                standin,
                "POST",
                "/admin/subscriptions",
                {"customer_id": customer, "product_id": catalogue.product_id},
            )
            return customer

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def kill_worker(stack: Stack) -> None:
    """SIGKILL the running worker by its PID (no shutdown at all), then start a new one."""
    [worker] = [c for c in stack.children if c.name == "worker" and c.process.poll() is None]
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    stack.children.remove(worker)
    stack.start("worker", worker_command())


async def run_backfill(
    config: StackConfig,
    stack: Stack,
    catalogue: Catalogue,
    n: int,
    bound: float,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Steps 2 to 4 on a started stack."""
    outcome = Outcome(customers=n)
    headers = {"Authorization": f"Bearer {STANDIN_TOKEN}"}
    async with (
        httpx.AsyncClient(base_url=config.standin_url, timeout=60.0, headers=headers) as standin,
        httpx.AsyncClient(
            base_url=config.api_url,
            timeout=30.0,
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as api,
    ):
        state = await admin(standin, "GET", "/admin/rate-limit")
        if state.get("per_minute") != ORG_LIMIT_PER_MINUTE:
            raise StackError(f"the stand-in's rate limit is {state}, not the sandbox preset")
        t0 = time.monotonic()
        customers = await create_subscribers(standin, catalogue, n)
        outcome.setup_seconds = time.monotonic() - t0
        say(f"    {n} customers subscribed in {outcome.setup_seconds:.0f} s")

        key = f"bench-{uuid.uuid4().hex[:8]}"
        body = {
            "key": key,
            "product_id": catalogue.product_id,
            "meter": "credits",
            "units": UNITS,
            "reason": "benchmark backfill",
        }
        started = time.monotonic()
        answer = await api.post("/backfills", json=body)
        if answer.status_code != 202:
            raise StackError(f"POST /backfills -> {answer.status_code}: {answer.text}")
        view = answer.json()
        last_said = 0.0
        while time.monotonic() - started < bound:
            response = await api.get(f"/backfills/{key}")
            if response.status_code == 200:
                view = response.json()
            progress = view.get("progress") or {}
            seen = progress.get("customers_seen", 0)
            if view["status"] != "running":
                break
            if outcome.killed_at_customers is None and seen >= n * KILL_AT_SHARE:
                outcome.killed_at_customers = seen
                say(
                    f"    at {seen}/{n} customers: SIGKILL the worker while Polar holds back "
                    "its answer to a page it has stored; a new worker starts"
                )
                await _kill_while_polar_answers(standin, stack, key)
                outcome.worker_restarts += 1
            if time.monotonic() - last_said > 15:
                last_said = time.monotonic()
                say(
                    f"    {time.monotonic() - started:5.0f} s: {seen}/{n} customers, "
                    f"granted {progress.get('granted', 0)}"
                )
            await asyncio.sleep(POLL_SECONDS)
        outcome.seconds = time.monotonic() - started
        outcome.status = view["status"]
        outcome.report = view.get("progress") or {}

        events = await _events(standin)
        requests = (await admin(standin, "GET", "/admin/requests"))["requests"]
    _count_grants(outcome, key, customers, events)
    _count_calls(outcome, requests)
    return outcome


async def _kill_while_polar_answers(standin: httpx.AsyncClient, stack: Stack, key: str) -> None:
    """The worst moment: Polar has stored a page's grants, its answer is on the way, and the
    worker dies. The page runs again on the new worker and must grant nothing twice."""
    before = len(_ours(await _events(standin), key))
    fault = {"endpoint": "events.ingest", "status": None, "count": 1}
    await admin(standin, "POST", "/admin/faults", fault | {"response_delay_ms": ANSWER_DELAY_MS})
    deadline = time.monotonic() + 120
    while len(_ours(await _events(standin), key)) <= before:
        if time.monotonic() > deadline:
            raise StackError("no page was ingested within 120 s of arming the delayed answer")
        await asyncio.sleep(0.1)
    await asyncio.to_thread(kill_worker, stack)


async def _events(standin: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await admin(standin, "GET", "/admin/events"))["events"]


def _ours(events: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    prefix = f"polar-credits:backfill:{key}:customer:"
    return [e for e in events if (e.get("external_id") or "").startswith(prefix)]


def _count_grants(
    outcome: Outcome, key: str, customers: list[str], events: list[dict[str, Any]]
) -> None:
    ours = _ours(events, key)
    outcome.events = len(ours)
    outcome.distinct_external_ids = len({e["external_id"] for e in ours})
    per_customer = Counter(e["customer_id"] for e in ours)
    outcome.customers_granted_once = sum(1 for c in customers if per_customer[c] == 1)
    outcome.customers_granted_twice_or_more = sum(1 for c in customers if per_customer[c] > 1)
    outcome.customers_missing = sum(1 for c in customers if per_customer[c] == 0)
    outcome.wrong_units = sum(1 for e in ours if (e.get("metadata") or {}).get("units") != -UNITS)


def _count_calls(outcome: Outcome, requests: list[dict[str, Any]]) -> None:
    calls: dict[str, Counter[str]] = {}
    for r in requests:
        calls.setdefault(r["endpoint"], Counter())[str(r["status"])] += 1
    outcome.calls = {k: dict(v) for k, v in sorted(calls.items())}
    outcome.rate_limited = sum(1 for r in requests if r["status"] == 429)
    # Every /v1 request the stand-in saw is the service's: this harness uses /admin only.
    outcome.peak_calls_per_60s = peak_in_window(r["at"] for r in requests)


def report(outcome: Outcome) -> str:
    r = outcome.report
    lines = [
        "",
        f"Backfill of {outcome.customers} customers (sandbox preset, share "
        f"{SERVICE_BUDGET_PER_MINUTE}/min), worker SIGKILLed at {outcome.killed_at_customers}",
        f"  status                    {outcome.status} in {outcome.seconds:.0f} s "
        f"(setup {outcome.setup_seconds:.0f} s)",
        f"  report                    pages {r.get('pages')}, runs {r.get('runs')}, granted "
        f"{r.get('granted')}, already granted {r.get('already_granted')}, unattributed "
        f"{r.get('unattributed')}, rejected {r.get('rejected_total')}",
        f"  grants in Polar           {outcome.events} events, {outcome.distinct_external_ids} "
        f"ids; {outcome.customers_granted_once} customers once, "
        f"{outcome.customers_granted_twice_or_more} more than once, "
        f"{outcome.customers_missing} missing",
        f"  Polar calls               {outcome.calls}",
        f"  busiest 60 s              {outcome.peak_calls_per_60s} calls "
        f"(share {SERVICE_BUDGET_PER_MINUTE}); {outcome.rate_limited} answered 429",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.backfill", description=__doc__)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--bound", type=float, default=900.0, help="seconds the backfill may take")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="polar-credits-backfill-"))
    config = bench_config(data_dir / "service")
    catalogue = write_catalogue(config.data_dir)
    stacks = [Stack(config.log_dir, service_env(config, catalogue))]

    def body() -> int:
        print(f"Starting the private stack in {config.data_dir}", flush=True)
        start_stack(stacks[0], config)
        outcome = asyncio.run(
            run_backfill(config, stacks[0], catalogue, args.customers, args.bound)
        )
        stacks[0].check_alive("after the backfill")
        print(report(outcome), flush=True)
        found = outcome.problems()
        if args.json:
            results = {"machine": machine_info(), "outcome": outcome.__dict__, "problems": found}
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        if found:
            print("\n!!! " + "\n!!! ".join(found), flush=True)
            return 1
        print("\nOK: every customer granted exactly once, within the share", flush=True)
        return 0

    return run_guarded(body, stacks, data_dir, args.keep_data)


if __name__ == "__main__":
    sys.exit(main())
