"""Body encryption (docs/FORMAT.md 2): round trips, streaming, every tamper, truncation and splice."""

from __future__ import annotations

import array
import os
import random
from collections.abc import Sequence
from typing import Protocol

import pytest
from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
from cryptography.exceptions import AlreadyFinalized
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto.errors import (
    ChunkAuthenticationFailed,
    CommitmentMismatch,
    FormatError,
    InvalidCiphertextSize,
    InvalidHeader,
    PartOrderError,
    TrailingData,
    Truncated,
    UnsupportedFormatVersion,
)
from s3proxy.crypto.format import (
    KObjectDecryptor,
    KPartDecryptor,
    KPartEncryptor,
    PartNumberSequence,
    SDecryptor,
    SEncryptor,
    SRangeDecryptor,
    parse_k_header,
    s_context,
)
from s3proxy.crypto.sizes import (
    CHUNK_SIZE,
    K_HEADER_SIZE,
    S_FULL_CHUNK_CT,
    S_HEADER_SIZE,
    TAG_SIZE,
    k_chunk_ct_offset,
    k_chunk_size,
    k_part_ciphertext_size,
    k_span,
    s_ciphertext_size,
    s_span,
)

DEK = bytes(range(100, 132))
OTHER_DEK = bytes(range(200, 232))
OID = bytes.fromhex("0f" * 16)
OTHER_OID = bytes.fromhex("f0" * 16)

class Feeder(Protocol):
    def update(self, data: bytes, /) -> bytes | bytearray: ...
    def finalize(self) -> bytes | bytearray: ...


def pattern(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def feed(obj: Feeder, data: bytes, cuts: Sequence[int] = ()) -> bytearray:
    """Feed ``data`` cut at ``cuts`` (sorted, any values) and finalize."""
    out = bytearray()
    prev = 0
    for c in [*sorted(min(max(c, 0), len(data)) for c in cuts), len(data)]:
        out += obj.update(data[prev:c])
        prev = c
    out += obj.finalize()
    return out


def s_encrypt(pt: bytes, dek: bytes = DEK, oid: bytes = OID) -> bytes:
    return bytes(feed(SEncryptor(dek, oid), pt))


def s_decrypt(ct: bytes, dek: bytes = DEK, oid: bytes = OID, expected: int | None = None) -> bytes:
    return bytes(feed(SDecryptor(dek, oid, expected), ct))


def s_range(ct: bytes, p: int, a: int, b: int, dek: bytes = DEK, oid: bytes = OID) -> bytes:
    span = s_span(p, a, b)
    dec = SRangeDecryptor(dek, oid, ct[:S_HEADER_SIZE], p, span)
    return bytes(feed(dec, ct[span.ct_start : span.ct_end]))


def k_encrypt(pt: bytes, part_number: int = 1, dek: bytes = DEK, oid: bytes = OID) -> bytes:
    return bytes(feed(KPartEncryptor(dek, oid, part_number, len(pt)), pt))


def k_decrypt(part: bytes, dek: bytes = DEK, oid: bytes = OID, c_part: int | None = None) -> bytes:
    dec = KPartDecryptor(dek, oid, part[:K_HEADER_SIZE], len(part) if c_part is None else c_part)
    return bytes(feed(dec, part[K_HEADER_SIZE:]))


def flip(data: bytes, i: int, mask: int = 1) -> bytes:
    b = bytearray(data)
    b[i] ^= mask
    return bytes(b)


S_SIZES = [0, 1, 15, 16, 17, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 40000]
K_SIZES = [0, 1, 2, 1023, 1024, 1025, 2047, 2048, 2049, 5000, 100_003]
cuts_st = st.lists(st.integers(0, 200_000), max_size=6)


# -- S layout: round trips ------------------------------------------------------------


@pytest.mark.parametrize("p", S_SIZES)
def test_s_round_trip_and_library_interop(p: int) -> None:
    pt = pattern(p, p)
    ct = s_encrypt(pt)
    assert len(ct) == s_ciphertext_size(p)
    assert s_decrypt(ct, expected=len(ct)) == pt
    lib = Cobblestone256Decryptor(DEK, s_context(OID))
    assert lib.update(ct) + lib.finalize() == pt
    # and the other way: the library encryptor's output decrypts with ours
    enc = Cobblestone256Encryptor(DEK, s_context(OID))
    lct = enc.update(pt) + enc.finalize()
    assert s_decrypt(lct) == pt
    assert s_range(lct, p, 0, p) == pt


@pytest.mark.parametrize("p", S_SIZES)
def test_s_seeded_encryptor_matches_library(p: int) -> None:
    """The test-vector encryptor produces what the library accepts, byte-compatible."""
    pt = pattern(p, 1)
    enc = SEncryptor._with_salt(DEK, OID, bytes(24))
    ct = bytes(feed(enc, pt, [3, 16384, 20000]))
    lib = Cobblestone256Decryptor(DEK, s_context(OID))
    assert lib.update(ct) + lib.finalize() == pt
    assert ct[:24] == bytes(24)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3 * CHUNK_SIZE + 100), cuts_st, cuts_st, st.data())
