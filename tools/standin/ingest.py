"""Validation of an events.ingest batch, with Polar's rules and its 422 error shape.

Validation is all or nothing: one bad event rejects the whole batch.
"""

from __future__ import annotations

from typing import Any

from tools.standin.clock import now, parse_iso

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_METADATA_PAIRS = 50
MAX_METADATA_KEY = 40
MAX_METADATA_STRING = 500
FUTURE_TOLERANCE_SECONDS = 1.0


def error(loc: list[str | int], msg: str, type_: str, input_: Any = None) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_, "input": input_}


def _metadata_errors(loc: list[str | int], metadata: Any) -> list[dict[str, Any]]:
    if not isinstance(metadata, dict):
        return [error(loc, "Input should be a valid dictionary", "dict_type", metadata)]
    errors = []
    if len(metadata) > MAX_METADATA_PAIRS:
        errors.append(
            error(loc, f"Dictionary should have at most {MAX_METADATA_PAIRS} items", "too_long")
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            errors.append(
                error(
                    [*loc, key],
                    f"Keys should have at most {MAX_METADATA_KEY} characters",
                    "string_too_long",
                    key,
                )
            )
        if isinstance(value, str):
            if len(value) > MAX_METADATA_STRING:
                errors.append(
                    error(
                        [*loc, key],
                        f"String should have at most {MAX_METADATA_STRING} characters",
                        "string_too_long",
                    )
                )
        elif not isinstance(value, bool | int | float):
            errors.append(
                error(
                    [*loc, key],
                    "Input should be a valid string, integer, number or boolean",
                    "metadata_value_type",
                    value,
                )
            )
    return errors


def validate_batch(payload: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Returns (normalized events, errors); events are only usable when errors is empty."""
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        return [], [error(["body", "events"], "Field required", "missing")]
    events, errors = [], []
    clock = now()
    for i, raw in enumerate(payload["events"]):
        loc: list[str | int] = ["body", "events", i]
        if not isinstance(raw, dict):
            errors.append(error(loc, "Input should be a valid dictionary", "dict_type", raw))
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            errors.append(error([*loc, "name"], "Field required", "missing"))
        customer_id = raw.get("customer_id")
        external_customer_id = raw.get("external_customer_id")
        if (customer_id is None) == (external_customer_id is None):
            errors.append(
                error(
                    loc,
                    "Exactly one of customer_id or external_customer_id is required",
                    "value_error",
                )
            )
        for key in ("customer_id", "external_customer_id", "external_id"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                errors.append(
                    error([*loc, key], "Input should be a valid string", "string_type", raw[key])
                )
        if raw.get("organization_id") is not None:
            errors.append(
                error(
                    [*loc, "organization_id"],
                    "Setting organization_id is disallowed when using an organization token",
                    "organization_token",
                )
            )
        ts = None
        if raw.get("timestamp") is not None:
            try:
                ts = parse_iso(raw["timestamp"])
            except (TypeError, ValueError):
                errors.append(
                    error(
                        [*loc, "timestamp"],
                        "Input should be a valid datetime",
                        "datetime_parsing",
                        raw["timestamp"],
                    )
                )
            else:
                if ts > clock + FUTURE_TOLERANCE_SECONDS:
                    errors.append(
                        error(
                            [*loc, "timestamp"],
                            "Timestamp must be in the past.",
                            "value_error",
                            raw["timestamp"],
                        )
                    )
        metadata = raw.get("metadata") or {}
        errors += _metadata_errors([*loc, "metadata"], metadata)
        events.append(
            {
                "name": name,
                "ts": ts,
                "customer_id": customer_id,
                "external_customer_id": external_customer_id,
                "external_id": raw.get("external_id"),
                "metadata": metadata,
                "source": "user",
            }
        )
    return events, errors
