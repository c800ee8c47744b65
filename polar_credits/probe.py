"""`python -m polar_credits.probe api|worker`: the image's health check, for Docker and compose.

Asks the role's `/readyz` on this container's loopback (the API on CREDITS_API_PORT, the worker
on CREDITS_WORKER_METRICS_PORT) and exits 0 when it answers 200, 1 otherwise with the reason
on stderr. Standard library only: it runs every few seconds and must start fast.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT_SECONDS = 4.0
USAGE = "usage: python -m polar_credits.probe api|worker"


def readyz_url(role: str, env: Mapping[str, str] = os.environ) -> str:
    """Where the role answers readiness; ValueError when it cannot answer at all."""
    if role == "api":
        return f"http://127.0.0.1:{env.get('CREDITS_API_PORT') or 8000}/readyz"
    if role == "worker":
        port = env.get("CREDITS_WORKER_METRICS_PORT") or "0"
        if port == "0":
            raise ValueError("CREDITS_WORKER_METRICS_PORT is not set: the worker serves no probes")
        return f"http://127.0.0.1:{port}/readyz"
    raise ValueError(USAGE)


def probe(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
            return answer.status == 200, f"{answer.status}"
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail") or ""
        except (ValueError, AttributeError):
            detail = ""
        return False, f"{exc.code} {detail}".strip()
    except (OSError, ValueError) as exc:
        return False, str(exc)


def main(argv: list[str]) -> int:
    try:
        url = readyz_url(argv[0] if len(argv) == 1 else "")
    except ValueError as exc:
        print(f"polar-credits probe: {exc}", file=sys.stderr)
        return 1
    ready, why = probe(url)
    if not ready:
        print(f"polar-credits probe: {url} not ready: {why}", file=sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