def test_s_round_trip_random_splits(p: int, enc_cuts: list[int], dec_cuts: list[int], data: st.DataObject) -> None:
    pt = pattern(p, p)
    ct = bytes(feed(SEncryptor(DEK, OID, p), pt, enc_cuts))
    assert len(ct) == s_ciphertext_size(p)
    assert bytes(feed(SDecryptor(DEK, OID, len(ct)), ct, dec_cuts)) == pt
    for _ in range(3):
        a = data.draw(st.integers(0, p))
        b = data.draw(st.one_of(st.integers(a, p), st.just(p)))
        span = s_span(p, a, b)
        dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
        assert bytes(feed(dec, ct[span.ct_start : span.ct_end], dec_cuts)) == pt[a:b]


def test_s_big_object_ranges() -> None:
    p = 3 * (1 << 20) + 12345
    pt = pattern(p, 7)
    ct = bytes(feed(SEncryptor(DEK, OID, p), pt, range(0, p, 65536)))
    assert s_decrypt(ct, expected=len(ct)) == pt
    for a, b in [(0, 1), (p - 1, p), (CHUNK_SIZE - 1, CHUNK_SIZE + 1), (1 << 20, 2 << 20), (0, p)]:
        assert s_range(ct, p, a, b) == pt[a:b]


def test_s_encryptions_use_fresh_salts() -> None:
    a, b = s_encrypt(b"same"), s_encrypt(b"same")
    assert a[:24] != b[:24]
    assert a[24:56] != b[24:56]
    assert a[56:] != b[56:]


def test_s_accepts_any_buffer() -> None:
    pt = pattern(5000)
    words = array.array("I", pt[:4000])
    enc = SEncryptor(DEK, OID)
    ct = bytes(enc.update(memoryview(words)) + enc.update(bytearray(pt[4000:])) + enc.finalize())
    assert s_decrypt(ct) == pt


# -- S layout: streaming releases whole chunks, nothing unauthenticated ----------------


def test_s_decryptor_releases_each_chunk_once_complete() -> None:
    pt = pattern(2 * CHUNK_SIZE + 10)
    ct = s_encrypt(pt)
    dec = SDecryptor(DEK, OID)
    assert dec.update(ct[:S_HEADER_SIZE]) == b""
    first_end = S_HEADER_SIZE + S_FULL_CHUNK_CT
    assert dec.update(ct[S_HEADER_SIZE : first_end - 1]) == b""  # tag not complete yet
    assert dec.update(ct[first_end - 1 : first_end]) == pt[:CHUNK_SIZE]
    assert dec.update(ct[first_end:]) == pt[CHUNK_SIZE : 2 * CHUNK_SIZE]
    assert dec.finalize() == pt[2 * CHUNK_SIZE :]


def test_finalize_without_update() -> None:
    for enc in (SEncryptor(DEK, OID), SEncryptor._with_salt(DEK, OID, bytes(24))):
        ct = bytes(enc.finalize())
        assert len(ct) == s_ciphertext_size(0)
        assert s_decrypt(ct) == b""
    kenc = KPartEncryptor(DEK, OID, 9, 0)
    assert k_decrypt(bytes(kenc.finalize())) == b""


def test_s_encryptor_emits_header_and_full_chunks_early() -> None:
    enc = SEncryptor(DEK, OID)
    assert len(enc.update(b"")) == S_HEADER_SIZE
    assert len(enc.update(bytes(CHUNK_SIZE - 1))) == 0
    assert len(enc.update(bytes(1))) == S_FULL_CHUNK_CT
    assert len(enc.finalize()) == TAG_SIZE


