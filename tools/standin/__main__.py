"""Command line: `python -m tools.standin serve` runs the local Polar stand-in."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tools.standin import cli


def _parser() -> argparse.ArgumentParser:
    from tools.standin import options  # imports the server (FastAPI): only `serve` needs it

    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m tools.standin")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the stand-in HTTP server")
    serve.add_argument("--host", default=env("STANDIN_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(env("STANDIN_PORT", "8900")))
    serve.add_argument("--db", default=env("STANDIN_DB", ".data/standin.sqlite3"))
    serve.add_argument("--token", default=env("STANDIN_TOKEN", "polar_standin_dev_token"))
    serve.add_argument("--webhook-url", default=env("STANDIN_WEBHOOK_URL"))
    # Prefer the env var for the secret: command lines are visible to other users.
    serve.add_argument("--webhook-secret", default=env("STANDIN_WEBHOOK_SECRET"))
    serve.add_argument(
        "--balance-lag",
        type=float,
        default=float(env("STANDIN_BALANCE_LAG", "15")),
        help="seconds between a customer's last event and its balance update",
    )
    serve.add_argument(
        "--clock",
        choices=("real", "manual"),
        default=env("STANDIN_CLOCK", "real"),
        help="manual: time stands still and moves only through POST /admin/clock/advance|set",
    )
    serve.add_argument(
        "--clock-start",
        default=env("STANDIN_CLOCK_START"),
        help="ISO time a manual clock starts at, e.g. 2026-01-01T00:00:00Z (default: now)",
    )
    options.add_arguments(serve)
    cli.add_commands(commands)  # the operator commands: customer, buy, subscribe, balance, fault...
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and cli.is_command(argv[0]):  # the operator CLI starts fast: no server imports
        sys.exit(cli.main(argv))
    import uvicorn

    from tools.standin import options
    from tools.standin.app import StandinConfig, create_app

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(
        StandinConfig(
            db_path=args.db,
            token=args.token,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            balance_lag=args.balance_lag,
            clock=args.clock,
            clock_start=args.clock_start,
            **options.config_kwargs(args),
        )
    )
    logging.getLogger("polar_standin").info(
        "Polar stand-in on http://%s:%s (db %s, balance lag %ss, webhooks %s)",
        args.host,
        args.port,
        args.db,
        args.balance_lag,
        "on" if args.webhook_url and args.webhook_secret else "off",
    )
    # access_log off: the app logs one line per request itself, without query strings.
    # date_header off: the app dates its answers with the stand-in's own clock, as Polar's
    # answers carry Polar's.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        date_header=False,
    )


if __name__ == "__main__":
    main()
