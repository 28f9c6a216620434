"""The K layout: multipart parts and whole multipart objects (docs/FORMAT.md 2.2, 2.3).

Pure and sans-IO: ``update()`` takes bytes-like input and returns a fresh ``bytearray``.
``KObjectDecryptor`` is the one reader of whole K objects, used by the proxy's GET and by
``recover``.

Imports: ``cryptography``, ``crypto.errors``, ``crypto.sizes`` and ``crypto.chunked``.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from s3proxy.crypto.chunked import (
    _LAYOUT_K_BYTE,
    FORMAT_VERSION,
    Buffer,
    DekBox,
    _check_dek,
    _check_object_id,
    _check_part_number,
    _check_span,
    _ChunkReader,
    _ChunkWriter,
    _k_okm,
    _ReaderStream,
    _split_okm,
    _Stream,
    _view,
)
from s3proxy.crypto.errors import (
    CommitmentMismatch,
    FormatError,
    InvalidCiphertextSize,
    InvalidHeader,
    ManifestMismatch,
    PartOrderError,
    TrailingData,
    Truncated,
    UnsupportedFormatVersion,
)
from s3proxy.crypto.sizes import (
    K_CHUNKS,
    K_HEADER_SIZE,
    K_PART_OVERHEAD,
    MAX_PART_NUMBER,
    SALT_SIZE,
    ChunkSpan,
    k_chunk_size,
)

_K_HEADER = struct.Struct(">BBIQ")  # version, layout, part_number, plaintext_length (then salt, commitment)


@dataclass(frozen=True, slots=True)
class KPartHeader:
    """The 70-byte header of a K part.

    Unauthenticated until the commitment check (``KPartDecryptor``), which
    covers every field: without the DEK, use it only to find part boundaries
    (``plaintext_length + K_PART_OVERHEAD``) and numbers.
    """

    version: int
    part_number: int
    plaintext_length: int
    salt: bytes
    commitment: bytes

    @property
    def part_size(self) -> int:
        """The part's ciphertext length, header included."""
        return self.plaintext_length + K_PART_OVERHEAD

    def encode(self) -> bytes:
        fixed = _K_HEADER.pack(self.version, _LAYOUT_K_BYTE, self.part_number, self.plaintext_length)
        return fixed + self.salt + self.commitment


def parse_k_header(header: Buffer) -> KPartHeader:
    """Parse a K part header (no key needed; e.g. to walk part boundaries).

    Raises ``Truncated`` if shorter than 70 bytes, ``UnsupportedFormatVersion``
    or ``InvalidHeader``.
    """
    if len(header) < K_HEADER_SIZE:
        raise Truncated(f"K part header of {len(header)} bytes")
    if len(header) != K_HEADER_SIZE:
        raise ValueError(f"K part header must be {K_HEADER_SIZE} bytes")
    hdr = bytes(header)
    version, layout, part_number, plaintext_length = _K_HEADER.unpack_from(hdr)
    if version != FORMAT_VERSION:
        raise UnsupportedFormatVersion(f"K part format version {version}")
    if layout != _LAYOUT_K_BYTE:
        raise InvalidHeader(f"K part layout byte {layout:#04x}")
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise InvalidHeader(f"K part number {part_number} outside 1..{MAX_PART_NUMBER}")
    off = _K_HEADER.size
    return KPartHeader(version, part_number, plaintext_length, hdr[off : off + SALT_SIZE], hdr[off + SALT_SIZE :])


