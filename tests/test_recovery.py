"""What a recovery tells an allowance run about a subscription it read from Polar (how far it is
paid, by its status and how recent its period is), and the `--since` durations it accepts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polar_credits.activities.recover import recovered_observation
from polar_credits.cli.base import ExitCode
from polar_credits.cli.recover import parse_duration
from polar_credits.orders import PolarSubscription
from polar_credits.rules import parse_rules
from tests.conftest import TEST_RULES, YEARLY_PRODUCT_ID
from tests.support.net import free_port

BIN = Path(sys.executable).parent

RULES = parse_rules(TEST_RULES)
WINDOW_START = "2026-11-01T00:00:00+00:00"  # the recovery lists orders created after this


def subscription(status: str, period_start: str) -> PolarSubscription:
    return PolarSubscription.model_validate(
        {
            "id": "sub-1",
            "status": status,
            "customer_id": "cus-1",
            "product_id": YEARLY_PRODUCT_ID,
            "started_at": "2025-06-01T08:00:00Z",
            "current_period_start": period_start,
            "current_period_end": period_start.replace("2026", "2027"),
            "modified_at": "2026-11-20T10:00:00Z",
            "customer": {"email": "ada@example.com", "metadata": {}},
        }
    )


@pytest.mark.parametrize("status", ["active", "trialing", "paused"])
def test_a_period_begun_before_the_window_is_paid_by_the_subscriptions_standing(
    status: str,
) -> None:
    seen = recovered_observation(subscription(status, "2026-06-01T08:00:00Z"), RULES, WINDOW_START)
    assert seen.paid_through == "2027-06-01T08:00:00Z"
    assert seen.facts.started_at == "2025-06-01T08:00:00Z"  # the run's periods count from here
    assert seen.facts.status == status and seen.paid_order_id is None


def test_a_period_begun_inside_the_window_waits_for_its_paid_order() -> None:
    # A renewal a moment ago: Polar shows it active while its payment may still be tried; the
    # paid order, listed by the same recovery, tells the run (as the webhook would).
    seen = recovered_observation(
        subscription("active", "2026-11-20T08:00:00Z"), RULES, WINDOW_START
    )
    assert seen.paid_through is None


def test_a_past_due_subscription_is_paid_only_up_to_its_current_period() -> None:
    seen = recovered_observation(
        subscription("past_due", "2026-06-01T08:00:00Z"), RULES, WINDOW_START
    )
    assert seen.paid_through == "2026-06-01T08:00:00Z"


def test_no_personal_data_reaches_the_observation() -> None:
    seen = recovered_observation(
        subscription("active", "2026-06-01T08:00:00Z"), RULES, WINDOW_START
    )
    assert "ada@example.com" not in repr(seen)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 14 * 86400), (" 3600s ", 3600)],
)
def test_since_takes_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "1.5d", "30 days", "-3d", "3y"])
def test_since_refuses_anything_else_and_says_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="e.g. 30d, 12h"):
        parse_duration(text)


def run_recover(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "polar-credits"), "recover", *args],
        env={**os.environ, "COLUMNS": "300", **env},  # one line per message
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_refuses_a_bad_since_before_connecting() -> None:
    done = run_recover("--since", "30 days", TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "e.g. 30d, 12h" in done.stderr


def test_an_unreachable_temporal_ends_the_command_with_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = run_recover("--since", "30d", TEMPORAL_ADDRESS=address)
    assert done.returncode == ExitCode.UNAVAILABLE, done.stdout + done.stderr
    assert f"cannot reach Temporal at {address}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("text", ["45s", "59m"])
def test_since_refuses_a_window_under_an_hour(text: str) -> None:
    with pytest.raises(ValueError, match="at least 1h"):
        parse_duration(text)
