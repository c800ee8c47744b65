"""Builds Polar-shaped JSON (API version 2026-10) from stand-in rows.

Every shape here must load with polar-sdk's own models; the tests check that.
"""

from __future__ import annotations

import math
from typing import Any

from tools.standin.clock import iso
from tools.standin.seed import ORGANIZATION_ID


def _opt_iso(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def page(items: list[dict[str, Any]], total: int, limit: int) -> dict[str, Any]:
    return {
        "items": items,
        "pagination": {"total_count": total, "max_page": math.ceil(total / limit) if limit else 0},
    }


def customer(row: dict[str, Any], first_event_at: float | None = None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "created_at": iso(row["created_at"]),
        "modified_at": _opt_iso(row["modified_at"]),
        "metadata": row["metadata"],
        "external_id": row["external_id"],
        "email": row["email"],
        "email_verified": False,
        "type": "individual",
        "name": row["name"],
        "billing_name": row["name"],
        "billing_address": None,
        "tax_id": None,
        "locale": None,
        "organization_id": ORGANIZATION_ID,
        "default_payment_method_id": None,
        "deleted_at": None,
        "first_user_event_at": _opt_iso(first_event_at),
        "avatar_url": None,
    }


def meter(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {},
        "created_at": iso(row["created_at"]),
        "modified_at": None,
        "id": row["id"],
        "name": row["name"],
        "unit": "scalar",
        "custom_label": None,
        "custom_multiplier": None,
        "filter": row["filter"],
        "aggregation": row["aggregation"],
        "organization_id": ORGANIZATION_ID,
        "archived_at": None,
    }


def _product_core(row: dict[str, Any]) -> dict[str, Any]:
    recurring = row["recurring_interval"]
    return {
        "metadata": row.get("metadata") or {},
        "id": row["id"],
        "created_at": iso(row["created_at"]),
        "modified_at": None,
        "trial_interval": None,
        "trial_interval_count": None,
        "name": row["name"],
        "description": None,
        "visibility": "public",
        "recurring_interval": recurring,
        "recurring_interval_count": (row.get("recurring_interval_count") or 1)
        if recurring
        else None,
        "meter_interval": row.get("meter_interval"),
        "meter_interval_count": row.get("meter_interval_count"),
        "is_recurring": recurring is not None,
        "is_archived": False,
        "organization_id": ORGANIZATION_ID,
    }


def product(row: dict[str, Any]) -> dict[str, Any]:
    price = {
        "created_at": iso(row["created_at"]),
        "modified_at": None,
        "id": row["price_id"],
        "source": "catalog",
        "amount_type": "fixed",
        "price_currency": row["currency"],
        "tax_behavior": None,
        "is_archived": False,
        "product_id": row["id"],
        "price_amount": row["price_amount"],
    }
    return {
        **_product_core(row),
        "is_deletable": False,
        "prices": [price, *(_metered_price(row, m) for m in row.get("metered_prices") or [])],
        "benefits": [_meter_credit_benefit(row, b) for b in row.get("benefits") or []],
        "medias": [],
        "attached_custom_fields": [],
    }


def _meter_credit_benefit(row: dict[str, Any], benefit: dict[str, Any]) -> dict[str, Any]:
    """Polar's Meter Credits benefit (type `meter_credit`), as a product lists it."""
    return {
        "id": benefit["id"],
        "created_at": iso(row["created_at"]),
        "modified_at": None,
        "type": "meter_credit",
        "description": f"{benefit['units']} credits",
        "selectable": True,
        "deletable": True,
        "is_deleted": False,
        "organization_id": ORGANIZATION_ID,
        "metadata": {},
        "visibility": "public",
        "properties": {
            "units": benefit["units"],
            "rollover": False,
            "meter_id": benefit["meter_id"],
        },
        "visibility_configurable": True,
    }


def _metered_price(row: dict[str, Any], metered: dict[str, Any]) -> dict[str, Any]:
    """A metered_unit price on one meter, as Polar lists it next to the fixed price."""
    return {
        "created_at": iso(row["created_at"]),
        "modified_at": None,
        "id": metered["price_id"],
        "source": "catalog",
        "amount_type": "metered_unit",
        "price_currency": row["currency"],
        "tax_behavior": None,
        "is_archived": False,
        "product_id": row["id"],
        "cap_amount": None,
        "meter_id": metered["meter_id"],
        "meter": {
            "id": metered["meter_id"],
            "name": metered["meter_name"],
            "unit": "scalar",
            "custom_label": None,
            "custom_multiplier": None,
        },
        "unit_amount": str(metered.get("unit_amount", "0")),
    }


def _order_customer(row: dict[str, Any]) -> dict[str, Any]:
    return customer(row)


def subscription(sub: dict[str, Any], order: dict[str, Any]) -> dict[str, Any]:
    """Fills an order's stored subscription dict up to Polar's OrderSubscription shape."""
    created = iso(order["created_at"])
    return {
        "metadata": sub.get("metadata", {}),
        "created_at": sub.get("created_at", created),
        "modified_at": sub.get("modified_at"),
        "id": sub["id"],
        "amount": sub.get("amount", order["amount"]),
        "currency": order["currency"],
        "recurring_interval": sub.get("recurring_interval", "month"),
        "recurring_interval_count": sub.get("recurring_interval_count", 1),
        "status": sub.get("status", "active"),
        "current_period_start": sub.get("current_period_start", created),
        "current_period_end": sub.get("current_period_end", created),
        "current_meter_period_start": None,
        "current_meter_period_end": None,
        "trial_start": None,
        "trial_end": None,
        "cancel_at_period_end": sub.get("cancel_at_period_end", False),
        "canceled_at": sub.get("canceled_at"),
        "started_at": sub.get("started_at", created),
        "ends_at": sub.get("ends_at"),
        "ended_at": sub.get("ended_at"),
        "past_due_at": sub.get("past_due_at"),
        "pause_at_period_end": False,
        "paused_at": sub.get("paused_at"),
        "resumes_at": None,
        "customer_id": order["customer_id"],
        "product_id": order["product_id"],
        "discount_id": None,
        "checkout_id": None,
        "seats": sub.get("seats", order["seats"]),
        "units": None,
        "customer_cancellation_reason": None,
        "customer_cancellation_comment": None,
    }


_SUB_TIMES = (
    "created_at",
    "modified_at",
    "current_period_start",
    "current_period_end",
    "canceled_at",
    "started_at",
    "ends_at",
    "ended_at",
    "past_due_at",
    "paused_at",
)


def subscription_snapshot(row: dict[str, Any]) -> dict[str, Any]:
    """The subscription as an order records it: its state when the order was made."""
    snap = {k: row[k] for k in ("id", "status", "amount", "recurring_interval", "seats")}
    snap |= {
        "recurring_interval_count": row["recurring_interval_count"],
        "cancel_at_period_end": bool(row["cancel_at_period_end"]),
        "metadata": row["metadata"],
    }
    return snap | {k: _opt_iso(row[k]) for k in _SUB_TIMES}


def subscription_full(
    row: dict[str, Any], customer_row: dict[str, Any], product_row: dict[str, Any]
) -> dict[str, Any]:
    """Polar's Subscription resource (webhook data and /v1/subscriptions)."""
    product_json = product(product_row)
    core = subscription(subscription_snapshot(row), {**row, "seats": row["seats"]})
    return {
        **core,
        "custom_field_data": {},
        "customer": customer(customer_row),
        "product": product_json,
        "discount": None,
        "prices": product_json["prices"],
        "meters": [],
        "pending_update": None,
    }


def order(row: dict[str, Any], customer_row: dict[str, Any], product_row: dict[str, Any]) -> dict:
    created = iso(row["created_at"])
    amount = row["amount"]
    sub = row.get("subscription")
    status = row.get("status") or "paid"
    refunded = row.get("refunded_amount") or 0
    paid = status in ("paid", "refunded", "partially_refunded")
    return {
        "id": row["id"],
        "created_at": created,
        "modified_at": _opt_iso(row.get("modified_at")) or created,
        "status": status,
        "paid": paid,
        "subtotal_amount": amount,
        "discount_amount": 0,
        "net_amount": amount,
        "tax_amount": 0,
        "total_amount": amount,
        "applied_balance_amount": 0,
        "due_amount": 0 if paid else amount,
        "refunded_amount": refunded,
        "refunded_tax_amount": 0,
        "currency": row["currency"],
        "billing_reason": row["billing_reason"],
        "billing_name": customer_row["name"],
        "billing_address": None,
        "invoice_number": None,
        "is_invoice_generated": False,
        "receipt_number": None,
        "seats": row["seats"],
        "units": None,
        "customer_id": row["customer_id"],
        "product_id": row["product_id"],
        "discount_id": None,
        "subscription_id": sub["id"] if sub else None,
        "checkout_id": None,
        "next_payment_attempt_at": None,
        "metadata": row["metadata"],
        "custom_field_data": {},
        "platform_fee_amount": 0,
        "platform_fee_currency": None,
        "customer": _order_customer(customer_row),
        "product": _product_core(product_row),
        "discount": None,
        "subscription": subscription(sub, row) if sub else None,
        "items": [
            {
                "created_at": created,
                "modified_at": None,
                "id": row["id"],
                "label": product_row["name"],
                "amount": amount,
                "tax_amount": 0,
                "proration": False,
                "product_price_id": product_row["price_id"],
                "start_timestamp": None,
                "end_timestamp": None,
            }
        ],
        "description": product_row["name"],
        "refundable_amount": amount - refunded if paid else 0,
        "refundable_tax_amount": 0,
    }


def customer_meter(
    row: dict[str, Any], customer_json: dict[str, Any], meter_json: dict[str, Any]
) -> dict[str, Any]:
    consumed = float(row["consumed"])
    credited = int(row["credited"])
    return {
        "id": row["id"],
        "created_at": iso(row["created_at"]),
        "modified_at": _opt_iso(row["modified_at"]),
        "customer_id": row["customer_id"],
        "meter_id": row["meter_id"],
        "consumed_units": consumed,
        "credited_units": credited,
        "balance": float(credited - consumed),
        "customer": customer_json,
        "meter": meter_json,
    }


_SYSTEM_LABELS = {"meter.credited": "Meter credited", "meter.reset": "Meter reset"}


def event(row: dict[str, Any], customer_json: dict[str, Any] | None) -> dict[str, Any]:
    system = row["source"] == "system"
    return {
        "id": row["id"],
        "timestamp": iso(row["ts"]),
        "organization_id": ORGANIZATION_ID,
        "customer_id": customer_json["id"] if customer_json else row["customer_id"],
        "customer": customer_json,
        "external_customer_id": row["external_customer_id"],
        "member_id": None,
        "external_member_id": None,
        "child_count": 0,
        "parent_id": None,
        "label": _SYSTEM_LABELS.get(row["name"], row["name"]) if system else row["name"],
        "name": row["name"],
        "source": row["source"],
        "metadata": row["metadata"],
    }


def webhook_body(event_type: str, data: dict[str, Any], timestamp: float) -> dict[str, Any]:
    return {"type": event_type, "timestamp": iso(timestamp), "api_version": "2026-10", "data": data}
