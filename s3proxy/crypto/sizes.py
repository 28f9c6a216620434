"""Size arithmetic of the object format (docs/FORMAT.md sections 2.1, 2.2, 2.4).

Pure functions, exact inverses of each other: the proxy computes every
``Content-Length`` and every listed size from these, never by buffering.
Impossible ciphertext lengths raise ``InvalidCiphertextSize``.

Imports: ``crypto.errors`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from s3proxy.crypto.errors import InvalidCiphertextSize

__all__ = [
    "CHUNK_SIZE",
    "COMMITMENT_SIZE",
    "K_CHUNKS",
    "K_HEADER_SIZE",
    "K_PART_OVERHEAD",
    "MAX_PART_NUMBER",
    "NONCE_SIZE",
    "SALT_SIZE",
    "S_FULL_CHUNK_CT",
    "S_HEADER_SIZE",
    "S_MIN_CIPHERTEXT_SIZE",
    "TAG_SIZE",
    "ChunkSpan",
    "PartSpan",
    "k_chunk_ct_offset",
    "k_chunk_plaintext_len",
    "k_chunk_size",
    "k_object_plaintext_size",
    "k_object_spans",
    "k_part_ciphertext_size",
    "k_part_plaintext_size",
    "k_span",
    "s_chunk_count",
    "s_ciphertext_size",
    "s_plaintext_size",
    "s_span",
]

CHUNK_SIZE = 16384  # S layout plaintext chunk size (Cobblestone)
TAG_SIZE = 16
SALT_SIZE = 24
COMMITMENT_SIZE = 32
NONCE_SIZE = 12
S_HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE  # 56
S_FULL_CHUNK_CT = CHUNK_SIZE + TAG_SIZE  # 16400
S_MIN_CIPHERTEXT_SIZE = S_HEADER_SIZE + TAG_SIZE  # 72, the empty object

K_CHUNKS = 1024
# version(1) || layout(1) || part_number u32 (4) || plaintext_length u64 (8) || salt(24) || commitment(32)
K_HEADER_SIZE = 1 + 1 + 4 + 8 + SALT_SIZE + COMMITMENT_SIZE  # 70
K_PART_OVERHEAD = K_HEADER_SIZE + TAG_SIZE * K_CHUNKS  # 16454
MAX_PART_NUMBER = 10000


def _invalid_size(message: str) -> InvalidCiphertextSize:
    return InvalidCiphertextSize(message)


def _check_plaintext_size(p: int) -> None:
    if p < 0:
        raise ValueError(f"negative plaintext size {p}")


# -- S layout -----------------------------------------------------------------


def s_chunk_count(p: int) -> int:
    """Number of chunks of an S body of plaintext size ``p`` (the last is short)."""
    _check_plaintext_size(p)
    return p // CHUNK_SIZE + 1


def s_ciphertext_size(p: int) -> int:
    """Body length of an S object of plaintext size ``p``."""
    _check_plaintext_size(p)
    return S_HEADER_SIZE + p + TAG_SIZE * (p // CHUNK_SIZE + 1)


def s_plaintext_size(c: int) -> int:
    """Plaintext size of an S body of length ``c``; inverse of ``s_ciphertext_size``."""
    d = c - S_HEADER_SIZE
    if d < TAG_SIZE:
        raise _invalid_size(f"S body of {c} bytes is shorter than {S_MIN_CIPHERTEXT_SIZE}")
    full, rest = divmod(d, S_FULL_CHUNK_CT)
    if rest < TAG_SIZE:
        raise _invalid_size(f"S body of {c} bytes ends inside a tag")
    return full * CHUNK_SIZE + rest - TAG_SIZE


# -- K layout -----------------------------------------------------------------


def k_chunk_size(p: int) -> int:
    """Plaintext chunk size of a K part of plaintext size ``p``: ceil(p / K)."""
    _check_plaintext_size(p)
    return -(-p // K_CHUNKS)


def k_chunk_plaintext_len(p: int, cs: int, k: int) -> int:
    """Plaintext length of chunk ``k`` of a part of size ``p`` and chunk size ``cs``."""
    return max(0, min(cs, p - k * cs))


def k_chunk_ct_offset(p: int, cs: int, k: int) -> int:
    """Offset of chunk ``k`` within the part (header included)."""
    return K_HEADER_SIZE + min(k * cs, p) + TAG_SIZE * k


def k_part_ciphertext_size(p: int) -> int:
    """Length of an encrypted part of plaintext size ``p``."""
    _check_plaintext_size(p)
    return p + K_PART_OVERHEAD


def k_part_plaintext_size(c: int) -> int:
    """Plaintext size of an encrypted part of length ``c``."""
    if c < K_PART_OVERHEAD:
        raise _invalid_size(f"K part of {c} bytes is shorter than {K_PART_OVERHEAD}")
    return c - K_PART_OVERHEAD


def k_object_plaintext_size(c_total: int, n_parts: int) -> int:
    """Plaintext size of a K object of ``c_total`` bytes in ``n_parts`` parts (ETag ``-N``)."""
    if n_parts < 1:
        raise _invalid_size(f"K object with {n_parts} parts")
    p = c_total - n_parts * K_PART_OVERHEAD
    if p < 0:
        raise _invalid_size(f"K object of {c_total} bytes cannot hold {n_parts} parts")
    return p


# -- range mapping --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    """The chunks and ciphertext bytes that plaintext ``[start, end)`` needs.

    ``ct_start``/``ct_end`` (exclusive) are offsets within the S body or the K
    part, header included. Decrypt chunks ``first_chunk..last_chunk``, drop
    ``skip`` bytes of the first decrypted chunk and return ``length`` bytes.
    """

    first_chunk: int
    last_chunk: int
    ct_start: int
    ct_end: int
    skip: int
    length: int

    @property
    def chunk_count(self) -> int:
        return self.last_chunk - self.first_chunk + 1


def _check_range(p: int, start: int, end: int) -> None:
    _check_plaintext_size(p)
    if not 0 <= start <= end <= p:
        raise ValueError(f"range [{start}, {end}) outside [0, {p}]")


def s_span(p: int, start: int, end: int) -> ChunkSpan:
    """Plaintext ``[start, end)`` of an S object of size ``p``.

    A range that ends at ``p`` always includes the final (short) chunk, which
    authenticates ``p``. An empty range maps to the one chunk holding ``start``.
    """
    _check_range(p, start, end)
    n = p // CHUNK_SIZE + 1
    first = start // CHUNK_SIZE
    last = (end - 1) // CHUNK_SIZE if end > start else first
    if end == p:
        last = n - 1
    last_pt = CHUNK_SIZE if last < n - 1 else p - last * CHUNK_SIZE
    return ChunkSpan(
        first_chunk=first,
        last_chunk=last,
        ct_start=S_HEADER_SIZE + first * S_FULL_CHUNK_CT,
        ct_end=S_HEADER_SIZE + last * S_FULL_CHUNK_CT + last_pt + TAG_SIZE,
        skip=start - first * CHUNK_SIZE,
        length=end - start,
    )


def k_span(p_part: int, start: int, end: int) -> ChunkSpan:
    """Plaintext ``[start, end)`` within one K part of plaintext size ``p_part``."""
    _check_range(p_part, start, end)
    p = p_part
    cs = k_chunk_size(p)
    if cs == 0:
        first = last = 0
    else:
        first = min(start // cs, K_CHUNKS - 1)
        last = min((end - 1) // cs, K_CHUNKS - 1) if end > start else first
    return ChunkSpan(
        first_chunk=first,
        last_chunk=last,
        ct_start=k_chunk_ct_offset(p, cs, first),
        ct_end=k_chunk_ct_offset(p, cs, last) + k_chunk_plaintext_len(p, cs, last) + TAG_SIZE,
        skip=start - min(first * cs, p),
        length=end - start,
    )


@dataclass(frozen=True, slots=True)
class PartSpan:
    """The piece of a plaintext range that falls in one part of a K object.

    ``index`` is the part's 0-based position in the object (not its part
    number); ``ct_offset`` is where the part starts in the backend object, so
    the bytes to fetch are ``ct_offset + span.ct_start .. ct_offset + span.ct_end``
    (plus the part header at ``ct_offset .. ct_offset + K_HEADER_SIZE``).
    """

    index: int
    ct_offset: int
    part_size: int  # plaintext size of the part
    span: ChunkSpan


def k_object_spans(part_plaintext_sizes: Sequence[int], start: int, end: int) -> list[PartSpan]:
    """Map plaintext ``[start, end)`` of a K object onto its parts.

    Only parts that hold bytes of the range are returned; an empty range
    returns no parts.
    """
    total = sum(part_plaintext_sizes)
    _check_range(total, start, end)
    out: list[PartSpan] = []
    pt_off = 0
    ct_off = 0
    for i, p in enumerate(part_plaintext_sizes):
        _check_plaintext_size(p)
        lo = max(start, pt_off)
        hi = min(end, pt_off + p)
        if lo < hi:
            out.append(PartSpan(i, ct_off, p, k_span(p, lo - pt_off, hi - pt_off)))
        pt_off += p
        ct_off += p + K_PART_OVERHEAD
        if pt_off >= end:
            break
    return out