def test_s_range_decryptor_releases_chunks_early() -> None:
    p = 3 * CHUNK_SIZE
    pt = pattern(p)
    ct = s_encrypt(pt)
    span = s_span(p, 100, p - 100)
    dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
    body = ct[span.ct_start : span.ct_end]
    assert dec.update(body[: S_FULL_CHUNK_CT - 1]) == b""
    assert dec.update(body[S_FULL_CHUNK_CT - 1 : S_FULL_CHUNK_CT]) == pt[100:CHUNK_SIZE]


# -- S layout: tampering -------------------------------------------------------------


S_TAMPER_P = 2 * CHUNK_SIZE + 1000


@pytest.fixture(scope="module")
def s_sample() -> tuple[bytes, bytes]:
    pt = pattern(S_TAMPER_P, 3)
    return pt, s_encrypt(pt)


Expected = type[FormatError] | tuple[type[FormatError], ...]


def tamper_offsets(length: int, boundaries: Sequence[int]) -> list[int]:
    offs = set(range(0, length, 257))
    for b in boundaries:
        offs.update(x for x in (b - 17, b - 16, b - 15, b - 1, b, b + 1) if 0 <= x < length)
    return sorted(offs)


def expect_s_failure(ct: bytes, pt: bytes, exc: Expected) -> None:
    """Whole-body decryption fails, releasing at most a prefix of whole, valid chunks."""
    dec = SDecryptor(DEK, OID)
    got = bytearray()
    with pytest.raises(exc):
        for i in range(0, len(ct), 5000):
            got += dec.update(ct[i : i + 5000])
        got += dec.finalize()
    assert pt.startswith(bytes(got))
    assert len(got) % CHUNK_SIZE == 0
    with pytest.raises(exc):  # keeps failing
        dec.update(b"")
    with pytest.raises(exc):
        dec.finalize()


def test_s_tamper_every_region(s_sample: tuple[bytes, bytes]) -> None:
    pt, ct = s_sample
    p = len(pt)
    boundaries = [24, 56] + [56 + k * S_FULL_CHUNK_CT for k in range(1, 3)] + [len(ct)]
    for i in tamper_offsets(len(ct), boundaries):
        bad = flip(ct, i)
        if i < S_HEADER_SIZE:  # salt or commitment: rejected before any chunk
            expect_s_failure(bad, pt, CommitmentMismatch)
            with pytest.raises(CommitmentMismatch):
                SRangeDecryptor(DEK, OID, bad[:S_HEADER_SIZE], p, s_span(p, 0, p))
            continue
        expect_s_failure(bad, pt, ChunkAuthenticationFailed)
        k = (i - S_HEADER_SIZE) // S_FULL_CHUNK_CT
        lo, hi = k * CHUNK_SIZE, min((k + 1) * CHUNK_SIZE, p)
        with pytest.raises(ChunkAuthenticationFailed):  # a range over the chunk fails
            s_range(bad, p, lo, hi)
        if k > 0:  # a range before the chunk still reads
            assert s_range(bad, p, 0, lo) == pt[:lo]


@pytest.mark.parametrize(
    "cut",
    [0, 1, 23, 24, 55, 56, 57, 56 + 15, 56 + 16, 56 + S_FULL_CHUNK_CT - 1, 56 + S_FULL_CHUNK_CT,
     56 + S_FULL_CHUNK_CT + 1, 56 + 2 * S_FULL_CHUNK_CT, 56 + 2 * S_FULL_CHUNK_CT + 15, -16, -15, -1],
)
def test_s_truncation(s_sample: tuple[bytes, bytes], cut: int) -> None:
    pt, ct = s_sample
    short = ct[:cut]
    expect_s_failure(short, pt, (Truncated, ChunkAuthenticationFailed))
    expect = SDecryptor(DEK, OID, len(ct))
    with pytest.raises(Truncated):
        expect.update(short)
        expect.finalize()


def test_s_truncation_to_chunk_boundary_is_truncated(s_sample: tuple[bytes, bytes]) -> None:
    pt, ct = s_sample
    expect_s_failure(ct[: 56 + S_FULL_CHUNK_CT], pt, Truncated)  # final chunk missing


@pytest.mark.parametrize("extra", [b"\x00", bytes(15), bytes(16), bytes(S_FULL_CHUNK_CT)])
def test_s_extension(s_sample: tuple[bytes, bytes], extra: bytes) -> None:
    pt, ct = s_sample
    expect_s_failure(ct + extra, pt, (ChunkAuthenticationFailed, Truncated))
    dec = SDecryptor(DEK, OID, len(ct))
    with pytest.raises(TrailingData):
        dec.update(ct + extra)
    with pytest.raises(TrailingData):  # keeps failing
        dec.finalize()


