"""The one place every process (API, worker, CLI, demo) builds its Temporal client.

Where to connect comes from temporalio's environment configuration (`temporalio.envconfig`:
a TOML profile file and TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TEMPORAL_TLS_*, TEMPORAL_GRPC_META_*, TEMPORAL_PROFILE), so Temporal Cloud, a self-hosted
cluster and the dev server differ only by settings. Settings.temporal_address and
temporal_namespace, when set (from the same variables, or in code by tests), win over the
profile. The payload codec (encrypted histories) is chosen here too, so no process can write
a payload the others cannot read.

A process resolves its connection once at start-up (`resolve_temporal`): TLS files are read
and checked there, so a missing or unreadable certificate, a malformed profile file or an
unknown profile stops start-up before anything connects. `connect_temporal` then connects
within CREDITS_TEMPORAL_CONNECT_TIMEOUT_SECONDS and checks that the namespace exists.
Every failure is one message that starts with the setting to fix; none holds a secret.
"""


from polar_credits.temporal_client.connect import check_temporal, connect_temporal
from polar_credits.temporal_client.connection import TemporalConnection
from polar_credits.temporal_client.core_logs import CORE_LOGGER, core_logging, logging_runtime
from polar_credits.temporal_client.errors import TemporalUnreachable, connect_error
from polar_credits.temporal_client.resolve import (
    default_config_file,
    dev_server_env,
    resolve_temporal,
)

__all__ = [
    "CORE_LOGGER",
    "TemporalConnection",
    "TemporalUnreachable",
    "check_temporal",
    "connect_error",
    "connect_temporal",
    "core_logging",
    "default_config_file",
    "dev_server_env",
    "logging_runtime",
    "resolve_temporal",
]
