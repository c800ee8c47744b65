"""`python -m api`: serve the API on CREDITS_API_HOST:CREDITS_API_PORT."""

from __future__ import annotations

import sys

from polar_credits.api.app import create_app
from polar_credits.api.server import serve
from polar_credits.logsafe import configure_logging
from polar_credits.rules import RulesError
from polar_credits.settings import SettingsError, load_settings


def main() -> int:
    configure_logging()
    try:
        settings = load_settings("POLAR_WEBHOOK_SECRET")
        app = create_app(settings)
    except (SettingsError, RulesError) as exc:
        print(f"polar-credits api: {exc}", file=sys.stderr)
        return 2
    configure_logging(log_format=settings.credits_log_format)
    # uvicorn with read timeouts on slow clients (api/server.py, docs/operator/runs.md).
    return serve(app, settings)


if __name__ == "__main__":
    sys.exit(main())
