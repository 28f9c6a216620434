"""The S layout: single-PUT bodies, one Cobblestone-256 message each (docs/FORMAT.md 2.1, 2.3).

Pure and sans-IO: ``update()`` takes bytes-like input and returns a fresh ``bytearray``.

Imports: ``cryptography``, ``crypto.errors``, ``crypto.sizes`` and ``crypto.chunked``.
"""

from __future__ import annotations

import hmac
from typing import NoReturn, Protocol

from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
from cryptography.exceptions import InvalidTag

from s3proxy.crypto.chunked import (
    Buffer,
    _check_dek,
    _check_span,
    _ChunkReader,
    _ChunkWriter,
    _cobblestone_okm,
    _ReaderStream,
    _split_okm,
    _Stream,
    _view,
    s_context,
)
from s3proxy.crypto.errors import (
    ChunkAuthenticationFailed,
    CommitmentMismatch,
    FormatError,
    TrailingData,
    Truncated,
)
from s3proxy.crypto.sizes import (
    CHUNK_SIZE,
    S_FULL_CHUNK_CT,
    S_HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    ChunkSpan,
    s_plaintext_size,
)


class _Encryptor(Protocol):
    def update(self, data: memoryview, /) -> bytearray: ...
    def finalize(self) -> bytearray: ...


class _LibraryCobblestone:
    """``Cobblestone256Encryptor`` driven through ``update_into``.

    The library emits the header on the first call and a chunk as soon as
    16384 plaintext bytes are buffered, so the exact output size of every
    call is known and each call costs one allocation.
    """

    __slots__ = ("_buffered", "_lib", "_started")

    def __init__(self, key: Buffer, context: bytes) -> None:
        self._lib = Cobblestone256Encryptor(key, context)
        self._started = False
        self._buffered = 0

    def update(self, data: memoryview, /) -> bytearray:
        full, self._buffered = divmod(self._buffered + len(data), CHUNK_SIZE)
        size = full * S_FULL_CHUNK_CT + (0 if self._started else S_HEADER_SIZE)
        self._started = True
        out = bytearray(size)
        written = self._lib.update_into(data, out)
        if written != size:  # pragma: no cover - guards the size model above
            del out[written:]
        return out

    def finalize(self) -> bytearray:
        return bytearray(self._lib.finalize())


class _SeededCobblestone:
    """Cobblestone-256 encryption with a given salt (test vectors only).

    Produces exactly what ``Cobblestone256Encryptor`` produces for that salt;
    the library picks its salt itself and cannot be seeded.
    """

    __slots__ = ("_header", "_writer")

    def __init__(self, key: Buffer, context: bytes, salt: bytes) -> None:
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        aead, base, commitment = _split_okm(_cobblestone_okm(key, context, salt))
        self._header = bytes(salt) + commitment
        self._writer = _ChunkWriter(aead, base, CHUNK_SIZE, None)

    def _prefix(self) -> bytes:
        prefix, self._header = self._header, b""
        return prefix

    def update(self, data: memoryview, /) -> bytearray:
        return self._writer.update(data, self._prefix())

    def finalize(self) -> bytearray:
        # the final chunk, always shorter than CHUNK_SIZE, possibly empty
        return self._writer.seal_through(self._writer.index, self._prefix())


