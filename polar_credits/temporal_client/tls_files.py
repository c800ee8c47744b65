"""The TLS files of a profile: read, named by the setting that gave them, and checked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from temporalio.envconfig import ClientConfigTLS, DataSource
from temporalio.service import TLSConfig

from polar_credits.settings import SettingsError
from polar_credits.temporal_client.connection import ENV_NAMES


def tls_config(
    tls: ClientConfigTLS,
    env: Mapping[str, str],
    sources: dict[str, str],
    in_file: str | None,
) -> bool | TLSConfig:
    if tls.disabled is True:
        return False
    values = {
        "client_cert": tls.client_cert,
        "client_key": tls.client_private_key,
        "server_ca_cert": tls.server_root_ca_cert,
    }
    read: dict[str, bytes | None] = {}
    for key, value in values.items():
        sources[key] = _file_source_name(key, value, env, in_file)
        read[key] = _read(value, sources[key])
    if bool(read["client_cert"]) != bool(read["client_key"]):
        missing, given = (
            ("client_key", "client_cert") if read["client_cert"] else ("client_cert", "client_key")
        )
        raise SettingsError(
            f"{ENV_NAMES[missing]}_PATH: not set, while {sources[given]} is: mTLS needs both "
            "the client certificate and its private key."
        )
    _check_pem(read, sources)
    return TLSConfig(
        domain=tls.server_name or None,
        server_root_ca_cert=read["server_ca_cert"],
        client_cert=read["client_cert"],
        client_private_key=read["client_key"],
    )


def _file_source_name(
    key: str, value: DataSource | None, env: Mapping[str, str], in_file: str | None
) -> str:
    base = ENV_NAMES[key]
    suffix = "_PATH" if isinstance(value, Path) or value is None else "_DATA"
    if f"{base}_PATH" in env:
        return f"{base}_PATH"
    if f"{base}_DATA" in env:
        return f"{base}_DATA"
    if in_file is not None and value is not None:
        return f"tls.{key}{suffix.lower()} in {in_file}"
    return f"{base}{suffix}"


def _read(value: DataSource | None, name: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, Path):
        try:
            return value.read_bytes()
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {value}: {exc.strerror or exc}.") from None
    return value.encode() if isinstance(value, str) else value


def _check_pem(read: Mapping[str, bytes | None], sources: Mapping[str, str]) -> None:
    """Certificates and the key parse, and the key is the certificate's: a mistake here
    would otherwise surface as an obscure handshake failure."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certs: dict[str, list[x509.Certificate]] = {}
    for key in ("client_cert", "server_ca_cert"):
        if pem := read[key]:
            try:
                certs[key] = x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise SettingsError(
                    f"{sources[key]}: not a PEM certificate (-----BEGIN CERTIFICATE-----)."
                ) from None
    if read["client_key"]:
        try:
            private_key = serialization.load_pem_private_key(read["client_key"], password=None)
        except (ValueError, TypeError) as exc:
            why = "it is encrypted" if isinstance(exc, TypeError) else "not a PEM private key"
            raise SettingsError(
                f"{sources['client_key']}: {why}; give the unencrypted PEM key of the client "
                "certificate."
            ) from None
        public = certs["client_cert"][0].public_key()
        if private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise SettingsError(
                f"{sources['client_key']}: this key does not belong to the client certificate "
                f"({sources['client_cert']}): give the key the certificate was issued for."
            )
