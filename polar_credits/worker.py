"""The Temporal worker: runs order-credits workflows, their activities, and the Polar budget.

Start it with `python worker.py`; settings come from the environment (docs/settings.md). Run as
many as you like against one Temporal cluster: they share one Polar call budget.

Stop it with SIGTERM or SIGINT, at any moment: before Temporal is connected it just exits;
once polling, it stops polling, cancels the activities still running (Temporal retries them)
and exits. If Temporal does not let the worker finish within STOP_TIMEOUT_SECONDS, or a
second signal comes, it exits without waiting. Exit status: 0 after a stop; 1 when Temporal
cannot be reached (no stop asked) or the worker fails; 2 on a bad setting or rules file
(including one that drops a rule key which has granted: polar_credits/rule_keys.py, and a
Temporal connection that can never work: a bad certificate, key, API key or namespace,
polar_credits/temporal_client/), or when the rules registry was written under an encryption
key the worker lacks. Each failure is one line naming the setting to fix.
"""

from __future__ import annotations

import signal

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_early_stops: list[int] = []  # stop signals that came before the event loop took them over


def _remember_stop(signum: int, frame: object) -> None:
    _early_stops.append(signum)


def _catch_stop_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _remember_stop)


if __name__ == "__main__":
    # The imports below take a second or two: a stop meanwhile is remembered, not fatal.
    _catch_stop_signals()

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from typing import NoReturn  # noqa: E402

from polar.v2026_10 import PolarAsync  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.runtime import Runtime  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from polar_credits.activities.allowance import AllowanceActivities  # noqa: E402
from polar_credits.activities.backfill import BackfillActivities  # noqa: E402
from polar_credits.activities.budget import TemporalBudget  # noqa: E402
from polar_credits.activities.credits import CreditActivities  # noqa: E402
from polar_credits.activities.gateway import PolarGateway  # noqa: E402
from polar_credits.activities.ledger import LedgerActivities  # noqa: E402
from polar_credits.activities.operator import OperatorActivities  # noqa: E402
from polar_credits.activities.reconcile import ReconcileActivities  # noqa: E402
from polar_credits.activities.recover import RecoverActivities  # noqa: E402
from polar_credits.codec import PayloadDecryptionError  # noqa: E402
from polar_credits.logsafe import configure_logging  # noqa: E402
from polar_credits.reconcile_schedule import ensure_reconcile_schedule  # noqa: E402
from polar_credits.rule_keys import (  # noqa: E402
    DroppedRuleKeys,
    check_rule_keys,
)
from polar_credits.rules import RulesError, RulesFile, load_rules  # noqa: E402
from polar_credits.settings import Settings, SettingsError, load_settings  # noqa: E402
from polar_credits.starters.registry import record_rule_keys  # noqa: E402
from polar_credits.temporal_client import (  # noqa: E402
    TemporalConnection,
    TemporalUnreachable,
    connect_temporal,
    resolve_temporal,
)
from polar_credits.worker_health import HealthServer, WorkerHealth, internal_port  # noqa: E402
from polar_credits.worker_metrics import GatewayMetrics, client_meter, worker_runtime  # noqa: E402
from polar_credits.workflows.backfill import BackfillWorkflow  # noqa: E402
from polar_credits.workflows.customer_ledger import CustomerLedgerWorkflow  # noqa: E402
from polar_credits.workflows.manual_grant import ManualGrantWorkflow  # noqa: E402
from polar_credits.workflows.order_credits import OrderCreditsWorkflow  # noqa: E402
from polar_credits.workflows.polar_budget import PolarBudgetWorkflow, budget_task_queue  # noqa: E402
from polar_credits.workflows.reconcile import ReconcileWorkflow  # noqa: E402
from polar_credits.workflows.recover import RecoverWorkflow  # noqa: E402
from polar_credits.workflows.revoke_grant import RevokeGrantWorkflow  # noqa: E402
from polar_credits.workflows.rules_preview import RulesPreviewWorkflow  # noqa: E402
from polar_credits.workflows.rules_registry import RulesRegistryWorkflow  # noqa: E402
from polar_credits.workflows.subscription_allowance import SubscriptionAllowanceWorkflow  # noqa: E402

# Activities mostly wait (for a batch, a permit, Polar's recomputation): they are cheap
# coroutines, and a renewal wave keeps thousands in flight.
MAX_CONCURRENT_ACTIVITIES = 10_000

# What the order queue runs; the budget has its own queue. Every one of these has recorded
# histories that tests/workflows/test_replay.py replays (a test checks that none is missing).
ORDER_QUEUE_WORKFLOWS = [
    OrderCreditsWorkflow,
    SubscriptionAllowanceWorkflow,
    CustomerLedgerWorkflow,
    RulesPreviewWorkflow,
    RulesRegistryWorkflow,
    BackfillWorkflow,
    ReconcileWorkflow,
    RecoverWorkflow,
    ManualGrantWorkflow,
    RevokeGrantWorkflow,
]
BUDGET_QUEUE_WORKFLOWS = [PolarBudgetWorkflow]

