"""KeysSettings and the environment mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from s3proxy.keys.settings import KeysSettings, Pkcs11Settings, keys_env_overrides

from .conftest import b64key

SECRET = b64key(b"m" * 32)


def test_env_overrides_full() -> None:
    env = {
        "S3PROXY_KEY_BACKEND": "pkcs11",
        "S3PROXY_MASTER_KEY": SECRET,
        "S3PROXY_MASTER_KEY_ID": "k1",
        "S3PROXY_KMS_KEY_ID": "alias/s3proxy",
        "S3PROXY_KMS_ENDPOINT_URL": "http://localhost:4566",
        "S3PROXY_KMS_REGION": "eu-west-1",
        "S3PROXY_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
        "S3PROXY_PKCS11_TOKEN_LABEL": "tok",
        "S3PROXY_PKCS11_PIN": "1234",
        "S3PROXY_PKCS11_KEY_LABEL": "kek",
        "UNRELATED": "x",
    }
    assert keys_env_overrides(env) == {
        "backend": "pkcs11",
        "local": {"master_keys": {"k1": SECRET}, "default_key_id": "k1"},
        "aws_kms": {"key_id": "alias/s3proxy", "endpoint_url": "http://localhost:4566", "region": "eu-west-1"},
        "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "tok", "pin": "1234",
                   "key_label": "kek"},
    }
    settings = KeysSettings.model_validate(keys_env_overrides(env))
    assert settings.backend == "pkcs11" and settings.configured_backends() == ["pkcs11", "local", "aws-kms"]
    assert settings.pkcs11 is not None and settings.pkcs11.pin is not None
    assert settings.pkcs11.pin.get_secret_value() == "1234"


def test_env_overrides_defaults_and_empty_values() -> None:
    assert keys_env_overrides({}) == {}
    assert keys_env_overrides({"S3PROXY_KMS_KEY_ID": "", "S3PROXY_KEY_BACKEND": ""}) == {}
    assert keys_env_overrides({"S3PROXY_MASTER_KEY": SECRET}) == {
        "local": {"master_keys": {"default": SECRET}, "default_key_id": "default"}
    }
    assert keys_env_overrides({"S3PROXY_MASTER_KEY_ID": "k9"}) == {"local": {"default_key_id": "k9"}}


def test_secrets_are_hidden() -> None:
    settings = KeysSettings.model_validate(
        {
            "local": {"master_keys": {"default": SECRET}},
            "aws_kms": {"key_id": "k", "access_key_id": "AKIA", "secret_access_key": "aws-secret-value"},
            "pkcs11": {"module": "m", "token_label": "t", "pin": "pin-value-9876", "key_label": "k"},
        }
    )
    dumped = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in (SECRET, "aws-secret-value", "pin-value-9876"):
        assert secret not in dumped


def test_validation_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        KeysSettings.model_validate(
            {"backend": "pkcs11",
             "pkcs11": {"module": "m", "token_label": "t", "pin": "pin-value-9876", "key_label": "k", "sessions": 0}}
        )
    assert "pin-value-9876" not in str(info.value) and "sessions" in str(info.value)
    with pytest.raises(ValidationError) as info:
        KeysSettings.model_validate({"local": {"master_keys": {"default": SECRET}, "bogus": 1}})
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no master key"),
        ({"backend": "aws-kms", "aws_kms": {"region": "x"}}, "S3PROXY_KMS_KEY_ID"),
        ({"backend": "pkcs11"}, "S3PROXY_PKCS11_MODULE"),
        ({"backend": "vault"}, "backend"),
    ],
)
def test_selected_backend_must_be_configured(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KeysSettings.model_validate(data)


def test_default_key_id_may_come_from_top_level() -> None:
    s = KeysSettings.model_validate({"backend": "aws-kms", "default_key_id": "alias/a", "aws_kms": {}})
    assert s.default_key_id == "alias/a"


def test_pkcs11_mechanism_id_accepts_hex() -> None:
    s = Pkcs11Settings(module="m", token_label="t", kwp_mechanism_id="0x210B")  # type: ignore[arg-type]
    assert s.kwp_mechanism_id == 0x210B and s.mechanism == "aes-gcm" and s.oaep_hash == "sha256"


def test_rules_and_cache_settings() -> None:
    s = KeysSettings.model_validate(
        {
            "local": {"master_keys": {"default": SECRET}},
            "rules": [{"bucket": "b", "prefix": "x/", "key_id": "k1"}, {"bucket": "*", "key_id": "k2"}],
            "allowed_client_keys": ["k3"],
            "cache": {"encrypt_ttl_seconds": 60, "offline_grace_seconds": 600},
            "audit": {"target": "/var/log/s3proxy/keys.jsonl"},
        }
    )
    assert [r.key_id for r in s.rules] == ["k1", "k2"] and s.rules[1].prefix == ""
    assert s.cache.encrypt_ttl_seconds == 60 and s.cache.offline_grace_seconds == 600
    with pytest.raises(ValidationError):
        KeysSettings.model_validate({"local": {"master_keys": {"d": SECRET}}, "cache": {"decrypt_capacity": 0}})
