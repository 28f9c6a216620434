"""The shared test suite every key backend passes (subclass ``BackendConformance``).

A subclass provides three fixtures:

* ``key_backend``: a working backend (closed by the fixture);
* ``key_ids``: two usable key ids of that backend;
* ``unavailable_key_backend``: the same backend pointed at a service that is down.

and may widen ``tamper_errors`` / ``wrong_key_errors`` where a service
legitimately answers "access denied" instead of "invalid ciphertext".
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from typing import ClassVar

import pytest

from s3proxy.keys.base import (
    DEK_BYTES,
    InvalidWrappedKey,
    KeyBackend,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
)

CTX = {"bucket": "conformance-bucket", "tenant": "t1"}


def tampered_blobs(blob: bytes) -> list[tuple[str, bytes]]:
    """One flipped bit at every offset (low and high bit alternately), truncations, extensions."""
    out = []
    for i in range(len(blob)):
        b = bytearray(blob)
        b[i] ^= 0x01 if i % 2 == 0 else 0x80
        out.append((f"flip@{i}", bytes(b)))
    out.append(("truncated-1", blob[:-1]))
    out.append(("truncated-half", blob[: len(blob) // 2]))
    out.append(("extended", blob + b"\x00"))
    out.append(("swapped-halves", blob[len(blob) // 2 :] + blob[: len(blob) // 2]))
    return out


class BackendConformance:
    tamper_errors: ClassVar[tuple[type[KeyServiceError], ...]] = (InvalidWrappedKey,)
    wrong_key_errors: ClassVar[tuple[type[KeyServiceError], ...]] = (InvalidWrappedKey,)
    missing_key_id: ClassVar[str] = "no-such-key-s3proxy"

    # -- round trips ----------------------------------------------------------

    async def test_round_trip(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        assert isinstance(dk.plaintext, bytearray) and len(dk.plaintext) == DEK_BYTES
        w = dk.wrapped
        assert w.backend == key_backend.name and w.key_id and w.algorithm and w.blob
        assert bytes(dk.plaintext) not in w.blob
        dek = await key_backend.decrypt_data_key(w, CTX)
        assert isinstance(dek, bytearray) and dek == dk.plaintext
        # the context is compared as a mapping, not by insertion order
        assert await key_backend.decrypt_data_key(w, dict(reversed(list(CTX.items())))) == dk.plaintext
        assert "plaintext" not in repr(dk) and dk.plaintext.hex() not in repr(dk)

    async def test_fresh_key_each_time(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        a = await key_backend.generate_data_key(key_ids[0], CTX)
        b = await key_backend.generate_data_key(key_ids[0], CTX)
        assert a.plaintext != b.plaintext and a.wrapped.blob != b.wrapped.blob

    async def test_both_keys_work(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        for key_id in key_ids:
            dk = await key_backend.generate_data_key(key_id, CTX)
            assert await key_backend.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext

    async def test_wrap_existing_dek(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dek = bytearray(range(DEK_BYTES))
        w = await key_backend.wrap_data_key(key_ids[1], dek, CTX)
        assert await key_backend.decrypt_data_key(w, CTX) == dek

    async def test_empty_context(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], {"bucket": "b"})
        assert await key_backend.decrypt_data_key(dk.wrapped, {"bucket": "b"}) == dk.plaintext

    # -- failures -------------------------------------------------------------

    @pytest.mark.parametrize(
        "bad_context",
        [
            {"bucket": "other-bucket", "tenant": "t1"},
            {"bucket": "conformance-bucket"},
            {**CTX, "extra": "x"},
            {"bucket": "conformance-bucket", "tenant": "T1"},
            {},
        ],
        ids=["value", "missing", "extra", "case", "empty"],
    )
    async def test_wrong_context(
        self, key_backend: KeyBackend, key_ids: tuple[str, str], bad_context: dict[str, str]
    ) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        with pytest.raises(InvalidWrappedKey):
            await key_backend.decrypt_data_key(dk.wrapped, bad_context)

    async def test_wrong_key_id(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        swapped = dataclasses.replace(dk.wrapped, key_id=key_ids[1])
        with pytest.raises(self.wrong_key_errors):
            await key_backend.decrypt_data_key(swapped, CTX)

    async def test_unknown_key_id(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        with pytest.raises(KeyNotFound):
            await key_backend.generate_data_key(self.missing_key_id, CTX)
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        with pytest.raises((KeyNotFound, *self.wrong_key_errors)):
            await key_backend.decrypt_data_key(dataclasses.replace(dk.wrapped, key_id=self.missing_key_id), CTX)

    async def test_tampered_blob(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        for name, blob in tampered_blobs(dk.wrapped.blob):
            with pytest.raises(self.tamper_errors):
                await key_backend.decrypt_data_key(dataclasses.replace(dk.wrapped, blob=blob), CTX)
                pytest.fail(f"tampered blob ({name}) unwrapped")
        with pytest.raises(InvalidWrappedKey):
            await key_backend.decrypt_data_key(dataclasses.replace(dk.wrapped, blob=b""), CTX)

    async def test_wrong_algorithm_or_backend(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        with pytest.raises(InvalidWrappedKey):
            await key_backend.decrypt_data_key(dataclasses.replace(dk.wrapped, algorithm="ROT13"), CTX)
        with pytest.raises(InvalidWrappedKey):
            await key_backend.decrypt_data_key(dataclasses.replace(dk.wrapped, backend="elsewhere"), CTX)

    async def test_unavailable_service(
        self, key_backend: KeyBackend, unavailable_key_backend: KeyBackend, key_ids: tuple[str, str]
    ) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        with pytest.raises(KeyUnavailable) as info:
            await unavailable_key_backend.generate_data_key(key_ids[0], CTX)
        assert info.value.retryable and info.value.status == 503
        with pytest.raises(KeyUnavailable):
            await unavailable_key_backend.decrypt_data_key(dk.wrapped, CTX)
        with pytest.raises(KeyUnavailable):
            await unavailable_key_backend.check()

    async def test_check(self, key_backend: KeyBackend) -> None:
        await key_backend.check()

    # -- concurrency and re-wrap ----------------------------------------------

    async def test_concurrent_generate_and_decrypt(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        contexts = [{"bucket": f"b{i % 5}", "n": str(i)} for i in range(50)]
        keys = await asyncio.gather(
            *(key_backend.generate_data_key(key_ids[i % 2], c) for i, c in enumerate(contexts))
        )
        assert len({bytes(k.plaintext) for k in keys}) == 50
        deks = await asyncio.gather(
            *(key_backend.decrypt_data_key(k.wrapped, c) for k, c in zip(keys, contexts, strict=True))
        )
        assert [bytes(d) for d in deks] == [bytes(k.plaintext) for k in keys]

    async def test_rewrap(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        new_ctx = {"bucket": "moved-bucket"}
        w2 = await key_backend.rewrap(dk.wrapped, CTX, key_ids[1], new_ctx)
        assert isinstance(w2, WrappedKey) and w2.backend == key_backend.name
        assert w2.key_id != dk.wrapped.key_id
        assert await key_backend.decrypt_data_key(w2, new_ctx) == dk.plaintext
        with pytest.raises(InvalidWrappedKey):
            await key_backend.decrypt_data_key(w2, CTX)
        # and back, same context: the same DEK (the blob may be identical: KWP is deterministic)
        w3 = await key_backend.rewrap(w2, new_ctx, key_ids[0], CTX)
        assert await key_backend.decrypt_data_key(w3, CTX) == dk.plaintext
        # rewrap checks the source context too
        with pytest.raises(InvalidWrappedKey):
            await key_backend.rewrap(dk.wrapped, {"bucket": "wrong"}, key_ids[1], new_ctx)

    async def test_wrapped_key_is_metadata_sized(self, key_backend: KeyBackend, key_ids: tuple[str, str]) -> None:
        dk = await key_backend.generate_data_key(key_ids[0], CTX)
        # base64 of the blob plus ids must fit comfortably in S3's 2 KB user metadata
        assert len(base64.b64encode(dk.wrapped.blob)) + len(dk.wrapped.key_id) < 1024