# A stop normally takes well under a second, but an unresponsive Temporal can hold the
# worker's shutdown for minutes. Under `docker stop`'s 10 s and `make run`'s 15 s.
STOP_TIMEOUT_SECONDS = 8.0

EXIT_STOPPED = 0
EXIT_FAILED = 1  # Temporal unreachable at start, or the worker failed
EXIT_BAD_SETTINGS = 2

log = logging.getLogger("polar_credits.worker")


def polar_client(settings: Settings) -> PolarAsync:
    assert settings.polar_access_token is not None
    return PolarAsync(
        settings.polar_access_token.get_secret_value(),
        environment=settings.polar_server,
        base_url=settings.polar_api_url,
        timeout=settings.polar_timeout_seconds,
    )


@contextlib.asynccontextmanager
async def build_worker(
    client: Client,
    task_queue: str,
    polar: PolarAsync,
    rules: RulesFile,
    *,
    per_minute: int = 60,  # the sandbox default: 60% of its 100 a minute
    health: WorkerHealth | None = None,
) -> AsyncIterator[PolarGateway]:
    """Poll the order queue and the budget's queue until the block exits; yields the
    process's one gateway to Polar. `health` (the worker's /readyz) learns when both poll."""
    gateway = PolarGateway(
        polar,
        TemporalBudget(client, task_queue, per_minute),
        # Recorded on the client's runtime: its Prometheus endpoint when it has one.
        GatewayMetrics(client_meter(client), budget_per_minute=per_minute),
    )
    orders = Worker(
        client,
        task_queue=task_queue,
        workflows=ORDER_QUEUE_WORKFLOWS,
        activities=[
            *CreditActivities(gateway, rules).all(),
            *AllowanceActivities(gateway, rules).all(),
            *LedgerActivities(client, task_queue).all(),
            BackfillActivities(gateway).grant_page,
            *ReconcileActivities(client, gateway, rules).all(),
            *RecoverActivities(client, gateway, rules).all(),
            *OperatorActivities(gateway).all(),
        ],
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
    )
    budget = Worker(
        client, task_queue=budget_task_queue(task_queue), workflows=BUDGET_QUEUE_WORKFLOWS
    )
    try:
        async with budget, orders:
            if health is not None:
                health.polling({task_queue: orders, budget_task_queue(task_queue): budget})
            try:
                yield gateway
            finally:
                if health is not None:
                    health.stopped()
    finally:
        await gateway.close()


async def _accept_rule_keys(client: Client, settings: Settings, rules: RulesFile) -> None:
    """Refuse a rules file that drops a rule key which has granted while another rule takes
    over its products (unless allowed), then record the file's keys in the registry."""
    for warning in await check_rule_keys(
        client,
        settings.credits_task_queue,
        rules,
        allow_dropped=settings.credits_allow_dropped_rule_keys,
    ):
        log.warning("allowed by CREDITS_ALLOW_DROPPED_RULE_KEYS: %s", warning)
    await record_rule_keys(client, settings.credits_task_queue, rules)


async def _schedule_reconciliation(client: Client, settings: Settings) -> None:
    # Best effort: the worker's job is to poll; the next worker to start tries again.
    try:
        async with asyncio.timeout(10):
            await ensure_reconcile_schedule(client, settings)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not create or update the reconciliation schedule: %s", exc)


def _exit_process(status: int) -> NoReturn:
    """End the process now, skipping the interpreter's teardown.

    Temporal's Rust core keeps its own threads, and they hand results back to Python
    (taking the GIL) for a moment after the awaiting code has moved on. One that does so
    while the interpreter finalizes kills the process with "Fatal Python error:
    PyGILState_Release" (temporalio/sdk-python#300). Nothing is left to tear down here: the
    workers are shut down, and the logs are flushed below.
    """
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


