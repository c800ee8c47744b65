"""The pure helpers of tools.bench.burst: call floor, grant check, windows, request-log sums."""

from __future__ import annotations

import math
from collections import Counter

from tools.bench.burst import (
    MAX_INGEST_BYTES,
    by_endpoint,
    call_floor,
    grant_check,
    naive_external_id,
    peak_in_window,
    retry_delays,
    service_external_id,
    subtract,
    time_bound,
)


def grant(order_id: str, external_id: str, units: int = -10, at: float = 1.0) -> dict:
    return {
        "name": "api_usage",
        "external_id": external_id,
        "metadata": {"units": units, "order_id": order_id},
        "ingested_at": at,
    }


def test_retry_delays_double_from_two_seconds():
    assert retry_delays(10) == [2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert retry_delays(1) == []


def test_call_floor_counts_ingest_bodies_and_meter_pages():
    floor = call_floor(grant_bytes=600_000, customers=500, budget_per_minute=60)
    assert (floor["ingest_calls"], floor["meter_reads"], floor["calls"]) == (1, 5, 6)
    assert floor["seconds"] == 6.0
    big = call_floor(grant_bytes=MAX_INGEST_BYTES + 1, customers=101, budget_per_minute=30)
    assert (big["ingest_calls"], big["meter_reads"], big["seconds"]) == (2, 2, 8.0)


def test_time_bound_takes_the_slower_floor_plus_the_lag():
    assert time_bound(6.0, 40.0) == 1.5 * 40 + 15
    assert time_bound(60.0, 10.0) == 1.5 * 60 + 15


def test_grant_check_finds_missing_doubled_and_stray_grants():
    expected = {o: service_external_id(o) for o in ("a", "b", "c")}
    events = [
        grant("a", service_external_id("a"), at=5.0),
        grant("b", service_external_id("b"), at=7.0),
        grant("b", "some-other-key"),  # the same order granted twice
        grant("zzz", service_external_id("zzz")),  # no order of the burst
        grant("c", "merchant-usage:1", units=3),  # positive usage is not a grant
        {"name": "meter.reset", "external_id": None, "metadata": {"meter_id": "m"}},
    ]
    found = grant_check(events, expected)
    assert found["granted_once"] == 1
    assert found["missing"] == 1
    assert found["doubled"] == 1
    assert found["stray_grant_events"] == 1
    assert found["max_per_external_id"] == 1
    assert found["expected_external_ids_found"] == 2
    assert found["last_ingested_at"] == 7.0


def test_grant_check_all_once():
    expected = {o: naive_external_id(o) for o in ("a", "b")}
    found = grant_check([grant("a", "a"), grant("b", "b")], expected)
    assert (found["granted_once"], found["missing"], found["doubled"]) == (2, 0, 0)


def test_peak_in_window():
    assert peak_in_window([]) == 0
    assert peak_in_window([0, 10, 59.9, 60, 61]) == 4  # [10, 61) holds 10, 59.9, 60
    assert peak_in_window([0, 60, 120]) == 1


def test_service_calls_are_the_log_minus_the_baseline_and_the_merchant():
    log = [
        {"endpoint": "events.ingest", "status": 200},
        {"endpoint": "events.ingest", "status": 200},
        {"endpoint": "events.ingest", "status": 429},
        {"endpoint": "customer_meters.list", "status": 200},
    ]
    before = by_endpoint(log[:1])
    merchant = {"events.ingest": Counter({"200": 0, "429": 1})}
    assert subtract(by_endpoint(log), before, merchant) == {
        "events.ingest": {"200": 1},
        "customer_meters.list": {"200": 1},
    }
    assert math.isclose(call_floor(1, 1, 60)["seconds"], 2.0)
