"""Where and how a process connects to Temporal, and the setting behind each value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from temporalio.service import TLSConfig

from polar_credits.settings import Settings


@dataclass(frozen=True)
class TemporalConnection:
    """Where and how a process connects, resolved once at start-up. Its repr and
    `describe()` hold no secret: the API key, TLS material and gRPC metadata are left out."""

    address: str
    namespace: str
    tls: bool | TLSConfig = field(default=False, repr=False)
    api_key: str | None = field(default=None, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Which setting gave each value ("address", "client_cert"...): the names errors quote.
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)
    profile: str | None = None  # the profile file's profile, when a file was read

    def describe(self) -> str:
        """For logs: "host:port (namespace 'x', TLS with a client certificate, API key)"."""
        parts = [f"namespace {self.namespace!r}"]
        if isinstance(self.tls, TLSConfig):
            parts.append("TLS with a client certificate" if self.tls.client_cert else "TLS")
        elif self.tls:
            parts.append("TLS")
        if self.api_key:
            parts.append("API key")
        if self.profile:
            parts.append(f"profile {self.profile!r}")
        return f"{self.address} ({', '.join(parts)})"

    def source(self, key: str) -> str:
        """The setting that gave `key` (a variable, or a key of the profile file)."""
        if key in self.sources:
            return self.sources[key]
        return ENV_NAMES[key] + ("_PATH" if key in FILE_SOURCES else "")

    def applied_to(self, settings: Settings) -> Settings:
        """`settings` with the address and namespace actually used (links to the UI, logs)."""
        return settings.model_copy(
            update={"temporal_address": self.address, "temporal_namespace": self.namespace}
        )


# The environment variable behind each value (temporalio/envconfig, sdk-core's env names).
ENV_NAMES = {
    "address": "TEMPORAL_ADDRESS",
    "namespace": "TEMPORAL_NAMESPACE",
    "api_key": "TEMPORAL_API_KEY",
    "tls": "TEMPORAL_TLS",
    "server_name": "TEMPORAL_TLS_SERVER_NAME",
    "client_cert": "TEMPORAL_TLS_CLIENT_CERT",
    "client_key": "TEMPORAL_TLS_CLIENT_KEY",
    "server_ca_cert": "TEMPORAL_TLS_SERVER_CA_CERT",
}
FILE_SOURCES = ("client_cert", "client_key", "server_ca_cert")