def test_s_extension_with_a_valid_chunk_of_the_same_key(s_sample: tuple[bytes, bytes]) -> None:
    """Appending the empty final chunk of another body (same DEK and object id) fails."""
    pt, ct = s_sample
    other = s_encrypt(b"")
    expect_s_failure(ct + other[S_HEADER_SIZE:], pt, ChunkAuthenticationFailed)


def test_s_chunk_reordering_and_duplication(s_sample: tuple[bytes, bytes]) -> None:
    pt, ct = s_sample
    h, c = S_HEADER_SIZE, S_FULL_CHUNK_CT
    c0, c1, rest = ct[h : h + c], ct[h + c : h + 2 * c], ct[h + 2 * c :]
    expect_s_failure(ct[:h] + c1 + c0 + rest, pt, ChunkAuthenticationFailed)
    expect_s_failure(ct[:h] + c0 + c0 + rest, pt, ChunkAuthenticationFailed)
    expect_s_failure(ct[:h] + c0 + rest, pt, ChunkAuthenticationFailed)  # dropped chunk


def test_s_splicing_between_objects(s_sample: tuple[bytes, bytes]) -> None:
    pt, ct = s_sample
    # the whole body under another object's id (same DEK): commitment fails
    with pytest.raises(CommitmentMismatch):
        s_decrypt(ct, oid=OTHER_OID)
    with pytest.raises(CommitmentMismatch):
        s_range(ct, len(pt), 0, 10, oid=OTHER_OID)
    # a chunk from another body of the same object id and DEK (other salt)
    other = s_encrypt(pattern(len(pt), 9))
    h, c = S_HEADER_SIZE, S_FULL_CHUNK_CT
    spliced = ct[: h + c] + other[h + c : h + 2 * c] + ct[h + 2 * c :]
    expect_s_failure(spliced, pt, ChunkAuthenticationFailed)


def test_s_wrong_dek(s_sample: tuple[bytes, bytes]) -> None:
    pt, ct = s_sample
    with pytest.raises(CommitmentMismatch):
        s_decrypt(ct, dek=OTHER_DEK)
    with pytest.raises(CommitmentMismatch):
        s_range(ct, len(pt), 5, 6, dek=OTHER_DEK)


def test_s_range_length_mismatch(s_sample: tuple[bytes, bytes]) -> None:
    pt, ct = s_sample
    p = len(pt)
    # a range that reaches the end authenticates p: a wrong size fails
    with pytest.raises(ChunkAuthenticationFailed):
        s_range(ct[:-1], p - 1, 0, p - 1)
    with pytest.raises(ChunkAuthenticationFailed):
        s_range(ct + b"\x00", p + 1, p - 5, p + 1)
    span = s_span(p, 0, 100)
    dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
    with pytest.raises(TrailingData):
        dec.update(ct[span.ct_start : span.ct_end + 1])
    dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
    dec.update(ct[span.ct_start : span.ct_end - 1])
    with pytest.raises(Truncated):
        dec.finalize()
    with pytest.raises(Truncated):
        SRangeDecryptor(DEK, OID, ct[:40], p, span)


def test_spans_for_another_size_are_rejected(s_sample: tuple[bytes, bytes], k_sample: tuple[bytes, bytes]) -> None:
    _, ct = s_sample
    _, part = k_sample
    with pytest.raises(ValueError):
        SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], S_TAMPER_P, s_span(S_TAMPER_P + 1, 0, S_TAMPER_P + 1))
    with pytest.raises(ValueError):
        SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], 10, s_span(S_TAMPER_P, 0, 20))
    with pytest.raises(ValueError):
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part), k_span(2 * K_TAMPER_P, 0, 10))
    with pytest.raises(ValueError):  # a span must come with a part size that matches
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], None, k_span(2 * K_TAMPER_P, 5, 6))


def test_s_decryptor_rejects_impossible_declared_size() -> None:
    with pytest.raises(InvalidCiphertextSize):
        SDecryptor(DEK, OID, 56 + S_FULL_CHUNK_CT)


def test_s_encryptor_declared_size() -> None:
    enc = SEncryptor(DEK, OID, 10)
    enc.update(bytes(10))
    with pytest.raises(TrailingData):
        enc.update(b"x")
    enc = SEncryptor(DEK, OID, 10)
    enc.update(bytes(9))
    with pytest.raises(Truncated):
        enc.finalize()
    with pytest.raises(Truncated):
        enc.update(b"")


# -- K layout: round trips --------------------------------------------------------------


@pytest.mark.parametrize("p", K_SIZES)
def test_k_round_trip(p: int) -> None:
    pt = pattern(p, p)
    part = k_encrypt(pt, part_number=3)
    assert len(part) == k_part_ciphertext_size(p)
    hdr = parse_k_header(part[:K_HEADER_SIZE])
    assert (hdr.version, hdr.part_number, hdr.plaintext_length) == (1, 3, p)
    assert hdr.part_size == len(part)
    assert hdr.encode() == part[:K_HEADER_SIZE]
    dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part), expected_part_number=3)
    assert dec.part_number == 3
    assert dec.plaintext_size == p
    assert bytes(feed(dec, part[K_HEADER_SIZE:])) == pt
    # the header alone says how long the part is
    dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE])
    assert bytes(feed(dec, part[K_HEADER_SIZE:], [7, 100])) == pt


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(st.sampled_from(K_SIZES), st.integers(0, 70_000)),
    st.integers(1, 10_000),
    cuts_st,
    cuts_st,
    st.booleans(),
    st.data(),
)
def test_k_round_trip_random_splits(
    p: int, part_number: int, enc_cuts: list[int], dec_cuts: list[int], call_header: bool, data: st.DataObject
) -> None:
    pt = pattern(p, p)
    enc = KPartEncryptor(DEK, OID, part_number, p)
    head = enc.header() if call_header else b""
    part = head + bytes(feed(enc, pt, enc_cuts))
    assert len(part) == k_part_ciphertext_size(p)
    dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part))
    assert bytes(feed(dec, part[K_HEADER_SIZE:], dec_cuts)) == pt
    for _ in range(3):
        a = data.draw(st.integers(0, p))
        b = data.draw(st.one_of(st.integers(a, p), st.just(a)))
        span = k_span(p, a, b)
        dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part), span)
        assert bytes(feed(dec, part[span.ct_start : span.ct_end], dec_cuts)) == pt[a:b]


def test_k_big_part() -> None:
    p = 5 * (1 << 20) + 3  # 5 KiB + 1 byte chunks, uneven tail
    pt = pattern(p, 5)
    part = bytes(feed(KPartEncryptor(DEK, OID, 2, p), pt, range(0, p, 65536)))
    assert k_decrypt(part) == pt
    for a, b in [(0, 1), (p - 1, p), (5121, 5122 * 3), (1 << 20, 3 << 20)]:
        span = k_span(p, a, b)
        dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part), span)
        assert bytes(feed(dec, part[span.ct_start : span.ct_end], range(0, p, 9999))) == pt[a:b]


def test_k_streaming_emits_chunks_early() -> None:
    p = 10 * 1024  # 10-byte chunks
    pt = pattern(p)
    enc = KPartEncryptor(DEK, OID, 1, p)
    assert len(enc.update(pt[:9])) == K_HEADER_SIZE  # header only, chunk 0 incomplete
    assert len(enc.update(pt[9:10])) == 10 + TAG_SIZE
    part = bytes(feed(KPartEncryptor._with_salt(DEK, OID, 1, p, bytes(24)), pt))
    dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part))
    body = part[K_HEADER_SIZE:]
    assert dec.update(body[:25]) == b""
    assert dec.update(body[25:26]) == pt[:10]


def test_k_header_method_is_not_repeated() -> None:
    enc = KPartEncryptor(DEK, OID, 1, 5)
    head = enc.header()
    assert len(head) == K_HEADER_SIZE
    rest = bytes(enc.update(b"12345") + enc.finalize())
    assert len(head + rest) == k_part_ciphertext_size(5)
    assert k_decrypt(head + rest) == b"12345"


def test_k_encryptions_use_fresh_salts() -> None:
    a, b = k_encrypt(b"same"), k_encrypt(b"same")
    assert a[14:38] != b[14:38]


def test_k_encryptor_declared_size() -> None:
    enc = KPartEncryptor(DEK, OID, 1, 10)
    with pytest.raises(TrailingData):
        enc.update(bytes(11))
    with pytest.raises(TrailingData):
        enc.finalize()
    enc = KPartEncryptor(DEK, OID, 1, 10)
    enc.update(bytes(4))
    with pytest.raises(Truncated):
        enc.finalize()


