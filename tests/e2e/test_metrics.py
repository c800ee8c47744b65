"""The API's /metrics over HTTP, as Prometheus scrapes it: every documented metric is there
with its labels, and the counts move when a webhook comes."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polar_credits.api.metrics import WEBHOOKS, Metrics, event_label
from tests.conftest import CREDIT_PRODUCT_ID, Stack
from tests.e2e.test_pipeline import order_paid_body, post_signed

DOCUMENTED = {
    # name (without the _total a counter's samples add): type
    "polar_credits_webhooks": "counter",
    "polar_credits_webhook_deliveries": "counter",
    "polar_credits_webhook_unknown_values": "counter",
    "polar_credits_temporal_start_errors": "counter",
    "polar_credits_webhook_request_seconds": "histogram",
    "polar_credits_slow_clients_closed": "counter",
}


async def scrape(http: httpx.AsyncClient, stack: Stack) -> dict[tuple[str, frozenset], float]:
    response = await http.get(f"{stack.api_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_every_documented_metric_is_served_with_its_type(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    text = (await http.get(f"{stack.api_url}/metrics")).text
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name, kind in DOCUMENTED.items():
        assert families.get(name) == kind, (name, families)
    # The histogram's buckets, count and sum are there from the first scrape.
    assert 'polar_credits_webhook_request_seconds_bucket{le="+Inf"}' in text
    assert "polar_credits_webhook_request_seconds_count" in text


async def test_a_webhook_moves_its_counters_and_the_latency_histogram(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    customer_id = stack.standin.create_customer()["id"]
    order = stack.standin.create_paid_order(customer_id, CREDIT_PRODUCT_ID, deliver=False)
    body = await order_paid_body(stack, order["order"]["id"])
    before = await scrape(http, stack)

    started = await post_signed(stack, http, body)
    assert started.status_code == 202, started.text
    duplicate = await post_signed(stack, http, body)
    assert duplicate.json()["status"] == "duplicate"
    forged = await http.post(
        f"{stack.api_url}/webhooks/polar", content=body, headers={"webhook-id": "x"}
    )
    assert forged.status_code in (400, 403)
    after = await scrape(http, stack)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("polar_credits_webhooks_total", outcome="started") == 1
    assert moved("polar_credits_webhooks_total", outcome="duplicate") == 1
    deliveries = "polar_credits_webhook_deliveries_total"
    assert moved(deliveries, event_type="order.paid", outcome="started") == 1
    assert moved(deliveries, event_type="order.paid", outcome="duplicate") == 1
    # Refused before the event type was read: a forged request never names one.
    refused = moved(deliveries, event_type="none", outcome="bad_signature") + moved(
        deliveries, event_type="none", outcome="bad_request"
    )
    assert refused == 1
    assert moved("polar_credits_webhook_request_seconds_count") == 3
    assert moved("polar_credits_webhook_request_seconds_bucket", le="+Inf") == 3
    assert moved("polar_credits_webhook_request_seconds_sum") > 0


def test_each_app_counts_in_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.webhook("started", "order.paid")
    assert first.value(WEBHOOKS, outcome="started") == 1
    assert second.value(WEBHOOKS, outcome="started") == 0
    assert b"polar_credits_webhooks_total" in second.render()


@pytest.mark.parametrize(
    ("event_type", "label"),
    [
        ("order.paid", "order.paid"),
        ("subscription.updated", "subscription.updated"),
        (None, "none"),
        ("x" * 500, "other"),
        ("order.teleported", "other"),  # shaped like Polar's, but not one of them
        ('order.paid"} 1\nforged', "other"),
    ],
)
def test_event_types_are_bounded_labels(event_type: str | None, label: str) -> None:
    assert event_label(event_type) == label
