"""What activities ask of Polar (`PolarGateway`): every call as a method, sent by the
scheduler under the budget; and `PolarSender`, the scheduler's polar-sdk calls."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

from polar.base import AsyncClientBase, parse_response_json
from polar.v2026_10 import PolarAsync
from polar.v2026_10.errors import HTTPValidationError
from polar.v2026_10.services.customer_meters import CustomerMetersAsync
from polar.v2026_10.services.events import EventsAsync
from polar.v2026_10.services.orders import OrdersAsync

from polar_credits.activities.gateway.clock import AnswerNotingClient, polar_time_after_call
from polar_credits.activities.gateway.results import (
    IngestOutcome,
    IngestReceipt,
    MeterRow,
    OrderStamp,
)
from polar_credits.activities.gateway.scheduler import (
    MAX_READ_CUSTOMERS,
    CallBudget,
    CallScheduler,
)
from polar_credits.polar_ids import path_segment
from polar_credits.worker_metrics import GatewayMetrics


class PolarSender:
    """The calls the scheduler batches, through polar-sdk: one ingest call, one page of
    customer meters."""

    def __init__(self, client: AsyncClientBase) -> None:
        self._events = EventsAsync(client)
        self._customer_meters = CustomerMetersAsync(client)

    async def ingest(self, events: list[dict[str, Any]]) -> IngestReceipt:
        # Polar's own JSON for each event: polar-sdk validates it against its models.
        response = await self._events.ingest(events=cast(Any, events))
        return IngestReceipt(response.inserted, response.duplicates, polar_time_after_call())

    async def customer_meters(self, meter_id: str, customer_ids: list[str]) -> list[MeterRow]:
        page = await self._customer_meters.list(
            customer_id=customer_ids, meter_id=meter_id, limit=MAX_READ_CUSTOMERS
        )
        return [_meter_row(item) for item in page.items]


class PolarGateway:
    """One per worker process; activities share it. Start-free: its scheduler starts on
    first use, in the event loop of the caller."""

    def __init__(
        self, polar: PolarAsync, budget: CallBudget, metrics: GatewayMetrics | None = None
    ) -> None:
        # The client `polar` was built with (base URL, token, timeout, connections), noting
        # the Date of Polar's answers; `polar` itself is left as it was.
        self._client = AnswerNotingClient(polar.orders.client)
        self._events = EventsAsync(self._client)
        self._orders = OrdersAsync(self._client)
        self._scheduler = CallScheduler(PolarSender(self._client), budget, metrics)

    async def ingest(self, events: list[dict[str, Any]]) -> IngestOutcome:
        """Ingest these events (one order's grants) in the next batch; raises the
        ApplicationError of Polar's answer when the call for them fails."""
        return await self._scheduler.ingest(events)

    async def customer_meter(self, customer_id: str, meter_id: str) -> MeterRow | None:
        """The customer's meter, read together with every other meter asked for meanwhile."""
        return await self._scheduler.customer_meter(customer_id, meter_id)

    async def order_events(self, customer_id: str, event_name: str, order_id: str) -> list[Any]:
        """The customer's events of one order (the first release's check), paced, unbatched."""
        page = await self._scheduler.call(
            lambda: self._events.list(
                customer_id=customer_id,
                name=event_name,
                metadata={"order_id": order_id},
                limit=100,
            ),
            "reading the grant's events",
        )
        return list(page.items)

    async def paid_orders(
        self, customer_id: str, product_id: str, *, page: int = 1, limit: int = 10
    ) -> list[OrderStamp]:
        """The customer's paid (or since refunded) orders of one product, oldest first: ids
        and times only (the first-order condition), paced, unbatched."""
        answer = await self._scheduler.call(
            lambda: self._orders.list(
                customer_id=customer_id,
                product_id=product_id,
                status=["paid", "partially_refunded", "refunded"],
                sorting=["created_at"],
                page=page,
                limit=limit,
            ),
            "listing the customer's paid orders",
        )
        return [OrderStamp(order.id, _moment(order.created_at)) for order in answer.items]

    async def order(self, order_id: str) -> dict[str, Any]:
        """One order as Polar's JSON (it holds the customer's details: callers keep only the
        facts they need), paced, unbatched."""
        # Encoded: polar-sdk puts a path parameter into the URL as it is.
        segment = path_segment(order_id)
        answer = await self._scheduler.call(lambda: self._orders.get(segment), "reading the order")
        return dataclasses.asdict(answer)  # polar-sdk's models are dataclasses

    async def active_subscriptions(
        self, product_id: str | None, page: int, limit: int = MAX_READ_CUSTOMERS
    ) -> dict[str, Any]:
        """One page of active subscriptions (of one product, or all), oldest first, as
        Polar's JSON (a backfill's listing), paced, unbatched."""
        query: dict[str, Any] = {"active": True, "page": page, "limit": limit}
        query["sorting"] = ["started_at"]
        if product_id is not None:
            query["product_id"] = product_id
        return await self._scheduler.call(
            lambda: self._list_json("/v1/subscriptions/", query), "listing active subscriptions"
        )

    async def subscriptions(
        self,
        statuses: list[str],
        product_ids: list[str] | None,
        page: int,
        limit: int = MAX_READ_CUSTOMERS,
    ) -> dict[str, Any]:
        """One page of the subscriptions in these statuses (of these products, or all), oldest
        first, as Polar's JSON (a recovery's listing), paced, unbatched."""
        query: dict[str, Any] = {"status": statuses, "page": page, "limit": limit}
        query["sorting"] = ["started_at"]
        if product_ids is not None:
            query["product_id"] = product_ids
        return await self._scheduler.call(
            lambda: self._list_json("/v1/subscriptions/", query), "listing subscriptions"
        )

    async def paid_orders_since(
        self, created_after: str, page: int, limit: int = MAX_READ_CUSTOMERS
    ) -> dict[str, Any]:
        """One page of the organization's paid orders created after `created_after`, oldest
        first, as Polar's JSON (reconciliation), paced, unbatched."""
        query: dict[str, Any] = {"status": "paid", "created_after": created_after}
        query |= {"page": page, "limit": limit, "sorting": ["created_at"]}
        return await self._scheduler.call(
            lambda: self._list_json("/v1/orders/", query), "listing paid orders"
        )

    async def _list_json(self, url: str, query: dict[str, Any]) -> dict[str, Any]:
        # polar-sdk's own client, but read as JSON: its typed models refuse a value Polar adds
        # later (a new billing reason), which would stop a listing for good; callers read
        # each item leniently instead.
        request = self._client.build_request(method="GET", url=url, query_params=query)
        response = await self._client.send_request(request)
        answer: dict[str, Any] = parse_response_json(response, None, {422: HTTPValidationError})
        return answer

    async def close(self) -> None:
        await self._scheduler.close()


def _moment(value: datetime | str) -> datetime:
    """polar-sdk gives some timestamps as ISO strings; always a UTC-aware datetime."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _meter_row(item: Any) -> MeterRow:
    return MeterRow(
        customer_id=item.customer_id,
        meter_id=item.meter_id,
        balance=float(item.balance),
        consumed_units=float(item.consumed_units),
        credited_units=float(item.credited_units),
        modified_at=datetime.fromisoformat(item.modified_at) if item.modified_at else None,
    )