class _StopRequest:
    """SIGINT and SIGTERM once the event loop runs: the first asks for a stop, and gives the
    process STOP_TIMEOUT_SECONDS to finish it; a second one exits at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        for early in _early_stops:  # came before the loop handled signals
            self._on_signal(early)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.event.is_set():
            self._give_up(f"a second {name}")
        log.info("%s received: stopping", name)
        self.event.set()
        # A thread, so the deadline holds whatever the event loop is waiting on.
        watchdog = threading.Timer(
            STOP_TIMEOUT_SECONDS, self._give_up, (f"no end after {STOP_TIMEOUT_SECONDS:g} s",)
        )
        watchdog.daemon = True
        watchdog.start()

    @staticmethod
    def _give_up(why: str) -> NoReturn:
        log.warning(
            "exiting without waiting for the worker's shutdown (%s); Temporal retries its "
            "running activities once their timeouts pass",
            why,
        )
        _exit_process(EXIT_STOPPED)


async def serve(settings: Settings, rules: RulesFile, connection: TemporalConnection) -> int:
    """Poll until SIGINT or SIGTERM, then stop the workers; returns the exit status."""
    stop = _StopRequest()
    if stop.event.is_set():
        log.info("stopped before Temporal was connected")
        return EXIT_STOPPED
    log.info("connecting to Temporal at %s", connection.describe())
    health = WorkerHealth()
    endpoint: HealthServer | None = None
    try:
        runtime, endpoint = await _start_metrics(settings, health)
    except (RuntimeError, ValueError, OSError) as exc:  # the port is taken
        print(
            "polar-credits worker: cannot serve metrics on port "
            f"{settings.credits_worker_metrics_port}: {exc}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        return await _run(settings, rules, connection, stop, runtime, health)
    finally:
        if endpoint is not None:
            await endpoint.close()


async def _start_metrics(
    settings: Settings, health: WorkerHealth
) -> tuple[Runtime, HealthServer | None]:
    """The Temporal runtime, and with a metrics port the endpoint serving /metrics, /livez
    and /readyz there (the SDK's exporter on a loopback port of its own, relayed)."""
    if not settings.credits_worker_metrics_port:
        return worker_runtime(), None
    endpoint = None
    try:
        for attempt in range(3):  # another process may take the internal port meanwhile
            exporter_port = internal_port()
            try:
                runtime = worker_runtime(exporter_port)
                break
            except (RuntimeError, ValueError):
                if attempt == 2:
                    raise
        endpoint = HealthServer(health, exporter_port)
        await endpoint.start(
            settings.credits_worker_metrics_host, settings.credits_worker_metrics_port
        )
    except BaseException:
        if endpoint is not None:
            await endpoint.close()
        raise
    log.info(
        "metrics on http://%s:%d/metrics, probes on /livez and /readyz",
        settings.credits_worker_metrics_host,
        settings.credits_worker_metrics_port,
    )
    return runtime, endpoint


async def _run(
    settings: Settings,
    rules: RulesFile,
    connection: TemporalConnection,
    stop: _StopRequest,
    runtime: Runtime,
    health: WorkerHealth,
) -> int:
    connecting = asyncio.ensure_future(
        connect_temporal(settings, runtime=runtime, connection=connection)
    )
    stopping = asyncio.ensure_future(stop.event.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.event.is_set():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
        log.info("stopped before Temporal was connected")
        return EXIT_STOPPED
    try:
        client = connecting.result()
    except SettingsError as exc:  # a certificate, key, API key or namespace that cannot work
        print(f"polar-credits worker: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except TemporalUnreachable as exc:
        print(f"polar-credits worker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    health.connected(client)
    try:
        await _accept_rule_keys(client, settings, rules)
    except (DroppedRuleKeys, PayloadDecryptionError) as exc:  # the latter: a key is missing
        print(f"polar-credits worker: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    await _schedule_reconciliation(client, settings)

    async with polar_client(settings) as polar:
        worker = build_worker(
            client,
            settings.credits_task_queue,
            polar,
            rules,
            per_minute=settings.polar_budget_per_minute,
            health=health,
        )
        log.info(
            "worker polling task queue %r on %s, Polar at %s, %d rule(s), "
            "Polar call budget %d/min for all workers",
            settings.credits_task_queue,
            connection.describe(),
            settings.polar_target,
            len(rules.rules),
            settings.polar_budget_per_minute,
        )
        async with worker:
            await stop.event.wait()
            log.info("stopping: running activities are cancelled, and Temporal retries them")
    return EXIT_STOPPED


def main(*, allow_dropped_keys: bool = False) -> NoReturn:
    """Run the worker until it is stopped, then end the process (see `_exit_process`).

    `allow_dropped_keys` (the CLI's `--allow-dropped-keys`) accepts a rules file that drops a
    rule key which has granted, as CREDITS_ALLOW_DROPPED_RULE_KEYS=true does."""
    _catch_stop_signals()  # already done when run as a script: covers the imports too
    configure_logging()
    try:
        settings = load_settings("POLAR_ACCESS_TOKEN", "CREDITS_RULES_FILE")
        if allow_dropped_keys:
            settings = settings.model_copy(update={"credits_allow_dropped_rule_keys": True})
        assert settings.credits_rules_file is not None
        rules = load_rules(settings.credits_rules_file)
        # TLS files and the profile are read once, here: a bad one stops start-up at once.
        connection = resolve_temporal(settings)
        settings = connection.applied_to(settings)
    except (SettingsError, RulesError) as exc:
        print(f"polar-credits worker: {exc}", file=sys.stderr)
        _exit_process(EXIT_BAD_SETTINGS)
    configure_logging(log_format=settings.credits_log_format)
    with asyncio.Runner() as runner:
        try:
            status = runner.run(serve(settings, rules, connection))
        except Exception:
            log.exception("the worker failed")
            status = EXIT_FAILED
        # Exit before the runner closes its loop: closing it would give SIGINT and SIGTERM
        # back their default handlers (a traceback, or death by signal) until the end.
        _exit_process(status)


if __name__ == "__main__":
    main()
