"""Settings of the key package: one ``KeysSettings`` nested as ``keys:`` in the config.

Secrets (master keys, PINs, AWS secret keys) are ``SecretStr``.  Their *format*
(e.g. "base64 of 32 bytes") is checked when the backend is built, not here:
pydantic copies the raw input into ``ValidationError`` messages, and a
config error must never print a key.  For the same reason every model sets
``hide_input_in_errors``; the root config model should set it too, because
pydantic applies the outermost model's setting to nested errors.

Environment variables are mapped by :func:`keys_env_overrides`, which the
config loader deep-merges over the YAML ``keys:`` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

BackendName = Literal["local", "aws-kms", "pkcs11"]

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class LocalKeysSettings(BaseModel):
    """Master keys held by the proxy itself: ``{id: base64 of 32 bytes}``."""

    model_config = _MODEL_CONFIG

    master_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # JSON object {"id": "base64"} or lines "id=base64" ('#' comments allowed).
    master_key_file: Path | None = None
    # None: "default" if present, else the only key.
    default_key_id: str | None = None


class AwsKmsSettings(BaseModel):
    """AWS KMS (or a compatible endpoint: LocalStack, moto)."""

    model_config = _MODEL_CONFIG

    key_id: str | None = None  # key id, key ARN, alias name or alias ARN
    region: str | None = None
    endpoint_url: str | None = None
    # Credentials: all None means the default AWS chain (env, profile, IMDS, ...).
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    verify_tls: bool | str = True  # False, True, or a CA bundle path
    connect_timeout: float = Field(default=2.0, gt=0)
    read_timeout: float = Field(default=5.0, gt=0)
    max_pool_connections: int = Field(default=32, ge=1)
    # Retries on throttling / 5xx / connection errors: exponential backoff
    # with full jitter, bounded by attempts and by total time.
    max_attempts: int = Field(default=5, ge=1, le=50)
    retry_budget_seconds: float = Field(default=10.0, gt=0)
    backoff_base_seconds: float = Field(default=0.05, ge=0)
    backoff_max_seconds: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _static_credentials_complete(self) -> AwsKmsSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("aws_kms.access_key_id and aws_kms.secret_access_key go together")
        return self


class Pkcs11Settings(BaseModel):
    """A PKCS#11 token (HSM): SoftHSM2, CloudHSM, Luna, YubiHSM..."""

    model_config = _MODEL_CONFIG

    module: str  # path of the PKCS#11 shared library
    token_label: str
    pin: SecretStr | None = None  # None: no login (public objects only)
    key_label: str | None = None  # default key: label of the AES key or RSA key pair
    mechanism: Literal["aes-gcm", "aes-kwp", "rsa-oaep"] = "aes-gcm"
    # CKM_AES_KEY_WRAP_PAD: SoftHSM2 implements RFC 5649 under 0x210A,
    # PKCS#11 v3.1 names it CKM_AES_KEY_WRAP_KWP = 0x210B.
    kwp_mechanism_id: int = 0x210A
    oaep_hash: Literal["sha256", "sha1"] = "sha256"  # SoftHSM2 <= 2.6 decrypts only sha1
    # Only the public key is available: uploads can be encrypted, nothing decrypted.
    encrypt_only: bool = False
    random_source: Literal["os", "token"] = "os"  # DEKs and GCM IVs
    sessions: int = Field(default=4, ge=1, le=256)  # logged-in sessions = worker threads
    # python-pkcs11 calls C_Initialize(NULL): by the spec that promises no
    # concurrent calls, and SoftHSM2 then disables its locking.  Set true only
    # for modules that are thread-safe regardless (CloudHSM, Luna, ...).
    module_thread_safe: bool = False
    require_non_extractable: bool = True

    @field_validator("kwp_mechanism_id", mode="before")
    @classmethod
    def _hex_ok(cls, v: Any) -> Any:
        if isinstance(v, str):
            return int(v, 0)
        return v


class CacheSettings(BaseModel):
    """Data-key cache limits (see ``keys/cache.py``)."""

    model_config = _MODEL_CONFIG

    enabled: bool = True
    # Encrypt side: one DEK reused for many objects until any limit is hit.
    encrypt_ttl_seconds: float = Field(default=300.0, ge=0)
    encrypt_max_objects: int = Field(default=100_000, ge=1)
    encrypt_max_bytes: int = Field(default=1 << 40, ge=1)
    encrypt_capacity: int = Field(default=1_000, ge=1)
    # An upload of unknown size counts as this many bytes (S3's single-PUT maximum).
    unknown_object_bytes: int = Field(default=5 << 30, ge=0)
    # Decrypt side: wrapped DEK -> DEK.
    decrypt_ttl_seconds: float = Field(default=300.0, ge=0)
    decrypt_capacity: int = Field(default=10_000, ge=1)
    negative_ttl_seconds: float = Field(default=5.0, ge=0)
    # Keep serving cached DEKs this long past their TTL while the backend is unavailable.
    offline_grace_seconds: float = Field(default=0.0, ge=0)


