"""`polar-credits serve` and `polar-credits worker`: the service's two processes, as `make run`
starts them (`python -m api`, `python worker.py`), with exit codes from `ExitCode`."""

from __future__ import annotations

import os
import signal

import typer

from polar_credits.cli.base import ExitCode, app


@app.command(
    rich_help_panel="Processes",
    help="Run the API (webhooks, operator API, /metrics) until SIGINT or SIGTERM.\n\n"
    "Exit status: 0 after a stop, 1 when the server could not start (port in use), "
    "2 on a bad setting or rules file.",
)
def serve(
    host: str = typer.Option(None, help="Address to bind (default CREDITS_API_HOST)."),
    port: int = typer.Option(None, help="Port to bind (default CREDITS_API_PORT)."),
) -> None:
    # Settings are read from the environment only (polar_credits/settings.py).
    if host is not None:
        os.environ["CREDITS_API_HOST"] = host
    if port is not None:
        os.environ["CREDITS_API_PORT"] = str(port)
    from polar_credits.api.__main__ import main as api_main
    from polar_credits.api.server import STARTUP_FAILURE

    # uvicorn handles SIGINT and SIGTERM while it runs, then raises the signal again with
    # the handler it found: this one, which api/server.py's `serve` takes as a stop (a stop
    # before uvicorn runs ends here), so a stop ends with status 0, not death by signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        status = api_main()
    except KeyboardInterrupt:
        status = 0
    except SystemExit as exc:  # uvicorn exits by itself when it cannot bind
        status = exc.code if isinstance(exc.code, int) else STARTUP_FAILURE
    if status not in (ExitCode.OK, ExitCode.USAGE):
        status = ExitCode.FAILED
    raise typer.Exit(int(status))


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command(
    rich_help_panel="Processes",
    help="Run the Temporal worker (workflows, activities, the Polar budget) until SIGINT or "
    "SIGTERM.\n\nExit status: 0 after a stop, 1 when Temporal cannot be reached or the "
    "worker fails, 2 on a bad setting or rules file (including one that drops a rule key "
    "which has granted).",
)
def worker(
    allow_dropped_keys: bool = typer.Option(
        False,
        "--allow-dropped-keys",
        help="Accept a rules file that drops a rule key which has granted "
        "(as CREDITS_ALLOW_DROPPED_RULE_KEYS=true).",
    ),
) -> None:
    # Importing the worker takes a second or two: a stop meanwhile is remembered, as
    # `python worker.py` does, and handed to the worker once it handles signals.
    early: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: early.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        from polar_credits import worker as worker_process
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    worker_process._early_stops.extend(early)
    worker_process.main(allow_dropped_keys=allow_dropped_keys)  # ends the process