class SEncryptor(_Stream):
    """Encrypts a single-PUT body: one Cobblestone-256 message (FORMAT.md 2.1).

    The first ``update()`` (or ``finalize()``) output starts with the 56-byte
    header; full chunks come out as soon as 16384 plaintext bytes are in.
    With ``plaintext_size`` set, feeding more raises ``TrailingData`` and
    finalising with less raises ``Truncated``.
    """

    def __init__(self, dek: Buffer, object_id: Buffer, plaintext_size: int | None = None) -> None:
        _check_dek(dek)
        self._impl: _Encryptor = _LibraryCobblestone(dek, s_context(object_id))
        self._expected = plaintext_size
        self._fed = 0

    @classmethod
    def _with_salt(
        cls, dek: Buffer, object_id: Buffer, salt: bytes, plaintext_size: int | None = None
    ) -> SEncryptor:
        """Deterministic encryptor for test vectors. Never use a fixed salt otherwise."""
        self = cls.__new__(cls)
        self._impl = _SeededCobblestone(dek, s_context(object_id), salt)
        self._expected = plaintext_size
        self._fed = 0
        return self

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        mv = _view(data)
        self._fed += len(mv)
        if self._expected is not None and self._fed > self._expected:
            self._fail(TrailingData(f"more than the declared {self._expected} plaintext bytes"))
        return self._impl.update(mv)

    def finalize(self) -> bytearray:
        self._guard()
        if self._expected is not None and self._fed < self._expected:
            self._fail(Truncated(f"{self._fed} of the declared {self._expected} plaintext bytes"))
        self._finalized = True
        return self._impl.finalize()


class SDecryptor(_Stream):
    """Streaming whole-body decryption of an S object (FORMAT.md 2.3).

    Uses the library's Cobblestone-256 decryptor; the header is fed on its
    own first so that a commitment failure is told apart from a chunk
    failure. ``ciphertext_size`` (the backend ``Content-Length``), when given,
    turns a short body into ``Truncated`` and excess bytes into
    ``TrailingData`` before they are decrypted.
    """

    def __init__(self, dek: Buffer, object_id: Buffer, ciphertext_size: int | None = None) -> None:
        _check_dek(dek)
        if ciphertext_size is not None:
            s_plaintext_size(ciphertext_size)  # raises InvalidCiphertextSize
        self._lib = Cobblestone256Decryptor(dek, s_context(object_id))
        self._expected = ciphertext_size
        self._limit = ciphertext_size if ciphertext_size is not None else 1 << 63
        self._header = bytearray()
        self._body = False  # the header is in and its commitment checked
        self._seen = 0

    slack = CHUNK_SIZE
    """``update_into`` of ``n`` bytes writes at most ``n + slack`` bytes (the library holds less
    than one chunk): a buffer that large is always enough, no exact size needed."""

    def _buffered(self, seen: int) -> int:
        """Ciphertext bytes of the current chunk inside the library after ``seen`` body bytes
        (it releases a chunk as soon as its 16400 bytes are in: a full chunk is never the last)."""
        return max(0, seen - S_HEADER_SIZE) % S_FULL_CHUNK_CT

    def output_size(self, n: int) -> int:
        """Plaintext bytes the next ``update`` of ``n`` ciphertext bytes releases (exactly)."""
        body = max(0, n - (S_HEADER_SIZE - len(self._header)))
        return (self._buffered(self._seen) + body) // S_FULL_CHUNK_CT * CHUNK_SIZE

    def update(self, data: Buffer) -> bytearray:
        mv = _view(data)
        out = bytearray(self.output_size(len(mv)))
        written = self.update_into(mv, out)
        if written != len(out):  # pragma: no cover - guards the size model
            del out[written:]
        return out

    def update_into(self, data: Buffer, out: bytearray | memoryview) -> int:
        """``update`` writing the plaintext into ``out`` (at least ``output_size(len(data))``
        bytes, else ``ValueError`` before anything is consumed); returns how many bytes of
        ``out`` now hold authenticated plaintext.  On a ``FormatError`` ``out`` may hold
        unauthenticated bytes: the caller discards them."""
        if not self._body:  # the header not in yet, or failed or finalized (``_fail``, ``finalize``)
            return self._update_head(data, out)
        mv = data if type(data) is bytes else _view(data)
        seen = self._seen + len(mv)
        if seen > self._limit:
            self._fail(TrailingData(f"body longer than the declared {self._expected} bytes"))
        try:
            # checks ``out`` is large enough before it consumes anything (ValueError)
            written: int = self._lib.update_into(mv, out)
        except InvalidTag:
            self._fail(ChunkAuthenticationFailed("S body chunk failed authentication"))
        self._seen = seen
        return written

    def _fail(self, exc: FormatError) -> NoReturn:
        self._body = False  # every later call goes through ``_update_head``'s ``_guard``
        super()._fail(exc)

    def _update_head(self, data: Buffer, out: bytearray | memoryview) -> int:
        """``update_into`` until the header is in and its commitment checked."""
        self._guard()
        mv = _view(data)
        size = self.output_size(len(mv))
        if len(out) < size:
            raise ValueError(f"output buffer of {len(out)} bytes, {size} needed")
        if self._seen + len(mv) > self._limit:
            self._seen += len(mv)
            self._fail(TrailingData(f"body longer than the declared {self._expected} bytes"))
        take = min(S_HEADER_SIZE - len(self._header), len(mv))
        self._header += mv[:take]
        self._seen += take
        if len(self._header) < S_HEADER_SIZE:
            return 0
        try:
            self._lib.update(self._header)  # checks the commitment, returns nothing
        except InvalidTag:
            self._fail(CommitmentMismatch("S body commitment does not match"))
        self._body = True
        return self.update_into(mv[take:], out) if take < len(mv) else 0

    def finalize(self) -> bytearray:
        self._guard()
        if len(self._header) < S_HEADER_SIZE:
            self._fail(Truncated(f"S body of {self._seen} bytes has no complete header"))
        if self._expected is not None and self._seen < self._expected:
            self._fail(Truncated(f"S body ended after {self._seen} of {self._expected} bytes"))
        if self._buffered(self._seen) < TAG_SIZE:
            self._fail(Truncated("S body ends without its final chunk"))
        try:
            tail = self._lib.finalize()
        except InvalidTag:
            self._fail(ChunkAuthenticationFailed("S body final chunk failed authentication"))
        self._finalized = True
        self._body = False
        return bytearray(tail)


