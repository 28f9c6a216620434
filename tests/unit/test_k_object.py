"""The one K-object reader (crypto.format.KObjectDecryptor) as its shipped callers use it:
unknown part counts, manifest lists, DEK hygiene, and the async adapter in crypto.streams."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from s3proxy.crypto import format as fmt
from s3proxy.crypto import streams
from s3proxy.crypto.errors import ChunkAuthenticationFailed, ManifestMismatch, PartOrderError, TrailingData, Truncated
from s3proxy.crypto.format import KObjectDecryptor, KPartEncryptor, SDecryptor, SEncryptor

DEK = bytes(range(32))
OID = bytes(range(16))


def _k_object(parts: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for pn, pt in parts:
        enc = KPartEncryptor(DEK, OID, pn, len(pt))
        out += enc.header() + enc.update(pt) + enc.finalize()
    return bytes(out)


PARTS = [(1, b"a" * 5000), (3, b"b" * 50), (9, b"")]
BODY = _k_object(PARTS)
PT = b"".join(pt for _, pt in PARTS)


def _feed(dec: KObjectDecryptor, body: bytes, step: int = 997) -> bytes:
    out = bytearray()
    for i in range(0, len(body), step):
        out += dec.update(body[i : i + step])
    return bytes(out + dec.finalize())


def test_one_reader() -> None:
    assert streams.KObjectDecryptor is fmt.KObjectDecryptor


@pytest.mark.parametrize("n_parts", [3, None])
def test_known_and_unknown_part_counts(n_parts: int | None) -> None:
    assert _feed(KObjectDecryptor(DEK, OID, n_parts), BODY) == PT


def test_unknown_count_accepts_whole_parts_only() -> None:
    first = len(_k_object(PARTS[:1]))
    assert _feed(KObjectDecryptor(DEK, OID, None), BODY[:first]) == PARTS[0][1]
    assert _feed(KObjectDecryptor(DEK, OID, None), b"") == b""
    with pytest.raises(Truncated):
        _feed(KObjectDecryptor(DEK, OID, None), BODY[: first + 10])
    with pytest.raises(TrailingData):
        _feed(KObjectDecryptor(DEK, OID, 1), BODY[: first + 1])


def test_manifest_list_checked_part_by_part() -> None:
    listed = [(pn, len(pt)) for pn, pt in PARTS]
    assert _feed(KObjectDecryptor(DEK, OID, 3, listed), BODY) == PT
    for bad in ([(1, 5000), (2, 50), (9, 0)], [(1, 5000), (3, 51), (9, 0)]):
        with pytest.raises(ManifestMismatch):
            _feed(KObjectDecryptor(DEK, OID, 3, bad), BODY)
    with pytest.raises(ManifestMismatch):
        KObjectDecryptor(DEK, OID, 2, listed)
    with pytest.raises(ManifestMismatch):
        KObjectDecryptor(DEK, OID, None, listed)


def test_failure_latches_and_zeroes_the_dek_copy() -> None:
    caller_dek = bytearray(DEK)
    dec = KObjectDecryptor(caller_dek, OID, 3)
    bad = bytearray(BODY)
    bad[200] ^= 1
    with pytest.raises(ChunkAuthenticationFailed):
        dec.update(bad)
    assert dec._dek.value == bytes(32)  # its own copy is zeroed ...
    assert caller_dek == DEK  # ... the caller's buffer is the caller's to zero
    with pytest.raises(ChunkAuthenticationFailed):
        dec.update(b"")


def test_dek_copy_zeroed_after_the_last_part_and_on_close() -> None:
    dec = KObjectDecryptor(DEK, OID, 3)
    dec.update(BODY)
    assert dec._dek.value == bytes(32)
    dec = KObjectDecryptor(DEK, OID, None)
    dec.update(BODY[:100])
    dec.close()
    assert dec._dek.value == bytes(32)


def test_part_order_with_unknown_count() -> None:
    swapped = _k_object([(3, b"x"), (1, b"y")])
    with pytest.raises(PartOrderError):
        _feed(KObjectDecryptor(DEK, OID, None), swapped)


async def _pieces(body: bytes, step: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), step):
        yield body[i : i + step]


async def _collect(dec: streams.Decryptor, body: bytes) -> bytes:
    return b"".join([bytes(p) async for p in streams.decrypt_stream(dec, _pieces(body, 4096))])


def test_async_adapter_drives_both_layouts() -> None:
    enc = SEncryptor(DEK, OID)
    s_body = bytes(enc.update(b"hello") + enc.finalize())
    assert asyncio.run(_collect(SDecryptor(DEK, OID), s_body)) == b"hello"
    assert asyncio.run(_collect(KObjectDecryptor(DEK, OID, 3), BODY)) == PT
    with pytest.raises(Truncated):
        asyncio.run(_collect(KObjectDecryptor(DEK, OID, 3), BODY[:-1]))


def test_async_adapter_zeroes_an_abandoned_reader() -> None:
    dec = KObjectDecryptor(DEK, OID, 3)

    async def first_piece() -> None:
        gen = streams.decrypt_stream(dec, _pieces(BODY, 8192))
        await gen.__anext__()
        await gen.aclose()

    asyncio.run(first_piece())
    assert dec._dek.value == bytes(32)


# -- ranged reads through the async adapters (crypto.streams), no sockets ---------------------------


def _ranged(body: bytes, fetched: list[tuple[int, int]]) -> tuple[streams.Fetch, streams.Stream]:
    async def fetch(a: int, b: int) -> bytes:
        fetched.append((a, b))
        return body[a:b]

    async def stream(a: int, b: int) -> AsyncIterator[bytes]:
        fetched.append((a, b))
        for i in range(a, b, 3000):
            yield body[i : min(b, i + 3000)]

    return fetch, stream


async def _join(pieces: AsyncIterator[bytearray]) -> bytes:
    return b"".join([bytes(p) async for p in pieces])


def test_k_ranges_read_only_what_they_need() -> None:
    table = asyncio.run(streams.k_part_table(_ranged(BODY, [])[0], len(BODY), 3))
    for start, end in [(0, 1), (4999, 5001), (5000, 5050), (0, len(PT)), (17, 4000), (5049, 5050), (3, 3)]:
        fetched: list[tuple[int, int]] = []
        fetch, stream = _ranged(BODY, fetched)
        got = asyncio.run(_join(streams.decrypt_k_range(DEK, OID, table, start, end, fetch, stream)))
        assert got == PT[start:end], (start, end)
        assert sum(b - a for a, b in fetched) < len(BODY) or (start, end) == (0, len(PT))


def test_k_range_refuses_reordered_parts() -> None:
    body = _k_object([(4, b"x" * 100), (2, b"y" * 100)])
    fetch, stream = _ranged(body, [])
    table = [(0, 100 + 16454), (100 + 16454, 100 + 16454)]
    with pytest.raises(PartOrderError):
        asyncio.run(_join(streams.decrypt_k_range(DEK, OID, table, 50, 150, fetch, stream)))


def test_s_ranges() -> None:
    pt = os.urandom(40000)
    enc = SEncryptor(DEK, OID)
    body = bytes(enc.update(pt) + enc.finalize())
    for start, end in [(0, 1), (16383, 16385), (0, 40000), (39999, 40000), (20000, 20000)]:
        fetch, stream = _ranged(body, [])
        got = asyncio.run(_join(streams.decrypt_s_range(DEK, OID, body[:56], len(pt), start, end, stream)))
        assert got == pt[start:end]
    tampered = bytearray(body)
    tampered[56 + 16400 + 5] ^= 1
    fetch, stream = _ranged(bytes(tampered), [])
    with pytest.raises(ChunkAuthenticationFailed):
        asyncio.run(_join(streams.decrypt_s_range(DEK, OID, body[:56], len(pt), 16384, 16390, stream)))
