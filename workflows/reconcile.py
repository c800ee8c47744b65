"""The reconciliation workflow: list Polar's paid orders since the last watermark and start
the order run of any order whose webhook never came (an endpoint Polar disabled loses its
events for good; only this listing recovers them).

A Temporal Schedule (`polar-credits-reconcile`) runs it every CREDITS_RECONCILE_INTERVAL_SECONDS;
the operator API and `polar-credits reconcile now` run it at once. Each completed run keeps its
watermark in its memo, where the next run finds it (through visibility), and shows there how
many orders it repaired.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.reconcile import ReconcileActivities
    from polar_credits.reconciliation import (
        MAX_REPAIRED_KEPT,
        REPAIRED_MEMO,
        WATERMARK_MEMO,
        ReconcileInput,
        ReconcilePageInput,
        ReconcileResult,
        WatermarkInput,
    )
    from polar_credits.workflows.policies import (
        HEARTBEAT_TIMEOUT,
        PAGE_TIMEOUT,
        RECONCILE_PAGE_RETRY,
        WATERMARK_TIMEOUT,
    )


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@workflow.defn
class ReconcileWorkflow:
    def __init__(self) -> None:
        self._report: ReconcileResult | None = None

    @workflow.run
    async def run(self, input: ReconcileInput) -> ReconcileResult:
        mark = await workflow.execute_activity_method(
            ReconcileActivities.watermark,
            WatermarkInput(task_queue=input.task_queue),
            start_to_close_timeout=WATERMARK_TIMEOUT,
            retry_policy=RECONCILE_PAGE_RETRY,
            summary=ui.activity_watermark(),
        )
        if mark.created_at is not None:
            start = _time(mark.created_at) - timedelta(seconds=input.overlap_seconds)
        else:  # the first run
            start = workflow.now() - timedelta(seconds=input.lookback_seconds)
        created_after = start.isoformat()
        report = self._report = ReconcileResult(
            created_after=created_after, watermark=mark.created_at or created_after
        )
        for page in range(1, input.max_pages + 1):
            workflow.set_current_details(ui.reconcile_progress(page, report.orders, report.started))
            result = await workflow.execute_activity_method(
                ReconcileActivities.reconcile_page,
                ReconcilePageInput(
                    task_queue=input.task_queue,
                    created_after=created_after,
                    page=page,
                    verification=input.verification,
                    page_size=input.page_size,
                ),
                start_to_close_timeout=PAGE_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RECONCILE_PAGE_RETRY,
                summary=ui.activity_reconcile_page(page),
            )
            report.pages += 1
            report.orders += result.orders
            report.started += len(result.started)
            report.already_handled += result.already_handled
            report.ignored += result.ignored
            room = MAX_REPAIRED_KEPT - len(report.repaired_order_ids)
            report.repaired_order_ids += result.started[: max(room, 0)]
            if result.latest_created_at is not None and _time(result.latest_created_at) > _time(
                report.watermark
            ):
                report.watermark = result.latest_created_at
            if not result.has_more:
                break
        else:
            report.complete = False  # the next run goes on from the watermark
        # Where the next run finds the watermark, and what the UI shows for this run.
        workflow.upsert_memo({WATERMARK_MEMO: report.watermark, REPAIRED_MEMO: report.started})
        workflow.set_current_details(
            ui.reconcile_done(
                report.orders, report.started, report.already_handled, report.complete
            )
        )
        return report

    @workflow.query
    def report(self) -> ReconcileResult | None:
        return self._report
