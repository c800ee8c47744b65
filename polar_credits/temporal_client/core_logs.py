"""Where the SDK core's own log lines go: forwarded to Python's logging."""

from __future__ import annotations

import functools
import logging

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

# The SDK's core (Rust) writes its own warnings to stderr, coloured, around every formatter
# of the service; forwarded, they are records of this logger like any other line.
CORE_LOGGER = "temporalio.core"


def core_logging() -> LoggingConfig:
    """The core's warnings and errors, forwarded to Python's logging (logger
    `temporalio.core`), so they reach the service's formatters: text lines without colour
    escapes, or JSON objects with CREDITS_LOG_FORMAT=json."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(
            logger=logging.getLogger(CORE_LOGGER), append_target_to_name=False
        ),
    )


@functools.cache
def logging_runtime() -> Runtime:
    """The runtime of every client this service connects without one of its own (the API,
    the CLI, the demo): the SDK's default, except for where the core's logs go. One per
    process, as the SDK expects."""
    return Runtime(telemetry=TelemetryConfig(logging=core_logging()))
