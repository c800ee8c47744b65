"""Record SubscriptionAllowanceWorkflow histories of the code in the working tree, for the
replay test (tests/workflows/test_replay.py).

When to use it: before you change SubscriptionAllowanceWorkflow, record the histories of the
release that is deployed now, and commit them with the change.

    python -m tests.histories.record_allowance --release v1 [scenario ...]   # from the repo root

Each scenario is one of the workflow tests (tests/workflows/test_subscription_allowance.py),
run on Temporal's time-skipping server with its fakes, so months pass in seconds; every run it
started is written as `subscription_allowance_<release>_<scenario>[_<n>].json`, then
terminated. Runs still waiting (an allowance runs for the subscription's life) replay as far
as they got, which is what a deploy meets.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.histories.record import recorder_main, report_privacy, save_runs
from tests.workflows import test_subscription_allowance as scenarios
from tests.workflows.conftest import BIN, register_search_attributes

# scenario → the workflow test that runs it
SCENARIOS = {
    "renewal_held": "test_renewal_payment_releases_the_held_month_and_starts_the_next_year",
    "cancel_at_period_end": "test_cancel_at_period_end_stops_the_grants_at_the_period_end",
    "uncancel": "test_uncancel_continues_the_grants",
    "pause_resume": "test_pause_skips_the_paused_months_and_resume_does_not_make_them_up",
    "revoke": "test_revoke_stops_at_once",
    "out_of_order": "test_duplicate_late_and_out_of_order_messages_change_nothing",
    "waiting_for_payment": "test_a_message_before_the_paid_order_waits_for_payment",
    "past_due": "test_past_due_holds_the_grant_until_paid_and_drops_it_if_its_period_passes",
    "product_change": "test_product_change_uses_the_new_products_rules_from_the_next_grant",
    "seats": "test_seat_change_uses_the_new_seat_count_from_the_next_grant",
    "top_up": "test_top_up_grants_only_what_brings_the_balance_to_the_cap",
    "rollover": "test_rollover_cap_limits_what_unused_credit_carries_into_a_period",
    "trial": "test_trial_periods_grant_nothing_for_a_paid_only_rule_and_conversion_grants_at_once",
    "rejected": "test_a_rejected_grant_loses_its_period_visibly_and_the_next_one_is_granted",
    "continued_as_new": "test_continue_as_new_happens_and_loses_nothing",
    # v3: a period held over the per-grant maximum; another customer's messages refused.
    "held_over_max": "held_over_max_then_granted",
    "refused_customer": (
        "test_a_paid_order_of_another_customer_is_refused_and_the_period_stays_the_subscribers"
    ),
}


async def main(release: str, names: list[str]) -> int:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server")
    )
    written: list[Path] = []
    try:
        await register_search_attributes(env)
        for name in names:
            test = getattr(scenarios, SCENARIOS[name])
            await test(env, f"record-{uuid.uuid4().hex[:8]}")
            # A second signal-with-start reaches the run already started: one history each.
            runs = list({(h.id, h.result_run_id): h for h in scenarios.STARTED}.values())
            written += await save_runs(runs, f"subscription_allowance_{release}_{name}")
            while scenarios.STARTED:
                with contextlib.suppress(Exception):  # a run that ended is left as it is
                    await scenarios.STARTED.pop().terminate("recorded")
    finally:
        await env.shutdown()
    return report_privacy(written, [])


if __name__ == "__main__":
    recorder_main(__doc__, SCENARIOS, main)
