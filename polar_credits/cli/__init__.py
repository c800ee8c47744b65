"""`polar-credits`: one command for operators and scripts.

Each area adds its commands to `app` in its own module (imported at the bottom). Tables by
default, `--json` for scripts; exit codes scripts can rely on (`ExitCode`).
"""

from __future__ import annotations

from polar_credits.cli.base import app


def main() -> None:
    app()


# Command modules register themselves on import.
from polar_credits.cli import commands  # noqa: E402, F401
