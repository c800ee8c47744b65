"""`polar-credits backfill start|status` and `polar-credits reconcile now`: one-off grants to
many customers, and the repair of orders whose webhook never came, through the operator API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from polar_credits.cli.base import ExitCode, JsonOption, app, call, console, emit, fail
from polar_credits.grant_limit import MAX_GRANT_UNITS

backfill = typer.Typer(help="Grant credits once to many existing customers.", no_args_is_help=True)
reconcile = typer.Typer(
    help="Repair paid orders whose webhook never came (runs on a schedule too).",
    no_args_is_help=True,
)
app.add_typer(backfill, name="backfill")
app.add_typer(reconcile, name="reconcile")

POLL_SECONDS = 1.0
REPORT_FIELDS = [
    "pages",
    "customers_seen",
    "granted",
    "already_granted",
    "unattributed",
    "rejected_total",
    "skipped",
    "done",
]


def _report_rows(view: dict[str, Any]) -> dict[str, Any]:
    progress = view.get("progress") or {}
    rows = {"key": view["key"], "status": view["status"], "target": view.get("target")}
    rows |= {name: progress.get(name) for name in REPORT_FIELDS}
    rows["started_by"] = view.get("started_by")
    rows["ui_url"] = view.get("ui_url")
    return rows


def _show(view: dict[str, Any], as_json: bool) -> None:
    emit(view if as_json else _report_rows(view), as_json=as_json, title="backfill")
    if not as_json:
        rejected = (view.get("progress") or {}).get("rejected") or []
        if rejected:
            emit(rejected, as_json=False, columns=["customer_id", "reason"], title="rejected")


def _finished(view: dict[str, Any]) -> bool:
    return bool(view["status"] != "running")


def _watch(key: str, show_bar: bool) -> dict[str, Any]:
    """Poll GET /backfills/{key} until the backfill ends; a Rich progress bar meanwhile."""
    view: dict[str, Any] = call("GET", f"/backfills/{key}")
    if not show_bar:
        while not _finished(view):
            time.sleep(POLL_SECONDS)
            view = call("GET", f"/backfills/{key}")
        return view
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("granted {task.fields[granted]}, already {task.fields[already]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"backfill {key}", total=None, granted=0, already=0)
        while True:
            progress = view.get("progress") or {}
            bar.update(
                task,
                total=progress.get("total"),
                completed=progress.get("customers_seen", 0),
                granted=progress.get("granted", 0),
                already=progress.get("already_granted", 0),
            )
            if _finished(view):
                break
            time.sleep(POLL_SECONDS)
            view = call("GET", f"/backfills/{key}")
    return view


def _exit_for(view: dict[str, Any]) -> None:
    if view["status"] != "completed":
        fail(f"backfill {view['key']} ended {view['status']}", ExitCode.FAILED)


@backfill.command("start")
def backfill_start(
    key: str = typer.Option(..., "--key", help="Idempotency key: the same key never grants twice."),
    meter: str = typer.Option(..., "--meter", help="A meter name of the rules file."),
    units: int = typer.Option(
        ..., "--units", min=1, max=MAX_GRANT_UNITS, help="Credits for each customer."
    ),
    reason: str = typer.Option(..., "--reason", help="Why (kept with each grant)."),
    product: str | None = typer.Option(
        None, "--product", help="Customers with an active subscription to this product."
    ),
    customer: Annotated[
        list[str] | None,
        typer.Option("--customer", help="A customer id (repeat the option for more)."),
    ] = None,
    all_active: bool = typer.Option(
        False, "--all-active", help="Every customer with an active subscription."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for the end, with a progress bar."),
    as_json: bool = JsonOption,
) -> None:
    """Start a backfill (or show the existing one for this key and body)."""
    targets = [product is not None, bool(customer), all_active]
    if sum(targets) != 1:
        fail("give exactly one target: --product, --customer ... or --all-active", ExitCode.USAGE)
    body: dict[str, Any] = {"key": key, "meter": meter, "units": units, "reason": reason}
    if product is not None:
        body["product_id"] = product
    elif customer:
        body["customer_ids"] = list(customer)
    else:
        body["all_active"] = True
    view = call("POST", "/backfills", json=body)
    if wait:
        view = _watch(key, show_bar=not as_json)
    _show(view, as_json)
    if wait:
        _exit_for(view)


@backfill.command("status")
def backfill_status(
    key: str = typer.Argument(..., help="The backfill's key."),
    watch: bool = typer.Option(False, "--watch", help="Follow it to the end: a progress bar."),
    as_json: bool = JsonOption,
) -> None:
    """A backfill's progress, or its report once done."""
    view = _watch(key, show_bar=not as_json) if watch else call("GET", f"/backfills/{key}")
    _show(view, as_json)
    if watch:
        _exit_for(view)


@reconcile.command("now")
def reconcile_now(
    as_json: bool = JsonOption,
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the run's id and return."),
) -> None:
    """Run reconciliation now; waits for its report."""
    run = call("POST", "/reconcile")
    if not no_wait:
        with console.status(f"reconciling ({run['workflow_id']})", spinner="dots"):
            while run["status"] == "running":
                time.sleep(POLL_SECONDS)
                run = call("GET", f"/reconcile/{run['workflow_id']}")
    if as_json:
        emit(run, as_json=True)
    else:
        report = run.get("report") or {}
        emit(
            {"workflow_id": run["workflow_id"], "status": run["status"], **report}
            | {"started_by": run.get("started_by"), "ui_url": run["ui_url"]},
            as_json=False,
            title="reconciliation",
        )
    if run["status"] not in ("completed", "running"):
        fail(f"reconciliation {run['workflow_id']} ended {run['status']}", ExitCode.FAILED)
