"""Polar's prerequisites for the service, checked and made in one idempotent pass
(`polar-credits setup`): the access token and its scopes, the Sum meter(s), products that
would wipe negative-event credits, the webhook endpoint, and a starter rules file.

Planning only reads; applying makes exactly the changes the plan lists, so a second run
plans nothing. What setup finds wrong but does not own (a meter with another filter, a missing
scope) is reported, never changed: a problem stops the run before any change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import json
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import urlsplit

from polar.base import PolarClientError, PolarRateLimitError
from polar.v2026_10 import PolarAsync
from polar.v2026_10.literals import WebhookEventType
from polar.v2026_10.outputs import Meter, Product

from polar_credits.polar_ids import path_segment
from polar_credits.rules import RulesFile

API_VERSION: Final = "2026-10"
# The webhook events the service consumes (api/webhooks.py): `order.paid` always; every
# `subscription.*` event when a rule has a cadence (`every`), to steer the allowance runs.
ORDER_EVENTS: tuple[str, ...] = ("order.paid",)
SUBSCRIPTION_EVENTS: tuple[str, ...] = tuple(
    sorted(e for e in typing.get_args(WebhookEventType) if e.startswith("subscription."))
)
# What the worker and the API need (docs/polar-setup.md), and what setup itself
# needs. Read scopes are probed with a one-item list; events:write with an empty ingest
# (Polar accepts it and stores nothing). meters:write and webhooks:write cannot be probed
# without a change: a missing one shows as a 403 when setup makes that change.
SERVICE_SCOPES = (
    "events:write",
    "events:read",
    "customer_meters:read",
    "orders:read",
    "subscriptions:read",
    "customers:read",
    "meters:read",
)
SETUP_SCOPES = ("meters:write", "products:read", "webhooks:read", "webhooks:write")
UNPROBED_SCOPES = ("meters:write", "webhooks:write")
MAX_RATE_LIMIT_WAITS = 5
T = TypeVar("T")

Area = Literal["token", "meter", "products", "webhook", "rules_file"]
Action = Literal["ok", "create", "update", "keep", "warn", "problem", "skip"]
CHANGES: frozenset[str] = frozenset({"create", "update"})


class TokenRefused(Exception):
    """Polar answered 401: the token is wrong, revoked, or from the other server."""


class SetupError(Exception):
    """Polar refused a change (the message says which and why)."""


@dataclass
class Step:
    area: Area
    action: Action
    detail: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class MeterSpec:
    """A meter as the rules file names it: `[meters.<key>]` with id, event_name, property."""

    key: str
    name: str
    event_name: str
    property: str = "units"
    id: str | None = None  # None until found or created

    def toml(self) -> str:
        key = self.key if re.fullmatch(r"[A-Za-z0-9_-]+", self.key) else _toml_str(self.key)
        return (
            f"[meters.{key}]\n"
            f"id = {_toml_str(self.id or '<created on apply>')}\n"
            f"event_name = {_toml_str(self.event_name)}\n"
            f"property = {_toml_str(self.property)}\n"
        )


@dataclass
class WebhookPlan:
    url: str
    events: list[str]
    endpoint_id: str | None = None  # an existing endpoint with this URL
    changes: dict[str, Any] = field(default_factory=dict)  # its update, when it needs one
    secret: str | None = None  # Polar's answer: shown once when created, or on request


@dataclass
class SetupRequest:
    rules: RulesFile | None = None
    meter_name: str = "API calls"
    event_name: str = "api_usage"
    property: str = "units"
    webhook_url: str | None = None
    write_rules: Path | None = None


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    meters: list[MeterSpec] = field(default_factory=list)
    meters_to_create: list[MeterSpec] = field(default_factory=list)
    webhook: WebhookPlan | None = None
    products: list[Product] = field(default_factory=list)  # for the starter rules file
    rules_file: Path | None = None  # to write
    scopes_missing: list[str] = field(default_factory=list)

    def add(self, area: Area, action: Action, detail: str) -> None:
        self.steps.append(Step(area, action, detail))

    @property
    def problems(self) -> list[Step]:
        return [s for s in self.steps if s.action == "problem"]

    @property
    def nothing_to_do(self) -> bool:
        return not any(s.action in CHANGES for s in self.steps)


# -- calling Polar ---------------------------------------------------------------------------
async def _call(make: Callable[[], Awaitable[T]]) -> T:
    """One Polar call; a 429 is waited out (Polar's retry-after), a 401 is TokenRefused."""
    for _ in range(MAX_RATE_LIMIT_WAITS):
        try:
            return await make()
        except PolarRateLimitError as exc:
            await asyncio.sleep(min(exc.retry_after or 5, 60))
        except PolarClientError as exc:
            if exc.status_code == 401:
                raise TokenRefused(str(exc.error)) from None
            raise
    return await make()


async def _every(pages: Callable[[int], Awaitable[Any]]) -> list[Any]:
    items: list[Any] = []
    page = 1
    while True:
        answer = await _call(functools.partial(pages, page))
        items += answer.items
        if page >= answer.pagination.max_page:
            return items
        page += 1


def _detail(exc: PolarClientError) -> str:
    error = exc.error
    try:
        body = json.loads(error) if isinstance(error, str) else error
    except ValueError:
        return str(error)[:300]
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
            for d in body["detail"]
            if isinstance(d, dict)
        )
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error_description") or body)[:300]
    return str(error)[:300]


