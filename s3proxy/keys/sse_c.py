"""SSE-C: the client supplies the key with every request; the proxy stores nothing.

The DEK is wrapped with AES-256-GCM under ``HKDF-SHA256(customer key, salt,
"s3proxy sse-c kek v1")`` with a fresh 16-byte salt and 12-byte nonce per wrap,
``AAD = wrap_aad("sse-c", key MD5, alg, context)``.  Blob:
``salt (16) || nonce (12) || ct (32) || tag (16)``.  The key id is the base64
MD5 of the customer key, the value S3 reports in
``x-amz-server-side-encryption-customer-key-MD5``.  A wrong key raises
InvalidWrappedKey (S3 answers 403 AccessDenied).  Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .base import DEK_BYTES, DataKey, InvalidWrappedKey, WrappedKey, check_context, wrap_aad

BACKEND = "sse-c"
ALGORITHM = "AES256-GCM-HKDF-SHA256"
CUSTOMER_KEY_BYTES = 32
SALT_BYTES = 16
NONCE_BYTES = 12
BLOB_BYTES = SALT_BYTES + NONCE_BYTES + DEK_BYTES + 16


def customer_key_md5(customer_key: bytes | bytearray) -> str:
    """base64(MD5(key)), as in ``x-amz-server-side-encryption-customer-key-MD5``."""
    return base64.b64encode(hashlib.md5(bytes(customer_key), usedforsecurity=False).digest()).decode()


def _kek(customer_key: bytes | bytearray, salt: bytes) -> AESGCM:
    if len(customer_key) != CUSTOMER_KEY_BYTES:
        raise ValueError(f"SSE-C keys are {CUSTOMER_KEY_BYTES} bytes (AES-256)")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"s3proxy sse-c kek v1").derive(
        bytes(customer_key)
    )
    return AESGCM(derived)


def sse_c_wrap(customer_key: bytes | bytearray, dek: bytes | bytearray, context: Mapping[str, str]) -> WrappedKey:
    if len(dek) != DEK_BYTES:
        raise ValueError(f"data keys are {DEK_BYTES} bytes")
    key_id = customer_key_md5(customer_key)
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    aad = wrap_aad(BACKEND, key_id, ALGORITHM, check_context(context))
    blob = salt + nonce + _kek(customer_key, salt).encrypt(nonce, bytes(dek), aad)
    return WrappedKey(backend=BACKEND, key_id=key_id, algorithm=ALGORITHM, blob=blob)


def sse_c_data_key(customer_key: bytes | bytearray, context: Mapping[str, str]) -> DataKey:
    dek = bytearray(os.urandom(DEK_BYTES))
    return DataKey(plaintext=dek, wrapped=sse_c_wrap(customer_key, dek, context))


def sse_c_unwrap(
    customer_key: bytes | bytearray, wrapped: WrappedKey, context: Mapping[str, str]
) -> bytearray:
    if wrapped.backend != BACKEND or wrapped.algorithm != ALGORITHM:
        raise InvalidWrappedKey("the object is not encrypted with a customer-provided key")
    if not hmac.compare_digest(customer_key_md5(customer_key), wrapped.key_id):
        raise InvalidWrappedKey("the SSE-C key does not match the key the object was written with")
    blob = wrapped.blob
    if len(blob) != BLOB_BYTES:
        raise InvalidWrappedKey("wrapped data key has the wrong length")
    salt = blob[:SALT_BYTES]
    nonce = blob[SALT_BYTES : SALT_BYTES + NONCE_BYTES]
    sealed = blob[SALT_BYTES + NONCE_BYTES :]
    aad = wrap_aad(BACKEND, wrapped.key_id, ALGORITHM, check_context(context))
    try:
        return bytearray(_kek(customer_key, salt).decrypt(nonce, sealed, aad))
    except InvalidTag:
        raise InvalidWrappedKey(
            "wrapped data key does not authenticate (tampered, wrong key or wrong context)"
        ) from None
