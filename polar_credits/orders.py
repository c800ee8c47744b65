"""From Polar's order object to the facts a crediting decision may use.

Deliberately leaves out everything personal (the customer's email, name, billing address):
the result is written into workflow histories.
"""

from __future__ import annotations

from polar.v2026_10.outputs import Order

from polar_credits.models import OrderFacts


def order_facts(order: Order) -> OrderFacts:
    return OrderFacts(
        order_id=order.id,
        customer_id=order.customer_id,
        billing_reason=order.billing_reason,
        status=order.status,
        product_id=order.product_id,
        subscription_id=order.subscription_id,
        subscription_status=order.subscription.status if order.subscription else None,
        currency=order.currency,
        subtotal_amount=order.subtotal_amount,
        discount_amount=order.discount_amount,
        net_amount=order.net_amount,
        tax_amount=order.tax_amount,
        total_amount=order.total_amount,
        refunded_amount=order.refunded_amount,
        seats=order.seats,
        metadata=dict(order.metadata or {}),
        created_at=order.created_at,
    )
