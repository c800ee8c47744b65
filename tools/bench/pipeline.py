"""`make bench`: the webhook pipeline measured end to end on this machine.

Starts its own stack exactly as `make run` does (same command lines and environment, from
tools.stack), but on free 127.0.0.1 ports, in a temporary data directory, with the
stand-in's balance lag at 0. Then it measures:

1. webhook acknowledgement latency, open loop at --rate deliveries/s for --duration s;
2. order.paid -> grant ingested, at low load (one delivery every 0.5 s);
3. resident memory of the API and worker processes after --memory-webhooks deliveries,
   once every run they started is closed.

Every process is stopped by PID at the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.client import Client

from polar_credits.settings import Settings
from tests.support.signing import polar_signed_headers
from tools.stack import (
    LOCAL_HOST,
    STANDIN_TOKEN,
    STANDIN_WEBHOOK_SECRET,
    Interrupted,
    Stack,
    StackConfig,
    StackError,
    child_env,
    resolve_program,
    start_stack,
)
from tools.standin.payloads import webhook_body
from tools.standin.seed import DEMO_PRODUCT_ID

# Targets from the issue.
ACK_P99_TARGET_MS = 20.0
INGEST_P50_TARGET_MS = 300.0
RSS_TARGET_MIB = 300.0

RULE_ID = "starter-pack-bonus"  # examples/demo-rules.toml: 10 units for DEMO_PRODUCT_ID
MIB = 1024 * 1024


# --- Arguments ----------------------------------------------------------------------------


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json and --keep-data, the same in every benchmark that runs a private stack."""
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the temporary data directory (databases, logs)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.pipeline",
        description="Benchmark the webhook pipeline on a private local stack (make bench).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10 s of latency, 10 ingest samples, 500 webhooks for memory",
    )
    parser.add_argument("--duration", type=float, help="seconds of the latency phase (60)")
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="deliveries/s offered in the latency and memory phases (%(default)s)",
    )
    parser.add_argument(
        "--memory-webhooks", type=int, help="deliveries before the memory reading (10000)"
    )
    parser.add_argument("--ingest-samples", type=int, help="samples of order.paid -> ingest (40)")
    parser.add_argument(
        "--ingest-interval",
        type=float,
        default=0.5,
        help="seconds between ingest-latency deliveries (%(default)s)",
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=5,
        help="stand-in customers the deliveries are spread over (%(default)s)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=1800.0,
        help="longest wait for the worker to close every run (%(default)s s)",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 10.0 if quick else 60.0
    if args.memory_webhooks is None:
        args.memory_webhooks = 500 if quick else 10_000
    if args.ingest_samples is None:
        args.ingest_samples = 10 if quick else 40
    for name in ("duration", "rate", "ingest_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    for name in ("memory_webhooks", "ingest_samples", "customers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --- Machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    return platform.platform()


def temporal_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [*resolve_program(["temporal"]), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return out.strip().splitlines()[0]
    return "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": os_name(),
        "temporal": temporal_version(),
    }


# --- Statistics ---------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least pct % of the samples at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def peak_in_window(times: Iterable[float], window: float = 60.0) -> int:
    """The most timestamps in any half-open window of `window` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
    }


# --- The private stack --------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct ports the OS picked on 127.0.0.1 (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCAL_HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def bench_config(data_dir: Path) -> StackConfig:
    temporal_port, ui_port, standin_port, api_port = free_ports(4)
    return StackConfig(
        data_dir=data_dir,
        temporal_host=LOCAL_HOST,
        temporal_port=temporal_port,
        temporal_ui_port=ui_port,
        temporal_ui_url=f"http://{LOCAL_HOST}:{ui_port}",
        namespace="default",
        standin_port=standin_port,
        api_host=LOCAL_HOST,
        api_port=api_port,
        use_standin=True,
        standin_balance_lag=0,  # the stand-in answers balances at once
    )


def bench_env(config: StackConfig) -> dict[str, str]:
    """The launcher's child environment, from a base free of the user's service settings."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POLAR_", "CREDITS_", "TEMPORAL_", "STANDIN_"))
    }
    # Reconciliation off: the benchmarks post made-up orders whose bodies are copied from real
    # stand-in orders that are never delivered, so a reconciliation run would (rightly) credit
    # those templates too, at whichever 10-minute mark falls inside the run. The benchmarks
    # measure the webhook path; tests/e2e/test_reconcile.py and tools.bench.backfill cover the rest.
    base["CREDITS_RECONCILE_INTERVAL_SECONDS"] = "0"
    # Defaults only (no environment read): the stand-in and the demo rules file.
    return child_env(Settings.model_construct(), config, base)