@pytest.mark.parametrize("n", [0, 10_001, -1])
def test_k_part_number_range(n: int) -> None:
    with pytest.raises(ValueError):
        KPartEncryptor(DEK, OID, n, 1)


# -- K layout: tampering -----------------------------------------------------------------


K_TAMPER_P = 3000  # 3-byte chunks, 1000 non-empty, 24 empty


@pytest.fixture(scope="module")
def k_sample() -> tuple[bytes, bytes]:
    pt = pattern(K_TAMPER_P, 4)
    return pt, k_encrypt(pt, part_number=5)


def test_k_tamper_header_fields(k_sample: tuple[bytes, bytes]) -> None:
    pt, part = k_sample
    head, c = part[:K_HEADER_SIZE], len(part)
    with pytest.raises(UnsupportedFormatVersion):
        KPartDecryptor(DEK, OID, flip(head, 0, 0x03), c)
    with pytest.raises(InvalidHeader):
        KPartDecryptor(DEK, OID, flip(head, 1), c)
    for n in (4, 6, 5 + 256, 10_000):  # another valid part number changes the key
        bad = head[:2] + n.to_bytes(4, "big") + head[6:]
        with pytest.raises(CommitmentMismatch):
            KPartDecryptor(DEK, OID, bad, c)
    for n in (0, 10_001, 0xFFFFFFFF):  # out of range
        bad = head[:2] + n.to_bytes(4, "big") + head[6:]
        with pytest.raises(InvalidHeader):
            KPartDecryptor(DEK, OID, bad, c)
    for i in range(6, K_HEADER_SIZE):  # plaintext length, salt and commitment
        with pytest.raises(CommitmentMismatch):
            KPartDecryptor(DEK, OID, flip(head, i), c)
        with pytest.raises(CommitmentMismatch):
            KPartDecryptor(DEK, OID, flip(head, i))
    with pytest.raises(Truncated):
        KPartDecryptor(DEK, OID, head[:-1], c)


def expect_k_failure(part: bytes, pt: bytes, exc: Expected, c_part: int | None) -> None:
    dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], c_part)
    got = bytearray()
    with pytest.raises(exc):
        for i in range(K_HEADER_SIZE, len(part), 700):
            got += dec.update(part[i : i + 700])
        got += dec.finalize()
    assert pt.startswith(bytes(got))
    with pytest.raises(exc):
        dec.update(b"")


def test_k_tamper_every_chunk_byte_region(k_sample: tuple[bytes, bytes]) -> None:
    pt, part = k_sample
    p = len(pt)
    cs = k_chunk_size(p)
    starts = [k_chunk_ct_offset(p, cs, k) for k in (0, 1, 500, 999, 1000, 1023)]
    for i in tamper_offsets(len(part), starts):
        if i < K_HEADER_SIZE:
            continue
        expect_k_failure(flip(part, i), pt, ChunkAuthenticationFailed, len(part))


def test_k_chunk_reordering(k_sample: tuple[bytes, bytes]) -> None:
    pt, part = k_sample
    p, cs = len(pt), k_chunk_size(len(pt))
    o = [k_chunk_ct_offset(p, cs, k) for k in range(4)]
    swapped = part[: o[0]] + part[o[1] : o[2]] + part[o[0] : o[1]] + part[o[2] :]
    expect_k_failure(swapped, pt, ChunkAuthenticationFailed, len(part))
    # empty trailing chunks are all tags: swapping two of them fails too
    e = [k_chunk_ct_offset(p, cs, k) for k in (1022, 1023)]
    swapped = part[: e[0]] + part[e[1] :] + part[e[0] : e[1]]
    expect_k_failure(swapped, pt, ChunkAuthenticationFailed, len(part))


@pytest.mark.parametrize("delta", [-1, -16, -17, 1, 16, 3])
def test_k_truncation_and_extension(k_sample: tuple[bytes, bytes], delta: int) -> None:
    pt, part = k_sample
    changed = part[:delta] if delta < 0 else part + bytes(delta)
    # the backend's part length must agree with the authenticated header
    with pytest.raises(Truncated if delta < 0 else TrailingData):
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(changed))
    # streaming against the header's length: short -> Truncated, long -> TrailingData
    if delta < 0:
        expect_k_failure(changed, pt, Truncated, len(part))
        expect_k_failure(changed, pt, Truncated, None)
    else:
        expect_k_failure(changed, pt, TrailingData, len(part))
        expect_k_failure(changed, pt, TrailingData, None)
    # a header altered to match the new length fails the commitment
    head = part[:6] + (len(pt) + delta).to_bytes(8, "big") + part[14:K_HEADER_SIZE]
    with pytest.raises(CommitmentMismatch):
        KPartDecryptor(DEK, OID, head, len(changed))