# -- planning (reads only) -------------------------------------------------------------------
async def make_plan(polar: PolarAsync, request: SetupRequest) -> Plan:
    plan = Plan()
    await _check_token(polar, request, plan)
    if plan.problems:  # a missing scope: the reads below could fail, and nothing will change
        return plan
    await _plan_meters(polar, request, plan)
    await _check_products(polar, plan)
    await _plan_webhook(polar, request, plan)
    _plan_rules_file(request, plan)
    return plan


async def _check_token(polar: PolarAsync, request: SetupRequest, plan: Plan) -> None:
    probes: dict[str, Callable[[], Awaitable[Any]]] = {
        # meters:read first: a refused token fails here, before anything else is asked.
        "meters:read": lambda: polar.meters.list(limit=1),
        "events:read": lambda: polar.events.list(limit=1),
        "events:write": lambda: polar.events.ingest(events=[]),
        "customer_meters:read": lambda: polar.customer_meters.list(limit=1),
        "orders:read": lambda: polar.orders.list(limit=1),
        "subscriptions:read": lambda: polar.subscriptions.list(limit=1),
        "customers:read": lambda: polar.customers.list(limit=1),
        "products:read": lambda: polar.products.list(limit=1),
    }
    if request.webhook_url:
        probes["webhooks:read"] = lambda: polar.webhooks.list_webhook_endpoints(limit=1)
    for scope, probe in probes.items():
        try:
            await _call(probe)
        except PolarClientError as exc:
            if exc.status_code == 403:
                plan.scopes_missing.append(scope)
            elif exc.status_code != 422:  # 422: the token passed, the probe's body did not
                raise
    checked = ", ".join(s for s in probes if s not in plan.scopes_missing)
    if plan.scopes_missing:
        plan.add(
            "token",
            "problem",
            f"the token lacks {', '.join(plan.scopes_missing)}: create a token with "
            f"{', '.join(SERVICE_SCOPES + SETUP_SCOPES)}",
        )
    else:
        plan.add(
            "token",
            "ok",
            f"accepted; scopes present: {checked} "
            f"({', '.join(UNPROBED_SCOPES)} are checked when a change needs them)",
        )


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
    existing = await _every(lambda page: polar.meters.list(page=page, limit=100))
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
    spec = MeterSpec(_key(request.meter_name) or "credits", request.meter_name, request.event_name,
                     request.property)  # fmt: skip
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
    plan.products = await _every(
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
    endpoints = await _every(
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


# -- applying --------------------------------------------------------------------------------
async def apply_plan(polar: PolarAsync, plan: Plan) -> None:
    """Makes the plan's changes, in order: meters, webhook endpoint, rules file."""
    for spec in plan.meters_to_create:
        meter = await _change(
            "create the meter",
            "meters:write",
            functools.partial(
                polar.meters.create,
                name=spec.name,
                filter={
                    "conjunction": "and",
                    "clauses": [{"property": "name", "operator": "eq", "value": spec.event_name}],
                },
                aggregation={"func": "sum", "property": spec.property},
            ),
        )
        spec.id = meter.id
    webhook = plan.webhook
    if webhook is not None and webhook.endpoint_id is None:
        created = await _change(
            "create the webhook endpoint",
            "webhooks:write",
            lambda: polar.webhooks.create_webhook_endpoint(
                url=webhook.url,
                format="raw",
                events=cast("list[WebhookEventType]", webhook.events),
                api_version=API_VERSION,
            ),
        )
        webhook.endpoint_id, webhook.secret = created.id, created.secret
    elif webhook is not None and webhook.changes:
        endpoint_id, changes = webhook.endpoint_id, webhook.changes
        assert endpoint_id is not None  # the branch above handles an endpoint still to create
        await _change(
            "update the webhook endpoint",
            "webhooks:write",
            lambda: polar.webhooks.update_webhook_endpoint(path_segment(endpoint_id), **changes),
        )
    if plan.rules_file is not None:
        text = starter_rules(plan.meters, plan.products)
        # "x": never overwrite, even a file that appeared since the plan was made.
        with plan.rules_file.open("x", encoding="utf-8") as file:
            file.write(text)


async def _change(what: str, scope: str, make: Callable[[], Awaitable[T]]) -> T:
    try:
        return await _call(make)
    except PolarClientError as exc:
        if exc.status_code == 403:
            raise SetupError(f"cannot {what}: the token lacks the scope {scope}") from None
        raise SetupError(
            f"cannot {what}: Polar answered {exc.status_code}: {_detail(exc)}"
        ) from None


# -- the starter rules file ------------------------------------------------------------------
def starter_rules(meters: list[MeterSpec], products: list[Product]) -> str:
    """A rules file that loads as it is: one rule per product on the first meter, each
    granting a placeholder 1 unit to change; a commented `every` rule for recurring ones."""
    meter = meters[0].key
    lines = [
        "# Starter rules written by `polar-credits setup` from your Polar products.",
        "# Every `units = 1` is a placeholder: set what each product grants, delete the",
        "# rules you do not want, then check it: `polar-credits rules check <this file>`.",
        '# README: "The rules file".',
        "",
    ]
    if not products:  # before any table, or it would belong to the last one
        lines += ["# No products yet: add [[rules]] below, and remove this line.", "rules = []", ""]
    lines += [m.toml() for m in meters]
    ids: set[str] = set()
    for product in products:
        rule_id = _unique(_key(product.name, sep="-") or "product", ids)
        name = " ".join(str(product.name).split())
        product_id = _toml_str(product.id)
        if product.is_recurring:
            count, unit = product.recurring_interval_count or 1, product.recurring_interval
            every = f"{count} {unit}s" if count > 1 else unit
            lines += [
                f"# {name}: a subscription billed every {every}. Granted at its start and at",
                "# each renewal (Polar resets metered meters then, so grant each cycle).",
                "[[rules]]",
                f"id = {_toml_str(rule_id)}",
                f"meter = {_toml_str(meter)}",
                "units = 1",
                f"products = [{product_id}]",
                'billing_reasons = ["subscription_create", "subscription_cycle"]',
                "",
                "# Or an allowance on a cadence of its own (monthly on a yearly plan):",
                '# README "Allowances on their own cadence". Uncomment, and run setup again',
                "# with --rules so the webhook endpoint gets the subscription.* events.",
                "# [[rules]]",
                f"# id = {_toml_str(rule_id + '-allowance')}",
                f"# meter = {_toml_str(meter)}",
                "# units = 1",
                '# every = "1 month"',
                f"# products = [{product_id}]",
                "",
            ]
        else:
            lines += [
                f"# {name}: a one-time purchase.",
                "[[rules]]",
                f"id = {_toml_str(rule_id)}",
                f"meter = {_toml_str(meter)}",
                "units = 1",
                f"products = [{product_id}]",
                'billing_reasons = ["purchase"]',
                "",
            ]
    return "\n".join(lines)


def _toml_str(value: str) -> str:
    # A JSON string is a TOML basic string (without non-ASCII escapes to get wrong).
    return json.dumps(value, ensure_ascii=False)


def _key(name: str, sep: str = "_") -> str:
    """A TOML bare key / rule id from a name: lower case, runs of anything else as `sep`."""
    return re.sub(r"[^a-z0-9]+", sep, name.lower()).strip(sep)[:60]


def _unique(base: str, taken: set[str]) -> str:
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate
