"""`python -m api`: serve the API on CREDITS_API_HOST:CREDITS_API_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn

from api.app import create_app
from polar_credits.settings import SettingsError, load_settings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings("POLAR_WEBHOOK_SECRET")
    except SettingsError as exc:
        print(f"polar-credits api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.credits_api_host,
        port=settings.credits_api_port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
