"""`polar-credits setup` against a real stand-in process, through polar-sdk over HTTP: the plan,
the first run's meter, endpoint and secret, a second run that changes nothing, the warnings
and refusals an operator must see, and a starter rules file the worker loads."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from polar_credits.cli.base import ExitCode, app
from polar_credits.polar_setup import SUBSCRIPTION_EVENTS
from polar_credits.rules import load_rules
from tests.support.processes import REPO_ROOT
from tests.support.standin import StandinProcess
from tools.standin.seed import DEMO_METER_ID, DEMO_PRODUCT_ID, DEMO_YEARLY_PRODUCT_ID

TOKEN = "polar_oat_setup_test_token"
URL = "https://credits.example.com/webhooks/polar"
NEW_METER = ["--meter-name", "Test credits", "--event-name", "test_credits"]
CLI = str(Path(sys.executable).parent / "polar-credits")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandinProcess]:
    """A stand-in of its own: setup creates meters and endpoints other tests must not see."""
    with StandinProcess(tmp_path / "standin.sqlite3", token=TOKEN) as process:
        yield process


def setup_cli(standin: StandinProcess, *args: str, token: str = TOKEN) -> Any:
    env = {
        "POLAR_ACCESS_TOKEN": token,
        "POLAR_API_URL": standin.base_url,
        "POLAR_SERVER": None,
        "CREDITS_RULES_FILE": None,
        "COLUMNS": "200",
    }
    return CliRunner().invoke(app, ["setup", *args], env=env)


def as_json(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def polar_state(standin: StandinProcess) -> dict[str, Any]:
    """What setup could change in Polar, as Polar's API lists it."""
    return {
        "meters": standin.admin("GET", "/v1/meters/?limit=100")["items"],
        "endpoints": standin.admin("GET", "/v1/webhooks/endpoints?limit=100")["items"],
        "products": standin.admin("GET", "/v1/products/?limit=100")["items"],
        "events": standin.admin("GET", "/admin/events")["events"],
    }


def actions(plan: dict[str, Any], area: str) -> list[str]:
    return [step["action"] for step in plan["steps"] if step["area"] == area]


def test_dry_run_prints_the_plan_and_changes_nothing(standin: StandinProcess) -> None:
    before = polar_state(standin)
    plan = as_json(setup_cli(standin, "--dry-run", "--json", "--webhook-url", URL, *NEW_METER))
    assert actions(plan, "meter") == ["create"]
    assert "create" in actions(plan, "webhook")
    assert plan["nothing_to_do"] is False and plan["changed"] is False
    assert plan["webhook_secret"] is None
    assert polar_state(standin) == before


def test_first_run_sets_up_polar_and_the_second_changes_nothing(
    standin: StandinProcess, tmp_path: Path
) -> None:
    rules_path = tmp_path / "rules.toml"
    args = ["--webhook-url", URL, *NEW_METER, "--write-rules", str(rules_path)]
    first = setup_cli(standin, *args)
    assert first.exit_code == 0, first.output

    state = polar_state(standin)
    [meter] = [m for m in state["meters"] if m["name"] == "Test credits"]
    assert meter["filter"] == {
        "conjunction": "and",
        "clauses": [{"property": "name", "operator": "eq", "value": "test_credits"}],
    }
    assert meter["aggregation"] == {"func": "sum", "property": "units"}
    [endpoint] = [e for e in state["endpoints"] if e["url"] == URL]
    assert endpoint["format"] == "raw"
    assert endpoint["events"] == ["order.paid"]  # no rules file: no cadence rules
    # The secret is printed once, for POLAR_WEBHOOK_SECRET.
    assert f"POLAR_WEBHOOK_SECRET={endpoint['secret']}" in first.stdout
    # The [meters] block to paste, with the new meter's id.
    block = first.stdout[first.stdout.index("[meters.") :].split("\n\n")[0]
    assert tomllib.loads(block)["meters"]["test_credits"] == {
        "id": meter["id"],
        "event_name": "test_credits",
        "property": "units",
    }

    # The starter rules file loads as the worker loads it: a rule per product, on the meter.
    rules = load_rules(rules_path)
    assert rules.meters["test_credits"].id == meter["id"]
    by_product = {rule.products[0]: rule for rule in rules.rules}
    assert set(by_product) == {p["id"] for p in state["products"]}
    assert by_product[DEMO_PRODUCT_ID].billing_reasons == ["purchase"]
    assert by_product[DEMO_YEARLY_PRODUCT_ID].billing_reasons == [
        "subscription_create",
        "subscription_cycle",
    ]
    assert not rules.has_cadence_rules()  # the `every` rules are left commented
    assert "# every = " in rules_path.read_text()
    written = rules_path.read_bytes()

    second = setup_cli(standin, *args)
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.stdout
    assert endpoint["secret"] not in second.stdout
    assert polar_state(standin) == state
    assert rules_path.read_bytes() == written  # never overwritten

    again = as_json(setup_cli(standin, "--json", *args))
    assert again["nothing_to_do"] is True
    assert {s["action"] for s in again["steps"]} <= {"ok", "keep", "warn"}


