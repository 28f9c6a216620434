"""What the HTTP handlers need to know about a stored object's layout (docs/FORMAT.md 2.1, 2.2,
2.4), sans-IO: plaintext sizes from the stored size and the ETag's ``-N``, the sizes a listing
implies, how a ``partNumber`` read maps onto the part table, the stored size of what a PUT
sends.  Handlers ask here instead of branching on ``layout`` or doing overhead arithmetic.

A part table is ``[(offset, stored length)]`` of each part by position (``crypto.k_table``);
an S object has one part, the whole object.  The stored lengths in a table come from part
headers, unauthenticated until decryption: a wrong table fails authentication later.

Imports: ``crypto.errors``, ``crypto.sizes``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.sizes import (
    K_HEADER_SIZE,
    K_PART_OVERHEAD,
    MAX_PART_NUMBER,
    S_HEADER_SIZE,
    k_object_plaintext_size,
    k_part_ciphertext_size,
    k_part_plaintext_size,
    s_ciphertext_size,
    s_plaintext_size,
)

__all__ = [
    "MAX_PART_NUMBER",
    "copied_by_parts",
    "header_size",
    "in_parts",
    "last_part_start",
    "listed_part_size",
    "listed_size",
    "needs_part_table",
    "part_plaintext_size",
    "part_range",
    "part_spans",
    "parts_from_etag",
    "plaintext_size",
    "single_part_table",
    "size_from_table",
    "stored_part_size",
    "stored_size",
]

PartTable = Sequence[tuple[int, int]]

_ETAG_PARTS = re.compile(r"-([0-9]{1,5})\"?$")  # at most 10,000 parts


def parts_from_etag(etag: str | None) -> int | None:
    """The part count of a multipart ETag (``"...-N"``), None for any other ETag."""
    m = _ETAG_PARTS.search((etag or "").strip())
    return int(m.group(1)) if m else None


def in_parts(layout: str) -> bool:
    """Whether the object is stored in parts: a part table, ``x-amz-mp-parts-count``, part by
    part copies, a completeness manifest (K); else one stream (S)."""
    return layout == "K"


def copied_by_parts(layout: str, etag: str | None) -> bool:
    """Whether a backend-side copy keeps it only part by part (UploadPartCopy): an object in
    parts whose ETag counts them (a single CopyObject would turn ``-N`` into a plain ETag)."""
    return in_parts(layout) and parts_from_etag(etag) is not None


def needs_part_table(layout: str, etag: str | None) -> bool:
    """Whether the plaintext size needs the part table: an object in parts whose ETag has no ``-N``."""
    return in_parts(layout) and parts_from_etag(etag) is None


def plaintext_size(layout: str, ct_total: int, etag: str | None) -> int | None:
    """Plaintext size from the stored size and the ETag; None when the part table decides it
    (``needs_part_table``: then ``size_from_table``).  ``FormatError`` when no object of
    this layout has that stored size."""
    if not in_parts(layout):
        return s_plaintext_size(ct_total)
    n = parts_from_etag(etag)
    return None if n is None else k_object_plaintext_size(ct_total, n)


def listed_size(ct_total: int, parts: int | bytes | str | None) -> int | None:
    """The plaintext size a listing entry implies without a HEAD: of an object in ``parts`` parts
    when its ETag says ``-N`` (the digits as listed will do), else of an S object; None when the
    stored size fits neither or ``parts`` is no number."""
    try:
        return s_plaintext_size(ct_total) if parts is None else k_object_plaintext_size(ct_total, int(parts))
    except (FormatError, ValueError):
        return None


def listed_part_size(stored: int) -> int:
    """The plaintext size of a part as listed (ListParts, GetObjectAttributes): never negative."""
    return max(0, stored - K_PART_OVERHEAD)


def part_plaintext_size(stored: int) -> int:
    """The plaintext size of a stored part; ``FormatError`` if shorter than any part."""
    return k_part_plaintext_size(stored)


def size_from_table(layout: str, table: PartTable) -> int:
    """The plaintext size of an object from its part table (``FormatError`` if it cannot be one)."""
    if not in_parts(layout):
        return s_plaintext_size(sum(c for _, c in table))
    return sum(part_plaintext_size(c) for _, c in table)


def part_spans(table: PartTable) -> list[tuple[int, int]]:
    """``[(plaintext offset, plaintext size)]`` of each part of a part table."""
    out, off = [], 0
    for _, c in table:
        p = part_plaintext_size(c)
        out.append((off, p))
        off += p
    return out


def last_part_start(table: PartTable) -> int:
    """Where the last part starts in the plaintext (a range reaching it needs the manifest's check)."""
    return sum(part_plaintext_size(c) for _, c in table[:-1])


def single_part_table(layout: str, ct_total: int) -> list[tuple[int, int]] | None:
    """The part table of an object stored as one stream (the whole object); None for one in parts."""
    return None if in_parts(layout) else [(0, ct_total)]


def part_range(layout: str, table: PartTable, position: int, size: int) -> tuple[int, int]:
    """Plaintext ``[start, end)`` of the part at 1-based ``position`` (a ``partNumber`` read);
    ``size`` is the object's plaintext size (an S object's only part is all of it)."""
    if not in_parts(layout):
        return 0, size
    start = sum(part_plaintext_size(c) for _, c in table[: position - 1])
    return start, start + part_plaintext_size(table[position - 1][1])


def header_size(layout: str) -> int:
    """Bytes at the start of the stored object (of each part, in parts) that a ranged read of it
    needs before any chunk: the S header, or the first K part header."""
    return K_HEADER_SIZE if in_parts(layout) else S_HEADER_SIZE


def stored_size(p: int) -> int:
    """Stored size of a single-stream (S) object of ``p`` plaintext bytes (what a PUT sends)."""
    return s_ciphertext_size(p)


def stored_part_size(p: int) -> int:
    """Stored size of a part of ``p`` plaintext bytes (what UploadPart sends)."""
    return k_part_ciphertext_size(p)
