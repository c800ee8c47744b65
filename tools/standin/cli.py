"""Drive a running stand-in by hand: `python -m tools.standin <command> --help`.

Every command is one or two HTTP calls to the stand-in's admin surface or Polar API, with the
stand-in's bearer token. Output is short lines, ids first so they can be copied; `--json`
prints the server's raw answer instead. Customers' emails and names are never printed in the
short output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tools.standin.seed import DEMO_METER_ID, DEMO_PRODUCT_ID

DEFAULT_URL = "http://127.0.0.1:8900"
DEFAULT_TOKEN = "polar_standin_dev_token"
TIMEOUT_SECONDS = 30.0
PAGE_LIMIT = 100
STATUS_DEFAULT = -1  # fault add without --status: 503, or none for a latency/hang/drop fault
RUN = "python -m tools.standin"
ENDPOINT_NAMES = (
    "events.ingest, events.list, customer_meters.list, customer_meters.get, customers.list, "
    "customers.get, meters.get, products.get, orders.list, subscriptions.list"
)


class CliError(Exception):
    """Stops the command; the message is printed as one line to stderr."""


# -- HTTP ----------------------------------------------------------------------------------
class Standin:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            timeout=TIMEOUT_SECONDS,
            headers={"Authorization": f"Bearer {token}"},
        )

    def call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One request; `what` names the operation in error messages ("create a customer")."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(method, path, json=json_body, params=params or None)
        except httpx.ConnectError:
            raise CliError(
                f"no stand-in at {self.url}: start it with `make run` or "
                f"`{RUN} serve` (or pass --url / set STANDIN_URL)"
            ) from None
        except httpx.TimeoutException:
            raise CliError(
                f"cannot {what}: the stand-in at {self.url} did not answer within "
                f"{TIMEOUT_SECONDS:.0f} s"
            ) from None
        except httpx.HTTPError as e:
            raise CliError(f"cannot {what}: {type(e).__name__} talking to {self.url}") from None
        if response.status_code < 300:
            return response.json() if response.content else {}
        raise CliError(_http_error(what, method, path, response))

    def pages(self, path: str, what: str, params: dict[str, Any] | None = None) -> dict:
        """Every page of a Polar list endpoint, merged into one page."""
        items: list[Any] = []
        page = 1
        while True:
            answer = self.call(
                "GET", path, what, params={**(params or {}), "page": page, "limit": PAGE_LIMIT}
            )
            items += answer.get("items") or []
            max_page = (answer.get("pagination") or {}).get("max_page") or 1
            if page >= max_page:
                return {"items": items, "pagination": answer.get("pagination")}
            page += 1


def _http_error(what: str, method: str, path: str, response: httpx.Response) -> str:
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    # FastAPI's own answers for a route that does not exist (404) or a method it lacks (405).
    missing_route = (status == 404 and body == {"detail": "Not Found"}) or (
        status == 405 and detail == "Method Not Allowed"
    )
    if missing_route:
        return (
            f"this stand-in does not support {what} ({method} {path} answered {status}); "
            "it may be older than this command"
        )
    if status == 401:
        return (
            f"cannot {what}: the stand-in refused the token (401): "
            "pass --token or set STANDIN_TOKEN"
        )
    if status == 429:
        retry = response.headers.get("retry-after")
        return f"cannot {what}: rate limited (429" + (f", retry-after {retry} s)" if retry else ")")
    if isinstance(detail, list):
        # Validation errors: location and message only (the offending input may be personal).
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}"
            if isinstance(e, dict)
            else str(e)
            for e in detail
        )
    if not detail:
        detail = response.text[:300] or "no detail"
    return f"cannot {what}: the stand-in answered {status}: {detail}"


# -- output --------------------------------------------------------------------------------
def _money(amount: Any, currency: Any) -> str:
    return f"{amount} {currency or ''}".rstrip()


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _interval(interval: Any, count: Any) -> str:
    if not interval:
        return "one-time"
    return f"every {count or 1} {interval}" + ("s" if (count or 1) != 1 else "")


def order_line(order: dict[str, Any]) -> str:
    parts = [
        f"order {order.get('id')}",
        str(order.get("status")),
        str(order.get("billing_reason")),
        f"amount {_money(order.get('total_amount'), order.get('currency'))}",
        f"refunded {order.get('refunded_amount', 0)}",
        f"customer {order.get('customer_id')}",
        f"product {order.get('product_id')}",
    ]
    if order.get("subscription_id"):
        parts.append(f"subscription {order['subscription_id']}")
    return "  ".join(parts)


def subscription_line(sub: dict[str, Any]) -> str:
    parts = [
        f"subscription {sub.get('id')}",
        str(sub.get("status")),
        _interval(sub.get("recurring_interval"), sub.get("recurring_interval_count")),
        f"amount {_money(sub.get('amount'), sub.get('currency'))}",
        f"period {sub.get('current_period_start')} -> {sub.get('current_period_end')}",
        f"customer {sub.get('customer_id')}",
        f"product {sub.get('product_id')}",
    ]
    if sub.get("seats"):
        parts.append(f"seats {sub['seats']}")
    if sub.get("cancel_at_period_end"):
        parts.append("cancels at period end")
    if sub.get("ends_at") and not sub.get("cancel_at_period_end"):
        parts.append(f"ends {sub['ends_at']}")
    return "  ".join(parts)


def delivery_line(delivery: dict[str, Any]) -> str:
    """`type -> status_code (webhook-id)`, plus what the receiver said when it is short."""
    event = delivery.get("webhook_event")
    if isinstance(event, dict):  # an item of GET /v1/webhooks/deliveries
        code = delivery.get("http_code")
        return (
            f"{event.get('type')} -> {code if code is not None else 'no answer'} "
            f"(event {event.get('id')})  {'ok' if delivery.get('succeeded') else 'failed'}  "
            f"at {delivery.get('created_at')}"
        )
    status = delivery.get("status_code")
    shown = status if status is not None else (delivery.get("status") or "failed")
    line = f"{delivery.get('type')} -> {shown} ({delivery.get('webhook_id')})"
    if (delivery.get("attempt") or 1) > 1:
        line += f"  attempt {delivery['attempt']}"
    body = delivery.get("body")
    if isinstance(body, dict):
        extra = [str(body[k]) for k in ("status", "workflow_id") if body.get(k)]
        if extra:
            line += "  " + " ".join(extra)
    elif isinstance(body, str) and status is None:
        line += f"  {body[:120]}"
    return line


def product_line(product: dict[str, Any]) -> str:
    prices = product.get("prices") or [{}]
    price = prices[0]
    parts = [
        str(product.get("id")),
        repr(product.get("name")),
        f"price {_money(price.get('price_amount'), price.get('price_currency'))}",
        _interval(product.get("recurring_interval"), product.get("recurring_interval_count")),
    ]
    meters = sorted({p["meter_id"] for p in prices if isinstance(p, dict) and p.get("meter_id")})
    if meters:
        parts.append("metered " + ",".join(meters))
    return "  ".join(parts)


def meter_line(meter: dict[str, Any]) -> str:
    clauses = (meter.get("filter") or {}).get("clauses") or []
    event_names = [c.get("value") for c in clauses if c.get("property") == "name"]
    aggregation = meter.get("aggregation") or {}
    return "  ".join(
        [
            str(meter.get("id")),
            repr(meter.get("name")),
            f"event {','.join(map(str, event_names)) or '?'}",
            f"{aggregation.get('func')}({aggregation.get('property', '')})",
        ]
    )


def customer_line(customer: dict[str, Any]) -> str:
    # Ids only: the stand-in's operator sees no email or name, like the service's logs.
    line = str(customer.get("id"))
    if customer.get("external_id"):
        line += f"  external_id {customer['external_id']}"
    return line + f"  created {customer.get('created_at')}"


def fault_line(fault: dict[str, Any]) -> str:
    parts = [str(fault.get("endpoint"))]
    if fault.get("status") is not None:
        parts.append(f"status {fault['status']}")
    if fault.get("rate") is not None:
        parts.append(f"rate {fault['rate']:g} until cleared")
    else:
        parts.append(f"{fault.get('count')} left")
    for key, label in (
        ("retry_after", "retry-after"),
        ("latency_ms", "latency ms"),
        ("response_delay_ms", "response delay ms"),
    ):
        if fault.get(key):
            parts.append(f"{label} {fault[key]}")
    if fault.get("hang"):
        parts.append(f"hang {fault.get('hang_seconds', '?'):g} s")
    if fault.get("drop"):
        parts.append("drop")
    return "  ".join(parts)


def show_result(data: Any, out: Callable[[str], None] = print) -> None:
    """Prints the parts of an admin answer it knows: subscription, order, deliveries."""
    if not isinstance(data, dict):
        out(json.dumps(data))
        return
    known = False
    if isinstance(data.get("subscription"), dict):
        out(subscription_line(data["subscription"]))
        known = True
    if isinstance(data.get("order"), dict):
        out(order_line(data["order"]))
        known = True
    for order in data.get("orders") or []:
        out(order_line(order))
        known = True
    deliveries = list(data.get("deliveries") or [])
    if isinstance(data.get("delivery"), dict):
        deliveries.append(data["delivery"])
    for delivery in deliveries:
        out("  webhook " + delivery_line(delivery))
    if known and "delivery" in data and data["delivery"] is None and not deliveries:
        out("  no webhook sent: the stand-in has no webhook target")
    if not known and not deliveries:
        out(_pairs(data))


def _pairs(data: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v}" for k, v in data.items() if not isinstance(v, dict | list))


# -- commands ------------------------------------------------------------------------------
Handler = Callable[[Standin, argparse.Namespace], Any]


def _emit(args: argparse.Namespace, data: Any, lines: Callable[[Any], None]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        lines(data)


def cmd_customer_create(s: Standin, args: argparse.Namespace) -> None:
    body = {
        "email": args.email or f"cli-{uuid.uuid4().hex[:12]}@example.com",
        "name": args.name,
        "external_id": args.external_id,
    }
    data = s.call("POST", "/admin/customers", "create a customer", json_body=body)
    _emit(args, data, lambda d: print(customer_line(d)))


def cmd_customer_list(s: Standin, args: argparse.Namespace) -> None:
    data = s.pages("/v1/customers/", "list customers")
    _emit(args, data, lambda d: [print(customer_line(c)) for c in d["items"]])


def cmd_product_create(s: Standin, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "price_amount": args.price,
        "currency": args.currency,
        "recurring_interval": args.interval,
        "recurring_interval_count": args.interval_count if args.interval else None,
        "metered_meter_ids": args.metered_meter or [],
    }
    data = s.call("POST", "/admin/products", "create a product", json_body=body)
    _emit(args, data, lambda d: print(product_line(d)))


def cmd_product_list(s: Standin, args: argparse.Namespace) -> None:
    data = s.pages("/v1/products/", "list products")
    _emit(args, data, lambda d: [print(product_line(p)) for p in d["items"]])


def cmd_meter_create(s: Standin, args: argparse.Namespace) -> None:
    body = {"name": args.name, "event_name": args.event_name, "property": args.property}
    data = s.call("POST", "/admin/meters", "create a meter", json_body=body)
    _emit(args, data, lambda d: print(meter_line(d)))


def cmd_meter_list(s: Standin, args: argparse.Namespace) -> None:
    data = s.pages("/v1/meters/", "list meters")
    _emit(args, data, lambda d: [print(meter_line(m)) for m in d["items"]])


def _meter_event(path: str, what: str, with_units: bool) -> Handler:
    def handler(s: Standin, args: argparse.Namespace) -> None:
        body: dict[str, Any] = {"customer_id": args.customer_id, "meter_id": args.meter}
        if with_units:
            body["units"] = args.units
        data = s.call("POST", path, what, json_body=body)
        done = f"recorded for customer {args.customer_id}"
        _emit(args, data, lambda d: print(f"{d.get('event', what)} {done}"))

    return handler


def cmd_buy(s: Standin, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "customer_id": args.customer_id,
        "product_id": args.product_id,
        "deliver": not args.no_deliver,
    }
    if args.seats is not None:
        body["seats"] = args.seats
    if args.amount is not None:
        body["amount"] = args.amount
    data = s.call("POST", "/admin/orders", "create a paid order", json_body=body)
    if args.no_deliver and not args.json:
        print(order_line(data["order"]))
        print("  no webhook sent (--no-deliver): send it with `webhook send ORDER_ID`")
        return
    _emit(args, data, show_result)


def cmd_subscribe(s: Standin, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"customer_id": args.customer_id, "product_id": args.product_id}
    if args.seats is not None:
        body["seats"] = args.seats
    data = s.call("POST", "/admin/subscriptions", "create a subscription", json_body=body)
    _emit(args, data, show_result)


def _subscription_action(action: str, what: str) -> Handler:
    def handler(s: Standin, args: argparse.Namespace) -> None:
        data = s.call("POST", f"/admin/subscriptions/{args.subscription_id}/{action}", what)
        _emit(args, data, show_result)

    return handler


def cmd_update(s: Standin, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.product is not None:
        body["product_id"] = args.product
    if args.seats is not None:
        body["seats"] = args.seats
    if not body:
        raise CliError("update needs --product PRODUCT_ID, --seats N or both")
    data = s.call(
        "POST",
        f"/admin/subscriptions/{args.subscription_id}/update",
        "update a subscription",
        json_body=body,
    )
    _emit(args, data, show_result)


def cmd_subscriptions(s: Standin, args: argparse.Namespace) -> None:
    data = s.pages("/v1/subscriptions/", "list subscriptions", {"customer_id": args.customer})
    _emit(args, data, lambda d: [print(subscription_line(x)) for x in d["items"]])


def cmd_orders(s: Standin, args: argparse.Namespace) -> None:
    params = {"customer_id": args.customer, "product_id": args.product}
    data = s.pages("/v1/orders/", "list orders", params)
    _emit(args, data, lambda d: [print(order_line(o)) for o in d["items"]])


def cmd_refund(s: Standin, args: argparse.Namespace) -> None:
    body = {} if args.amount is None else {"amount": args.amount}
    data = s.call(
        "POST", f"/admin/orders/{args.order_id}/refund", "refund an order", json_body=body
    )
    _emit(args, data, show_result)


def cmd_balance(s: Standin, args: argparse.Namespace) -> None:
    data = s.call(
        "GET",
        "/v1/customer-meters/",
        "read the balance",
        params={"customer_id": args.customer_id, "meter_id": args.meter},
    )

    def lines(d: dict[str, Any]) -> None:
        items = d.get("items") or []
        if not items:
            raise CliError(
                f"no customer meter for customer {args.customer_id} and meter {args.meter}: "
                "check both ids (`customer list`, `meter list`)"
            )
        m = items[0]
        print(
            f"{m.get('id')}  consumed {_num(m.get('consumed_units'))}  "
            f"credited {_num(m.get('credited_units'))}  balance {_num(m.get('balance'))}  "
            f"last recompute {m.get('modified_at') or 'never'}"
        )

    _emit(args, data, lines)


def cmd_events(s: Standin, args: argparse.Namespace) -> None:
    data = s.call("GET", "/admin/events", "list events", params={"customer_id": args.customer})

    def lines(d: dict[str, Any]) -> None:
        for e in d.get("events") or []:
            meta = e.get("metadata") or {}
            parts = [str(e.get("id")), str(e.get("timestamp")), str(e.get("name"))]
            parts.append(str(e.get("source")))
            if "units" in meta:
                parts.append(f"units {_num(meta['units'])}")
            if meta.get("meter_id"):
                parts.append(f"meter {meta['meter_id']}")
            parts.append(f"customer {e.get('customer_id') or e.get('external_customer_id')}")
            if e.get("external_id"):
                parts.append(f"external_id {e['external_id']}")
            print("  ".join(parts))

    _emit(args, data, lines)


def cmd_requests(s: Standin, args: argparse.Namespace) -> None:
    data = s.call(
        "GET", "/admin/requests", "list answered requests", params={"endpoint": args.endpoint}
    )

    def lines(d: dict[str, Any]) -> None:
        counts: dict[tuple[str, Any], int] = {}
        for r in d.get("requests") or []:
            key = (r.get("endpoint", args.endpoint), r.get("status"))
            counts[key] = counts.get(key, 0) + 1
        for (endpoint, status), n in sorted(counts.items(), key=lambda kv: str(kv[0])):
            print(f"{endpoint}  {status}  x{n}")

    _emit(args, data, lines)


def cmd_webhook_send(s: Standin, args: argparse.Namespace) -> None:
    body = {"order_id": args.order_id, "type": args.type, "webhook_id": args.webhook_id}
    data = s.call("POST", "/admin/webhooks/send", "send a webhook", json_body=body)
    _emit(args, data, lambda d: print(delivery_line(d)))


def cmd_webhook_target(s: Standin, args: argparse.Namespace) -> None:
    data = s.call("GET", "/admin/webhook-target", "show the webhook target")
    _emit(args, data, lambda d: print(_pairs(d)))


def cmd_webhook_mode(s: Standin, args: argparse.Namespace) -> None:
    body = {
        k: v
        for k, v in (
            ("duplicate", args.duplicate),
            ("reorder", args.reorder),
            ("delay_ms", args.delay_ms),
        )
        if v is not None
    }
    data = s.call("GET", "/admin/webhook-mode", "show the webhook mode")
    if body:  # the server sets every field: keep the ones not given
        body = {**data, **body}
        data = s.call("POST", "/admin/webhook-mode", "set the webhook mode", json_body=body)
    _emit(args, data, lambda d: print(_pairs(d)))


def cmd_deliveries(s: Standin, args: argparse.Namespace) -> None:
    data = s.pages("/v1/webhooks/deliveries", "list webhook deliveries")
    _emit(args, data, lambda d: [print(delivery_line(x)) for x in d["items"]])


def _status(value: str) -> int | None:
    if value.lower() in ("none", "ok", "0"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a status code: {value!r}") from None


def cmd_fault_add(s: Standin, args: argparse.Namespace) -> None:
    effects = (
        args.latency_ms or args.response_delay_ms or args.hang or args.hang_seconds or args.drop
    )
    status = args.status if args.status != STATUS_DEFAULT else (None if effects else 503)
    body: dict[str, Any] = {
        "endpoint": args.endpoint,
        "status": status,
        "count": args.count,
        "retry_after": args.retry_after,
        "latency_ms": args.latency_ms,
        "response_delay_ms": args.response_delay_ms,
    }
    newer = {
        "rate": args.rate,
        "hang": args.hang or None,
        "hang_seconds": args.hang_seconds,
        "drop": args.drop or None,
    }
    body |= {k: v for k, v in newer.items() if v is not None}
    data = s.call("POST", "/admin/faults", "add a fault", json_body=body)
    faults = data.get("faults") or []
    # An older stand-in ignores fields it does not know: say so instead of arming a no-op.
    if faults:
        unknown = [k for k in newer if k in body and k not in faults[-1]]
        if unknown:
            s.call("DELETE", "/admin/faults", "clear faults")
            raise CliError(
                f"this stand-in does not support fault {', '.join('--' + k for k in unknown)} "
                "(every fault was cleared)"
            )
    _emit(args, data, lambda d: [print(fault_line(f)) for f in d.get("faults") or []])


def cmd_fault_list(s: Standin, args: argparse.Namespace) -> None:
    data = s.call("GET", "/admin/faults", "list faults")

    def lines(d: dict[str, Any]) -> None:
        faults = d.get("faults") or []
        for f in faults:
            print(fault_line(f))
        if not faults:
            print("no fault armed")

    _emit(args, data, lines)


def cmd_fault_clear(s: Standin, args: argparse.Namespace) -> None:
    data = s.call("DELETE", "/admin/faults", "clear faults")
    _emit(args, data, lambda d: print("all faults cleared"))


def cmd_rate_limit(s: Standin, args: argparse.Namespace) -> None:
    if args.per_minute is None:
        data = s.call("GET", "/admin/rate-limit", "show the rate limit")
    else:
        body = {"per_minute": args.per_minute}
        data = s.call("POST", "/admin/rate-limit", "set the rate limit", json_body=body)
    _emit(args, data, lambda d: print(_pairs(d)))


def cmd_clock(s: Standin, args: argparse.Namespace) -> None:
    if args.action == "advance":
        if (args.days is None) == (args.seconds is None):
            raise CliError("clock advance needs exactly one of --days N or --seconds N")
        body = {"days": args.days} if args.days is not None else {"seconds": args.seconds}
        data = s.call("POST", "/admin/clock/advance", "advance the clock", json_body=body)
    elif args.action == "set":
        if not args.at:
            raise CliError("clock set needs --at ISO_TIME, e.g. 2027-01-01T00:00:00Z")
        body = {"at": args.at}
        data = s.call("POST", "/admin/clock/set", "set the clock", json_body=body)
    else:
        data = s.call("GET", "/admin/clock", "show the clock")

    def lines(d: dict[str, Any]) -> None:
        print(_pairs(d))
        renewals = d.get("renewals") or []
        if renewals:
            print(f"{len(renewals)} renewal(s) fell due:")
        for renewal in renewals:
            show_result(renewal)

    _emit(args, data, lines)


# -- parser --------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--url",
        default=env("STANDIN_URL") or DEFAULT_URL,
        help="the stand-in's base URL (env STANDIN_URL, default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=env("STANDIN_TOKEN") or DEFAULT_TOKEN,
        help="the stand-in's bearer token (env STANDIN_TOKEN, default: the dev token)",
    )
    group.add_argument("--json", action="store_true", help="print the server's raw JSON answer")
    return common


def add_commands(commands: argparse._SubParsersAction) -> None:  # noqa: PLR0915 - one table
    """Adds the operator commands to `python -m tools.standin`'s subcommands."""
    commands.metavar = "COMMAND"
    common = _common()

    def leaf(
        parent: argparse._SubParsersAction, name: str, help_: str, example: str, handler: Handler
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog="example:\n  " + example.replace("\n", "\n  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        p.set_defaults(handler=handler)
        return p

    def group(name: str, help_: str, example: str) -> argparse._SubParsersAction:
        p = commands.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog="example:\n  " + example.replace("\n", "\n  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    # customers
    customer = group(
        "customer", "create or list customers", f"{RUN} customer create --external-id user-42"
    )
    p = leaf(
        customer,
        "create",
        "create a customer; prints its id (never the email or name)",
        f"{RUN} customer create --external-id user-42",
        cmd_customer_create,
    )
    p.add_argument("--email", help="default: a fresh cli-<random>@example.com")
    p.add_argument("--name", default="CLI Customer", help="default: %(default)r")
    p.add_argument("--external-id", help="your own id for the customer (unique)")
    leaf(customer, "list", "list customers: id, external id", f"{RUN} customer list",
         cmd_customer_list)  # fmt: skip

    # products
    product = group(
        "product", "create or list products", f"{RUN} product create 'Pro plan' --interval month"
    )
    p = leaf(
        product,
        "create",
        "create a product with one fixed price (one-time unless --interval)",
        f"{RUN} product create 'Credits pack' --price 900\n"
        f"{RUN} product create 'Pro plan' --price 2900 --interval month "
        f"--metered-meter {DEMO_METER_ID}",
        cmd_product_create,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--price", type=int, default=1900, metavar="CENTS", help="default %(default)s")
    p.add_argument("--currency", default="usd", help="default %(default)s")
    p.add_argument(
        "--interval",
        choices=("day", "week", "month", "year"),
        help="billing interval of a subscription product (default: one-time)",
    )
    p.add_argument("--interval-count", type=int, default=1, metavar="N",
                   help="bill every N intervals (default 1)")  # fmt: skip
    p.add_argument(
        "--metered-meter",
        action="append",
        metavar="METER_ID",
        help="meter reset at each subscription cycle, as Polar does for metered prices "
        "(repeatable)",
    )
    leaf(product, "list", "list products: id, name, price, interval", f"{RUN} product list",
         cmd_product_list)  # fmt: skip

    # meters
    meter = group("meter", "create, list, credit or reset meters", f"{RUN} meter list")
    p = leaf(
        meter,
        "create",
        "create a Sum meter over the events named --event-name",
        f"{RUN} meter create 'Exports' --event-name exports",
        cmd_meter_create,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--event-name", required=True, help="the events this meter counts")
    p.add_argument("--property", default="units", help="metadata key summed (default %(default)s)")
    leaf(meter, "list", "list meters: id, name, event name, aggregation", f"{RUN} meter list",
         cmd_meter_list)  # fmt: skip
    p = leaf(
        meter,
        "credit",
        "credit a customer's meter (a meter.credited system event, as the Meter Credits "
        "benefit does)",
        f"{RUN} meter credit CUSTOMER_ID --units 5",
        _meter_event("/admin/customer-meters/credit", "credit a meter", True),
    )
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("--units", type=int, required=True)
    p.add_argument("--meter", default=DEMO_METER_ID, metavar="METER_ID",
                   help="default: the seeded 'API calls' meter")  # fmt: skip
    p = leaf(
        meter,
        "reset",
        "reset a customer's meter (a meter.reset system event): earlier events stop counting",
        f"{RUN} meter reset CUSTOMER_ID",
        _meter_event("/admin/customer-meters/reset", "reset a meter", False),
    )
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("--meter", default=DEMO_METER_ID, metavar="METER_ID",
                   help="default: the seeded 'API calls' meter")  # fmt: skip

    # orders
    p = leaf(
        commands,
        "buy",
        "create a paid one-time order and send its order.paid webhook",
        f"{RUN} buy CUSTOMER_ID            # the seeded 'Starter pack'\n"
        f"{RUN} buy CUSTOMER_ID PRODUCT_ID --no-deliver",
        cmd_buy,
    )
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("product_id", metavar="PRODUCT_ID", nargs="?", default=DEMO_PRODUCT_ID,
                   help="default: the seeded 'Starter pack'")  # fmt: skip
    p.add_argument("--no-deliver", action="store_true", help="create the order, send no webhook")
    p.add_argument("--seats", type=int, metavar="N")
    p.add_argument("--amount", type=int, metavar="CENTS", help="default: the product's price")
    p = leaf(
        commands,
        "orders",
        "list orders: id, status, billing reason, amounts",
        f"{RUN} orders --customer CUSTOMER_ID",
        cmd_orders,
    )
    p.add_argument("--customer", metavar="CUSTOMER_ID")
    p.add_argument("--product", metavar="PRODUCT_ID")
    p = leaf(
        commands,
        "refund",
        "refund an order, fully or in part, and send order.refunded",
        f"{RUN} refund ORDER_ID\n{RUN} refund ORDER_ID --amount 500",
        cmd_refund,
    )
    p.add_argument("order_id", metavar="ORDER_ID")
    p.add_argument("--amount", type=int, metavar="CENTS", help="default: all that is refundable")

    # subscriptions
    p = leaf(
        commands,
        "subscribe",
        "start a subscription (first order subscription_create) and send its webhooks",
        f"{RUN} subscribe CUSTOMER_ID PRODUCT_ID --seats 3",
        cmd_subscribe,
    )
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("product_id", metavar="PRODUCT_ID", help="a product made with --interval")
    p.add_argument("--seats", type=int, metavar="N")
    for action, help_ in (
        ("renew", "renew a subscription now: meter resets, subscription_cycle order, webhooks"),
        ("cancel", "cancel a subscription at the end of its period"),
        ("uncancel", "undo a cancel before the period ends"),
        ("revoke", "end a subscription now"),
        ("pause", "pause a subscription"),
        ("resume", "resume a paused subscription"),
        ("fail-renewal", "fail the next renewal payment: the subscription goes past_due"),
        ("retry-payment", "retry a failed renewal payment successfully: active again"),
    ):
        p = leaf(
            commands,
            action,
            help_,
            f"{RUN} {action} SUBSCRIPTION_ID",
            _subscription_action(action, f"{action} a subscription"),
        )
        p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p = leaf(
        commands,
        "update",
        "change a subscription's product or seats now: subscription.updated, no proration",
        f"{RUN} update SUBSCRIPTION_ID --product PRODUCT_ID --seats 3",
        cmd_update,
    )
    p.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    p.add_argument("--product", metavar="PRODUCT_ID", help="the new product (recurring)")
    p.add_argument("--seats", type=int, metavar="N", help="the new seat count (at least 1)")
    p = leaf(
        commands,
        "subscriptions",
        "list subscriptions: id, status, interval, period, amount",
        f"{RUN} subscriptions --customer CUSTOMER_ID",
        cmd_subscriptions,
    )
    p.add_argument("--customer", metavar="CUSTOMER_ID")

    # balances and events
    p = leaf(
        commands,
        "balance",
        "show a customer's meter: consumed, credited, balance, last recompute",
        f"{RUN} balance CUSTOMER_ID\n{RUN} balance CUSTOMER_ID --meter METER_ID",
        cmd_balance,
    )
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("--meter", default=DEMO_METER_ID, metavar="METER_ID",
                   help="default: the seeded 'API calls' meter")  # fmt: skip
    p = leaf(
        commands,
        "events",
        "list stored events, oldest first: id, time, name, units, external id",
        f"{RUN} events --customer CUSTOMER_ID",
        cmd_events,
    )
    p.add_argument("--customer", metavar="CUSTOMER_ID")
    p = leaf(
        commands,
        "requests",
        "count the Polar API calls answered, per endpoint and status (e.g. retries after a fault)",
        f"{RUN} requests events.ingest",
        cmd_requests,
    )
    p.add_argument("endpoint", nargs="?", metavar="ENDPOINT", help=f"one of: {ENDPOINT_NAMES}")

    # webhooks
    webhook = group(
        "webhook", "send webhooks, show the target and the delivery mode",
        f"{RUN} webhook send ORDER_ID",
    )  # fmt: skip
    p = leaf(
        webhook,
        "send",
        "send (or resend) a signed webhook for an order",
        f"{RUN} webhook send ORDER_ID\n{RUN} webhook send ORDER_ID --webhook-id msg_same_id",
        cmd_webhook_send,
    )
    p.add_argument("order_id", metavar="ORDER_ID")
    p.add_argument("--type", default="order.paid", help="event type (default %(default)s)")
    p.add_argument("--webhook-id", help="reuse a webhook-id, as Polar's retries do")
    leaf(
        webhook,
        "target",
        "show the webhook endpoint: url, enabled, consecutive failed events",
        f"{RUN} webhook target",
        cmd_webhook_target,
    )
    p = leaf(
        webhook,
        "mode",
        "show or set how webhooks are delivered: duplicated, reordered, delayed",
        f"{RUN} webhook mode --duplicate 2 --reorder\n{RUN} webhook mode --duplicate 0 --in-order",
        cmd_webhook_mode,
    )
    p.add_argument("--duplicate", type=int, metavar="N", help="send each delivery N extra times")
    order_flag = p.add_mutually_exclusive_group()
    order_flag.add_argument("--reorder", dest="reorder", action="store_true", default=None,
                            help="deliver the events of one operation out of order")  # fmt: skip
    order_flag.add_argument("--in-order", dest="reorder", action="store_false",
                            help="deliver in Polar's order (the default)")  # fmt: skip
    p.add_argument("--delay-ms", type=int, metavar="N", help="wait N ms before each delivery")
    leaf(
        commands,
        "deliveries",
        "list webhook deliveries: type -> status (webhook id)",
        f"{RUN} deliveries",
        cmd_deliveries,
    )

    # faults and limits
    fault = group(
        "fault", "inject failures into the Polar API calls", f"{RUN} fault add events.ingest"
    )
    p = leaf(
        fault,
        "add",
        "make the next calls to one endpoint fail, slow down, hang or drop",
        f"{RUN} fault add events.ingest --status 503 --count 3\n"
        f"{RUN} fault add events.ingest --status 429 --retry-after 5\n"
        f"{RUN} fault add customer_meters.list --latency-ms 2000",
        cmd_fault_add,
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help=f"one of: {ENDPOINT_NAMES}")
    p.add_argument(
        "--status",
        type=_status,
        default=STATUS_DEFAULT,
        help="429, 500, 502, 503, 504, or none (default: 503, or none when --latency-ms, "
        "--response-delay-ms, --hang or --drop is given)",
    )
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help="how many calls it affects (default 1)")  # fmt: skip
    p.add_argument("--rate", type=float, metavar="P", help="affect each call with probability P")
    p.add_argument("--retry-after", type=int, metavar="S", help="retry-after header of a 429")
    p.add_argument("--latency-ms", type=int, default=0, metavar="N", help="wait N ms first")
    p.add_argument(
        "--response-delay-ms",
        type=int,
        default=0,
        metavar="N",
        help="carry the call out, then answer N ms late (past the client's timeout)",
    )
    p.add_argument("--hang", action="store_true", help="answer nothing for an hour")
    p.add_argument("--hang-seconds", type=float, metavar="S", help="hang for S seconds instead")
    p.add_argument("--drop", action="store_true", help="close the connection without answering")
    leaf(fault, "list", "list the faults armed", f"{RUN} fault list", cmd_fault_list)
    leaf(fault, "clear", "remove every fault", f"{RUN} fault clear", cmd_fault_clear)
    p = leaf(
        commands,
        "rate-limit",
        "show or set the API rate limit (requests per minute; 429 past it)",
        f"{RUN} rate-limit\n{RUN} rate-limit --per-minute 100",
        cmd_rate_limit,
    )
    p.add_argument("--per-minute", type=int, metavar="N")
    p = leaf(
        commands,
        "clock",
        "show, advance or set the stand-in's clock; subscriptions due renew as it passes",
        f"{RUN} clock\n{RUN} clock advance --days 31\n"
        f"{RUN} clock set --at 2027-01-01T00:00:00Z   # a stand-in started with --clock manual",
        cmd_clock,
    )
    p.add_argument("action", nargs="?", choices=("show", "advance", "set"), default="show")
    p.add_argument("--days", type=float, metavar="N", help="advance: by N days")
    p.add_argument("--seconds", type=float, metavar="N", help="advance: by N seconds")
    p.add_argument("--at", metavar="ISO_TIME", help="set: the time to set (manual clock only)")


def run(args: argparse.Namespace) -> int:
    """Runs the command parsed by a parser that `add_commands` filled; returns the exit code."""
    standin = Standin(args.url, args.token)
    try:
        args.handler(standin, args)
    except CliError as e:
        print(f"tools.standin {args.command}: {e}", file=sys.stderr)
        return 1
    finally:
        standin.http.close()
    return 0


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=RUN)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def is_command(name: str) -> bool:
    """Whether `python -m tools.standin NAME ...` is one of this module's commands."""
    for action in _cli_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return name in action.choices
    return False


def main(argv: list[str] | None = None) -> int:
    return run(_cli_parser().parse_args(argv))
