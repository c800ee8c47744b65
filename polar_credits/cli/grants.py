"""`polar-credits grants list|show|create|revoke` and `polar-credits orders rerun`: the
operator's grants, through the operator API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from polar_credits.cli.base import JsonOption, app, call, emit, fail
from polar_credits.grant_limit import MAX_GRANT_UNITS

grants = typer.Typer(help="List, show, grant by hand and revoke credits.", no_args_is_help=True)
orders = typer.Typer(help="Orders' crediting runs.", no_args_is_help=True)
app.add_typer(grants, name="grants")
app.add_typer(orders, name="orders")

# The id first and whole (it is what `grants show` takes); filters narrow the rest.
LIST_COLUMNS = ["id", "kind", "status", "units", "started_at"]
SHOW_FIELDS = [
    "id",
    "kind",
    "status",
    "execution_status",
    "customer_id",
    "order_id",
    "subscription_id",
    "units",
    "started_at",
    "closed_at",
    "started_by",
    "failure",
    "ui_url",
]
REVOKE_FIELDS = [
    "id",
    "grant_id",
    "status",
    "units_requested",
    "units_revoked",
    "capped",
    "allow_negative",
    "started_by",
    "failure",
    "ui_url",
]


def _path(value: str) -> str:
    return quote(value, safe="")


@grants.command("list")
def list_grants(
    customer: Annotated[str | None, typer.Option(help="A Polar customer id.")] = None,
    order: Annotated[str | None, typer.Option(help="A Polar order id.")] = None,
    subscription: Annotated[str | None, typer.Option(help="A Polar subscription id.")] = None,
    status: Annotated[
        str | None, typer.Option(help="A CreditStatus (verified, failed...).")
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option(help="order, allowance, manual or revoke (repeatable).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Started at or after (ISO time).")] = None,
    until: Annotated[str | None, typer.Option(help="Started before (ISO time).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Grants per page.")] = 20,
    page_token: Annotated[str | None, typer.Option(help="next_page_token of a page.")] = None,
    as_json: bool = JsonOption,
) -> None:
    """Grant runs, newest first, one page at a time."""
    params: dict[str, Any] = {
        "customer_id": customer,
        "order_id": order,
        "subscription_id": subscription,
        "status": status,
        "kind": kind or None,
        "started_after": since,
        "started_before": until,
        "limit": limit,
        "page_token": page_token,
    }
    page = call("GET", "/grants", params={k: v for k, v in params.items() if v is not None})
    if as_json:
        emit(page, as_json=True)
        return
    emit(page["grants"], as_json=False, columns=LIST_COLUMNS, title="grants")
    if page.get("next_page_token"):
        typer.echo(f"next page: --page-token {page['next_page_token']}")


@grants.command("show")
def show_grant(grant_id: str, as_json: bool = JsonOption) -> None:
    """One grant run: status, decision, events with their external ids, verification."""
    detail = call("GET", f"/grants/{_path(grant_id)}")
    if as_json:
        emit(detail, as_json=True)
        return
    emit({k: detail.get(k) for k in SHOW_FIELDS}, as_json=False, title="grant")
    if detail.get("grants"):
        emit(detail["grants"], as_json=False, title="events")
    decision = detail.get("decision") or {}
    if decision.get("verdicts"):
        emit(
            decision["verdicts"],
            as_json=False,
            columns=["rule_id", "matched", "units", "reason"],
            title=f"decision (rules {decision.get('rules_version')})",
        )
    if detail.get("verifications"):
        emit(
            detail["verifications"],
            as_json=False,
            columns=["meter", "units_granted", "verified", "balance", "checks"],
            title="verification",
        )


@grants.command("create")
def create_grant(
    customer: Annotated[str, typer.Option(help="The Polar customer id.")],
    meter: Annotated[str, typer.Option(help="A meter name of the rules file.")],
    units: Annotated[int, typer.Option(min=1, max=MAX_GRANT_UNITS, help="Units to grant.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the event; no personal data).")],
    idempotency_key: Annotated[
        str, typer.Option(help="The same key never grants twice; reused with another body: 409.")
    ],
    as_json: bool = JsonOption,
) -> None:
    """Grant units to one customer by hand, once per idempotency key."""
    body = {
        "customer_id": customer,
        "meter": meter,
        "units": units,
        "reason": reason,
        "idempotency_key": idempotency_key,
    }
    emit(call("POST", "/grants", json=body), as_json=as_json, title="manual grant")


@grants.command("revoke")
def revoke_grant(
    grant_id: str,
    units: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_GRANT_UNITS, help="Default: what the grant granted."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the event).")] = (
        "revoked by an operator"
    ),
    allow_negative: Annotated[
        bool, typer.Option("--allow-negative", help="Take units back even below zero.")
    ] = False,
    as_json: bool = JsonOption,
) -> None:
    """Take a grant back once, capped at the customer's balance unless --allow-negative."""
    body: dict[str, Any] = {"reason": reason, "allow_negative": allow_negative}
    if units is not None:
        body["units"] = units
    view = call("POST", f"/grants/{_path(grant_id)}/revoke", json=body)
    if as_json:
        emit(view, as_json=True)
    else:
        emit({k: view.get(k) for k in REVOKE_FIELDS}, as_json=False, title="revoke")
    if view.get("status") == "pending":
        fail(f"the revoke is still running: see `polar-credits grants show {view['id']}`")


@orders.command("rerun")
def rerun_order(order_id: str, as_json: bool = JsonOption) -> None:
    """Run an order's crediting again after its run failed (refused when it granted)."""
    emit(call("POST", f"/orders/{_path(order_id)}/rerun"), as_json=as_json, title="rerun")