def test_an_endpoint_with_the_wrong_events_is_updated(
    standin: StandinProcess, tmp_path: Path
) -> None:
    created = httpx.post(
        f"{standin.base_url}/v1/webhooks/endpoints",
        json={"url": URL, "format": "raw", "events": ["order.created"]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    # The demo rules: the seeded meter, and a monthly allowance (a cadence rule).
    rules = REPO_ROOT / "examples" / "demo-rules.toml"

    plan = as_json(setup_cli(standin, "--json", "--webhook-url", URL, "--rules", str(rules)))
    assert actions(plan, "webhook") == ["update"]
    assert plan["webhook_secret"] is None  # not re-printed unless --show-secret
    [after] = [e for e in polar_state(standin)["endpoints"] if e["url"] == URL]
    assert after["id"] == endpoint["id"] and after["secret"] == endpoint["secret"]
    assert sorted(after["events"]) == sorted(["order.paid", *SUBSCRIPTION_EVENTS])

    shown = setup_cli(standin, "--webhook-url", URL, "--rules", str(rules), "--show-secret")
    assert shown.exit_code == 0, shown.output
    assert "nothing to do" in shown.stdout
    assert f"POLAR_WEBHOOK_SECRET={endpoint['secret']}" in shown.stdout


def test_products_that_reset_the_meter_are_warned_about(standin: StandinProcess) -> None:
    cycled = standin.admin(
        "POST",
        "/admin/products",
        {
            "name": "Pro yearly, metered monthly",
            "recurring_interval": "year",
            "meter_interval": "month",
            "metered_meter_ids": [DEMO_METER_ID],
        },
    )
    plain = standin.create_product("Metered yearly", recurring_interval="year",
                                   metered_meter_ids=[DEMO_METER_ID])  # fmt: skip
    benefit = standin.admin(
        "POST",
        "/admin/products",
        {"name": "Monthly credits", "recurring_interval": "month",
         "meter_credits": {DEMO_METER_ID: 100}},
    )  # fmt: skip
    # Default meter name and event: the demo meter the stand-in seeds.
    plan = as_json(setup_cli(standin, "--json"))
    warnings = [s["detail"] for s in plan["steps"] if s["action"] == "warn"]
    assert len(warnings) == 2, warnings
    [interval] = [w for w in warnings if cycled["id"] in w]
    assert "meter_interval" in interval
    [credits] = [w for w in warnings if benefit["id"] in w]
    assert "Meter Credits benefit" in credits
    assert not any(plain["id"] in w for w in warnings)
    assert plan["nothing_to_do"] is True  # a warning changes nothing


def test_a_meter_of_that_name_with_another_filter_is_reported_not_changed(
    standin: StandinProcess,
) -> None:
    standin.admin("POST", "/admin/meters", {"name": "Test credits", "event_name": "other"})
    before = polar_state(standin)
    result = setup_cli(standin, "--webhook-url", URL, *NEW_METER)
    assert result.exit_code == ExitCode.FAILED, result.output
    assert "PROBLEM" in result.stdout and "nothing was changed" in result.stdout
    assert polar_state(standin) == before  # no meter changed or added, no endpoint


def test_a_bad_token_gives_one_clear_message(standin: StandinProcess) -> None:
    before = polar_state(standin)
    env = {"PATH": "/usr/bin:/bin", "POLAR_ACCESS_TOKEN": "polar_oat_wrong",
           "POLAR_API_URL": standin.base_url, "COLUMNS": "200"}  # fmt: skip
    result = subprocess.run(
        [CLI, "setup", "--webhook-url", URL], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == ExitCode.USAGE
    assert "refused POLAR_ACCESS_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert "polar_oat_wrong" not in result.stdout + result.stderr
    assert polar_state(standin) == before


def test_a_webhook_url_polar_would_refuse_stops_the_run_before_any_change(
    standin: StandinProcess,
) -> None:
    local = "https://127.0.0.1:8000/webhooks/polar"
    # Polar (and the stand-in) refuse it...
    refused = httpx.post(
        f"{standin.base_url}/v1/webhooks/endpoints",
        json={"url": local, "format": "raw", "events": ["order.paid"]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert refused.status_code == 422
    # ...so setup says so before it creates the meter, instead of halfway through.
    before = polar_state(standin)
    result = setup_cli(standin, "--json", "--webhook-url", local, *NEW_METER)
    assert result.exit_code == ExitCode.FAILED
    plan = json.loads(result.stdout)
    assert actions(plan, "webhook") == ["problem"]
    assert "localhost or private" in plan["steps"][-1]["detail"]
    assert plan["changed"] is False
    assert polar_state(standin) == before


def test_a_token_without_the_needed_scopes_is_reported_and_nothing_changes(
    tmp_path: Path,
) -> None:
    limited = "polar_oat_limited_scopes"
    read_only = "polar_oat_service_scopes_only"
    scoped = {
        limited: "meters:read products:read webhooks:read events:read",
        # What the service needs, but not meters:write: only a change can tell.
        read_only: "events:write events:read customer_meters:read orders:read "
        "subscriptions:read customers:read meters:read products:read webhooks:read",
    }
    with StandinProcess(
        tmp_path / "standin.sqlite3",
        token=TOKEN,
        extra_env={"STANDIN_SCOPED_TOKENS": json.dumps(scoped)},
    ) as standin:
        before = polar_state(standin)
        result = setup_cli(standin, "--json", "--webhook-url", URL, *NEW_METER, token=limited)
        assert result.exit_code == ExitCode.FAILED, result.output
        plan = json.loads(result.stdout)
        [token_step] = [s for s in plan["steps"] if s["area"] == "token"]
        assert token_step["action"] == "problem"
        for missing in ("events:write", "customer_meters:read", "orders:read",
                        "subscriptions:read", "customers:read"):  # fmt: skip
            assert missing in token_step["detail"].split(": create")[0], token_step
        assert "events:read" not in token_step["detail"].split(": create")[0]
        assert polar_state(standin) == before

        result = setup_cli(standin, "--webhook-url", URL, *NEW_METER, token=read_only)
        assert result.exit_code == ExitCode.FAILED, result.output
        assert "cannot create the meter: the token lacks the scope meters:write" in " ".join(
            result.stderr.split()
        )
        assert polar_state(standin) == before


def test_the_starter_rules_file_loads_whatever_the_product_names(
    standin: StandinProcess, tmp_path: Path
) -> None:
    awkward = ['Pack "A"\n# not a comment', 'Pack "A"\n# not a comment', "Crédits 🚀", "!!!"]
    ids = [standin.create_product(name)["id"] for name in awkward]
    ids.append(standin.create_product("Team plan", recurring_interval="month")["id"])
    path = tmp_path / "rules.toml"
    result = setup_cli(standin, "--write-rules", str(path))
    assert result.exit_code == 0, result.output
    rules = load_rules(path)
    products = [rule.products[0] for rule in rules.rules]
    assert set(ids) <= set(products)
    assert len(products) == len(set(products)) == len(polar_state(standin)["products"])
    assert all(rule.meter == "api_calls" for rule in rules.rules)  # the seeded "API calls"