@pytest.mark.parametrize("cut", [K_HEADER_SIZE, K_HEADER_SIZE + 1, K_HEADER_SIZE + 19, K_HEADER_SIZE + 3 + 16])
def test_k_truncation_at_chunk_boundaries(k_sample: tuple[bytes, bytes], cut: int) -> None:
    pt, part = k_sample
    expect_k_failure(part[:cut], pt, Truncated, len(part))


def test_k_part_length_disagreeing_with_header() -> None:
    part = k_encrypt(b"")
    with pytest.raises(Truncated):
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part) - 1)
    with pytest.raises(TrailingData):
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part) + 1)


def test_k_splicing_and_wrong_key(k_sample: tuple[bytes, bytes]) -> None:
    pt, part = k_sample
    head, c = part[:K_HEADER_SIZE], len(part)
    with pytest.raises(CommitmentMismatch):  # another object, same DEK
        KPartDecryptor(DEK, OTHER_OID, head, c)
    with pytest.raises(CommitmentMismatch):
        KPartDecryptor(OTHER_DEK, OID, head, c)
    # a chunk from another part of the same object, same DEK, same length
    other = k_encrypt(pattern(len(pt), 8), part_number=5)
    p, cs = len(pt), k_chunk_size(len(pt))
    a, b = k_chunk_ct_offset(p, cs, 7), k_chunk_ct_offset(p, cs, 8)
    expect_k_failure(part[:a] + other[a:b] + part[b:], pt, ChunkAuthenticationFailed, c)
    # the header of one retry with the chunks of another
    expect_k_failure(other[:K_HEADER_SIZE] + part[K_HEADER_SIZE:], pt, ChunkAuthenticationFailed, c)


def test_k_wrong_part_number_expected(k_sample: tuple[bytes, bytes]) -> None:
    _, part = k_sample
    with pytest.raises(PartOrderError):
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part), expected_part_number=4)


# -- K objects ---------------------------------------------------------------------------


def make_k_object(sizes_numbers: Sequence[tuple[int, int]], oid: bytes = OID) -> tuple[bytes, bytes, list[int]]:
    """(plaintext, body, part ciphertext sizes) of a K object."""
    pts, parts = [], []
    for i, (p, n) in enumerate(sizes_numbers):
        pt = pattern(p, 100 + i)
        pts.append(pt)
        parts.append(k_encrypt(pt, part_number=n, oid=oid))
    return b"".join(pts), b"".join(parts), [len(x) for x in parts]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 9000), min_size=1, max_size=4), cuts_st)
def test_k_object_round_trip(sizes: list[int], cuts: list[int]) -> None:
    numbers = [1, 3, 7, 10_000][: len(sizes)]
    pt, body, part_sizes = make_k_object(list(zip(sizes, numbers, strict=True)))
    assert bytes(feed(KObjectDecryptor(DEK, OID, len(part_sizes)), body, cuts)) == pt


def test_k_object_part_order() -> None:
    _, body, _ = make_k_object([(100, 2), (100, 1)])
    with pytest.raises(PartOrderError):
        feed(KObjectDecryptor(DEK, OID, 2), body)
    _, body, _ = make_k_object([(100, 2), (100, 2)])
    with pytest.raises(PartOrderError):
        feed(KObjectDecryptor(DEK, OID, 2), body)


def test_k_object_truncated_and_trailing() -> None:
    _, body, sizes = make_k_object([(100, 1), (50, 2)])
    for cut in (1, 16, len(body) - sizes[0], len(body) - sizes[0] - 10, len(body) - 1):
        with pytest.raises(Truncated):
            feed(KObjectDecryptor(DEK, OID, 2), body[:cut])
    with pytest.raises(Truncated):  # fewer parts than the ETag says
        feed(KObjectDecryptor(DEK, OID, 3), body)
    with pytest.raises(TrailingData):
        feed(KObjectDecryptor(DEK, OID, 2), body + b"x")
    with pytest.raises(TrailingData):  # more parts than the ETag says
        feed(KObjectDecryptor(DEK, OID, 1), body)
    with pytest.raises(InvalidCiphertextSize):
        KObjectDecryptor(DEK, OID, 0)


