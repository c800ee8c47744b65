"""`polar-credits rules ...`: the rules file, checked offline (`check`) and explained against an
order (`explain`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from polar_credits.cli.base import ExitCode, JsonOption, app, call, console, emit, fail
from polar_credits.rules import MetadataTest, Rule, RulesError, load_rules

rules = typer.Typer(help="Check the rules file, and explain what it grants.", no_args_is_help=True)
app.add_typer(rules, name="rules")


# -- rules check ---------------------------------------------------------------------------


@rules.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The rules file (TOML) to check.")],
    as_json: bool = JsonOption,
) -> None:
    """Validate a rules file offline (no server) and list its rules. Exit status 0 when it
    is valid, 1 with the worker's own error message when it is not."""
    try:
        loaded = load_rules(file)
    except RulesError as exc:
        fail(str(exc), ExitCode.FAILED)
    rows = [rule_row(rule) for rule in loaded.by_precedence()]
    emit(
        rows,
        as_json=as_json,
        columns=["id", "key", "meter", "amount", "conditions", "cadence"],
        title=f"{file}: {len(rows)} rule(s), version {loaded.version}",
    )
    if not as_json:
        console.print("valid", style="green")


def rule_row(rule: Rule) -> dict[str, str | None]:
    return {
        "id": rule.id,
        "key": rule.stable_key,
        "meter": rule.meter,
        "amount": amount_summary(rule),
        "conditions": conditions_summary(rule),
        "cadence": rule.every,
    }


def amount_summary(rule: Rule) -> str:
    if rule.units_per_seat is not None:
        text = f"{rule.units_per_seat} × seats"
    elif rule.units_per_currency_unit is not None:
        text = f"{rule.units_per_currency_unit} × net amount, rounded {rule.rounding}"
        if rule.min_units is not None:
            text += f", min {rule.min_units}"
        if rule.max_units is not None:
            text += f", max {rule.max_units}"
    elif rule.top_up_to is not None:
        text = f"top up to {rule.top_up_to}"
    else:
        text = f"{rule.units} units"
    if rule.rollover_cap is not None:
        text += f", rollover cap {rule.rollover_cap}"
    cap = getattr(rule, "max_units_per_customer", None)
    if cap is not None:
        text += f", at most {cap} per customer"
    return text


def conditions_summary(rule: Rule) -> str:
    parts = []
    if rule.products is not None:
        parts.append(f"products {', '.join(rule.products) or '(none)'}")
    if rule.every is None and rule.billing_reasons != ["purchase"]:
        parts.append(f"billing reasons {', '.join(rule.billing_reasons)}")
    for name in ("metadata", "product_metadata", "customer_metadata"):
        for key, wanted in (getattr(rule, name) or {}).items():
            parts.append(f"{name} {key} {_condition(wanted)}")
    if rule.currencies is not None:
        parts.append(f"currency {', '.join(rule.currencies)}")
    if rule.min_net_amount is not None:
        parts.append(f"net amount ≥ {rule.min_net_amount}")
    if rule.discounted is not None:
        parts.append("discounted" if rule.discounted else "not discounted")
    if rule.active_from is not None:
        parts.append(f"from {rule.active_from.isoformat()}")
    if rule.active_until is not None:
        parts.append(f"until {rule.active_until.isoformat()}")
    first_order = getattr(rule, "first_order", None)
    if first_order is not None:
        parts.append("first order" if first_order else "not first order")
    if not rule.during_trial:
        parts.append("not during trial")
    if rule.priority:
        parts.append(f"priority {rule.priority}")
    if rule.stop:
        parts.append("stop")
    return "; ".join(parts) or ("every subscription" if rule.every else "every purchase")


def _condition(wanted: object) -> str:
    if isinstance(wanted, MetadataTest):
        if wanted.exists is not None:
            return "present" if wanted.exists else "absent"
        return "in [" + ", ".join(json.dumps(v) for v in wanted.one_of or ()) + "]"
    return f"= {json.dumps(wanted)}"  # as TOML spells it: true, "launch"


# -- rules explain (the operator API's POST /rules/preview) -------------------------------


@rules.command("explain")
def explain(
    order_id: Annotated[
        str | None, typer.Option("--order-id", help="A Polar order id: the worker reads it.")
    ] = None,
    payload: Annotated[
        Path | None,
        typer.Option(
            "--payload",
            help="A JSON file: a Polar order (an order.paid webhook's data, or the whole body).",
        ),
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Show what the rules would grant an order, and why: each rule's verdict and reason,
    the first-order fact and per-customer caps as they stand. Grants nothing."""
    if (order_id is None) == (payload is None):
        fail("give exactly one of --order-id or --payload", ExitCode.USAGE)
    if payload is not None:
        try:
            body = json.loads(payload.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"{payload}: cannot read a JSON order: {exc}", ExitCode.USAGE)
        if not isinstance(body, dict):
            fail(f"{payload}: a JSON object is expected", ExitCode.USAGE)
    else:
        body = {"order_id": order_id}
    answer = call("POST", "/rules/preview", json=body)
    if as_json:
        emit(answer, as_json=True)
        return
    title = f"order {answer['order_id']}: rules version {answer['rules_version']}"
    emit(
        answer["verdicts"],
        as_json=False,
        columns=["rule_id", "key", "matched", "units", "reason"],
        title=title,
    )
    if answer.get("first_order"):
        console.print(answer["first_order"], highlight=False)
    console.print(
        f"would grant {answer['units']} units in {len(answer['grants'])} grant(s) "
        "(a preview: nothing was granted)",
        highlight=False,
    )
