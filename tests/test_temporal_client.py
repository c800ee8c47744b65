"""Where a process connects to Temporal, as an operator configures it: the TEMPORAL_* variables
and profile file of temporalio's environment configuration, the service's own settings over
them, and one message naming the setting when a value can never work. No network here:
tests/e2e/test_temporal_tls.py connects through TLS for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from polar_credits.settings import Settings, SettingsError
from polar_credits.temporal_client import resolve_temporal
from tests.support.certs import Pki, make_pki
from tools import stack

API_KEY = "tmprl-" + "test-api-key-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def profiles(tmp_path: Path, pki: Pki) -> Path:
    path = tmp_path / "temporal.toml"
    path.write_text(
        f"""
[profile.default]
address = "127.0.0.1:7233"

[profile.cloud]
address = "my-ns.a1b2c.tmprl.cloud:7233"
namespace = "my-ns.a1b2c"
api_key = "{API_KEY}"

[profile.mtls]
address = "temporal.internal:7233"
namespace = "credits"
[profile.mtls.tls]
client_cert_path = "{pki.client.cert}"
client_key_path = "{pki.client.key}"
server_ca_cert_path = "{pki.ca_cert}"
server_name = "temporal.internal"
"""
    )
    return path


def resolve(env: dict[str, str], **settings: object):
    # XDG_CONFIG_HOME: never the profile file of whoever runs the tests.
    return resolve_temporal(Settings(**settings), {"XDG_CONFIG_HOME": "/nonexistent", **env})


def refusal(env: dict[str, str], **settings: object) -> str:
    with pytest.raises(SettingsError) as err:
        resolve(env, **settings)
    return str(err.value)


def test_nothing_set_is_the_local_dev_server_in_plaintext() -> None:
    connection = resolve({})
    assert (connection.address, connection.namespace, connection.tls) == (
        "127.0.0.1:7233",
        "default",
        False,
    )
    assert connection.api_key is None


def test_a_profile_picked_by_temporal_profile_gives_address_namespace_and_api_key(
    profiles: Path,
) -> None:
    connection = resolve({"TEMPORAL_CONFIG_FILE": str(profiles), "TEMPORAL_PROFILE": "cloud"})
    assert connection.address == "my-ns.a1b2c.tmprl.cloud:7233"
    assert connection.namespace == "my-ns.a1b2c"
    assert connection.api_key == API_KEY
    assert connection.tls is True  # an API key is never sent in the clear
    # What the processes log: where, and how, but never the key.
    shown = f"{connection!r} {connection.describe()}"
    assert "my-ns.a1b2c.tmprl.cloud:7233" in shown and "API key" in shown
    assert API_KEY not in shown


def test_mtls_files_of_a_profile_are_read_at_start_up(profiles: Path, pki: Pki) -> None:
    connection = resolve({"TEMPORAL_CONFIG_FILE": str(profiles), "TEMPORAL_PROFILE": "mtls"})
    assert isinstance(connection.tls, TLSConfig)
    assert connection.tls.client_cert == pki.client.cert.read_bytes()
    assert connection.tls.client_private_key == pki.client.key.read_bytes()
    assert connection.tls.server_root_ca_cert == pki.ca_cert.read_bytes()
    assert connection.tls.domain == "temporal.internal"
    assert "PRIVATE KEY" not in f"{connection!r} {connection.describe()}"


def test_variables_win_over_the_profile_file_and_explicit_settings_over_both(
    profiles: Path,
) -> None:
    env = {
        "TEMPORAL_CONFIG_FILE": str(profiles),
        "TEMPORAL_PROFILE": "cloud",
        "TEMPORAL_NAMESPACE": "from-env",
    }
    assert resolve(env).namespace == "from-env"
    # Settings built in code (as tests and tools do) connect where they say.
    explicit = resolve(env, temporal_address="127.0.0.1:17233", temporal_namespace="mine")
    assert (explicit.address, explicit.namespace) == ("127.0.0.1:17233", "mine")
    assert explicit.api_key == API_KEY  # what Settings does not name still comes from the profile


def test_tls_material_given_inline_and_grpc_metadata(pki: Pki) -> None:
    connection = resolve(
        {
            "TEMPORAL_ADDRESS": "temporal.example:7233",
            "TEMPORAL_TLS_CLIENT_CERT_DATA": pki.client.cert.read_text(),
            "TEMPORAL_TLS_CLIENT_KEY_DATA": pki.client.key.read_text(),
            "TEMPORAL_GRPC_META_X_TENANT": "acme",
        }
    )
    assert isinstance(connection.tls, TLSConfig)
    assert connection.tls.client_cert == pki.client.cert.read_bytes()
    assert connection.rpc_metadata == {"x-tenant": "acme"}
    assert connection.describe() == (
        "temporal.example:7233 (namespace 'default', TLS with a client certificate)"
    )


def test_settings_that_can_never_work_name_the_setting(
    tmp_path: Path, profiles: Path, pki: Pki
) -> None:
    missing = str(tmp_path / "missing.pem")
    cases = [
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": missing,
          "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client.key)},
         "TEMPORAL_TLS_CLIENT_CERT_PATH: cannot read"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.cert),
          "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.stranger.key)},
         "TEMPORAL_TLS_CLIENT_KEY_PATH: this key does not belong to the client certificate"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.cert)},
         "TEMPORAL_TLS_CLIENT_KEY_PATH: not set"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.key),
          "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client.key)},
         "TEMPORAL_TLS_CLIENT_CERT_PATH: not a PEM certificate"),
        ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": missing},
         "TEMPORAL_TLS_SERVER_CA_CERT_PATH: cannot read"),
        ({"TEMPORAL_CONFIG_FILE": str(profiles), "TEMPORAL_PROFILE": "staging"},
         "TEMPORAL_PROFILE: no profile 'staging' in"),
        ({"TEMPORAL_PROFILE": "staging"}, "TEMPORAL_PROFILE: no profile 'staging'"),
        ({"TEMPORAL_CONFIG_FILE": missing}, "TEMPORAL_CONFIG_FILE: "),
        ({"TEMPORAL_TLS": "yes please"}, "TEMPORAL_TLS: 'yes please' is not a boolean"),
    ]  # fmt: skip
    for env, expected in cases:
        message = refusal(env)
        assert message.startswith(expected), (env, message)
        assert "\n" not in message

    garbled = tmp_path / "garbled.toml"
    garbled.write_text("[profile.default\naddress = ")
    assert refusal({"TEMPORAL_CONFIG_FILE": str(garbled)}).startswith(
        f"TEMPORAL_CONFIG_FILE: {garbled} is not a valid Temporal profile file"
    )


def test_a_bad_file_named_in_the_profile_file_is_reported_as_that_key(
    tmp_path: Path, pki: Pki
) -> None:
    path = tmp_path / "temporal.toml"
    path.write_text(
        f"""
