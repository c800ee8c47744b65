"""The Polar call budget: one long-running workflow paces the calls of every worker.

Polar's rate limit is per organization and shared with the merchant's own application, so
the service's share has to hold for all its worker processes together, however many run.
Each gateway asks this workflow for a permit (an update) before every call to Polar; the
workflow hands out send times on one schedule (a GCRA token bucket) so that no 60 s window
holds more calls than the share. A 429 means the merchant's own traffic is eating the
limit: every worker then waits out its `retry-after`, and the pace halves for a while.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui

# Keep the history short: a new run (same id) after this many permits and reports.
CONTINUE_AS_NEW_AFTER = 2000
SLOWDOWN_FLOOR = 0.25  # never slower than a quarter of the share
SLOWDOWN_HOLD_SECONDS = 300.0  # after a 429, stay slow this long before speeding up again
RECOVERY_STEP_SECONDS = 60.0  # then double the pace back at most once a minute
THROTTLE_DEBOUNCE_SECONDS = 5.0  # one wave of 429s halves the pace once, not per call


def budget_task_queue(task_queue: str) -> str:
    """The budget has a queue of its own, so a backlog of order runs never delays a permit."""
    return f"{task_queue}-budget"


@dataclass
class BudgetState:
    """Carried from one run to the next; times are POSIX seconds on the workflow clock."""

    per_minute: int
    next_free: float = 0.0  # GCRA's theoretical arrival time of the next call
    slowdown: float = 1.0
    slow_until: float = 0.0
    last_throttle: float = 0.0
    permits: int = 0
    throttles: int = 0
    paused_until: float = 0.0  # a 429's retry-after: no call before it, burst or not
    continue_after: int = CONTINUE_AS_NEW_AFTER


@dataclass
class PermitRequest:
    per_minute: int  # the share the asking worker is configured with


@dataclass
class Permit:
    wait_seconds: float  # send the call no sooner than this


@dataclass
class ThrottleReport:
    retry_after_seconds: float


@dataclass
class BudgetView:
    per_minute: int
    effective_per_minute: float
    slowdown: float
    permits: int
    throttles: int


def burst_size(per_minute: float) -> int:
    """Calls allowed back to back when idle: a tenth of the share, at least one."""
    return max(1, int(per_minute // 10))


def emission_interval(per_minute: float) -> float:
    """Seconds between calls once the burst is spent, so that burst + paced calls in any 60 s
    window stay within the share."""
    paced = max(1.0, per_minute - burst_size(per_minute))
    return 60.0 / paced


@workflow.defn
class PolarBudgetWorkflow:
    @workflow.init
    def __init__(self, state: BudgetState) -> None:
        # Set before any handler runs: with update-with-start the first permit is asked for
        # in the run's very first task.
        self._state = state
        self._handled = 0

    @workflow.run
    async def run(self, state: BudgetState) -> None:
        self._show()
        await workflow.wait_condition(
            lambda: self._handled >= state.continue_after and workflow.all_handlers_finished()
        )
        workflow.continue_as_new(self._state)

    @workflow.update
    def acquire(self, request: PermitRequest) -> Permit:
        state = self._state
        self._handled += 1
        now = workflow.now().timestamp()
        state.per_minute = request.per_minute  # the newest configuration wins
        if state.slowdown < 1.0 and now >= state.slow_until:
            state.slowdown = min(1.0, state.slowdown * 2)
            state.slow_until = now + RECOVERY_STEP_SECONDS
        rate = max(1.0, state.per_minute * state.slowdown)
        interval = emission_interval(rate)
        tolerance = (burst_size(rate) - 1) * interval
        arrival = max(state.next_free, now)
        wait = max(0.0, arrival - tolerance - now, state.paused_until - now)
        state.next_free = arrival + interval
        state.permits += 1
        self._show()
        return Permit(wait_seconds=wait)

    @acquire.validator
    def _check_request(self, request: PermitRequest) -> None:
        if request.per_minute < 1:
            raise ValueError("per_minute must be at least 1")

    @workflow.update
    def throttled(self, report: ThrottleReport) -> None:
        """Polar answered 429: nobody calls before its retry-after, and the pace slows."""
        state = self._state
        self._handled += 1
        now = workflow.now().timestamp()
        resume = now + max(0.0, report.retry_after_seconds)
        state.paused_until = max(state.paused_until, resume)
        state.next_free = max(state.next_free, resume)
        state.throttles += 1
        if now - state.last_throttle >= THROTTLE_DEBOUNCE_SECONDS:
            state.slowdown = max(SLOWDOWN_FLOOR, state.slowdown / 2)
            state.last_throttle = now
        state.slow_until = now + SLOWDOWN_HOLD_SECONDS
        self._show()

    def _show(self) -> None:
        """Current details (no command, so free): the pace and what it has handed out."""
        state = self._state
        workflow.set_current_details(
            ui.budget_current(state.per_minute, state.permits, state.throttles)
        )

    @workflow.query
    def view(self) -> BudgetView:
        state = self._state
        return BudgetView(
            per_minute=state.per_minute,
            effective_per_minute=state.per_minute * state.slowdown,
            slowdown=state.slowdown,
            permits=state.permits,
            throttles=state.throttles,
        )
