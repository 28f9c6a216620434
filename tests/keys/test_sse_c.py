"""SSE-C wrapping under a client-supplied key."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os

import pytest

from s3proxy.keys.base import InvalidWrappedKey, WrappedKey
from s3proxy.keys.sse_c import (
    ALGORITHM,
    BACKEND,
    BLOB_BYTES,
    customer_key_md5,
    sse_c_data_key,
    sse_c_unwrap,
    sse_c_wrap,
)

from .conformance import tampered_blobs

CUSTOMER_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CTX = {"bucket": "b"}


def test_round_trip_and_key_id() -> None:
    dek = os.urandom(32)
    w = sse_c_wrap(CUSTOMER_KEY, dek, CTX)
    assert (w.backend, w.algorithm, len(w.blob)) == (BACKEND, ALGORITHM, BLOB_BYTES)
    # the key id is what S3 reports in x-amz-server-side-encryption-customer-key-MD5
    assert w.key_id == base64.b64encode(hashlib.md5(CUSTOMER_KEY).digest()).decode() == customer_key_md5(CUSTOMER_KEY)
    assert sse_c_unwrap(CUSTOMER_KEY, w, CTX) == dek
    assert sse_c_wrap(CUSTOMER_KEY, dek, CTX).blob != w.blob  # fresh salt and nonce


def test_data_key() -> None:
    dk = sse_c_data_key(CUSTOMER_KEY, CTX)
    assert len(dk.plaintext) == 32 and sse_c_unwrap(CUSTOMER_KEY, dk.wrapped, CTX) == dk.plaintext


def test_wrong_key() -> None:
    w = sse_c_wrap(CUSTOMER_KEY, os.urandom(32), CTX)
    with pytest.raises(InvalidWrappedKey, match="does not match") as info:
        sse_c_unwrap(OTHER_KEY, w, CTX)
    assert info.value.status == 400  # the HTTP layer answers SSE-C key mismatches with 403 AccessDenied
    # even with a forged key id, the AEAD refuses
    forged = dataclasses.replace(w, key_id=customer_key_md5(OTHER_KEY))
    with pytest.raises(InvalidWrappedKey, match="authenticate"):
        sse_c_unwrap(OTHER_KEY, forged, CTX)


def test_wrong_context_and_tampering() -> None:
    w = sse_c_wrap(CUSTOMER_KEY, os.urandom(32), CTX)
    with pytest.raises(InvalidWrappedKey):
        sse_c_unwrap(CUSTOMER_KEY, w, {"bucket": "other"})
    for name, blob in tampered_blobs(w.blob):
        with pytest.raises(InvalidWrappedKey):
            sse_c_unwrap(CUSTOMER_KEY, dataclasses.replace(w, blob=blob), CTX)
            pytest.fail(name)
    with pytest.raises(InvalidWrappedKey):
        sse_c_unwrap(CUSTOMER_KEY, WrappedKey("local", w.key_id, w.algorithm, w.blob), CTX)


def test_key_sizes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        sse_c_wrap(b"short", os.urandom(32), CTX)
    with pytest.raises(ValueError):
        sse_c_wrap(CUSTOMER_KEY, os.urandom(16), CTX)