[profile.default.tls]
client_cert_path = "{tmp_path / "gone.pem"}"
client_key_path = "{pki.client.key}"
"""
    )
    message = refusal({"TEMPORAL_CONFIG_FILE": str(path)})
    assert message.startswith(f"tls.client_cert_path in profile 'default' of {path}: cannot read")


def test_make_run_children_ignore_what_a_shell_holds_for_another_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki
) -> None:
    # A developer's own default profile (as `temporal config set` writes it) and variables
    # for Temporal Cloud: `make run` still wires its children to its local dev server.
    home = tmp_path / "config"
    (home / "temporalio").mkdir(parents=True)
    (home / "temporalio" / "temporal.toml").write_text(
        f'[profile.default]\nnamespace = "prod.a1b2c"\napi_key = "{API_KEY}"\n'
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    shell = {
        "XDG_CONFIG_HOME": str(home),
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client.cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client.key),
        "TEMPORAL_GRPC_META_X_TENANT": "acme",
    }
    assert resolve_temporal(Settings(), shell).api_key == API_KEY  # what a bare process sees

    settings = Settings(polar_webhook_secret="whsec_x")
    child = stack.child_env(settings, stack.StackConfig.from_env(settings, shell), shell)
    # A child reads its Settings from that environment.
    child_settings = Settings(
        temporal_address=child["TEMPORAL_ADDRESS"], temporal_namespace=child["TEMPORAL_NAMESPACE"]
    )
    connection = resolve_temporal(child_settings, child)
    assert (connection.address, connection.namespace) == ("127.0.0.1:7233", "default")
    assert connection.tls is False and connection.api_key is None
    assert connection.rpc_metadata == {}
