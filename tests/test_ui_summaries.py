"""The UI's words for outside values: an order id or an operator's key is shown abbreviated
in a summary, whole in the details, and never as markup or extra lines, however it looks."""

from __future__ import annotations

from polar_credits import ui_summaries as ui

ORDER_ID = "9a41c0de-1111-4000-8000-000000000001"


def test_summaries_abbreviate_ids_and_details_keep_them_whole() -> None:
    summary, details = ui.order_start(
        ORDER_ID, "cust-0001-aaaa", "subscription_cycle", "0b1f2e3d-x", "51e9aa00-y", via="test"
    )
    assert (
        summary
        == "order 9a41c0de… · subscription_cycle · product 0b1f2e3d… · subscription 51e9aa00…"
    )
    assert f"- order: `{ORDER_ID}`" in details.splitlines()
    assert ui.short_workflow_id(f"order-credits-{ORDER_ID}") == "order-credits-9a41c0de…"
    assert ui.short("abc") == "abc"


def test_a_hostile_id_stays_one_bounded_line_without_markup() -> None:
    hostile = "x`\n- customer: `someone@example.com`\u2028" + "y" * 5000
    summary, details = ui.manual_grant_start(hostile, "cust-1", "api_calls", 25, via="test")
    assert "\n" not in summary and len(summary) <= ui.MAX_SUMMARY_CHARS
    key_lines = [line for line in details.splitlines() if line.startswith("- idempotency key")]
    assert len(key_lines) == 1, details
    # The value sits in one code span: no backtick of its own can close it.
    assert key_lines[0].count("`") == 2
    assert not any(line.startswith("- customer: `someone") for line in details.splitlines())
    assert len(details) <= ui.MAX_DETAILS_CHARS


def test_the_allowance_run_says_what_it_waits_for() -> None:
    from datetime import UTC, datetime

    at = datetime(2027, 1, 7, 12, 0, 5, tzinfo=UTC)
    assert ui.allowance_waiting("active", grant_at=at) == (
        "waiting for the next period · 2027-01-07 12:00 UTC"
    )
    assert ui.allowance_waiting("waiting_for_payment").startswith("held: not paid")
    assert ui.allowance_waiting("held", why="the subscription is past_due") == (
        "held: the subscription is past_due"
    )
    assert ui.allowance_waiting("paused", grants_total=2, units_total=200) == (
        "paused · periods due while paused are skipped · 2 periods granted, 200 credits in all"
    )
    # What needs an operator's eye: a period held over the maximum, another customer's message.
    assert ui.allowance_waiting("held_over_max", grant_at=at, held_total=1) == (
        "held over the per-grant maximum · nothing sent · next period 2027-01-07 12:00 UTC · "
        "1 period held over the per-grant maximum"
    )
    assert ui.allowance_waiting("active", grant_at=at, refused_total=2).endswith(
        " · 2 messages refused: another customer than the subscription's"
    )
    assert ui.order_done("held_over_max").startswith("done · held: the amount is above")