class KPartEncryptor(_Stream):
    """Encrypts one part of a multipart upload (FORMAT.md 2.2).

    ``p`` is the part's plaintext length (from the request's Content-Length),
    which the key schedule binds. ``header()`` returns the 70-byte header;
    if it was not called before, the first ``update()``/``finalize()`` output
    starts with it, so the concatenation of all outputs is always the whole
    part. Feeding more than ``p`` bytes raises ``TrailingData``; finalising
    after fewer raises ``Truncated``.
    """

    def __init__(self, dek: Buffer, object_id: Buffer, part_number: int, p: int) -> None:
        self._init(dek, object_id, part_number, p, os.urandom(SALT_SIZE))

    @classmethod
    def _with_salt(cls, dek: Buffer, object_id: Buffer, part_number: int, p: int, salt: bytes) -> KPartEncryptor:
        """Deterministic encryptor for test vectors. Never use a fixed salt otherwise."""
        self = cls.__new__(cls)
        self._init(dek, object_id, part_number, p, salt)
        return self

    def _init(self, dek: Buffer, object_id: Buffer, part_number: int, p: int, salt: bytes) -> None:
        _check_object_id(object_id)
        _check_part_number(part_number)
        if p < 0:
            raise ValueError("negative part size")
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        aead, base, commitment = _split_okm(_k_okm(dek, object_id, salt, part_number, p))
        self._header = KPartHeader(FORMAT_VERSION, part_number, p, bytes(salt), commitment).encode()
        self._header_sent = False
        self.part_number = part_number
        self.plaintext_size = p
        cs = k_chunk_size(p)
        self._writer = _ChunkWriter(aead, base, cs, p // cs if cs else 0)
        self._fed = 0

    def header(self) -> bytes:
        """The part header; after this call, outputs no longer include it."""
        self._header_sent = True
        return self._header

    def _prefix(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return self._header

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        mv = _view(data)
        self._fed += len(mv)
        if self._fed > self.plaintext_size:
            self._fail(TrailingData(f"more than the declared {self.plaintext_size} part bytes"))
        return self._writer.update(mv, self._prefix())

    def finalize(self) -> bytearray:
        self._guard()
        if self._fed < self.plaintext_size:
            self._fail(Truncated(f"{self._fed} of the declared {self.plaintext_size} part bytes"))
        self._finalized = True
        if self._writer.index < K_CHUNKS:  # the trailing empty chunks
            return self._writer.seal_through(K_CHUNKS - 1, self._prefix())
        return bytearray(self._prefix())


class KPartDecryptor(_ReaderStream):
    """Decrypts one K part, whole or a ``k_span`` of it (FORMAT.md 2.3).

    ``header`` is the part's first 70 bytes. ``c_part``, the part's length as
    the backend reports it, is optional (the header carries the plaintext
    length); when given it must agree with the authenticated header:
    shorter is ``Truncated``, longer ``TrailingData``. With ``span=None`` feed
    the part's bytes after the header and get the whole part; with a span
    feed part bytes ``[span.ct_start, span.ct_end)``. Version, layout, part
    number range and commitment are checked in the constructor;
    ``expected_part_number``, when given, must match the header
    (``PartOrderError``).
    """

    part_number: int
    plaintext_size: int

    def __init__(
        self,
        dek: Buffer,
        object_id: Buffer,
        header: Buffer,
        c_part: int | None = None,
        span: ChunkSpan | None = None,
        *,
        expected_part_number: int | None = None,
    ) -> None:
        _check_dek(dek)
        _check_object_id(object_id)
        hdr = parse_k_header(header)
        p = hdr.plaintext_length
        aead, base, commitment = _split_okm(_k_okm(dek, object_id, hdr.salt, hdr.part_number, p))
        if not hmac.compare_digest(commitment, hdr.commitment):
            raise CommitmentMismatch(f"K part {hdr.part_number} commitment does not match")
        if c_part is not None and c_part != hdr.part_size:
            error = Truncated if c_part < hdr.part_size else TrailingData
            raise error(f"K part of {c_part} bytes, its header says {hdr.part_size}")
        if expected_part_number is not None and hdr.part_number != expected_part_number:
            raise PartOrderError(f"K part number {hdr.part_number}, expected {expected_part_number}")
        self.part_number = hdr.part_number
        self.plaintext_size = p
        cs = k_chunk_size(p)
        if span is None:
            span = ChunkSpan(0, K_CHUNKS - 1, K_HEADER_SIZE, hdr.part_size, 0, p)
        _check_span(span, K_HEADER_SIZE, cs, p, K_CHUNKS - 1)
        pt_start = min(span.first_chunk * cs, p) + span.skip
        self.slack = cs
        self._reader = _ChunkReader(
            aead, base, cs, p, span.first_chunk, span.last_chunk, pt_start, pt_start + span.length
        )


class PartNumberSequence:
    """Checks that the part numbers met while reading an object strictly increase."""

    def __init__(self) -> None:
        self._last = 0

    def check(self, part_number: int) -> None:
        if part_number <= self._last:
            raise PartOrderError(f"part {part_number} after part {self._last}")
        self._last = part_number


class KObjectDecryptor(_Stream):
    """Streaming whole-object decryption of a K object (FORMAT.md 2.3, 5): the one K-object reader.

    Feed the backend body from its first byte: part header, that part's chunks, the next
    header.  Each header gives its part's length, so no part table is needed; part numbers
    must strictly increase (``PartOrderError``).

    ``n_parts`` is the part count when known (the ETag's ``-N``, or the manifest's): exactly
    that many parts, a byte more is ``TrailingData``, fewer parts ``Truncated``.  ``None`` (a
    backend without ``-N`` ETags) accepts any number of whole parts, none included.
    ``parts``, each part's (part number, plaintext length) from the object's completeness
    manifest, must then match part by part (``ManifestMismatch``).

    Keeps a copy of the DEK (never the caller's buffer), zeroed once the last part is read,
    on any failure, at ``finalize()`` and by ``close()``.
    """

    def __init__(
        self,
        dek: Buffer,
        object_id: Buffer,
        n_parts: int | None,
        parts: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        _check_dek(dek)
        _check_object_id(object_id)
        if n_parts is not None and n_parts < 1:
            raise InvalidCiphertextSize(f"K object with {n_parts} parts")
        if parts is not None and len(parts) != n_parts:
            raise ManifestMismatch("part count differs from the object's manifest")
        self._dek = DekBox(dek)
        self._object_id = bytes(object_id)
        self._n_parts = n_parts
        self._expected = [(int(n), int(p)) for n, p in parts] if parts is not None else None
        self._done = 0  # parts completely read
        self._left = 0  # bytes of the current part still to come
        self._header = bytearray()
        self._part: KPartDecryptor | None = None
        self._order = PartNumberSequence()
        self.slack = 0
        """``update_into`` of ``n`` bytes writes at most ``n + slack`` bytes (``slack``: the chunk
        size of the part being read, whose last chunk may be partly in; 0 between parts): a
        buffer that large is always enough, no exact size needed."""

    def output_size(self, n: int) -> int:
        """At most this many plaintext bytes come out of the next ``update`` of ``n`` ciphertext
        bytes: exactly what the current part releases, plus at most the bytes beyond it (a
        bound: a part header not read yet decides the rest)."""
        part = self._part
        if part is None:
            return n
        take = min(self._left, n)
        return part.output_size(take) + (n - take)

    def update(self, data: Buffer) -> bytearray:
        mv = _view(data)
        out = bytearray(self.output_size(len(mv)))
        del out[self.update_into(mv, out):]
        return out

    def update_into(self, data: Buffer, out: bytearray | memoryview) -> int:
        """``update`` writing the plaintext into ``out`` (at least ``output_size(len(data))``
        bytes, else ``ValueError`` before anything is consumed); returns the bytes written.  On a
        ``FormatError`` ``out`` may hold unauthenticated bytes: the caller discards them."""
        if self._failure is not None or self._finalized:
            self._guard()
        mv = memoryview(data) if type(data) is bytes else _view(data)
        if len(out) < len(mv) + self.slack and len(out) < (size := self.output_size(len(mv))):
            raise ValueError(f"output buffer of {len(out)} bytes, {size} needed")
        try:
            with memoryview(out) as dst:
                return self._update(mv, dst)
        except FormatError as exc:
            self._dek.clear()
            self._fail(exc)

    def _update(self, mv: memoryview, dst: memoryview) -> int:
        w = 0
        while mv:
            part = self._part
            if part is None:
                if self._done == self._n_parts:
                    raise TrailingData(f"{len(mv)} bytes after the last of {self._n_parts} parts")
                take = min(K_HEADER_SIZE - len(self._header), len(mv))
                self._header += mv[:take]
                mv = mv[take:]
                if len(self._header) < K_HEADER_SIZE:
                    break
                part = self._next_part(bytes(self._header))
                self._header = bytearray()
            take = min(self._left, len(mv))
            w += part.update_into(mv[:take], dst[w:])
            mv = mv[take:]
            self._left -= take
            if self._left == 0:
                part.finalize()
                self._part = None
                self.slack = 0
                self._done += 1
                if self._done == self._n_parts:
                    self._dek.clear()
        return w

    def _next_part(self, header: bytes) -> KPartDecryptor:
        info = parse_k_header(header)
        self._order.check(info.part_number)
        if self._expected is not None and self._expected[self._done] != (info.part_number, info.plaintext_length):
            raise ManifestMismatch(f"part {self._done + 1} differs from the object's manifest")
        part = KPartDecryptor(self._dek.value, self._object_id, header)
        self._part = part
        self.slack = part.slack
        self._left = info.part_size - K_HEADER_SIZE
        return part

    def finalize(self) -> bytearray:
        self._guard()
        self._dek.clear()
        if self._part is not None or self._header:
            self._fail(Truncated(f"K object ended inside part {self._done + 1}"))
        if self._n_parts is not None and self._done < self._n_parts:
            self._fail(Truncated(f"K object ended in part {self._done + 1} of {self._n_parts}"))
        self._finalized = True
        return bytearray()

    def close(self) -> None:
        """Zero the DEK copy now (a reader abandoned before its end)."""
        self._dek.clear()
