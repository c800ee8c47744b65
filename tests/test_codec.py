"""The encryption codec (polar_credits/codec.py) and its settings: payloads round-trip under
the active key, old keys keep reading, an unknown key or an altered payload fails loudly, a
plain payload passes through, and each bad setting stops start-up with its name."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure

from polar_credits.codec import (
    ENCODING,
    KEY_ID_METADATA,
    PayloadDecryptionError,
    data_converter,
    payload_codec,
)
from polar_credits.models.facts import OrderFacts
from polar_credits.settings import Settings, SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_A, KEY_B = os.urandom(32), os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def settings(keys: str | None, active: str | None) -> Settings:
    return Settings(credits_encryption_keys=keys, credits_encryption_key_id=active)


def codec(keys: dict[str, bytes], active: str):
    found = payload_codec(
        settings(",".join(f"{key_id}:{b64(key)}" for key_id, key in keys.items()), active)
    )
    assert found is not None
    return found


ORDER = OrderFacts(
    order_id="ord-9a41-secret-order",
    customer_id="cus-51e9-secret-customer",
    billing_reason="purchase",
    status="paid",
    product_id="prod-1",
    metadata={"campaign": "launch-secret-campaign"},
)


async def test_a_payload_round_trips_and_holds_nothing_readable() -> None:
    converter = data_converter(settings(f"a:{b64(KEY_A)}", "a"))
    [encoded] = await converter.encode([ORDER])
    assert encoded.metadata["encoding"] == ENCODING
    assert encoded.metadata[KEY_ID_METADATA] == b"a"
    for secret in (ORDER.order_id, ORDER.customer_id, "launch-secret-campaign", "json/plain"):
        assert secret.encode() not in encoded.SerializeToString()
    [decoded] = await converter.decode([encoded], [OrderFacts])
    assert decoded == ORDER


async def test_each_encoding_differs_so_equal_inputs_are_not_recognisable() -> None:
    only_a = codec({"a": KEY_A}, "a")
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"same"')
    first, second = await only_a.encode([plain, plain])
    assert first.data != second.data


async def test_payloads_written_under_a_key_still_read_after_another_becomes_active() -> None:
    before = codec({"a": KEY_A}, "a")
    after = codec({"a": KEY_A, "b": KEY_B}, "b")
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"order": "o-1"}')
    [under_a] = await before.encode([plain])
    [under_b] = await after.encode([plain])
    assert under_b.metadata[KEY_ID_METADATA] == b"b"
    assert await after.decode([under_a, under_b]) == [plain, plain]


async def test_a_payload_under_a_key_not_configured_fails_loudly() -> None:
    [under_b] = await codec({"b": KEY_B}, "b").encode([Payload(data=b"x")])
    with pytest.raises(PayloadDecryptionError, match=r"key 'b'.*CREDITS_ENCRYPTION_KEYS"):
        await codec({"a": KEY_A}, "a").decode([under_b])


async def test_an_altered_payload_fails_loudly() -> None:
    only_a = codec({"a": KEY_A}, "a")
    [sealed] = await only_a.encode([Payload(data=b'{"units": 10}')])
    flipped = bytearray(sealed.data)
    flipped[-1] ^= 1
    tampered = Payload(metadata=sealed.metadata, data=bytes(flipped))
    with pytest.raises(PayloadDecryptionError, match="altered"):
        await only_a.decode([tampered])
    # Nor can it be passed off as written under another configured key.
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID_METADATA: b"b"}, data=sealed.data)
    with pytest.raises(PayloadDecryptionError):
        await codec({"a": KEY_A, "b": KEY_B}, "a").decode([relabelled])


async def test_a_payload_written_before_encryption_passes_through() -> None:
    plain = (await data_converter(Settings()).encode([ORDER]))[0]
    converter = data_converter(settings(f"a:{b64(KEY_A)}", "a"))
    assert await converter.decode([plain], [OrderFacts]) == [ORDER]


async def test_failure_messages_are_encrypted_too() -> None:
    converter = data_converter(settings(f"a:{b64(KEY_A)}", "a"))
    failure = Failure()
    await converter.encode_failure(RuntimeError(f"order {ORDER.order_id} failed"), failure)
    assert ORDER.order_id.encode() not in failure.SerializeToString()
    restored = await converter.decode_failure(failure)
    assert ORDER.order_id in str(restored)


def test_encryption_is_off_while_both_settings_are_unset() -> None:
    assert payload_codec(settings(None, None)) is None
    assert payload_codec(settings("  ", "")) is None
    assert data_converter(Settings()).payload_codec is None


SHORT = b64(os.urandom(16))


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        ("a:not base64!", "a", r"CREDITS_ENCRYPTION_KEYS: key 'a' is not valid base64"),
        (f"a:{SHORT}", "a", r"CREDITS_ENCRYPTION_KEYS: key 'a' is 16 bytes, not 32"),
        (f"a:{b64(KEY_A)}", "c", r"CREDITS_ENCRYPTION_KEY_ID is 'c', which is not among"),
        (f"a:{b64(KEY_A)},a:{b64(KEY_B)}", "a", r"key 'a' is given twice"),
        (b64(KEY_A), "a", r"CREDITS_ENCRYPTION_KEYS: entry 1 is not of the form id:key"),
        (f"a:{b64(KEY_A)}", None, r"CREDITS_ENCRYPTION_KEY_ID is not"),
        (None, "a", r"CREDITS_ENCRYPTION_KEY_ID is set but CREDITS_ENCRYPTION_KEYS is not"),
        (" , ", "a", r"CREDITS_ENCRYPTION_KEYS holds no key"),
    ],
)
def test_each_bad_setting_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, keys: str | None, active: str | None, message: str
) -> None:
    for name, value in (("CREDITS_ENCRYPTION_KEYS", keys), ("CREDITS_ENCRYPTION_KEY_ID", active)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message) as err:
        load_settings()
    for key in (KEY_A, KEY_B):
        assert b64(key) not in str(err.value)  # a message never shows a key


def test_the_keys_never_show_in_the_settings_repr() -> None:
    configured = settings(f"a:{b64(KEY_A)}", "a")
    assert b64(KEY_A) not in repr(configured) + str(configured)


def clean_env(**extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "CREDITS_"))},
        **extra,
    }


@pytest.mark.parametrize("argv", [["worker.py"], ["-m", "api"]], ids=["worker", "api"])
def test_a_process_with_a_wrong_key_stops_at_start_with_the_setting_named(
    tmp_path: Path, argv: list[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("")
    env = clean_env(
        POLAR_ACCESS_TOKEN="polar_oat_secret_value",
        POLAR_WEBHOOK_SECRET="whsec_secret_value",
        CREDITS_RULES_FILE=str(rules),
        CREDITS_ENCRYPTION_KEYS=f"a:{SHORT}",
        CREDITS_ENCRYPTION_KEY_ID="a",
        # Nothing listens here: a process that got past its settings would fail otherwise.
        TEMPORAL_ADDRESS="127.0.0.1:9",
    )
    done = subprocess.run(
        [sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "CREDITS_ENCRYPTION_KEYS: key 'a' is 16 bytes, not 32" in done.stderr
    assert "Traceback" not in done.stderr
    assert SHORT not in done.stderr + done.stdout
