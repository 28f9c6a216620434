"""Part tables of K objects from their part headers (crypto.k_table, crypto.streams.k_part_table),
without sockets: a fetch over bytes in memory, attacked the way a storage-side attacker can."""

from __future__ import annotations

import asyncio
import os

import pytest

from s3proxy.crypto.errors import FormatError, InvalidCiphertextSize, PartOrderError
from s3proxy.crypto.format import KPartEncryptor
from s3proxy.crypto.k_table import HeaderWalk, table_from_sizes, uniform_guess
from s3proxy.crypto.sizes import K_HEADER_SIZE, K_PART_OVERHEAD
from s3proxy.crypto.streams import k_part_table

DEK = os.urandom(32)
OID = os.urandom(16)


def part(pn: int, p: int) -> bytes:
    enc = KPartEncryptor(DEK, OID, pn, p)
    return bytes(enc.header() + enc.update(bytes(p)) + enc.finalize())


def obj(parts: list[tuple[int, int]]) -> tuple[bytes, list[tuple[int, int]]]:
    blobs = [part(pn, p) for pn, p in parts]
    table, off = [], 0
    for b in blobs:
        table.append((off, len(b)))
        off += len(b)
    return b"".join(blobs), table


def table_of(body: bytes, n: int | None, seen: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    async def fetch(start: int, end: int) -> bytes:
        if seen is not None:
            seen.append((start, end))
        return body[start:end]

    return asyncio.run(k_part_table(fetch, len(body), n))


def test_uniform_parts_read_one_header_each() -> None:
    body, table = obj([(1, 3000), (2, 3000), (3, 10)])
    seen: list[tuple[int, int]] = []
    assert table_of(body, 3, seen) == table
    assert sorted(seen) == [(off, off + K_HEADER_SIZE) for off, _ in table]


@pytest.mark.parametrize("n", [3, None])
def test_uneven_parts_are_walked(n: int | None) -> None:
    body, table = obj([(1, 100), (5, 3000), (9, 50)])
    assert table_of(body, n) == table


def test_part_numbers_must_increase() -> None:
    for parts in ([(2, 100), (1, 100)], [(3, 100), (3, 100)], [(1, 10), (4, 300), (2, 5)]):
        body, _ = obj(parts)
        for n in (len(parts), None):
            with pytest.raises(PartOrderError):
                table_of(body, n)


def test_counts_and_sizes_must_add_up() -> None:
    body, _ = obj([(1, 100), (2, 100)])
    with pytest.raises(InvalidCiphertextSize):
        table_of(body, 3)  # fewer parts than the ETag says
    with pytest.raises(InvalidCiphertextSize):
        table_of(body, 1)  # more
    with pytest.raises(FormatError):
        table_of(body + b"x" * 10, 2)  # trailing bytes, not a header
    with pytest.raises(FormatError):
        table_of(body[:-1], None)
    for bad_n in (0, 10_001):
        with pytest.raises(InvalidCiphertextSize):
            table_of(body, bad_n)


def test_planted_headers_fail_closed() -> None:
    """A storage-side attacker rewrites a header's length: the table no longer adds up."""
    body, table = obj([(1, 100), (2, 100)])
    forged = bytearray(body)
    off = table[1][0]
    forged[off + 6 : off + 14] = (200).to_bytes(8, "big")  # plaintext_length of part 2
    with pytest.raises(FormatError):
        table_of(bytes(forged), 2)
    with pytest.raises(FormatError):
        table_of(os.urandom(2 * K_PART_OVERHEAD), None)


def test_helpers() -> None:
    assert uniform_guess(3 * K_PART_OVERHEAD, 3, K_PART_OVERHEAD) == [
        (0, K_PART_OVERHEAD), (K_PART_OVERHEAD, K_PART_OVERHEAD), (2 * K_PART_OVERHEAD, K_PART_OVERHEAD)]
    assert uniform_guess(3 * K_PART_OVERHEAD, None, K_PART_OVERHEAD) is None
    assert uniform_guess(K_PART_OVERHEAD + 5, 2, K_PART_OVERHEAD + 5) is None  # last part too short
    assert table_from_sizes([K_PART_OVERHEAD, K_PART_OVERHEAD + 1], 2 * K_PART_OVERHEAD + 1) == [
        (0, K_PART_OVERHEAD), (K_PART_OVERHEAD, K_PART_OVERHEAD + 1)]
    assert table_from_sizes([K_PART_OVERHEAD - 1, 2], K_PART_OVERHEAD + 1) is None
    assert table_from_sizes([K_PART_OVERHEAD], K_PART_OVERHEAD + 1) is None
    assert table_from_sizes(None, 0) is None
    walk = HeaderWalk(0, None)
    assert walk.next_offset is None and walk.table() == []
