"""Log lines a sender cannot forge: values from outside are escaped and bounded, and every
message is stripped of control characters before it reaches a log file."""

from __future__ import annotations

import logging
import re

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
SHOWN_CHARS = 80

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
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


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
