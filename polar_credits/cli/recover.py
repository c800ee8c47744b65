"""`polar-credits recover --since 30d`: rebuild every run from Polar after Temporal's state was
lost (docs/operator/temporal.md, "Recovering from a lost Temporal").

It talks to Temporal, not to the operator API (which may not run yet while a cluster is being
rebuilt): it starts the recovery run on the workers' task queue, where the worker lists Polar
under the shared call budget, and follows its report until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import typer
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from polar_credits.cli.base import (
    ExitCode,
    JsonOption,
    app,
    console,
    emit,
    errors,
    exit_process,
    fail,
)
from polar_credits.models.orders import VerificationPolicy
from polar_credits.recovery import RecoverInput, RecoverResult
from polar_credits.settings import Settings, SettingsError, load_settings
from polar_credits.starters.runs import start_recovery
from polar_credits.temporal_client import TemporalUnreachable, connect_temporal
from polar_credits.workflows.recover import RecoverWorkflow

POLL_SECONDS = 1.0
QUERY_TIMEOUT = timedelta(seconds=5)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*([0-9]+)\s*([smhdw])\s*", re.ASCII)


# A shorter window could start while a renewal's payment is still being tried, and would miss
# the runs still verifying when Temporal was lost (docs/operator/temporal.md, "Recovering from a
# lost Temporal").
MIN_SINCE = timedelta(hours=1)


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w`: a whole number and one unit, at least MIN_SINCE."""
    match = _DURATION.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"--since {text!r} is not a duration: write a number and a unit, e.g. 30d, 12h, "
            "90m or 2w (units: s, m, h, d, w)"
        )
    window = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if window < MIN_SINCE:
        raise ValueError(
            f"--since {text!r} is too short: give at least 1h, e.g. 12h or 30d (reach back "
            "past the oldest order that may not have been granted when Temporal was lost)"
        )
    return window


def recover_input(settings: Settings, since: timedelta, subscriptions: bool) -> RecoverInput:
    return RecoverInput(
        task_queue=settings.credits_task_queue,
        since_seconds=since.total_seconds(),
        verification=VerificationPolicy(
            timeout_seconds=settings.credits_verify_timeout_seconds,
            first_interval_seconds=settings.credits_verify_first_check_seconds,
        ),
        subscriptions=subscriptions,
    )


def _progress(report: RecoverResult | None, queue: str) -> str:
    if report is None:
        return f"waiting for a worker on task queue {queue!r}"
    return (
        f"{report.phase}: {report.subscriptions} subscription(s), "
        f"{report.allowances_started} allowance run(s) started; {report.orders} paid "
        f"order(s), {report.orders_started} run(s) restarted"
    )


async def _report(handle: WorkflowHandle[Any, Any]) -> RecoverResult | None:
    try:
        return await handle.query(RecoverWorkflow.report, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):  # no worker has taken the run yet
        return None


async def _follow(
    handle: WorkflowHandle[Any, Any], queue: str, quiet: bool
) -> tuple[WorkflowExecutionStatus | None, RecoverResult | None]:
    report: RecoverResult | None = None
    # --json: nothing but the JSON on stdout, for scripts.
    spinner = contextlib.nullcontext() if quiet else console.status(_progress(None, queue))
    with spinner as status:
        while True:
            described = await handle.describe()
            if described.status != WorkflowExecutionStatus.RUNNING:
                break
            report = await _report(handle) or report
            if status is not None:
                status.update(_progress(report, queue))
            await asyncio.sleep(POLL_SECONDS)
    if described.status == WorkflowExecutionStatus.COMPLETED:
        report = await handle.result()
    return described.status, report


async def _recover(
    settings: Settings, since: timedelta, subscriptions: bool, wait: bool, as_json: bool
) -> int:
    try:  # bounded by CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS; each message names the setting
        client = await connect_temporal(settings)
    except TemporalUnreachable as exc:
        fail(str(exc), ExitCode.UNAVAILABLE)
    except SettingsError as exc:
        fail(str(exc), ExitCode.USAGE)
    queue = settings.credits_task_queue
    handle = await start_recovery(client, recover_input(settings, since, subscriptions))
    if not wait:
        emit({"workflow_id": handle.id, "status": "running"}, as_json=as_json, title="recovery")
        return ExitCode.OK
    try:
        status, report = await _follow(handle, queue, quiet=as_json)
    except asyncio.CancelledError:  # Ctrl-C: the run goes on without us
        errors.print(
            f"stopped following; the recovery goes on in Temporal: {handle.id}", highlight=False
        )
        return ExitCode.OK
    shown = {"workflow_id": handle.id, "status": status.name.lower() if status else None}
    shown |= asdict(report) if report else {}
    if as_json:
        print(json.dumps(shown, indent=2, sort_keys=True))
    else:
        emit(shown, as_json=False, title="recovery")
    if status != WorkflowExecutionStatus.COMPLETED:
        fail(f"recovery {handle.id} ended {shown['status']}", ExitCode.FAILED)
    if report is not None and not report.complete:
        fail(
            "a listing stopped at its page limit: run `polar-credits recover` again to go on "
            "(what is restarted already is only counted)",
            ExitCode.FAILED,
        )
    return ExitCode.OK


@app.command("recover")
def recover(
    since: str = typer.Option(
        ...,
        "--since",
        help="How far back to read Polar's paid orders, e.g. 30d, 12h (at least your longest "
        "allowance cadence and webhook outage: README, 'Recovering from a lost Temporal').",
    ),
    orders_only: bool = typer.Option(
        False, "--orders-only", help="Restart order runs only, not allowance runs."
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the run's id and return."),
    as_json: bool = JsonOption,
) -> None:
    """Rebuild the runs from Polar after Temporal lost its state: restart the order runs of
    paid orders since then and the allowance runs of live subscriptions. Grants nothing twice
    (Polar dedupes every grant by its external id); safe to run again."""
    try:
        window = parse_duration(since)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc), ExitCode.USAGE)
    try:
        code: int = asyncio.run(_recover(settings, window, not orders_only, not no_wait, as_json))
    except typer.Exit as exc:
        code = exc.exit_code
    except KeyboardInterrupt:  # before the run was started: nothing was done
        code = ExitCode.FAILED
    exit_process(code)
