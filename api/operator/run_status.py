"""How the operator API names a run's Temporal status, and which statuses ended a run without
completing it: one table for every operator router."""

from __future__ import annotations

from temporalio.client import WorkflowExecutionStatus

STATUS_NAMES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CANCELED: "canceled",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}
# Ended without completing: a grant run that granted nothing, a backfill that did not finish.
# Such a run may be started again under its id (ALLOW_DUPLICATE_FAILED_ONLY).
ENDED_UNFINISHED = frozenset(
    {
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.CANCELED,
        WorkflowExecutionStatus.TIMED_OUT,
    }
)


def status_name(status: WorkflowExecutionStatus | None) -> str:
    """A run's status as `GET /grants` shows it; a run without one yet is running."""
    return STATUS_NAMES.get(status, "running") if status else "running"


def chain_status_name(status: WorkflowExecutionStatus | None) -> str:
    """The status of a chain of runs (a backfill, a reconciliation): a run that continued as
    new goes on in its successor, so the chain is running."""
    if status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
        return "running"
    return status_name(status)
