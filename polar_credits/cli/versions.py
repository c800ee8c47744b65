"""`polar-credits versions`: the order workflow's old versions, and how many runs still need
each one's code; run it before a release removes one (docs/retiring-versions.md).

It talks to Temporal, not to the operator API: it reads visibility and the runs' histories.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import typer
from rich.table import Table
from temporalio.service import RPCError

from polar_credits.cli.base import ExitCode, app, console, exit_process, fail
from polar_credits.order_versions import CURRENT_VERSION, OLD_VERSIONS, Census, take_census
from polar_credits.settings import SettingsError, load_settings
from polar_credits.temporal_client import TemporalUnreachable, connect_temporal


def report(census: Census) -> dict[str, Any]:
    retention = census.retention.total_seconds() if census.retention is not None else None
    return {
        "namespace": census.namespace,
        "retention_seconds": retention,
        "runs_read": census.runs_read,
        "current_version": CURRENT_VERSION,
        "versions": [
            {
                "version": count.version.name,
                "patch": count.version.patch,
                "code": count.version.code,
                "open_runs": count.open,
                "closed_runs": count.closed,
                "free_after": _moment(count.free_after),
                "may_remove": count.removable,
                "example_runs": count.examples,
            }
            for count in census.counts.values()
        ],
    }


def _moment(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _print(shown: dict[str, Any]) -> None:
    retention = shown["retention_seconds"]
    days = f"{retention / 86400:g} day(s)" if retention is not None else "unknown"
    table = Table(
        "version",
        "patch",
        "open",
        "closed",
        "last closed run leaves retention",
        "may remove",
        "its code",
        title=f"Order workflow versions before {shown['current_version']}: namespace "
        f"{shown['namespace']!r}, retention {days}, {shown['runs_read']} run(s) read",
    )
    for row in shown["versions"]:
        table.add_row(
            row["version"],
            row["patch"],
            str(row["open_runs"]),
            str(row["closed_runs"]),
            row["free_after"] or "-",
            "yes" if row["may_remove"] else "no",
            row["code"],
        )
    console.print(table)
    for row in shown["versions"]:
        if row["example_runs"]:
            console.print(f"{row['version']} is still needed by: {', '.join(row['example_runs'])}")


async def _census(page_size: int, pause: float, concurrency: int) -> Census:
    try:
        settings = load_settings()
        client = await connect_temporal(settings)
    except SettingsError as exc:
        fail(str(exc), ExitCode.USAGE)
    except TemporalUnreachable as exc:
        fail(str(exc), ExitCode.UNAVAILABLE)
    try:
        return await take_census(client, page_size=page_size, pause=pause, concurrency=concurrency)
    except (RPCError, RuntimeError, TimeoutError) as exc:
        fail(
            f"reading Temporal failed ({type(exc).__name__}: {exc}); try again",
            ExitCode.UNAVAILABLE,
        )


@app.command("versions", rich_help_panel="Releases")
def versions(
    check: str | None = typer.Option(
        None,
        "--check",
        help="Exit 1 unless this old version (v1, v2 or v3) may be removed now.",
    ),
    page_size: int = typer.Option(100, min=1, max=1000, help="Runs per visibility page."),
    pause: float = typer.Option(0.2, min=0.0, help="Seconds between visibility pages."),
    concurrency: int = typer.Option(4, min=1, max=32, help="Run histories read at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON, for scripts."),
) -> None:
    """Which old order-workflow versions runs still need: check before removing one.

    For each old version, how many order runs (open, and closed within the namespace's
    retention) still need its code, and whether it may be removed. Reads every order run's
    history from Temporal: slow on a large namespace (docs/retiring-versions.md)."""
    names = [v.name for v in OLD_VERSIONS]
    if check is not None and check not in names:
        fail(f"--check {check!r}: give one of {', '.join(names)}", ExitCode.USAGE)
    try:
        shown = report(asyncio.run(_census(page_size, pause, concurrency)))
    except typer.Exit as exc:
        exit_process(exc.exit_code)
    if as_json:
        print(json.dumps(shown, indent=2, sort_keys=True))
    else:
        _print(shown)
    code = ExitCode.OK
    if check is not None:
        (row,) = [r for r in shown["versions"] if r["version"] == check]
        if not row["may_remove"]:
            code = ExitCode.FAILED
    exit_process(code)
