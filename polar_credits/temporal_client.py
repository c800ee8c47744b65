"""The one place every process (API, worker, CLI, demo) builds its Temporal client.

Where to connect comes from temporalio's environment configuration (`temporalio.envconfig`:
a TOML profile file and TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TEMPORAL_TLS_*, TEMPORAL_PROFILE), so Temporal Cloud, a self-hosted cluster and the dev server
differ only by settings. The payload codec (encrypted histories) is chosen here too, so no
process can write a payload the others cannot read.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.runtime import Runtime

from polar_credits.codec import data_converter
from polar_credits.settings import Settings


async def connect_temporal(
    settings: Settings, *, runtime: Runtime | None = None, lazy: bool = False
) -> Client:
    """A client for `settings`; raises SettingsError naming the setting to fix."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        runtime=runtime,
        lazy=lazy,
    )
