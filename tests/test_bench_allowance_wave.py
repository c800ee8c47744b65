"""The pure helpers of tools.bench.allowance_wave: the wave moment and its anchor, the subscription
snapshot, the rules file, the budget floor, the per-period grant check, call figures."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from polar_credits.cadence import parse_cadence
from polar_credits.identity import allowance_external_id
from polar_credits.models.allowances import SubscriptionFacts
from polar_credits.rules import decide_allowance_rules, parse_rules
from tools.bench.allowance_wave import (
    GRANT_UNITS,
    RULE_ID,
    anchor_for_wave,
    call_figures,
    grant_event,
    grant_periods,
    in_window,
    lead_seconds,
    period_check,
    rules_toml,
    spread,
    stamp,
    subscription_snapshot,
    wave_floor,
    wave_moment,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_the_wave_moment_is_a_whole_second_at_least_the_lead_away():
    moment = wave_moment(1_000.2, 100)
    assert moment == datetime.fromtimestamp(1_101, UTC)
    assert wave_moment(1_000.0, 100).timestamp() == 1_100
    assert lead_seconds(2000) == 120 + 0.2 * 2000


def test_the_anchor_is_one_month_before_and_its_period_one_is_the_wave():
    wave = at("2026-11-30T16:50:07+00:00")
    anchor = anchor_for_wave(wave)
    assert anchor == at("2026-10-30T16:50:07+00:00")
    assert parse_cadence("1 month").start(anchor, 1) == wave
    assert grant_periods(anchor) == [
        "2026-10-30T16:50:07Z",
        "2026-11-30T16:50:07Z",
        "2026-12-30T16:50:07Z",
    ]
    # Across a year end, and a month that clamps on the way back but not forward.
    assert anchor_for_wave(at("2027-01-15T00:00:00+00:00")) == at("2026-12-15T00:00:00+00:00")
    assert anchor_for_wave(at("2027-03-28T08:00:00+00:00")) == at("2027-02-28T08:00:00+00:00")


@pytest.mark.parametrize(
    "wave", ["2027-03-31T10:00:00+00:00", "2027-03-29T10:00:00+00:00", "2026-12-31T00:00:00+00:00"]
)
def test_a_moment_no_monthly_anchor_reaches_is_refused(wave: str):
    # Months clamp to their last day: Feb 28 + 1 month is Mar 28, Nov 30 + 1 month Dec 30.
    with pytest.raises(ValueError, match="months clamp"):
        anchor_for_wave(at(wave))


def test_stamp_is_the_services_spelling_of_a_period_start():
    assert stamp(at("2026-11-30T17:50:07.9+01:00")) == "2026-11-30T16:50:07Z"


def test_the_snapshot_starts_the_yearly_subscription_at_the_anchor():
    anchor = at("2026-10-30T16:50:07+00:00")
    snap = subscription_snapshot("sub-1", anchor, at("2026-11-30T16:40:00+00:00"))
    assert snap["id"] == "sub-1" and snap["status"] == "active"
    assert snap["started_at"] == snap["current_period_start"] == anchor.isoformat()
    assert snap["current_period_end"] == at("2027-10-30T16:50:07+00:00").isoformat()
    assert snap["recurring_interval"] == "year"


def test_the_rules_file_holds_one_monthly_rule_for_the_product_only():
    rules = parse_rules(rules_toml("meter-1", "product-1"))
    assert rules.has_cadence_rules() and rules.cadence_product("product-1")
    assert not rules.cadence_product("another")
    facts = SubscriptionFacts(
        subscription_id="s", customer_id="c", product_id="product-1", status="active"
    )
    (rule,) = decide_allowance_rules(rules, facts)
    assert (rule.rule_id, rule.every, rule.units, rule.meter_id) == (
        RULE_ID,
        "1 month",
        GRANT_UNITS,
        "meter-1",
    )


def test_the_budget_floor_is_one_call_per_batch_at_the_share():
    floor = wave_floor(2000, 700_000, budget_per_minute=60)
    assert (floor["calls"], floor["seconds"], floor["events_per_call"]) == (1, 1.0, 2000)
    assert wave_floor(12_000, 700_000)["calls"] == 3  # 5,000 events a call
    assert wave_floor(10, 20 * 1024 * 1024, budget_per_minute=30)["seconds"] == 6.0  # 8 MiB


def grant(sub: str, period: str, units: int = -GRANT_UNITS, key: str | None = None, t=1.0):
    event = grant_event(sub, "cust", period)
    event["metadata"]["units"] = units
    event["external_id"] = key or event["external_id"]
    event["ingested_at"] = t
    return event


def test_period_check_finds_missing_doubled_extra_stray_and_bad_grants():
    p0, p1, p2 = "2026-10-30T16:50:07Z", "2026-11-30T16:50:07Z", "2026-12-30T16:50:07Z"
    events = [
        grant("a", p0, t=1.0),
        grant("a", p1, t=12.0),
        grant("b", p0, t=2.0),
        grant("b", p1, t=10.0),
        grant("b", p1, key="other-key", t=11.0),  # the same period granted twice
        grant("c", p0, units=-5, t=3.0),  # wrong amount, still a grant
        grant("c", p2),  # a period not due yet
        grant("zzz", p1),  # no subscription of the run
        grant("a", p1, units=7),  # positive: usage, not a grant
        {"name": "meter.reset", "external_id": None, "metadata": {"meter_id": "m"}},
    ]
    found = period_check(events, ["a", "b", "c"], [p0, p1])
    first, second = found["periods"]
    assert (first["granted_once"], first["missing"], first["doubled"]) == (3, 0, 0)
    assert (second["granted_once"], second["missing"], second["doubled"]) == (1, 1, 1)
    assert first["ingested_at"] == [1.0, 2.0, 3.0]
    assert second["ingested_at"] == [10.0, 12.0]  # the first of b's two
    assert found["complete"] == 1  # only a
    assert (found["extra"], found["stray"]) == (1, 1)
    assert (found["wrong_key"], found["wrong_units"]) == (1, 1)
    assert found["max_per_external_id"] == 1
    assert grant("a", p0)["external_id"] == allowance_external_id("a", RULE_ID, p0)


def test_period_check_sees_one_external_id_stored_twice():
    p0 = "2026-10-30T16:50:07Z"
    found = period_check([grant("a", p0), grant("a", p0)], ["a"], [p0])
    assert found["max_per_external_id"] == 2 and found["periods"][0]["doubled"] == 1


def test_call_figures_count_a_window_of_the_request_log():
    log = [
        {"endpoint": "events.ingest", "status": 200, "at": 100.0},
        {"endpoint": "events.ingest", "status": 429, "at": 100.5},
        {"endpoint": "events.ingest", "status": 200, "at": 130.0},
        {"endpoint": "events.ingest", "status": 200, "at": 170.0},
        {"endpoint": "customer_meters.list", "status": 200, "at": 171.0},
        {"endpoint": "events.ingest", "status": 200, "at": 500.0},  # after the window
    ]
    window = in_window(log, 100.0, 200.0)
    figures = call_figures(window, grants=300)
    assert figures["calls"] == {
        "customer_meters.list": {"200": 1},
        "events.ingest": {"200": 3, "429": 1},
    }
    assert (figures["total"], figures["rate_limited"]) == (5, 1)
    assert figures["share_429"] == 0.2 and figures["per_grant"] == 5 / 300
    assert figures["events_per_ingest"] == 100.0
    assert figures["peak_accepted_per_60s"] == 3  # 130, 170, 171
    assert call_figures([], grants=10)["total"] == 0


def test_spread_is_seconds_after_the_origin():
    s = spread([12.0, 10.5, 30.0, 11.0], origin=10.0)
    assert (s["n"], s["first"], s["p50"], s["last"]) == (4, 0.5, 1.0, 20.0)
    assert math.isnan(spread([], 0.0)["last"])
