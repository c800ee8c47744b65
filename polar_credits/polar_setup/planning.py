"""Planning (reads only): the meters, the products that would reset them, the webhook
endpoint and the starter rules file, each checked against Polar and listed as steps."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import typing
from typing import Any, Final
from urllib.parse import urlsplit

from polar.v2026_10 import PolarAsync
from polar.v2026_10.literals import WebhookEventType
from polar.v2026_10.outputs import Meter

from polar_credits.polar_setup.plan import MeterSpec, Plan, SetupRequest, WebhookPlan
from polar_credits.polar_setup.polar_calls import all_items
from polar_credits.polar_setup.token_scopes import check_token
from polar_credits.polar_setup.toml_text import key_from_name
from polar_credits.rules import RulesFile

API_VERSION: Final = "2026-10"
# The webhook events the service consumes (api/webhooks/): `order.paid` always; every
# `subscription.*` event when a rule has a cadence (`every`), to steer the allowance runs.
ORDER_EVENTS: tuple[str, ...] = ("order.paid",)
SUBSCRIPTION_EVENTS: tuple[str, ...] = tuple(
    sorted(e for e in typing.get_args(WebhookEventType) if e.startswith("subscription."))
)


async def make_plan(polar: PolarAsync, request: SetupRequest) -> Plan:
    plan = Plan()
    await check_token(polar, request, plan)
    if plan.problems:  # a missing scope: the reads below could fail, and nothing will change
        return plan
    await _plan_meters(polar, request, plan)
    await _check_products(polar, plan)
    await _plan_webhook(polar, request, plan)
    _plan_rules_file(request, plan)
    return plan


def _as_dict(value: Any) -> Any:
    is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
    return dataclasses.asdict(value) if is_instance else value


def filter_matches(meter: Meter, event_name: str) -> bool:
    """The meter counts exactly the events named `event_name`: one `name eq` clause."""
    filter_ = _as_dict(meter.filter)
    clauses = filter_.get("clauses") or []
    return len(clauses) == 1 and clauses[0] == {
        "property": "name",
        "operator": "eq",
        "value": event_name,
    }


def aggregation_matches(meter: Meter, property: str) -> bool:
    aggregation = _as_dict(meter.aggregation)
    return bool(aggregation.get("func") == "sum" and aggregation.get("property") == property)


def _describe_meter(meter: Meter) -> str:
    return (
        f"filter {json.dumps(_as_dict(meter.filter), sort_keys=True)}, "
        f"aggregation {json.dumps(_as_dict(meter.aggregation), sort_keys=True)}"
    )


def _meter_problem(meter: Meter, spec: MeterSpec) -> str | None:
    wrong = []
    if not filter_matches(meter, spec.event_name):
        wrong.append(f"its filter is not `name eq {spec.event_name}`")
    if not aggregation_matches(meter, spec.property):
        wrong.append(f"its aggregation is not a sum over {spec.property!r}")
    if meter.archived_at is not None:
        wrong.append("it is archived")
    if not wrong:
        return None
    return (
        f"meter {meter.name!r} ({meter.id}): {' and '.join(wrong)} ({_describe_meter(meter)}); "
        "setup does not change an existing meter: fix it in Polar, or choose another "
        "--meter-name"
    )


async def _plan_meters(polar: PolarAsync, request: SetupRequest, plan: Plan) -> None:
    existing = await all_items(lambda page: polar.meters.list(page=page, limit=100))
    by_id = {m.id: m for m in existing}
    if request.rules is not None:
        for key, meter in request.rules.meters.items():
            spec = MeterSpec(key, key, meter.event_name, meter.property, meter.id)
            plan.meters.append(spec)
            found = by_id.get(meter.id)
            if found is None:
                plan.add(
                    "meter",
                    "problem",
                    f"[meters.{key}]: no meter {meter.id} in this organization (a meter of "
                    "the other server, sandbox or production?); fix its id, or run setup "
                    "without --rules to create one",
                )
            elif problem := _meter_problem(found, spec):
                plan.add("meter", "problem", f"[meters.{key}]: {problem}")
            else:
                spec.name = found.name
                plan.add("meter", "ok", f"[meters.{key}]: {found.name!r} ({found.id}) is right")
        return
    spec = MeterSpec(key_from_name(request.meter_name) or "credits", request.meter_name,
                     request.event_name, request.property)  # fmt: skip
    plan.meters.append(spec)
    live = [m for m in existing if m.archived_at is None]
    named = [m for m in live if m.name == request.meter_name]
    right = [m for m in named if _meter_problem(m, spec) is None]
    if right:
        spec.id = right[0].id
        plan.add("meter", "ok", f"{spec.name!r} ({spec.id}) exists with the right filter")
    elif named:
        plan.add("meter", "problem", _meter_problem(named[0], spec) or "")
    elif same := [m for m in live if _meter_problem(m, spec) is None]:
        # Another name, the same events: a second meter would count them twice over.
        spec.id, spec.name = same[0].id, same[0].name
        plan.add(
            "meter",
            "ok",
            f"{same[0].name!r} ({spec.id}) already counts `{spec.event_name}` as a sum of "
            f"{spec.property!r}: used as it is",
        )
    else:
        plan.meters_to_create.append(spec)
        plan.add(
            "meter",
            "create",
            f"{spec.name!r}: filter `name eq {spec.event_name}`, sum of {spec.property!r}",
        )


async def _check_products(polar: PolarAsync, plan: Plan) -> None:
    plan.products = await all_items(
        lambda page: polar.products.list(page=page, limit=100, is_archived=False)
    )
    ours = {m.id: m for m in plan.meters if m.id}
    warned = False
    for product in plan.products:
        metered = {m for p in product.prices if (m := getattr(p, "meter_id", None)) in ours}
        if product.meter_interval and metered:
            warned = True
            names = ", ".join(repr(ours[m].key) for m in sorted(metered))
            plan.add(
                "products",
                "warn",
                f"product {product.name!r} ({product.id}) resets meter {names} every "
                f"{product.meter_interval_count or 1} {product.meter_interval} "
                "(`meter_interval`): each reset wipes credits granted by negative events. "
                "Grant on that cadence (a rule with `every`), or remove the meter cycle",
            )
        for benefit in product.benefits:
            properties = getattr(benefit, "properties", None)
            meter_id = getattr(properties, "meter_id", None)
            if getattr(benefit, "type", None) == "meter_credit" and meter_id in ours:
                warned = True
                plan.add(
                    "products",
                    "warn",
                    f"product {product.name!r} ({product.id}) has a Meter Credits benefit on "
                    f"meter {ours[meter_id].key!r}: its own reset can erase grants made by "
                    "this service; use another meter for one of them",
                )
    if not warned:
        plan.add("products", "ok", f"{len(plan.products)} product(s); none resets the meter")


def wanted_events(rules: RulesFile | None) -> list[str]:
    events = list(ORDER_EVENTS)
    if rules is not None and rules.has_cadence_rules():
        events += SUBSCRIPTION_EVENTS
    return sorted(events)


async def _plan_webhook(polar: PolarAsync, request: SetupRequest, plan: Plan) -> None:
    if not request.webhook_url:
        plan.add("webhook", "skip", "no --webhook-url: the webhook endpoint is not checked")
        return
    url = request.webhook_url.strip()
    if problem := webhook_url_problem(url):
        plan.add("webhook", "problem", f"{url}: {problem}")
        return
    events = wanted_events(request.rules)
    plan.webhook = WebhookPlan(url=url, events=events)
    if request.rules is None:
        plan.add(
            "webhook",
            "warn",
            "no rules file: only order.paid is subscribed; run setup again with --rules "
            "once your rules have a cadence (`every`), for the subscription.* events",
        )
    endpoints = await all_items(
        lambda page: polar.webhooks.list_webhook_endpoints(page=page, limit=100)
    )
    same = [e for e in endpoints if e.url.strip() == url]
    if not same:
        plan.add("webhook", "create", f"{url}: format raw, events {', '.join(events)}")
        return
    endpoint = same[0]
    plan.webhook.endpoint_id = endpoint.id
    plan.webhook.secret = endpoint.secret
    changes: dict[str, Any] = {}
    if sorted(endpoint.events) != events:
        changes["events"] = events
    if endpoint.format != "raw":
        changes["format"] = "raw"
    if endpoint.api_version != API_VERSION:
        changes["api_version"] = API_VERSION
    if not endpoint.enabled:
        changes["enabled"] = True
    plan.webhook.changes = changes
    if changes:
        described = []
        if "events" in changes:
            added = sorted(set(events) - set(endpoint.events))
            removed = sorted(set(endpoint.events) - set(events))
            described.append(
                "events" + (f" +{', +'.join(added)}" if added else "")
                + (f" -{', -'.join(removed)}" if removed else "")
            )  # fmt: skip
        described += [f"{k} → {v}" for k, v in changes.items() if k != "events"]
        plan.add("webhook", "update", f"{url} ({endpoint.id}): {'; '.join(described)}")
    else:
        plan.add("webhook", "ok", f"{url} ({endpoint.id}) receives exactly {', '.join(events)}")
    if len(same) > 1:
        others = ", ".join(e.id for e in same[1:])
        plan.add(
            "webhook",
            "warn",
            f"{len(same) - 1} other endpoint(s) with this URL ({others}): each event is "
            "delivered once per endpoint; delete the extra ones in Polar's dashboard",
        )


def webhook_url_problem(url: str) -> str | None:
    """What Polar would refuse (server/polar/webhook/schemas.py), found before any change."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return "Polar takes only https:// URLs"
    host = parts.hostname
    try:
        local = not ipaddress.ip_address(host).is_global
    except ValueError:
        local = host == "localhost"
    if local:
        return (
            "Polar refuses webhook URLs to localhost or private addresses: give the API's "
            "public https URL (for a machine of your own, a tunnel)"
        )
    return None


def _plan_rules_file(request: SetupRequest, plan: Plan) -> None:
    path = request.write_rules
    if path is None:
        return
    if path.exists():
        plan.add("rules_file", "keep", f"{path} exists: left as it is (setup never overwrites)")
        return
    plan.rules_file = path
    plan.add(
        "rules_file",
        "create",
        f"{path}: a starter rule for each of {len(plan.products)} product(s)",
    )