def process_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


# --- Deliveries ---------------------------------------------------------------------------


@dataclass
class Delivery:
    order_id: str
    customer_id: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Answer:
    order_id: str
    scheduled: float  # loop clock
    lag: float  # how late the client started sending (its own queueing)
    latency: float  # scheduled send time -> response received
    status: int | None
    sent_wall: float  # time.time() when the request was sent


class Orders:
    """order.paid bodies from real stand-in orders, each with a fresh order id."""

    def __init__(self, templates: list[dict[str, Any]], secret: str) -> None:
        self.templates = templates
        self.secret = secret
        self.count = 0

    def next(self, template: dict[str, Any] | None = None) -> Delivery:
        if template is None:
            template = self.templates[self.count % len(self.templates)]
        self.count += 1
        order_id = str(uuid.uuid4())
        payload = webhook_body("order.paid", {**template, "id": order_id}, time.time())
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Delivery(
            order_id, template["customer_id"], body, polar_signed_headers(self.secret, body)
        )


async def standin_order_templates(standin: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """`count` new customers, each with one paid order (not delivered), as Polar's Order JSON."""
    templates = []
    for _ in range(count):
        email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
        customer = await admin(
            standin, "POST", "/admin/customers", {"email": email, "name": "Bench Buyer"}
        )
        created = await admin(
            standin,
            "POST",
            "/admin/orders",
            {
                "customer_id": customer["id"],
                "product_id": DEMO_PRODUCT_ID,
                "deliver": False,
            },
        )
        templates.append(await admin(standin, "GET", f"/v1/orders/{created['order']['id']}"))
    return templates


async def admin(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(method, path, json=body)
    if response.status_code >= 400:
        raise StackError(f"stand-in {method} {path} -> {response.status_code}: {response.text}")
    return response.json()


async def post(client: httpx.AsyncClient, url: str, delivery: Delivery, scheduled: float) -> Answer:
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent_wall = time.time()
    try:
        response = await client.post(url, content=delivery.body, headers=delivery.headers)
        status: int | None = response.status_code
    except httpx.HTTPError:
        status = None
    return Answer(
        delivery.order_id,
        scheduled,
        started - scheduled,
        loop.time() - scheduled,
        status,
        sent_wall,
    )


async def open_loop(
    client: httpx.AsyncClient,
    url: str,
    make: Any,
    count: int,
    rate: float,
    label: str,
    progress_every: float = 15.0,
) -> list[Answer]:
    """Fire delivery i at t0 + i/rate whatever the earlier ones are doing; latency counts from
    the scheduled time, so any queueing (client or server) shows up in it."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1
    tasks: list[asyncio.Task[Answer]] = []
    next_report = t0 + progress_every
    for i in range(count):
        delivery = make()  # built (and signed) before its slot
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(client, url, delivery, scheduled)))
        if loop.time() >= next_report:
            done = [t.result() for t in tasks if t.done()]
            bad = sum(1 for a in done if not is_2xx(a.status))
            print(
                f"    {label}: {i + 1}/{count} sent, {len(done)} answered, {bad} non-2xx",
                flush=True,
            )
            next_report += progress_every
    return list(await asyncio.gather(*tasks))


def is_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def ack_figures(answers: list[Answer], rate: float) -> dict[str, Any]:
    figures = summary_ms([a.latency for a in answers])
    statuses: dict[str, int] = {}
    for a in answers:
        key = str(a.status) if a.status is not None else "error"
        statuses[key] = statuses.get(key, 0) + 1
    figures.update(
        rate=rate,
        non_2xx=sum(1 for a in answers if not is_2xx(a.status)),
        statuses=statuses,
        client_send_lag_p99_ms=percentile([a.lag * 1000 for a in answers], 99),
        client_send_lag_max_ms=max(a.lag for a in answers) * 1000,
    )
    return figures


# --- Temporal -----------------------------------------------------------------------------


ORDER_RUNS = "WorkflowType = 'OrderCreditsWorkflow'"


async def count(temporal: Client, query: str | None = None) -> int:
    return (await temporal.count_workflows(query)).count


async def count_orders(temporal: Client, query: str | None = None) -> int:
    """Order runs only: the Polar call budget's workflow never closes."""
    return await count(temporal, f"{ORDER_RUNS} AND {query}" if query else ORDER_RUNS)


async def wait_drained(temporal: Client, bound: float, label: str) -> dict[str, Any]:
    """Wait (bounded) until no run is open; report how long it took and what is left."""
    started = time.monotonic()
    last_report = started
    while True:
        running = await count_orders(temporal, 'ExecutionStatus = "Running"')
        now = time.monotonic()
        if running == 0 or now - started > bound:
            return {"open_runs": running, "drain_seconds": round(now - started, 1)}
        if now - last_report >= 15:
            print(f"    {label}: waiting for the worker, {running} runs open", flush=True)
            last_report = now
        await asyncio.sleep(0.5)


async def run_counts(temporal: Client) -> dict[str, int]:
    return {
        "total": await count_orders(temporal),
        "running": await count_orders(temporal, 'ExecutionStatus = "Running"'),
        "completed": await count_orders(temporal, 'ExecutionStatus = "Completed"'),
        "verified": await count_orders(temporal, 'CreditStatus = "verified"'),
        "failed": await count_orders(temporal, 'ExecutionStatus = "Failed"'),
    }


# --- Phases -------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    config: StackConfig
    pids: dict[str, int]
    api: httpx.AsyncClient = field(init=False)
    standin: httpx.AsyncClient = field(init=False)
    temporal: Client = field(init=False)
    orders: Orders = field(init=False)

    @property
    def webhook_url(self) -> str:
        return f"{self.config.api_url}/webhooks/polar"

    def rss_mib(self) -> dict[str, float]:
        return {name: process_rss(pid) / MIB for name, pid in self.pids.items()}

    async def warm_up(self) -> None:
        """A few deliveries, one at a time, so first-use costs are not measured."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            answer = await post(self.api, self.webhook_url, self.orders.next(), loop.time())
            if not is_2xx(answer.status):
                raise StackError(f"warm-up delivery answered {answer.status}; see the API log")
        await wait_drained(self.temporal, 60, "warm-up")

    async def ack_latency(self) -> dict[str, Any]:
        n = max(1, round(self.args.duration * self.args.rate))
        print(
            f"[1/3] webhook acknowledgement: {n} deliveries, open loop at {self.args.rate:g}/s",
            flush=True,
        )
        answers = await open_loop(
            self.api, self.webhook_url, self.orders.next, n, self.args.rate, "latency"
        )
        figures = ack_figures(answers, self.args.rate)
        figures.update(await wait_drained(self.temporal, self.args.drain_timeout, "latency"))
        print(
            f"    p50 {figures['p50']:.1f} ms, p90 {figures['p90']:.1f} ms, "
            f"p99 {figures['p99']:.1f} ms, max {figures['max']:.1f} ms, "
            f"non-2xx {figures['non_2xx']}",
            flush=True,
        )
        return figures

    async def ingest_latency(self) -> dict[str, Any]:
        n, interval = self.args.ingest_samples, self.args.ingest_interval
        print(
            f"[2/3] order.paid -> grant ingested: {n} deliveries, one every {interval:g} s",
            flush=True,
        )
        # A customer of its own, so its event list holds only these samples.
        (template,) = await standin_order_templates(self.standin, 1)
        answers = await open_loop(
            self.api,
            self.webhook_url,
            lambda: self.orders.next(template),
            n,
            1 / interval,
            "ingest",
        )
        drained = await wait_drained(self.temporal, self.args.drain_timeout, "ingest")
        sent = {a.order_id: a.sent_wall for a in answers if is_2xx(a.status)}
        # The stand-in stores time.time() at ingest (same machine, same clock).
        events = (
            await admin(self.standin, "GET", f"/admin/events?customer_id={template['customer_id']}")
        )["events"]
        delays = []
        for event in events:
            order_id = order_of(event["external_id"])
            if order_id in sent:
                delays.append(event["ingested_at"] - sent.pop(order_id))
        figures = summary_ms(delays)
        figures.update(drained, missing=len(sent), deliveries=n)
        print(
            f"    p50 {figures['p50']:.0f} ms, p90 {figures['p90']:.0f} ms, "
            f"max {figures['max']:.0f} ms, missing {len(sent)}",
            flush=True,
        )
        return figures

    async def memory(self) -> dict[str, Any]:
        n, rate = self.args.memory_webhooks, self.args.rate
        print(
            f"[3/3] memory: {n} deliveries, open loop at {rate:g}/s "
            f"(about {n / rate / 60:.0f} min)",
            flush=True,
        )
        before = self.rss_mib()
        runs_before = await count_orders(self.temporal)
        peak = dict(before)
        backlog_peak = 0
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal backlog_peak
            while not stop.is_set():
                for name, mib in self.rss_mib().items():
                    peak[name] = max(peak[name], mib)
                backlog_peak = max(
                    backlog_peak, await count_orders(self.temporal, 'ExecutionStatus = "Running"')
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        try:
            answers = await open_loop(
                self.api, self.webhook_url, self.orders.next, n, rate, "memory", progress_every=30
            )
            sending = time.monotonic() - started
            drained = await wait_drained(self.temporal, self.args.drain_timeout, "memory")
        finally:
            stop.set()
            await sampler
        closed_in = time.monotonic() - started
        runs = await count_orders(self.temporal) - runs_before
        after = self.rss_mib()
        figures: dict[str, Any] = {
            "deliveries": n,
            "rate": rate,
            "non_2xx": sum(1 for a in answers if not is_2xx(a.status)),
            "ack": summary_ms([a.latency for a in answers]),
            "runs_started": runs,
            "send_seconds": round(sending, 1),
            "all_closed_seconds": round(closed_in, 1),
            "worker_runs_per_second": round(runs / closed_in, 1) if closed_in else None,
            "open_runs_peak_sampled": backlog_peak,
            **drained,
            "rss_mib_before": rounded(before),
            "rss_mib_peak_sampled": rounded(peak),
            "rss_mib": rounded(after),
            "api_plus_worker_mib": round(after["api"] + after["worker"], 1),
        }
        print(
            f"    API {after['api']:.1f} MiB + worker {after['worker']:.1f} MiB = "
            f"{figures['api_plus_worker_mib']:.1f} MiB; {runs} runs, "
            f"{drained['open_runs']} still open",
            flush=True,
        )
        return figures


def order_of(external_id: str) -> str | None:
    # polar-credits:order:<order id>:rule:<rule id>
    parts = external_id.split(":")
    return parts[2] if len(parts) == 5 and parts[1] == "order" else None


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in values.items()}


async def measure(args: argparse.Namespace, config: StackConfig, pids: dict[str, int]) -> dict:
    bench = Bench(args, config, pids)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with (
        httpx.AsyncClient(limits=limits, timeout=30.0) as bench.api,
        httpx.AsyncClient(
            base_url=config.standin_url,
            timeout=30.0,
            headers={"Authorization": f"Bearer {STANDIN_TOKEN}"},
        ) as bench.standin,
    ):
        bench.temporal = await Client.connect(config.temporal_address, namespace=config.namespace)
        bench.orders = Orders(
            await standin_order_templates(bench.standin, args.customers), STANDIN_WEBHOOK_SECRET
        )
        await bench.warm_up()
        results = {
            "ack": await bench.ack_latency(),
            "ingest": await bench.ingest_latency(),
            "memory": await bench.memory(),
        }
        results["runs"] = await run_counts(bench.temporal)
        return results


# --- Report -------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def table(results: dict[str, Any]) -> str:
    ack, ingest, memory = results["ack"], results["ingest"], results["memory"]
    rate, n = f"{ack['rate']:g}/s", memory["deliveries"]
    rss = memory["api_plus_worker_mib"]
    rows = [
        (f"webhook ack p50 ({rate} open loop)", f"{ack['p50']:.1f} ms", "", ""),
        ("webhook ack p90", f"{ack['p90']:.1f} ms", "", ""),
        (
            "webhook ack p99",
            f"{ack['p99']:.1f} ms",
            f"<= {ACK_P99_TARGET_MS:g} ms",
            verdict(ack["p99"], ACK_P99_TARGET_MS),
        ),
        ("webhook ack max", f"{ack['max']:.1f} ms", "", ""),
        (
            "webhook non-2xx answers",
            f"{ack['non_2xx']} of {ack['n']}",
            "0",
            verdict(ack["non_2xx"], 0),
        ),
        (
            "order.paid -> ingested p50",
            f"{ingest['p50']:.0f} ms",
            f"<= {INGEST_P50_TARGET_MS:g} ms",
            verdict(ingest["p50"], INGEST_P50_TARGET_MS),
        ),
        ("order.paid -> ingested p90", f"{ingest['p90']:.0f} ms", "", ""),
        ("order.paid -> ingested max", f"{ingest['max']:.0f} ms", "", ""),
        (f"RSS API after {n:,} webhooks", f"{memory['rss_mib']['api']:.1f} MiB", "", ""),
        (f"RSS worker after {n:,} webhooks", f"{memory['rss_mib']['worker']:.1f} MiB", "", ""),
        (
            "RSS API + worker",
            f"{rss:.1f} MiB",
            f"<= {RSS_TARGET_MIB:g} MiB",
            verdict(rss, RSS_TARGET_MIB),
        ),
        (
            f"runs still open after the {n:,}",
            str(memory["open_runs"]),
            "0",
            verdict(memory["open_runs"], 0),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("figure", "measured", "target", "")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths[:3]))
    for row in rows:
        lines.append(
            "  ".join(
                cell.rjust(w) if i == 1 else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(lines)


def report(machine: dict[str, Any], args: argparse.Namespace, results: dict[str, Any]) -> str:
    memory, ingest, runs = results["memory"], results["ingest"], results["runs"]
    lines = [
        "",
        f"polar-credits pipeline benchmark, {machine['date']}",
        f"  machine : {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['physical_cores']} cores), {machine['ram_gib']} GiB RAM",
        f"  software: {machine['python']}, {machine['os']}, {machine['temporal']}",
        "  stack   : Temporal dev server (SQLite file), stand-in (balance lag 0), worker, API; "
        "all on this machine",
        f"  runs    : {runs['total']} in total, {runs['verified']} verified, "
        f"{runs['failed']} failed, {runs['running']} open",
        f"  memory  : {memory['deliveries']:,} at {memory['rate']:g}/s sent in "
        f"{memory['send_seconds']:.0f} s, all runs closed after "
        f"{memory['all_closed_seconds']:.0f} s"
        f" ({memory['worker_runs_per_second']} runs/s); most open runs seen "
        f"{memory['open_runs_peak_sampled']}; memory-phase ack p99 {memory['ack']['p99']:.1f} ms",
        f"  RSS MiB : before {memory['rss_mib_before']}, peak {memory['rss_mib_peak_sampled']}, "
        f"after {memory['rss_mib']}",
        f"  ingest  : {ingest['n']} of {ingest['deliveries']} samples found, "
        f"client send lag p99 {results['ack']['client_send_lag_p99_ms']:.1f} ms",
        "",
        table(results),
    ]
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_guarded(
    body: Callable[[], int], stacks: list[Stack], data_dir: Path, keep_data: bool
) -> int:
    """Run a benchmark's body (which returns its exit status) with its stacks: every process is
    stopped by PID at the end, also on Ctrl-C, SIGTERM or an error; the data directory is kept
    when asked, or when the run failed. `body` may append stacks it starts to `stacks`."""
    # Both explicitly: a shell that starts us in the background leaves SIGINT ignored.
    previous = {
        sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    status = 1
    try:
        try:
            status = body()
        except (KeyboardInterrupt, Interrupted):
            print("\ninterrupted: stopping the benchmark's stack", flush=True)
            status = 130
        except StackError as exc:
            print(f"bench: {exc}", file=sys.stderr, flush=True)
        except Exception:
            traceback.print_exc()
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for stack in reversed(stacks):
                stack.stop_all()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if keep_data or status == 1:
        print(f"data and logs kept in {data_dir}", flush=True)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    data_dir = Path(tempfile.mkdtemp(prefix="polar-credits-bench-"))
    config = bench_config(data_dir)
    env = bench_env(config)
    # The stand-in runs Polar's production limit (500 a minute): give the service its
    # production share, as POLAR_SERVER=production would.
    env["POLAR_RATE_LIMIT_PER_MINUTE"] = str(
        Settings(polar_server="production").polar_budget_per_minute
    )
    stack = Stack(config.log_dir, env)

    def body() -> int:
        print(f"Starting a private stack in {data_dir}", flush=True)
        start_stack(stack, config)
        pids = {c.name: c.process.pid for c in stack.children}
        results = asyncio.run(measure(args, config, pids))
        stack.check_alive("during the benchmark")
        results["machine"] = machine
        results["settings"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        }
        print(report(machine, args, results), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"\nresults written to {args.json}")
        return 0

    return run_guarded(body, [stack], data_dir, args.keep_data)


if __name__ == "__main__":
    sys.exit(main())
