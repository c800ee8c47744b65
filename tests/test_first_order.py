"""The first-order lookup's answer, table-driven: earlier is an older `created_at`, or the
same one and a smaller order id; the order itself never counts; pages are read until the
answer is known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polar_credits.activities.credits import FIRST_ORDER_PAGE, CreditActivities
from polar_credits.activities.gateway import OrderStamp
from polar_credits.models.decisions import FirstOrderInput
from polar_credits.rules import parse_rules

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RULES = parse_rules('rules = []\n[meters.m]\nid = "m"\nevent_name = "e"\n')


class FakeGateway:
    """Polar's paid orders of one customer and product, oldest first, paged."""

    def __init__(self, stamps: list[OrderStamp]) -> None:
        self.stamps = sorted(stamps, key=lambda s: s.created_at)
        self.pages: list[int] = []

    async def paid_orders(
        self, customer_id: str, product_id: str, *, page: int = 1, limit: int = 10
    ) -> list[OrderStamp]:
        self.pages.append(page)
        return self.stamps[(page - 1) * limit : page * limit]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def look_up(stamps: list[OrderStamp], order_id: str, created_at: str | None):
    gateway = FakeGateway(stamps)
    activities = CreditActivities(gateway, RULES)  # type: ignore[arg-type]
    fact = await activities.look_up_first_order(
        FirstOrderInput(order_id=order_id, customer_id="c", product_id="p", created_at=created_at)
    )
    return fact, gateway


@pytest.mark.parametrize(
    ("stamps", "order_id", "created_at", "first", "earlier"),
    [
        ([], "b", at(0).isoformat(), True, None),  # Polar does not list it yet
        ([OrderStamp("b", at(0))], "b", at(0).isoformat(), True, None),  # only itself
        ([OrderStamp("a", at(-60)), OrderStamp("b", at(0))], "b", at(0).isoformat(), False, "a"),
        ([OrderStamp("b", at(0)), OrderStamp("c", at(60))], "b", at(0).isoformat(), True, None),
        # The same created_at: the smaller id is the first, for both orders of the tie.
        ([OrderStamp("b", at(0)), OrderStamp("a", at(0))], "b", at(0).isoformat(), False, "a"),
        ([OrderStamp("b", at(0)), OrderStamp("a", at(0))], "a", at(0).isoformat(), True, None),
        # An order that does not say when it was made comes after every listed order.
        ([OrderStamp("a", at(-60))], "b", None, False, "a"),
        # A naive timestamp is UTC.
        ([OrderStamp("a", at(-1))], "b", "2026-06-01T12:00:00", False, "a"),
    ],
)
async def test_first_order_answers(
    stamps: list[OrderStamp], order_id: str, created_at: str | None, first: bool, earlier: str
) -> None:
    fact, _ = await look_up(stamps, order_id, created_at)
    assert fact.first is first
    assert fact.earlier_order_id == earlier


async def test_a_tie_filling_a_page_reads_the_next_page() -> None:
    # A full page of orders made in the same instant as ours, all with larger ids, does not
    # decide: the next page does.
    tie = [OrderStamp(f"z{n:02d}", at(0)) for n in range(FIRST_ORDER_PAGE)]
    fact, gateway = await look_up([*tie, OrderStamp("y", at(5))], "b", at(0).isoformat())
    assert fact.first is True
    assert gateway.pages == [1, 2]


async def test_one_call_when_the_oldest_order_is_earlier() -> None:
    stamps = [OrderStamp(f"o{n:02d}", at(n - 100)) for n in range(30)]
    fact, gateway = await look_up(stamps, "b", at(0).isoformat())
    assert not fact.first and fact.earlier_order_id == "o00"
    assert gateway.pages == [1]