class KeyRule(BaseModel):
    """Objects in ``bucket`` ("*" = any) under ``prefix`` are written under ``key_id``."""

    model_config = _MODEL_CONFIG

    bucket: str
    prefix: str = ""
    key_id: str


class AuditSettings(BaseModel):
    model_config = _MODEL_CONFIG

    # "stdout", "stderr", "off", or a file path (appended to).
    target: str = "stdout"


class KeysSettings(BaseModel):
    """The ``keys:`` section."""

    model_config = _MODEL_CONFIG

    backend: BackendName = "local"
    # Default key for writes; None: the selected backend's own default
    # (local.default_key_id, aws_kms.key_id, pkcs11.key_label).
    default_key_id: str | None = None
    local: LocalKeysSettings | None = None
    aws_kms: AwsKmsSettings | None = None
    pkcs11: Pkcs11Settings | None = None
    cache: CacheSettings = CacheSettings()  # frozen: sharing the default is safe
    rules: list[KeyRule] = Field(default_factory=list)
    # Keys clients may request with SSE-KMS headers, besides the key policy
    # would choose anyway.
    allowed_client_keys: list[str] = Field(default_factory=list)
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _selected_backend_configured(self) -> KeysSettings:
        if self.backend == "local" and (
            self.local is None or (not self.local.master_keys and self.local.master_key_file is None)
        ):
            raise ValueError(
                "keys.backend is 'local' but no master key is configured "
                "(keys.local.master_keys, keys.local.master_key_file or S3PROXY_MASTER_KEY)"
            )
        if self.backend == "aws-kms" and (
            self.aws_kms is None or (self.aws_kms.key_id is None and self.default_key_id is None)
        ):
            raise ValueError(
                "keys.backend is 'aws-kms' but no key is configured (keys.aws_kms.key_id or S3PROXY_KMS_KEY_ID)"
            )
        if self.backend == "pkcs11" and (
            self.pkcs11 is None or (self.pkcs11.key_label is None and self.default_key_id is None)
        ):
            raise ValueError(
                "keys.backend is 'pkcs11' but no token/key is configured (keys.pkcs11.module, "
                "token_label, key_label or S3PROXY_PKCS11_MODULE/_TOKEN_LABEL/_KEY_LABEL)"
            )
        return self

    def configured_backends(self) -> list[str]:
        """The selected backend first, then every other backend with a section (readable for rotation)."""
        names: list[str] = [self.backend]
        for name, section in (("local", self.local), ("aws-kms", self.aws_kms), ("pkcs11", self.pkcs11)):
            if section is not None and name != self.backend:
                names.append(name)
        return names


def keys_env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Map the S3PROXY_* key variables onto the nested ``keys:`` dict (empty values are ignored)."""

    def get(name: str) -> str | None:
        value = environ.get(name)
        return value if value else None

    out: dict[str, Any] = {}

    def put(section: str, field: str, value: str | None) -> None:
        if value is not None:
            out.setdefault(section, {})[field] = value

    if (backend := get("S3PROXY_KEY_BACKEND")) is not None:
        out["backend"] = backend
    master_key = get("S3PROXY_MASTER_KEY")
    master_key_id = get("S3PROXY_MASTER_KEY_ID")
    if master_key is not None:
        key_id = master_key_id or "default"
        out.setdefault("local", {})["master_keys"] = {key_id: master_key}
        out["local"]["default_key_id"] = key_id
    elif master_key_id is not None:
        put("local", "default_key_id", master_key_id)
    put("aws_kms", "key_id", get("S3PROXY_KMS_KEY_ID"))
    put("aws_kms", "endpoint_url", get("S3PROXY_KMS_ENDPOINT_URL"))
    put("aws_kms", "region", get("S3PROXY_KMS_REGION"))
    put("pkcs11", "module", get("S3PROXY_PKCS11_MODULE"))
    put("pkcs11", "token_label", get("S3PROXY_PKCS11_TOKEN_LABEL"))
    put("pkcs11", "pin", get("S3PROXY_PKCS11_PIN"))
    put("pkcs11", "key_label", get("S3PROXY_PKCS11_KEY_LABEL"))
    return out
