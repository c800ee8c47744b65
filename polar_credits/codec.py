"""How payloads are written to Temporal: the default converter, or encrypted (planned)."""

from __future__ import annotations

import temporalio.converter

from polar_credits.settings import Settings


def data_converter(settings: Settings) -> temporalio.converter.DataConverter:
    return temporalio.converter.default()
