"""Encrypted body format: S bodies (Cobblestone-256) and K parts (docs/FORMAT.md).

Pure and sans-IO: every class takes bytes-like input in ``update()``,
returns bytes-like output, and never touches a socket or the event loop. The async adapters in
``crypto.streams`` drive these objects.

Rules that hold for every class here:

- Decryptors release plaintext only after the tag of its chunk verified, and
  as soon as a whole chunk is available. After a failure they keep failing.
- Every ``update()``/``finalize()`` returns a freshly allocated ``bytearray``
  that the caller owns: never a view into a reused buffer, and exactly one
  allocation per call (each call plans its output size, then encrypts or
  decrypts straight into it). Returning ``bytes`` would need a second
  MiB-sized allocation per call, which measured 5-8x slower with glibc.
- The DEK is never shown in a repr nor put in an exception message, and not
  stored on an object (except ``KObjectDecryptor``, which keeps a copy it
  zeroes once the last part is read). Derived keys live only inside
  ``AESGCM`` objects (created once per body or part) and the Rust
  Cobblestone state.
- Nonces are ``base_nonce XOR chunk index`` under a key derived from a fresh
  24-byte random salt: a DEK may be reused for any number of bodies and parts.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass
from typing import Final, NoReturn, Protocol

from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
from cryptography.exceptions import AlreadyFinalized, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.errors import (  # re-exported
    BindingMismatch as BindingMismatch,
)
from s3proxy.crypto.errors import (
    ChunkAuthenticationFailed as ChunkAuthenticationFailed,
)
from s3proxy.crypto.errors import (
    CommitmentMismatch as CommitmentMismatch,
)
from s3proxy.crypto.errors import (
    FormatError as FormatError,
)
from s3proxy.crypto.errors import (
    InvalidCiphertextSize as InvalidCiphertextSize,
)
from s3proxy.crypto.errors import (
    InvalidHeader as InvalidHeader,
)
from s3proxy.crypto.errors import (
    InvalidUploadToken as InvalidUploadToken,
)
from s3proxy.crypto.errors import (
    MalformedMetadata as MalformedMetadata,
)
from s3proxy.crypto.errors import (
    ManifestMismatch as ManifestMismatch,
)
from s3proxy.crypto.errors import (
    MetadataTooLarge as MetadataTooLarge,
)
from s3proxy.crypto.errors import (
    PartOrderError as PartOrderError,
)
from s3proxy.crypto.errors import (
    SealAuthenticationFailed as SealAuthenticationFailed,
)
from s3proxy.crypto.errors import (
    TrailingData as TrailingData,
)
from s3proxy.crypto.errors import (
    Truncated as Truncated,
)
from s3proxy.crypto.errors import (
    UnsupportedFormatVersion as UnsupportedFormatVersion,
)
from s3proxy.crypto.sizes import (
    CHUNK_SIZE,
    COMMITMENT_SIZE,
    K_CHUNKS,
    K_HEADER_SIZE,
    K_PART_OVERHEAD,
    MAX_PART_NUMBER,
    NONCE_SIZE,
    S_FULL_CHUNK_CT,
    S_HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    ChunkSpan,
    k_chunk_size,
    s_plaintext_size,
)

__all__ = [
    "DEK_SIZE",
    "FORMAT_VERSION",
    "OBJECT_ID_SIZE",
    "BindingMismatch",
    "ChunkAuthenticationFailed",
    "ManifestMismatch",
    "CommitmentMismatch",
    "FormatError",
    "InvalidCiphertextSize",
    "InvalidHeader",
    "InvalidUploadToken",
    "KObjectDecryptor",
    "KPartDecryptor",
    "KPartEncryptor",
    "KPartHeader",
    "MalformedMetadata",
    "MetadataTooLarge",
    "PartNumberSequence",
    "PartOrderError",
    "SDecryptor",
    "SEncryptor",
    "SRangeDecryptor",
    "SealAuthenticationFailed",
    "TrailingData",
    "Truncated",
    "UnsupportedFormatVersion",
    "parse_k_header",
    "s_context",
]

FORMAT_VERSION: Final = 1
DEK_SIZE: Final = 32
OBJECT_ID_SIZE: Final = 16
KEY_SIZE: Final = 32  # derived AES-256 key

LAYOUT_S: Final = "S"
LAYOUT_K: Final = "K"
_LAYOUT_K_BYTE: Final = 0x4B

S_CONTEXT_PREFIX: Final = b"s3proxy.dev/object@v1\x00S\x00"
K_INFO_LABEL: Final = b"s3proxy.dev/part@v1\x00"
COBBLESTONE_INFO_PREFIX: Final = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"
_OKM_SIZE: Final = KEY_SIZE + NONCE_SIZE + COMMITMENT_SIZE  # 76

_K_HEADER = struct.Struct(">BBIQ")  # version, layout, part_number, plaintext_length (then salt, commitment)
_K_INFO_TAIL = struct.Struct(">IQ")  # part_number, p

Buffer = bytes | bytearray | memoryview


# -- named errors (docs/FORMAT.md section 4) ---------------------------------


# -- key schedule -----------------------------------------------------------------


def _check_dek(dek: Buffer) -> None:
    if len(dek) != DEK_SIZE:
        raise ValueError(f"data key must be {DEK_SIZE} bytes")


def _check_object_id(object_id: Buffer) -> None:
    if len(object_id) != OBJECT_ID_SIZE:
        raise ValueError(f"object id must be {OBJECT_ID_SIZE} bytes")


def _check_part_number(part_number: int) -> None:
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise ValueError(f"part number {part_number} outside 1..{MAX_PART_NUMBER}")


def _expand(prk: Buffer, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA512(), length, info).derive(prk)


def s_context(object_id: Buffer) -> bytes:
    """The Cobblestone context of an S body (40 bytes)."""
    _check_object_id(object_id)
    return S_CONTEXT_PREFIX + bytes(object_id)


def _cobblestone_okm(key: Buffer, context: Buffer, salt: Buffer) -> bytes:
    """key(32) || base_nonce(12) || commitment(32) of a Cobblestone-256 message."""
    _check_dek(key)
    return _expand(key, COBBLESTONE_INFO_PREFIX + bytes(salt) + bytes(context), _OKM_SIZE)


def _k_okm(dek: Buffer, object_id: Buffer, salt: Buffer, part_number: int, p: int) -> bytes:
    """key(32) || base_nonce(12) || commitment(32) of one K part."""
    _check_dek(dek)
    info = K_INFO_LABEL + bytes(salt) + bytes(object_id) + _K_INFO_TAIL.pack(part_number, p)
    return _expand(dek, info, _OKM_SIZE)


def _split_okm(okm: bytes) -> tuple[AESGCM, int, bytes]:
    return (
        AESGCM(okm[:KEY_SIZE]),
        int.from_bytes(okm[KEY_SIZE : KEY_SIZE + NONCE_SIZE], "big"),
        okm[KEY_SIZE + NONCE_SIZE :],
    )


def _nonce(base: int, k: int) -> bytes:
    return (base ^ k).to_bytes(NONCE_SIZE, "big")


def _view(data: Buffer) -> memoryview:
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


# -- shared state handling -------------------------------------------------------


class _Stream:
    """Failure latching and finalisation guard shared by every stream class."""

    _failure: FormatError | None = None
    _finalized: bool = False

    def _guard(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(*self._failure.args)
        if self._finalized:
            raise AlreadyFinalized("Context was already finalized.")

    def _fail(self, exc: FormatError) -> NoReturn:
        self._failure = exc
        raise exc

    def __repr__(self) -> str:  # never show state that could hold key material
        state = "failed" if self._failure else "finalized" if self._finalized else "open"
        return f"<{type(self).__name__} {state}>"


def _check_span(span: ChunkSpan, header_size: int, cs: int, p: int, max_chunk: int) -> None:
    """Reject a span computed for another size: it would only fail later, less clearly."""

    def offset(k: int) -> int:
        return header_size + min(k * cs, p) + TAG_SIZE * k

    first, last = span.first_chunk, span.last_chunk
    if not (
        0 <= first <= last <= max_chunk
        and span.ct_start == offset(first)
        and span.ct_end == offset(last + 1)
        and 0 <= span.skip
        and span.length >= 0
        and min(first * cs, p) + span.skip + span.length <= min((last + 1) * cs, p)
    ):
        raise ValueError("span does not fit this body")


def _chunk_count_within(x: int, cs: int, p: int) -> int:
    """Largest ``j`` with ``min(j*cs, p) + TAG_SIZE*j <= x``: how many whole
    chunks the first ``x`` ciphertext bytes of a stream hold."""
    if cs == 0:
        return x // TAG_SIZE
    uniform = p // cs  # chunks 0..uniform-1 are full-size
    beyond = (x - p) // TAG_SIZE  # candidate in the region where j*cs > p
    return beyond if beyond > uniform else min(x // (cs + TAG_SIZE), uniform)


class _ChunkReader:
    """Decrypts the contiguous chunks ``first..last`` of one chunked AEAD stream.

    Both layouts share one geometry: a stream of plaintext size ``p`` cut into
    chunks of ``cs`` bytes, chunk ``k`` holding plaintext
    ``[min(k*cs, p), min((k+1)*cs, p))`` followed by its tag, so chunk ``k``
    starts ``min(k*cs, p) + 16*k`` bytes into the chunk area. (S: ``cs =
    16384``, last chunk ``p // cs``; K: ``cs = ceil(p / 1024)``, last 1023.)

    Ciphertext is fed from the start of chunk ``first``; out comes plaintext
    ``[pt_start, pt_end)``. Each ``update()`` computes its exact output size
    in closed form, then decrypts straight into one fresh ``bytearray``.
    """

    __slots__ = ("_aead", "_base", "_buf", "_cs", "_fill", "_k", "_p", "_pt_end", "_pt_start", "_rel_end")

    def __init__(
        self, aead: AESGCM, base_nonce: int, cs: int, p: int, first: int, last: int, pt_start: int, pt_end: int
    ) -> None:
        self._aead = aead
        self._base = base_nonce
        self._cs = cs
        self._p = p
        self._k = first
        self._pt_start = pt_start
        self._pt_end = pt_end
        self._rel_end = min((last + 1) * cs, p) + TAG_SIZE * (last + 1)
        self._buf = bytearray(min(cs, p) + TAG_SIZE)
        self._fill = 0

    def _rel(self, k: int) -> int:
        return min(k * self._cs, self._p) + TAG_SIZE * k

    @property
    def done(self) -> bool:
        return self._rel(self._k) == self._rel_end

    def update(self, data: Buffer) -> bytearray:
        mv = _view(data)
        n = len(mv)
        cs, p, k, fill = self._cs, self._p, self._k, self._fill
        x = self._rel(k) + fill + n
        if x > self._rel_end:
            raise TrailingData(f"{x - self._rel_end} bytes after the last chunk")
        j = _chunk_count_within(x, cs, p)
        lo, hi = self._pt_start, self._pt_end
        out = bytearray(max(0, min(min(j * cs, p), hi) - max(min(k * cs, p), lo)))
        pos = 0
        if j > k:
            aead, base = self._aead, self._base
            with memoryview(out) as dst:
                w = 0
                try:
                    if fill:  # complete the buffered chunk
                        ct_len = max(0, min(cs, p - k * cs)) + TAG_SIZE
                        pos = ct_len - fill
                        self._buf[fill:ct_len] = mv[:pos]
                        w = self._open(k, memoryview(self._buf)[:ct_len], dst, w)
                        k += 1
                        fill = 0
                    while k < j:  # whole chunks straight from the input
                        a = k * cs if k * cs < p else p
                        b = a + cs if a + cs < p else p
                        end = pos + (b - a) + TAG_SIZE
                        if lo <= a and b <= hi:
                            nonce = (base ^ k).to_bytes(NONCE_SIZE, "big")
                            aead.decrypt_into(nonce, mv[pos:end], None, dst[w : w + b - a])
                            w += b - a
                        else:
                            w = self._open(k, mv[pos:end], dst, w)
                        pos = end
                        k += 1
                except InvalidTag:
                    # decrypt_into may have left unverified bytes in ``out``;
                    # ``out`` is dropped with the exception, never returned.
                    raise ChunkAuthenticationFailed(f"chunk {k} failed authentication") from None
        rest = n - pos
        if rest:
            self._buf[fill : fill + rest] = mv[pos:]
        self._fill = fill + rest
        self._k = k
        return out

    def _open(self, k: int, ct: memoryview, dst: memoryview, w: int) -> int:
        """Decrypt chunk ``k`` and copy the part of it inside ``[pt_start, pt_end)``."""
        a = min(k * self._cs, self._p)
        pt = self._aead.decrypt(_nonce(self._base, k), ct, None)
        lo = max(self._pt_start - a, 0)
        hi = min(self._pt_end - a, len(pt))
        if hi > lo:
            dst[w : w + hi - lo] = pt[lo:hi]
            return w + hi - lo
        return w

    def finalize(self) -> None:
        if not self.done or self._fill:
            raise Truncated(f"stream ended inside chunk {self._k}")


class _ChunkWriter:
    """Encrypts a plaintext stream into chunks of ``cs`` bytes (same geometry
    as ``_ChunkReader``).

    A full chunk is sealed as soon as its bytes are in, up to ``limit`` full
    chunks (K: ``p // cs``; S: no limit). ``seal_through()`` seals the
    buffered (short, possibly empty) chunk and empty chunks after it. Each
    call returns one fresh ``bytearray``, optionally starting with ``prefix``.
    """

    __slots__ = ("_aead", "_base", "_buf", "_cs", "_fed", "_fill", "_k", "_limit")

    def __init__(self, aead: AESGCM, base_nonce: int, cs: int, limit: int | None) -> None:
        self._aead = aead
        self._base = base_nonce
        self._cs = cs
        self._limit = limit
        self._k = 0
        self._fed = 0
        self._buf = bytearray(cs)
        self._fill = 0

    @property
    def index(self) -> int:
        return self._k

    def update(self, data: Buffer, prefix: bytes = b"") -> bytearray:
        mv = _view(data)
        n = len(mv)
        cs, k, fill = self._cs, self._k, self._fill
        self._fed += n
        j = self._fed // cs if cs else 0
        if self._limit is not None and j > self._limit:
            j = self._limit
        h = len(prefix)
        out = bytearray(h + (j - k) * (cs + TAG_SIZE))
        out[:h] = prefix
        pos = 0
        if j > k:
            aead, base = self._aead, self._base
            with memoryview(out) as dst:
                w = h
                if fill:  # complete the buffered chunk
                    pos = cs - fill
                    self._buf[fill:cs] = mv[:pos]
                    aead.encrypt_into(_nonce(base, k), self._buf, None, dst[w : w + cs + TAG_SIZE])
                    w += cs + TAG_SIZE
                    k += 1
                    fill = 0
                while k < j:  # whole chunks straight from the input
                    nonce = (base ^ k).to_bytes(NONCE_SIZE, "big")
                    aead.encrypt_into(nonce, mv[pos : pos + cs], None, dst[w : w + cs + TAG_SIZE])
                    pos += cs
                    w += cs + TAG_SIZE
                    k += 1
        rest = n - pos
        if rest:
            if fill + rest > cs:
                raise TrailingData("more plaintext than the chunk layout holds")
            self._buf[fill : fill + rest] = mv[pos:]
        self._fill = fill + rest
        self._k = k
        return out

    def seal_through(self, last: int, prefix: bytes = b"") -> bytearray:
        """Seal the buffered bytes (maybe none) as chunk ``index``, then empty
        chunks up to index ``last``."""
        h = len(prefix)
        fill = self._fill
        out = bytearray(h + fill + TAG_SIZE * (last - self._k + 1))
        out[:h] = prefix
        with memoryview(out) as dst, memoryview(self._buf) as buf:
            w = h + fill + TAG_SIZE
            self._aead.encrypt_into(_nonce(self._base, self._k), buf[:fill], None, dst[h:w])
            empty = memoryview(b"")
            for k in range(self._k + 1, last + 1):
                self._aead.encrypt_into(_nonce(self._base, k), empty, None, dst[w : w + TAG_SIZE])
                w += TAG_SIZE
        self._k = last + 1
        self._fill = 0
        return out


# -- S layout ---------------------------------------------------------------------


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
        self._header = bytearray()
        self._seen = 0
        self._buffered = 0  # ciphertext bytes of the current chunk inside the library

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        mv = _view(data)
        self._seen += len(mv)
        if self._expected is not None and self._seen > self._expected:
            self._fail(TrailingData(f"body longer than the declared {self._expected} bytes"))
        if len(self._header) < S_HEADER_SIZE:
            take = min(S_HEADER_SIZE - len(self._header), len(mv))
            self._header += mv[:take]
            mv = mv[take:]
            if len(self._header) < S_HEADER_SIZE:
                return bytearray()
            try:
                self._lib.update(self._header)  # checks the commitment, returns nothing
            except InvalidTag:
                self._fail(CommitmentMismatch("S body commitment does not match"))
        # The library releases a chunk as soon as its 16400 bytes are in (a
        # full-size chunk is never the final one), so the output size is exact.
        full, self._buffered = divmod(self._buffered + len(mv), S_FULL_CHUNK_CT)
        out = bytearray(full * CHUNK_SIZE)
        try:
            written = self._lib.update_into(mv, out)
        except InvalidTag:
            self._fail(ChunkAuthenticationFailed("S body chunk failed authentication"))
        if written != len(out):  # pragma: no cover - guards the size model above
            del out[written:]
        return out

    def finalize(self) -> bytearray:
        self._guard()
        if len(self._header) < S_HEADER_SIZE:
            self._fail(Truncated(f"S body of {self._seen} bytes has no complete header"))
        if self._expected is not None and self._seen < self._expected:
            self._fail(Truncated(f"S body ended after {self._seen} of {self._expected} bytes"))
        if self._buffered < TAG_SIZE:
            self._fail(Truncated("S body ends without its final chunk"))
        try:
            tail = self._lib.finalize()
        except InvalidTag:
            self._fail(ChunkAuthenticationFailed("S body final chunk failed authentication"))
        self._finalized = True
        return bytearray(tail)


class SRangeDecryptor(_Stream):
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
        self._reader = _ChunkReader(
            aead, base, CHUNK_SIZE, p, span.first_chunk, span.last_chunk, pt_start, pt_start + span.length
        )

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        try:
            return self._reader.update(data)
        except FormatError as exc:
            self._fail(exc)

    def finalize(self) -> bytearray:
        self._guard()
        try:
            self._reader.finalize()
        except FormatError as exc:
            self._fail(exc)
        self._finalized = True
        return bytearray()


# -- K layout ---------------------------------------------------------------------


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


class KPartDecryptor(_Stream):
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
        self._reader = _ChunkReader(
            aead, base, cs, p, span.first_chunk, span.last_chunk, pt_start, pt_start + span.length
        )

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        try:
            return self._reader.update(data)
        except FormatError as exc:
            self._fail(exc)

    def finalize(self) -> bytearray:
        self._guard()
        try:
            self._reader.finalize()
        except FormatError as exc:
            self._fail(exc)
        self._finalized = True
        return bytearray()


class PartNumberSequence:
    """Checks that the part numbers met while reading an object strictly increase."""

    def __init__(self) -> None:
        self._last = 0

    def check(self, part_number: int) -> None:
        if part_number <= self._last:
            raise PartOrderError(f"part {part_number} after part {self._last}")
        self._last = part_number


class KObjectDecryptor(_Stream):
    """Streaming whole-object decryption of a K object of ``n_parts`` parts.

    Feed the whole backend body. Each part header gives that part's length,
    so no part-size table is needed; part numbers must strictly increase and
    exactly ``n_parts`` parts (the ETag's ``-N``) must be present.
    """

    def __init__(self, dek: Buffer, object_id: Buffer, n_parts: int) -> None:
        _check_dek(dek)
        _check_object_id(object_id)
        if n_parts < 1:
            raise InvalidCiphertextSize(f"K object with {n_parts} parts")
        self._dek = _DekBox(dek)
        self._object_id = bytes(object_id)
        self._n_parts = n_parts
        self._done = 0  # parts completely read
        self._left = 0  # bytes of the current part still to come
        self._header = bytearray()
        self._part: KPartDecryptor | None = None
        self._order = PartNumberSequence()

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        try:
            pieces = self._update(_view(data))
        except FormatError as exc:
            self._fail(exc)
        if len(pieces) == 1:
            return pieces[0]
        return bytearray().join(pieces)

    def _update(self, mv: memoryview) -> list[bytearray]:
        out: list[bytearray] = []
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
                part = KPartDecryptor(self._dek.value, self._object_id, self._header)
                self._order.check(part.part_number)
                self._part = part
                self._left = part.plaintext_size + K_PART_OVERHEAD - K_HEADER_SIZE
                self._header = bytearray()
            take = min(self._left, len(mv))
            piece = part.update(mv[:take])
            if piece:
                out.append(piece)
            mv = mv[take:]
            self._left -= take
            if self._left == 0:
                part.finalize()
                self._part = None
                self._done += 1
                if self._done == self._n_parts:
                    self._dek.clear()
        return out

    def finalize(self) -> bytearray:
        self._guard()
        if self._done < self._n_parts:
            self._fail(Truncated(f"K object ended in part {self._done + 1} of {self._n_parts}"))
        self._finalized = True
        return bytearray()


class _DekBox:
    """Holds a copy of a DEK for the life of a multi-part read; repr-safe, zeroable."""

    __slots__ = ("value",)

    def __init__(self, dek: Buffer) -> None:
        self.value = bytearray(dek)

    def clear(self) -> None:
        self.value[:] = bytes(len(self.value))

    def __repr__(self) -> str:
        return "<DEK>"
