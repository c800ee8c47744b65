"""Log lines a sender cannot forge: values from outside are escaped and bounded, and every
message is stripped of control characters before it reaches a log file.

Two formats (CREDITS_LOG_FORMAT): text, one line a record; json, one JSON object a line with
the run's ids when Temporal's loggers know them (`JsonFormatter`)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

from polar_credits.identity import ORDER_WORKFLOW_PREFIX

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FOR_LOG_CHARS = 80

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def for_log(value: object, limit: int = FOR_LOG_CHARS) -> str:
    """An outside value (an order id, say) as it may appear in a log: printable ASCII only,
    at most `limit` characters and a note of how many more there were."""
    text = str(value).encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class SafeFormatter(logging.Formatter):
    """A message is one line, whatever it quotes; tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _CONTROL.sub(_escape, record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and when known (from
    Temporal's workflow and activity loggers) order_id, workflow_id, run_id, workflow_type,
    activity, attempt. Only these fields: a record's other extras never reach the line, so
    nothing a caller attaches can leak. Ids are passed through `for_log`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _CONTROL.sub(_escape, record.getMessage()),
        }
        entry.update(_run_ids(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        # ensure_ascii: no character can end the line or hide in a terminal.
        return json.dumps(entry, ensure_ascii=True, default=str)


def _run_ids(record: logging.LogRecord) -> dict[str, str]:
    found: dict[str, Any] = {}
    details = getattr(record, "temporal_workflow", None)
    if isinstance(details, dict):
        found |= {
            "workflow_id": details.get("workflow_id"),
            "run_id": details.get("run_id"),
            "workflow_type": details.get("workflow_type"),
        }
    details = getattr(record, "temporal_activity", None)
    if isinstance(details, dict):
        found |= {
            "workflow_id": details.get("workflow_id"),
            "run_id": details.get("workflow_run_id"),
            "workflow_type": details.get("workflow_type"),
            "activity": details.get("activity_type"),
            "attempt": details.get("attempt"),
        }
    order_id = getattr(record, "order_id", None)
    workflow_id = found.get("workflow_id")
    if order_id is None and isinstance(workflow_id, str):
        if workflow_id.startswith(ORDER_WORKFLOW_PREFIX):
            order_id = workflow_id.removeprefix(ORDER_WORKFLOW_PREFIX)
    if order_id is not None:
        found["order_id"] = order_id
    return {key: for_log(value) for key, value in found.items() if value is not None}


def configure_logging(
    level: int = logging.INFO, log_format: Literal["text", "json"] = "text"
) -> None:
    """Log to stderr in this format; called again (once settings are read), it replaces
    the handler."""
    handler = logging.StreamHandler()
    if log_format == "json":
        # Here, not at the top: workflows import this module (`for_log`) in their sandbox.
        from temporalio import activity, workflow

        handler.setFormatter(JsonFormatter())
        # The ids are fields of the object: not repeated at the end of each message too.
        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
    else:
        handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