class SRangeDecryptor(_ReaderStream):
    """Random-access decryption of plaintext ``[start, end)`` of an S object.

    ``header`` is the body's first 56 bytes, ``p`` the object's plaintext
    size (``s_plaintext_size`` of the backend size) and ``span`` is
    ``s_span(p, start, end)``. Feed body bytes ``[span.ct_start, span.ct_end)``;
    the output is exactly the plaintext ``[start, end)``. The commitment is
    checked in the constructor.
    """

    def __init__(self, dek: Buffer, object_id: Buffer, header: Buffer, p: int, span: ChunkSpan) -> None:
        self._init(dek, s_context(object_id), header, p, span)

    @classmethod
    def _raw(cls, key: Buffer, context: Buffer, header: Buffer, p: int, span: ChunkSpan) -> SRangeDecryptor:
        """A range decryptor for any Cobblestone-256 message (test vectors)."""
        self = cls.__new__(cls)
        self._init(key, context, header, p, span)
        return self

    def _init(self, key: Buffer, context: Buffer, header: Buffer, p: int, span: ChunkSpan) -> None:
        _check_dek(key)
        if len(header) < S_HEADER_SIZE:
            raise Truncated(f"S header of {len(header)} bytes")
        if len(header) != S_HEADER_SIZE:
            raise ValueError(f"S header must be {S_HEADER_SIZE} bytes")
        if p < 0:
            raise ValueError("negative plaintext size")
        _check_span(span, S_HEADER_SIZE, CHUNK_SIZE, p, p // CHUNK_SIZE)
        hdr = bytes(header)
        aead, base, commitment = _split_okm(_cobblestone_okm(key, context, hdr[:SALT_SIZE]))
        if not hmac.compare_digest(commitment, hdr[SALT_SIZE:]):
            raise CommitmentMismatch("S body commitment does not match")

        pt_start = span.first_chunk * CHUNK_SIZE + span.skip
        self.slack = CHUNK_SIZE
        self._reader = _ChunkReader(
            aead, base, CHUNK_SIZE, p, span.first_chunk, span.last_chunk, pt_start, pt_start + span.length
        )
