"""Imports every command module, so each registers its commands on `app`."""

# One line per command module, in any order.
# ruff: noqa: I001

from __future__ import annotations

from polar_credits.cli import backfill  # noqa: E402, F401
from polar_credits.cli import serve  # noqa: E402, F401
from polar_credits.cli import rules  # noqa: E402, F401
from polar_credits.cli import grants  # noqa: E402, F401
from polar_credits.cli import setup  # noqa: E402, F401
from polar_credits.cli import recover  # noqa: E402, F401
from polar_credits.cli import versions  # noqa: E402, F401