def test_k_object_part_spliced_from_another_object() -> None:
    _, body, sizes = make_k_object([(100, 1), (100, 2)])
    _, other, _ = make_k_object([(100, 1), (100, 2)], oid=OTHER_OID)
    spliced = body[: sizes[0]] + other[sizes[0] :]
    with pytest.raises(CommitmentMismatch):
        feed(KObjectDecryptor(DEK, OID, 2), spliced)


def test_k_object_dropped_part_is_a_documented_limit() -> None:
    """FORMAT.md 5: dropping a whole part is not detected without a manifest."""
    pt, body, sizes = make_k_object([(100, 1), (100, 2), (100, 3)])
    dropped = body[: sizes[0]] + body[sizes[0] + sizes[1] :]
    out = feed(KObjectDecryptor(DEK, OID, 2), dropped)
    assert out == pt[:100] + pt[200:]


def test_part_number_sequence() -> None:
    seq = PartNumberSequence()
    for n in (1, 3, 7):
        seq.check(n)
    with pytest.raises(PartOrderError):
        seq.check(7)


# -- state, validation, hygiene ------------------------------------------------------------


def test_finalized_objects_refuse_more() -> None:
    enc = SEncryptor(DEK, OID)
    enc.finalize()
    with pytest.raises(AlreadyFinalized):
        enc.update(b"x")
    kenc = KPartEncryptor(DEK, OID, 1, 0)
    kenc.finalize()
    with pytest.raises(AlreadyFinalized):
        kenc.finalize()


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_dek_length_checked(bad: bytes) -> None:
    with pytest.raises(ValueError):
        SEncryptor(bad, OID)
    with pytest.raises(ValueError):
        SDecryptor(bad, OID)
    with pytest.raises(ValueError):
        KPartEncryptor(bad, OID, 1, 0)


def test_object_id_length_checked() -> None:
    with pytest.raises(ValueError):
        SEncryptor(DEK, bytes(15))
    with pytest.raises(ValueError):
        KPartEncryptor(DEK, bytes(17), 1, 0)


def test_bytearray_dek_accepted() -> None:
    pt = b"hello"
    ct = bytes(feed(SEncryptor(bytearray(DEK), OID), pt))
    assert s_decrypt(ct) == pt
    part = bytes(feed(KPartEncryptor(bytearray(DEK), OID, 1, 5), pt))
    dec = KPartDecryptor(bytearray(DEK), OID, part[:K_HEADER_SIZE], len(part))
    assert bytes(feed(dec, part[K_HEADER_SIZE:])) == pt


def test_no_key_material_in_reprs_or_errors(s_sample: tuple[bytes, bytes], k_sample: tuple[bytes, bytes]) -> None:
    secrets = [DEK.hex(), repr(DEK), DEK.hex()[:16]]
    _, ct = s_sample
    _, part = k_sample
    objs: list[object] = [
        SEncryptor(DEK, OID),
        SDecryptor(DEK, OID),
        SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], S_TAMPER_P, s_span(S_TAMPER_P, 0, 1)),
        KPartEncryptor(DEK, OID, 1, 1),
        KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part)),
        KObjectDecryptor(DEK, OID, 1),
    ]
    texts = [repr(o) for o in objs] + [str(o) for o in objs]
    for exc_call in (
        lambda: s_decrypt(flip(ct, 100)),
        lambda: s_decrypt(ct, dek=OTHER_DEK),
        lambda: k_decrypt(flip(part, 100)),
        lambda: SEncryptor(DEK[:5], OID),
    ):
        with pytest.raises(Exception) as info:
            exc_call()
        texts.append(str(info.value))
        texts.append(repr(info.value))
    for t in texts:
        for s in secrets:
            assert s not in t


def test_random_access_keys_match_the_library() -> None:
    """Our HKDF derivation is the C2SP one: the library decrypts a body our
    derivation-based range reader reads, for a random context."""
    ctx = os.urandom(13)
    enc = Cobblestone256Encryptor(DEK, ctx)
    pt = pattern(CHUNK_SIZE * 2 + 5)
    ct = enc.update(pt) + enc.finalize()
    p = len(pt)
    span = s_span(p, 10, p)
    dec = SRangeDecryptor._raw(DEK, ctx, ct[:S_HEADER_SIZE], p, span)
    assert bytes(feed(dec, ct[span.ct_start : span.ct_end])) == pt[10:]
