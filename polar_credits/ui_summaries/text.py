"""The shared words of the Temporal UI's texts: limits, ids abbreviated, credits and instants
as operators read them, and a run's start text (summary and details) and what started it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

# Ids are abbreviated in summaries: enough to recognise a run in a list, and a summary stays
# one short line. Details carry the full ids.
SHORT_ID_CHARS = 8
# Temporal bounds user metadata; a summary is one line in a list.
MAX_SUMMARY_CHARS = 200
MAX_DETAILS_CHARS = 2_000
MAX_VALUE_CHARS = 120
SEP = " · "

# Workflow id prefixes kept whole when a workflow id is abbreviated ("order-credits-9a41…").
_ID_PREFIXES = (
    "order-credits-",
    "subscription-allowance-",
    "manual-grant-",
    "revoke-",
    "backfill-",
    "customer-ledger-",
)


# -- text helpers ---------------------------------------------------------------------------


def _plain(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """An outside value as one printable line: no control characters, no markdown quoting
    tricks, bounded."""
    text = str(value).encode("unicode_escape", "backslashreplace").decode("ascii")
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(value: str | None) -> str:
    """An id abbreviated for a summary: its first 8 characters and "…"."""
    if not value:
        return "?"
    text = _plain(value)
    return text if len(text) <= SHORT_ID_CHARS + 1 else text[:SHORT_ID_CHARS] + "…"


def short_workflow_id(workflow_id: str) -> str:
    """A workflow id with its kind kept: "order-credits-9a41…"."""
    for prefix in _ID_PREFIXES:
        if workflow_id.startswith(prefix) and len(workflow_id) > len(prefix):
            return prefix + short(workflow_id[len(prefix) :])
    return short(workflow_id)


def in_credits(units: int | float) -> str:
    n = int(units) if float(units).is_integer() else units
    return f"{n} credit" if n == 1 else f"{n} credits"


def when(moment: datetime | str | None) -> str:
    """A UTC instant as operators read it: "2027-01-07 12:00 UTC"."""
    if moment is None:
        return "?"
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return _plain(moment, 40)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _summary(*parts: str | None) -> str:
    text = SEP.join(p for p in parts if p)
    return text if len(text) <= MAX_SUMMARY_CHARS else text[: MAX_SUMMARY_CHARS - 1] + "…"


def _details(title: str, rows: Iterable[tuple[str, object | None]]) -> str:
    """Markdown: a title, then one bullet per known value (full ids, in code spans)."""
    lines = [f"**{title}**", ""]
    lines += [f"- {label}: `{_plain(value)}`" for label, value in rows if value not in (None, "")]
    text = "\n".join(lines)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 1] + "…"


def _rules(rule_ids: Iterable[str]) -> str | None:
    ids = list(dict.fromkeys(rule_ids))
    if not ids:
        return None
    shown = ", ".join(_plain(i, 40) for i in ids[:3])
    more = f" +{len(ids) - 3}" if len(ids) > 3 else ""
    return f"{'rule' if len(ids) == 1 else 'rules'} {shown}{more}"


# -- the start text every starter sets -------------------------------------------------------

# What started a run, in its static details.
VIA_WEBHOOK = "Polar's webhook"
VIA_RECONCILIATION = "reconciliation"
VIA_RERUN = "an operator's rerun"
VIA_OPERATOR_API = "the operator API"
VIA_RECOVER = "recovery from Polar (polar-credits recover)"


class StartText(NamedTuple):
    """A run's `static_summary` (one line, in the list) and `static_details` (markdown, on
    the run's page)."""

    summary: str
    details: str
