"""Webhook delivery like Polar's: retries, same webhook-id, disabling, deliveries API, modes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import standardwebhooks
from polar.v2026_10 import PolarAsync
from polar.v2026_10.outputs import ListResourceWebhookDelivery, WebhookDelivery, WebhookEndpoint

from tests.standin.conftest import WEBHOOK_SECRET
from tests.support.net import free_port
from tests.support.standin import StandinProcess
from tools.standin.delivery import retry_wait

FAST = ["--webhook-retry-scale", "0.001"]


class ScriptedReceiver:
    """Answers `fail_first` deliveries with 500 (all of them if None), then 200; keeps each
    delivery with its arrival time (monotonic)."""

    def __init__(self, fail_first: int | None = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.deliveries.append(
                        {
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "at": time.monotonic(),
                        }
                    )
                    failing = receiver.fail_first is None or (
                        len(receiver.deliveries) <= receiver.fail_first
                    )
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/polar"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        with self._lock:
            return [d["headers"]["webhook-id"] for d in self.deliveries]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.02)
        raise AssertionError(f"wanted {count} deliveries, got {len(self.deliveries)}")


@pytest.fixture
def receivers() -> Iterator[Callable[..., ScriptedReceiver]]:
    made: list[ScriptedReceiver] = []

    def make(fail_first: int | None = 0) -> ScriptedReceiver:
        made.append(ScriptedReceiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _standin(fresh_standin, receiver: ScriptedReceiver, *args: str) -> StandinProcess:
    return fresh_standin(
        webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, extra_args=[*args]
    )


def _order(standin: StandinProcess) -> str:
    customer = standin.create_customer()
    product = standin.create_product()
    return standin.create_paid_order(customer["id"], product["id"], deliver=False)["order"]["id"]


def _verify(delivery: dict) -> dict:
    verifier = standardwebhooks.Webhook(base64.b64encode(WEBHOOK_SECRET.encode()).decode())
    return verifier.verify(delivery["body"], delivery["headers"])


def test_polar_schedule_spans_roughly_17_to_34_minutes():
    assert [round(retry_wait(n, _Fixed(1.0))) for n in range(1, 10)] == [
        2, 4, 8, 16, 32, 64, 128, 256, 512
    ]  # fmt: skip
    # Nine waits between ten attempts: 1022 s without jitter, up to twice that with it.
    assert sum(retry_wait(n, _Fixed(1.0)) for n in range(1, 10)) == pytest.approx(1022)
    assert sum(retry_wait(n, _Fixed(1.999)) for n in range(1, 10)) < 34.1 * 60


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def uniform(self, low: float, high: float) -> float:
        return self.value


def test_failed_deliveries_are_retried_with_the_same_id_fresh_signatures_and_growing_waits(
    fresh_standin, receivers
):
    receiver = receivers(fail_first=4)
    standin = _standin(fresh_standin, receiver, "--webhook-retry-scale", "0.05")
    first = standin.send_webhook(_order(standin))
    assert first["status_code"] == 500 and first["attempt"] == 1

    got = receiver.wait_for(5)
    time.sleep(0.5)  # a 2xx ends the series: nothing more arrives
    assert len(receiver.deliveries) == 5
    assert set(receiver.ids()) == {first["webhook_id"]}
    for delivery in got:  # each attempt carries a valid signature over its own timestamp
        assert _verify(delivery)["type"] == "order.paid"
    gaps = [b["at"] - a["at"] for a, b in zip(got, got[1:], strict=False)]
    # Scaled waits: 100-200, 200-400, 400-800, 800-1600 ms (plus delivery overhead).
    assert gaps[2] > gaps[0] and gaps[3] > gaps[1]
    assert gaps[0] >= 0.1 and gaps[3] >= 0.8

    listed = standin.deliveries(limit=100)["items"]
    assert len(listed) == 5
    assert [d["succeeded"] for d in listed] == [True, False, False, False, False]
    assert listed[0]["webhook_event"]["succeeded"] is True


def test_endpoint_whose_last_10_events_failed_is_disabled_until_the_target_is_set_again(
    fresh_standin, receivers
):
    receiver = receivers(fail_first=None)
    standin = _standin(fresh_standin, receiver, *FAST)
    order_id = _order(standin)
    for i in range(10):
        result = standin.send_webhook(order_id)
        assert result["status_code"] == 500, i
    target = standin.webhook_target()
    assert target["enabled"] is False
    assert target["consecutive_failed_events"] == 10

    lost = standin.send_webhook(order_id)
    assert lost["status"] == "endpoint_disabled" and lost["status_code"] is None
    time.sleep(0.3)
    seen = len(receiver.deliveries)
    time.sleep(0.7)
    assert len(receiver.deliveries) == seen  # retries stopped too
    assert len(set(receiver.ids())) == 10  # the 11th never reached the endpoint
    events = {d["webhook_event"]["id"] for d in standin.deliveries(limit=100)["items"]}
    assert len(events) == 10  # and it is not listed: no event was created

    healthy = receivers(fail_first=0)
    standin.set_webhook_target(healthy.url, WEBHOOK_SECRET)
    target = standin.webhook_target()
    assert (target["enabled"], target["consecutive_failed_events"]) == (True, 0)
    assert standin.send_webhook(order_id)["status_code"] == 200
    assert len(healthy.wait_for(1)) == 1


def test_pending_retries_survive_a_restart(fresh_standin, receivers):
    receiver = receivers(fail_first=1)
    standin = _standin(fresh_standin, receiver)  # real schedule: the retry is 2-4 s away
    first = standin.send_webhook(_order(standin))
    assert first["status_code"] == 500
    standin.restart()
    got = receiver.wait_for(2, timeout=10)
    assert [d["headers"]["webhook-id"] for d in got] == [first["webhook_id"]] * 2
    # Signed afresh: a later timestamp, hence another signature, and it verifies.
    stamps = [int(d["headers"]["webhook-timestamp"]) for d in got]
    assert stamps[1] > stamps[0]
    assert got[1]["headers"]["webhook-signature"] != got[0]["headers"]["webhook-signature"]
    assert _verify(got[1])["type"] == "order.paid"


async def test_deliveries_list_and_redeliver_through_polar_sdk(fresh_standin, receivers):
    receiver = receivers(fail_first=0)
    standin = _standin(fresh_standin, receiver, *FAST)
    first = standin.send_webhook(_order(standin))
    assert first["status_code"] == 200
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        endpoints = await polar.webhooks.list_webhook_endpoints()
        assert len(endpoints.items) == 1
        endpoint = endpoints.items[0]
        assert isinstance(endpoint, WebhookEndpoint) and endpoint.enabled
        assert endpoint.url == receiver.url
        assert (await polar.webhooks.get_webhook_endpoint(id=endpoint.id)).id == endpoint.id
        assert standin.admin("GET", "/v1/webhooks/endpoints/")["items"][0]["id"] == endpoint.id

        page = await polar.webhooks.list_webhook_deliveries(endpoint_id=endpoint.id)
        assert isinstance(page, ListResourceWebhookDelivery)
        assert page.pagination.total_count == 1
        delivery = page.items[0]
        assert isinstance(delivery, WebhookDelivery)
        assert (delivery.succeeded, delivery.http_code) == (True, 200)
        assert delivery.webhook_event.id == first["event_id"]
        assert delivery.webhook_event.type == "order.paid"
        assert json.loads(delivery.webhook_event.payload)["type"] == "order.paid"

        await polar.webhooks.redeliver_webhook_event(id=first["event_id"])
        got = receiver.wait_for(2)
        assert [d["headers"]["webhook-id"] for d in got] == [first["webhook_id"]] * 2
        assert _verify(got[1])["type"] == "order.paid"
        deadline = time.monotonic() + 5
        while (await polar.webhooks.list_webhook_deliveries()).pagination.total_count < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        assert (await polar.webhooks.list_webhook_deliveries(succeeded=False)).items == []
        other = await polar.webhooks.list_webhook_deliveries(endpoint_id="not-this-one")
        assert other.items == []
        assert standin.redeliver("00000000-0000-0000-0000-000000000000") == 404


def test_duplicate_mode_sends_extra_copies_with_the_same_webhook_id(fresh_standin, receivers):
    receiver = receivers(fail_first=0)
    standin = _standin(fresh_standin, receiver, *FAST)
    assert standin.webhook_mode(duplicate=2)["duplicate"] == 2
    first = standin.send_webhook(_order(standin))
    got = receiver.wait_for(3)
    time.sleep(0.2)
    assert len(receiver.deliveries) == 3
    assert {d["headers"]["webhook-id"] for d in got} == {first["webhook_id"]}


def test_reorder_mode_delivers_a_batch_last_first(fresh_standin, receivers):
    receiver = receivers(fail_first=0)
    standin = _standin(fresh_standin, receiver, *FAST)
    batch = {"events": [{"type": t, "data": {"n": i}} for i, t in enumerate("abc")]}

    in_order = standin.admin("POST", "/admin/webhooks/emit", batch)["results"]
    assert [r["type"] for r in in_order] == ["a", "b", "c"]
    assert [json.loads(d["body"])["type"] for d in receiver.wait_for(3)] == ["a", "b", "c"]

    assert standin.webhook_mode(reorder=True)["reorder"] is True
    results = standin.admin("POST", "/admin/webhooks/emit", batch)["results"]
    assert [r["type"] for r in results] == ["a", "b", "c"]  # results keep the given order
    got = receiver.wait_for(6)[3:]
    assert [json.loads(d["body"])["type"] for d in got] == ["c", "b", "a"]
    assert standin.admin("GET", "/admin/webhook-mode") == {
        "duplicate": 0,
        "reorder": True,
        "delay_ms": 0,
    }
