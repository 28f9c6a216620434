"""Key management: data keys (DEKs) for envelope encryption.

Where it sits in a request: a handler about to encrypt an upload calls
``KeyManager.data_key_for_write`` and gets a ``DataKey`` (plaintext DEK plus
its ``WrappedKey``, stored in the object's metadata); a handler about to
decrypt calls ``KeyManager.data_key_for_read`` with the stored ``WrappedKey``
and the encryption context.  The crypto layer derives per-object keys from
the DEK; key-encryption keys never leave their backend.

Primitives:

- ``base``: ``WrappedKey`` (never secret), ``DataKey``, the ``KeyBackend``
  interface and the ``KeyServiceError`` hierarchy (each error carries its S3
  code and status).
- backends, one module each, found by name through ``registry``:
  ``local`` (master keys held by the proxy), ``aws-kms`` (aiobotocore),
  ``pkcs11`` (HSMs via python-pkcs11; AES-GCM, AES-KWP, RSA-OAEP).
- ``cache.DataKeyCache``: encrypt-side DEK reuse, decrypt-side LRU, negative
  cache, offline grace, single-flight; plaintext zeroed on eviction.
- ``policy.KeyPolicy``: default key, per bucket/prefix rules, which keys
  clients may request with SSE-KMS headers.
- ``sse_c``: wrapping under a client-supplied key (SSE-C).
- ``audit.AuditLog``: one JSON line per key use and per key-service call.
- ``manager.KeyManager``: the facade over all of the above;
  ``registry.build_key_manager(settings)`` builds it from ``settings.KeysSettings``.

Imports: ``cryptography``, the key services' SDKs (``aiobotocore``, ``python-pkcs11``) and
``s3proxy.observability``; never the HTTP layer, the backend client or ``crypto``.
"""

from .audit import AuditInfo, AuditLog
from .base import (
    DEK_BYTES,
    DataKey,
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyBackend,
    KeyConfigError,
    KeyDisabled,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
)
from .cache import DataKeyCache
from .manager import KeyManager
from .policy import KeyPolicy
from .registry import BACKENDS, BackendUnavailableError, backend_class, build_key_manager
from .settings import KeysSettings, keys_env_overrides

__all__ = [
    "BACKENDS",
    "DEK_BYTES",
    "AuditInfo",
    "AuditLog",
    "BackendUnavailableError",
    "DataKey",
    "DataKeyCache",
    "InvalidWrappedKey",
    "KeyAccessDenied",
    "KeyBackend",
    "KeyConfigError",
    "KeyDisabled",
    "KeyManager",
    "KeyNotFound",
    "KeyPolicy",
    "KeyServiceError",
    "KeyUnavailable",
    "KeysSettings",
    "WrappedKey",
    "backend_class",
    "build_key_manager",
    "keys_env_overrides",
]
