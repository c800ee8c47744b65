"""`serve` flags for webhook delivery, the rate limit and start-up faults (each with an env var)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tools.standin import scopes
from tools.standin.faults import startup_faults
from tools.standin.ratelimit import PRESETS


def add_arguments(serve: argparse.ArgumentParser) -> None:
    env = os.environ.get
    serve.add_argument(
        "--webhook-timeout",
        type=float,
        default=float(env("STANDIN_WEBHOOK_TIMEOUT", "10")),
        help="seconds a webhook receiver gets to answer before the attempt fails (Polar: 10)",
    )
    serve.add_argument(
        "--webhook-retry-scale",
        type=float,
        default=float(env("STANDIN_WEBHOOK_RETRY_SCALE", "1")),
        help="multiplies Polar's retry waits (2 s doubling, ~17-34 min in all); tests: 0.001",
    )
    serve.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=env("STANDIN_PRESET", "production"),
        help="rate limit like Polar's sandbox (100/min) or production (500/min)",
    )
    serve.add_argument(
        "--rate-limit",
        type=int,
        default=int(env("STANDIN_RATE_LIMIT")) if env("STANDIN_RATE_LIMIT") else None,
        help="requests per minute per organization on /v1 (overrides --preset)",
    )
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT:KEY=VALUE,...",
        help='arm a fault at start-up, e.g. "events.ingest:status=503,count=2" (repeatable)',
    )
    serve.add_argument(
        "--faults-file",
        default=env("STANDIN_FAULTS_FILE"),
        help="JSON list of faults as POST /admin/faults takes them (STANDIN_FAULTS: same JSON)",
    )


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The StandinConfig fields these flags set."""
    return {
        "webhook_timeout": args.webhook_timeout,
        "webhook_retry_scale": args.webhook_retry_scale,
        "rate_limit": args.rate_limit if args.rate_limit is not None else PRESETS[args.preset],
        "faults": startup_faults(args.fault, args.faults_file, os.environ.get("STANDIN_FAULTS")),
        # Tokens only through the environment: command lines are visible to every user.
        "scoped_tokens": scopes.parse(os.environ.get("STANDIN_SCOPED_TOKENS")),
    }
