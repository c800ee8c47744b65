"""The worker's side of the shared Polar call budget: asks PolarBudgetWorkflow for permits.

The budget workflow runs on the Temporal cluster, so every worker process that talks to it
spends from one budget, however many there are. It is started on first use
(update-with-start, polar_credits/starters/budget.py), and found again after it continues as new.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.client import Client

from polar_credits.starters.budget import report_throttle, request_permit
from polar_credits.workflows.polar_budget import PermitRequest, ThrottleReport

log = logging.getLogger("polar_credits.budget")

RPC_TIMEOUT = timedelta(seconds=10)
MAX_RETRY_WAIT_SECONDS = 5.0


class TemporalBudget:
    def __init__(self, client: Client, task_queue: str, per_minute: int) -> None:
        self._client = client
        self._task_queue = task_queue  # the workers' queue: the budget run has its own
        self.per_minute = per_minute

    async def acquire(self) -> None:
        wait = 0.2
        while True:
            try:
                permit = await request_permit(
                    self._client,
                    PermitRequest(per_minute=self.per_minute),
                    task_queue=self._task_queue,
                    rpc_timeout=RPC_TIMEOUT,
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Temporal down or the budget run continuing as new: no call goes out
                # without a permit, so wait and ask again.
                log.warning("no permit from the Polar call budget yet (%s)", type(exc).__name__)
                await asyncio.sleep(wait)
                wait = min(wait * 2, MAX_RETRY_WAIT_SECONDS)
        if permit.wait_seconds > 0:
            await asyncio.sleep(permit.wait_seconds)

    async def throttled(self, retry_after_seconds: float) -> None:
        log.warning(
            "Polar answered 429: every worker waits %.0f s and slows down", retry_after_seconds
        )
        try:
            await report_throttle(
                self._client,
                ThrottleReport(retry_after_seconds=retry_after_seconds),
                task_queue=self._task_queue,
                rpc_timeout=RPC_TIMEOUT,
            )
        except Exception as exc:  # the caller's own retry still waits out retry-after
            log.warning("could not report the 429 to the budget (%s)", type(exc).__name__)
