"""The recovery workflow: rebuild every run from Polar after Temporal's state was lost
(docs/operator/temporal.md, "Recovering from a lost Temporal").

First the subscriptions Polar may still bill: each one's allowance run comes back as its
webhooks start it, with the subscription as Polar shows it now. Then Polar's paid orders
created since the window's start: each order's run restarts as the webhook starts it
(reconciliation's own page activity: same id, input and search attributes; an order whose run
exists is only counted), and a paid subscription order reaches its subscription's allowance
run, if it has one, as the webhook's does. Subscriptions come first so that an old order of a
subscription that has since ended starts nothing. Every Polar call goes through the worker's
gateway, under the shared budget; Polar dedupes every grant by its external id, so whatever
the restarted runs grant again is stored once.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from polar_credits import ui_summaries as ui
    from polar_credits.activities.reconcile import ReconcileActivities
    from polar_credits.activities.recover import RecoverActivities
    from polar_credits.reconciliation import ReconcilePageInput
    from polar_credits.recovery import RecoverInput, RecoverResult, RecoverSubscriptionsInput
    from polar_credits.workflows.policies import (
        HEARTBEAT_TIMEOUT,
        PAGE_TIMEOUT,
        RECONCILE_PAGE_RETRY,
    )


@workflow.defn
class RecoverWorkflow:
    def __init__(self) -> None:
        self._report: RecoverResult | None = None

    @workflow.run
    async def run(self, input: RecoverInput) -> RecoverResult:
        created_after = (workflow.now() - timedelta(seconds=input.since_seconds)).isoformat()
        report = self._report = RecoverResult(created_after=created_after)
        if input.subscriptions:
            report.phase = "subscriptions"
            await self._subscriptions(input, report)
        report.phase = "orders"
        for page in range(1, input.max_pages + 1):
            workflow.set_current_details(
                ui.recover_progress("orders", page, report.orders, report.orders_started)
            )
            orders = await workflow.execute_activity_method(
                ReconcileActivities.reconcile_page,
                ReconcilePageInput(
                    task_queue=input.task_queue,
                    created_after=created_after,
                    page=page,
                    verification=input.verification,
                    page_size=input.page_size,
                    allowances=input.subscriptions,
                ),
                start_to_close_timeout=PAGE_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RECONCILE_PAGE_RETRY,
                summary=ui.activity_recover_page("paid orders", page),
            )
            report.order_pages += 1
            report.orders += orders.orders
            report.orders_started += len(orders.started)
            report.orders_already_running += orders.already_handled
            report.orders_ignored += orders.ignored
            report.allowances_told_paid += orders.allowances_told
            if not orders.has_more:
                break
        else:
            report.complete = False
        report.phase = "done"
        workflow.set_current_details(
            ui.recover_done(report.orders_started, report.allowances_started, report.complete)
        )
        return report

    async def _subscriptions(self, input: RecoverInput, report: RecoverResult) -> None:
        for page in range(1, input.max_pages + 1):
            workflow.set_current_details(
                ui.recover_progress(
                    "subscriptions", page, report.subscriptions, report.allowances_started
                )
            )
            subscriptions = await workflow.execute_activity_method(
                RecoverActivities.recover_subscriptions_page,
                RecoverSubscriptionsInput(
                    task_queue=input.task_queue,
                    created_after=report.created_after,
                    page=page,
                    page_size=input.page_size,
                ),
                start_to_close_timeout=PAGE_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RECONCILE_PAGE_RETRY,
                summary=ui.activity_recover_page("subscriptions", page),
            )
            report.subscription_pages += 1
            report.subscriptions += subscriptions.subscriptions
            report.allowances_started += len(subscriptions.started)
            report.allowances_already_running += subscriptions.already_running
            report.allowances_ended += subscriptions.ended
            report.subscriptions_ignored += subscriptions.ignored
            if not subscriptions.has_more:
                return
        report.complete = False

    @workflow.query
    def report(self) -> RecoverResult | None:
        return self._report
