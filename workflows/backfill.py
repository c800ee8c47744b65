"""The backfill workflow: one grant to each customer of a target, page by page, under the
shared Polar budget, resumable after any crash, ending with a report.

Its id is `backfill-<key>`, so one key is one backfill. Its durable cursor (the next page)
and counts live in the workflow: a worker that dies mid-page is replaced, the page's activity
runs again (Polar dedupes its grants by external id), and the backfill goes on from there.
It continues as new every few pages, carrying cursor and counts.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.backfill import BackfillActivities
    from polar_credits.backfills import (
        BackfillInput,
        BackfillPageInput,
        BackfillProgress,
        BackfillTarget,
    )
    from polar_credits.workflows.policies import (
        HEARTBEAT_TIMEOUT,
        PAGE_TIMEOUT,
        UNTIL_DONE_RETRY,
    )


@workflow.defn
class BackfillWorkflow:
    def __init__(self) -> None:
        self._progress = BackfillProgress()

    @workflow.run
    async def run(self, input: BackfillInput) -> BackfillProgress:
        self._progress = input.progress
        request = input.request
        for _ in range(input.pages_per_run):
            page = self._progress.next_page
            customer_ids: list[str] = []
            self._show(page)
            if request.target == BackfillTarget.CUSTOMERS:
                start = (page - 1) * input.page_size
                customer_ids = request.customer_ids[start : start + input.page_size]
            result = await workflow.execute_activity_method(
                BackfillActivities.grant_page,
                BackfillPageInput(
                    key=request.key,
                    target=request.target,
                    meter=request.meter,
                    units=request.units,
                    reason=request.reason,
                    page=page,
                    page_size=input.page_size,
                    product_id=request.product_id,
                    customer_ids=customer_ids,
                ),
                start_to_close_timeout=PAGE_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=UNTIL_DONE_RETRY,
                summary=ui.activity_grant_page(page, request.units),
            )
            if request.target == BackfillTarget.CUSTOMERS:
                result.total = len(request.customer_ids)
                result.has_more = page * input.page_size < len(request.customer_ids)
            self._progress.add(result)
            if not result.has_more:
                self._progress.done = True
                progress = self._progress
                workflow.set_current_details(
                    ui.backfill_done(
                        progress.customers_seen,
                        progress.granted,
                        progress.already_granted,
                        progress.rejected_total,
                    )
                )
                return self._progress
        # Keep the history small: the next run starts from the cursor, with the counts.
        self._progress.runs += 1
        workflow.continue_as_new(
            BackfillInput(
                request=request,
                progress=self._progress,
                page_size=input.page_size,
                pages_per_run=input.pages_per_run,
            )
        )

    @workflow.query
    def progress(self) -> BackfillProgress:
        return self._progress

    def _show(self, page: int) -> None:
        progress = self._progress
        workflow.set_current_details(
            ui.backfill_progress(
                page,
                progress.customers_seen,
                progress.granted,
                progress.already_granted,
                progress.rejected_total,
                progress.runs,
            )
        )
