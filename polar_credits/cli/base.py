"""What every command shares: the Typer app, the operator API client, output and exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import IntEnum
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="polar-credits",
    help="Grant usage credits to Polar customers, durably. Operator commands talk to the "
    "operator API (CREDITS_API_URL, CREDITS_OPERATOR_TOKEN).",
    no_args_is_help=True,
    add_completion=False,
)

console = Console()
errors = Console(stderr=True)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the command ran and what it checked failed (a rule file invalid, a run failed)
    USAGE = 2  # bad arguments or settings (Typer uses 2 for usage errors too)
    NOT_FOUND = 3
    CONFLICT = 4  # refused: e.g. an idempotency key reused with another body, a run that granted
    UNAVAILABLE = 5  # the API or Temporal could not be reached; try again


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(int(code))


def api_url() -> str:
    return os.environ.get("CREDITS_API_URL", "http://127.0.0.1:8000").rstrip("/")


def operator_client(timeout: float = 30.0) -> httpx.Client:
    token = os.environ.get("CREDITS_OPERATOR_TOKEN", "").strip()
    if not token:
        fail(
            "CREDITS_OPERATOR_TOKEN is not set: set it to the operator API's token.", ExitCode.USAGE
        )
    return httpx.Client(
        base_url=api_url(), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
    )


_STATUS_EXIT = {
    400: ExitCode.USAGE,
    401: ExitCode.USAGE,
    403: ExitCode.USAGE,  # a read token on a command that changes something
    404: ExitCode.NOT_FOUND,
    408: ExitCode.UNAVAILABLE,  # the body was slow to arrive: the network, not the request
    409: ExitCode.CONFLICT,
    413: ExitCode.USAGE,  # too large: split the request (a backfill's customers)
    422: ExitCode.USAGE,  # includes what Temporal refuses for good (a payload over its limit)
    503: ExitCode.UNAVAILABLE,
}


def call(method: str, path: str, **kwargs: Any) -> Any:
    """One operator API request; an error answer ends the command with its exit code."""
    with operator_client() as client:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the operator API at {api_url()}: {exc}", ExitCode.UNAVAILABLE)
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        code = _STATUS_EXIT.get(response.status_code, ExitCode.FAILED)
        fail(f"{response.status_code}: {detail}", code)
    return response.json() if response.content else None


def emit(
    data: Any, *, as_json: bool, columns: list[str] | None = None, title: str | None = None
) -> None:
    """`--json`: the API's answer as it came. Otherwise a table of `columns` (a list of rows)
    or of the object's fields."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if columns is None and isinstance(data, dict):
        table = Table("field", "value", title=title, show_header=False)
        for key, value in data.items():
            table.add_row(key, _cell(value))
        console.print(table)
        return
    columns = columns or sorted({k for row in rows for k in row})
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


JsonOption = typer.Option(False, "--json", help="Print the API's JSON answer, for scripts.")


def exit_process(code: int) -> NoReturn:
    """End the process now, skipping the interpreter's teardown: Temporal's Rust core threads
    may still hand a result back to Python while it finalizes, which kills the process with
    "Fatal Python error: PyGILState_Release" (temporalio/sdk-python#300; worker.py does the
    same)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(int(code))
