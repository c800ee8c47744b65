"""Meter semantics: which events a meter's filter selects and how they aggregate.

Mirrors Polar's filter clauses (name = event name, anything else = a metadata key).
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _compare(left: Any, operator: str, right: Any) -> bool:
    if left is _MISSING or left is None:
        # A missing property is SQL NULL in Polar: no operator matches it.
        return False
    if operator in ("like", "not_like"):
        # Polar wraps the value in %...%: a substring test.
        found = _as_text(right) in _as_text(left)
        return found if operator == "like" else not found
    if _is_number(left) or _is_number(right):
        try:
            a, b = float(left), float(right)
        except (TypeError, ValueError):
            a, b = _as_text(left), _as_text(right)
    else:
        a, b = _as_text(left), _as_text(right)
    match operator:
        case "eq":
            return a == b
        case "ne":
            return a != b
        case "gt":
            return a > b
        case "gte":
            return a >= b
        case "lt":
            return a < b
        case "lte":
            return a <= b
    raise ValueError(f"unknown filter operator {operator!r}")


def matches(filter_: dict, name: str, metadata: dict) -> bool:
    results = []
    for clause in filter_.get("clauses", []):
        if "clauses" in clause:
            results.append(matches(clause, name, metadata))
            continue
        prop = clause["property"]
        left = name if prop == "name" else metadata.get(prop, _MISSING)
        results.append(_compare(left, clause["operator"], clause["value"]))
    if not results:
        return True
    return all(results) if filter_.get("conjunction", "and") == "and" else any(results)


def aggregate(aggregation: dict, metadatas: list[dict]) -> float:
    func = aggregation.get("func", "sum")
    if func == "count":
        return float(len(metadatas))
    prop = aggregation.get("property", "units")
    # Only JSON numbers count: Polar's SQL skips "units": "-10".
    values = [float(m[prop]) for m in metadatas if _is_number(m.get(prop))]
    if func == "sum":
        return float(sum(values))
    if not values:
        return 0.0
    if func == "max":
        return max(values)
    if func == "min":
        return min(values)
    if func == "avg":
        return sum(values) / len(values)
    raise ValueError(f"unsupported aggregation {func!r}")


def validate_filter(filter_: Any) -> str | None:
    """Returns an error message, or None when the filter is well-formed."""
    if not isinstance(filter_, dict) or filter_.get("conjunction") not in ("and", "or"):
        return "filter needs conjunction 'and' or 'or'"
    if not isinstance(filter_.get("clauses"), list):
        return "filter needs a list of clauses"
    for clause in filter_["clauses"]:
        if isinstance(clause, dict) and "clauses" in clause:
            error = validate_filter(clause)
            if error:
                return error
            continue
        if not isinstance(clause, dict) or not {"property", "operator", "value"} <= clause.keys():
            return "each clause needs property, operator and value"
        if clause["operator"] not in ("eq", "ne", "gt", "gte", "lt", "lte", "like", "not_like"):
            return f"unknown operator {clause['operator']!r}"
    return None
