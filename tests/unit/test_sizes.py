"""Size arithmetic and range mapping (docs/FORMAT.md 2.1, 2.2, 2.4): exact inverses, every boundary."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto.errors import InvalidCiphertextSize
from s3proxy.crypto.sizes import (
    CHUNK_SIZE,
    K_CHUNKS,
    K_HEADER_SIZE,
    K_PART_OVERHEAD,
    S_FULL_CHUNK_CT,
    S_HEADER_SIZE,
    TAG_SIZE,
    ChunkSpan,
    k_chunk_ct_offset,
    k_chunk_plaintext_len,
    k_chunk_size,
    k_object_plaintext_size,
    k_object_spans,
    k_part_ciphertext_size,
    k_part_plaintext_size,
    k_span,
    s_ciphertext_size,
    s_plaintext_size,
    s_span,
)

MiB = 1 << 20
GiB = 1 << 30

# every boundary the format has, and some uneven sizes
BOUNDARIES = sorted(
    {
        0, 1, 2, 15, 16, 17,
        CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1,
        2 * CHUNK_SIZE - 1, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 1,
        K_CHUNKS - 1, K_CHUNKS, K_CHUNKS + 1,
        2 * K_CHUNKS - 1, 2 * K_CHUNKS, 2 * K_CHUNKS + 1,
        K_CHUNKS * CHUNK_SIZE - 1, K_CHUNKS * CHUNK_SIZE, K_CHUNKS * CHUNK_SIZE + 1,
        5 * MiB - 1, 5 * MiB, 5 * MiB + 1,
        8 * MiB + 12345, 100_000_007,
        5 * GiB - 1, 5 * GiB, 5 * GiB + 1,
    }
)

sizes_st = st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 3 * CHUNK_SIZE), st.integers(0, 6 * GiB))


def test_constants() -> None:
    assert S_HEADER_SIZE == 56
    assert S_FULL_CHUNK_CT == 16400
    assert K_HEADER_SIZE == 70
    assert K_PART_OVERHEAD == 70 + 16 * 1024 == 16454


@pytest.mark.parametrize("p", BOUNDARIES)
def test_s_size_formula(p: int) -> None:
    c = s_ciphertext_size(p)
    assert c == 56 + p + 16 * (p // 16384 + 1)
    assert s_plaintext_size(c) == p


@pytest.mark.parametrize(
    ("p", "c"),
    [(0, 72), (1, 73), (16383, 16455), (16384, 16472), (16385, 16473), (32768, 32872)],
)
def test_s_size_examples(p: int, c: int) -> None:
    assert s_ciphertext_size(p) == c
    assert s_plaintext_size(c) == p


@given(sizes_st)
def test_s_sizes_inverse(p: int) -> None:
    assert s_plaintext_size(s_ciphertext_size(p)) == p


@given(st.integers(0, 10 * S_FULL_CHUNK_CT))
def test_s_plaintext_size_total_on_valid_lengths(c: int) -> None:
    """Every length is either impossible or maps back to itself."""
    try:
        p = s_plaintext_size(c)
    except InvalidCiphertextSize:
        d = c - S_HEADER_SIZE
        assert d < TAG_SIZE or d % S_FULL_CHUNK_CT < TAG_SIZE
    else:
        assert s_ciphertext_size(p) == c


@pytest.mark.parametrize("c", [0, 1, 55, 56, 71, 56 + 16400, 56 + 16400 + 15, 56 + 2 * 16400 + 3])
def test_s_impossible_lengths(c: int) -> None:
    with pytest.raises(InvalidCiphertextSize):
        s_plaintext_size(c)


def test_s_size_is_strictly_increasing_near_boundaries() -> None:
    prev = -1
    for p in range(0, 3 * CHUNK_SIZE + 5):
        c = s_ciphertext_size(p)
        assert c > prev
        prev = c


def test_negative_plaintext_rejected() -> None:
    for fn in (s_ciphertext_size, k_part_ciphertext_size, k_chunk_size):
        with pytest.raises(ValueError):
            fn(-1)


# -- K ------------------------------------------------------------------------------


@pytest.mark.parametrize("p", BOUNDARIES)
def test_k_chunking_covers_part(p: int) -> None:
    cs = k_chunk_size(p)
    assert cs == -(-p // 1024)
    lengths = [k_chunk_plaintext_len(p, cs, k) for k in range(K_CHUNKS)]
    assert sum(lengths) == p
    assert all(0 <= n <= cs for n in lengths)
    # non-increasing: full chunks, at most one short one, then empties
    assert lengths == sorted(lengths, reverse=True)
    assert len({n for n in lengths if 0 < n < cs}) <= 1
    assert k_chunk_ct_offset(p, cs, K_CHUNKS) == k_part_ciphertext_size(p)
    assert k_chunk_ct_offset(p, cs, 0) == K_HEADER_SIZE


@pytest.mark.parametrize(("p", "cs"), [(0, 0), (1, 1), (1024, 1), (1025, 2), (5 * MiB, 5 * 1024), (5 * GiB, 5 * MiB)])
def test_k_chunk_size_examples(p: int, cs: int) -> None:
    assert k_chunk_size(p) == cs


@given(sizes_st)
def test_k_part_sizes_inverse(p: int) -> None:
    c = k_part_ciphertext_size(p)
    assert c == p + K_PART_OVERHEAD
    assert k_part_plaintext_size(c) == p


def test_k_part_impossible_lengths() -> None:
    with pytest.raises(InvalidCiphertextSize):
        k_part_plaintext_size(K_PART_OVERHEAD - 1)
    assert k_part_plaintext_size(K_PART_OVERHEAD) == 0


@given(st.lists(sizes_st, min_size=1, max_size=30))
def test_k_object_size_from_total_and_count(parts: list[int]) -> None:
    total = sum(k_part_ciphertext_size(p) for p in parts)
    assert k_object_plaintext_size(total, len(parts)) == sum(parts)


def test_k_object_impossible() -> None:
    with pytest.raises(InvalidCiphertextSize):
        k_object_plaintext_size(K_PART_OVERHEAD * 3 - 1, 3)
    with pytest.raises(InvalidCiphertextSize):
        k_object_plaintext_size(K_PART_OVERHEAD, 0)
    assert k_object_plaintext_size(K_PART_OVERHEAD * 2, 2) == 0


# -- spans ---------------------------------------------------------------------------


def s_chunk_bounds(p: int, k: int) -> tuple[int, int, int, int]:
    """(pt_start, pt_end, ct_start, ct_end) of S chunk k, naively."""
    n = p // CHUNK_SIZE + 1
    assert 0 <= k < n
    pt_start = k * CHUNK_SIZE
    pt_end = min(pt_start + CHUNK_SIZE, p) if k < n - 1 else p
    ct_start = S_HEADER_SIZE + k * S_FULL_CHUNK_CT
    return pt_start, pt_end, ct_start, ct_start + (pt_end - pt_start) + TAG_SIZE


def k_chunk_bounds(p: int, k: int) -> tuple[int, int, int, int]:
    cs = k_chunk_size(p)
    pt_start = min(k * cs, p)
    pt_end = min(pt_start + cs, p)
    ct_start = K_HEADER_SIZE + sum(k_chunk_plaintext_len(p, cs, i) + TAG_SIZE for i in range(k))
    return pt_start, pt_end, ct_start, ct_start + (pt_end - pt_start) + TAG_SIZE


Bounds = Callable[[int, int], tuple[int, int, int, int]]


def check_span(span: ChunkSpan, p: int, start: int, end: int, bounds: Bounds) -> None:
    first = bounds(p, span.first_chunk)
    last = bounds(p, span.last_chunk)
    assert span.ct_start == first[2]
    assert span.ct_end == last[3]
    assert span.length == end - start
    assert first[0] + span.skip == start
    assert span.skip <= first[1] - first[0]
    if end > start:
        # the chunks hold exactly the range, with no chunk to spare at the start
        assert first[0] <= start < first[1]
        # ... and none to spare at the end, except the empty final chunk an S
        # range reaching the end includes to authenticate the object size
        assert last[0] < end <= last[1] or last[0] == last[1] == end == p


@st.composite
def ranges(draw: st.DrawFn, max_p: int) -> tuple[int, int, int]:
    p = draw(st.one_of(st.sampled_from([b for b in BOUNDARIES if b <= max_p]), st.integers(0, max_p)))
    a = draw(st.integers(0, p))
    b = draw(st.one_of(st.integers(a, p), st.just(p), st.just(a)))
    return p, a, b


@settings(max_examples=300)
@given(ranges(6 * GiB))
def test_s_span_matches_naive(r: tuple[int, int, int]) -> None:
    p, a, b = r
    span = s_span(p, a, b)
    check_span(span, p, a, b, s_chunk_bounds)
    if b == p:  # ranges reaching the end include the final chunk
        assert span.last_chunk == p // CHUNK_SIZE
        assert span.ct_end == s_ciphertext_size(p)


@settings(max_examples=200)
@given(ranges(64 * MiB))
def test_k_span_matches_naive(r: tuple[int, int, int]) -> None:
    p, a, b = r
    check_span(k_span(p, a, b), p, a, b, k_chunk_bounds)


@pytest.mark.parametrize("p", [0, 1, 1024, 1025, 5 * MiB + 3])
def test_k_span_whole_and_empty(p: int) -> None:
    whole = k_span(p, 0, p)
    assert whole.ct_start == K_HEADER_SIZE
    assert whole.length == p
    for x in (0, p // 2, p):
        span = k_span(p, x, x)
        assert span.length == 0
        assert span.first_chunk == span.last_chunk < K_CHUNKS


def test_s_span_examples() -> None:
    assert s_span(0, 0, 0) == ChunkSpan(0, 0, 56, 72, 0, 0)
    assert s_span(16384, 0, 16384) == ChunkSpan(0, 1, 56, 56 + 16400 + 16, 0, 16384)
    assert s_span(16384, 0, 100) == ChunkSpan(0, 0, 56, 56 + 16400, 0, 100)
    assert s_span(40000, 16384, 16385) == ChunkSpan(1, 1, 56 + 16400, 56 + 2 * 16400, 0, 1)
    assert s_span(40000, 39999, 40000).last_chunk == 2


@pytest.mark.parametrize(("p", "a", "b"), [(10, -1, 5), (10, 5, 4), (10, 0, 11)])
def test_span_rejects_bad_ranges(p: int, a: int, b: int) -> None:
    with pytest.raises(ValueError):
        s_span(p, a, b)
    with pytest.raises(ValueError):
        k_span(p, a, b)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=8), st.data())
def test_k_object_spans_partition_the_range(parts: list[int], data: st.DataObject) -> None:
    total = sum(parts)
    a = data.draw(st.integers(0, total))
    b = data.draw(st.integers(a, total))
    spans = k_object_spans(parts, a, b)
    assert sum(ps.span.length for ps in spans) == b - a
    pt_offsets = [sum(parts[:i]) for i in range(len(parts))]
    pos = a
    for ps in spans:
        assert ps.part_size == parts[ps.index]
        assert ps.ct_offset == sum(k_part_ciphertext_size(p) for p in parts[: ps.index])
        lo = pos - pt_offsets[ps.index]
        check_span(ps.span, ps.part_size, lo, lo + ps.span.length, k_chunk_bounds)
        pos += ps.span.length
    assert [ps.index for ps in spans] == sorted({ps.index for ps in spans})
