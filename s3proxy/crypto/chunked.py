"""Shared machinery of both body layouts (docs/FORMAT.md 2): the key schedule, the
chunked AES-256-GCM geometry, and the failure latching every stream class uses.

Pure and sans-IO.  The S layout (``crypto.s_body``) and the K layout (``crypto.k_body``)
build on this; ``crypto.format`` is the public face of all three.  The DEK is never shown
in a repr nor put in an exception message; derived keys live only inside ``AESGCM``
objects.

Imports: ``cryptography``, ``crypto.errors`` and ``crypto.sizes``; nothing else of s3proxy.
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn

from cryptography.exceptions import AlreadyFinalized, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.errors import ChunkAuthenticationFailed, FormatError, TrailingData, Truncated
from s3proxy.crypto.sizes import COMMITMENT_SIZE, MAX_PART_NUMBER, NONCE_SIZE, TAG_SIZE, ChunkSpan

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

_K_INFO_TAIL = struct.Struct(">IQ")  # part_number, p

Buffer = bytes | bytearray | memoryview


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

    def output_size(self, n: int) -> int:
        """Plaintext bytes the next ``update`` of ``n`` ciphertext bytes releases (exactly;
        ``TrailingData`` if they go past the last chunk)."""
        cs, p, k = self._cs, self._p, self._k
        x = self._rel(k) + self._fill + n
        if x > self._rel_end:
            raise TrailingData(f"{x - self._rel_end} bytes after the last chunk")
        j = _chunk_count_within(x, cs, p)
        return max(0, min(min(j * cs, p), self._pt_end) - max(min(k * cs, p), self._pt_start))

    def update(self, data: Buffer) -> bytearray:
        mv = _view(data)
        out = bytearray(self.output_size(len(mv)))
        self.update_into(mv, out)
        return out

    def update_into(self, data: Buffer, out: bytearray | memoryview) -> int:
        """``update`` into ``out`` (at least ``output_size(len(data))`` bytes, which is less than
        ``len(data) + cs``: a buffer that large needs no exact size); returns the bytes written.
        On ``ChunkAuthenticationFailed`` ``out`` may hold unverified bytes."""
        mv = memoryview(data) if type(data) is bytes else _view(data)
        n = len(mv)
        cs, p, k, fill = self._cs, self._p, self._k, self._fill
        x = (k * cs if k * cs < p else p) + TAG_SIZE * k + fill + n
        if x > self._rel_end:
            raise TrailingData(f"{x - self._rel_end} bytes after the last chunk")
        if len(out) < n + cs and len(out) < (size := self.output_size(n)):
            raise ValueError(f"output buffer of {len(out)} bytes, {size} needed")
        j = _chunk_count_within(x, cs, p)
        lo, hi = self._pt_start, self._pt_end
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
                    # decrypt_into may have left unverified bytes in ``out``: ``update``
                    # drops it with the exception, ``update_into``'s caller discards it.
                    raise ChunkAuthenticationFailed(f"chunk {k} failed authentication") from None
            rest = n - pos
            if rest:
                self._buf[:rest] = mv[pos:]
            self._fill = rest
            self._k = k
            return w
        self._buf[fill : fill + n] = mv  # no chunk completed: all of it is buffered
        self._fill = fill + n
        return 0

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


class _ReaderStream(_Stream):
    """A decryptor whose chunks come from one ``_ChunkReader`` (``self._reader``, set by the
    subclass's constructor with ``slack``, its chunk size): failures latch, ``finalize``
    checks the span was complete.  ``update_into`` of ``n`` bytes writes at most
    ``n + slack`` bytes: a buffer that large is always enough."""

    _reader: _ChunkReader
    slack: int

    def update(self, data: Buffer) -> bytearray:
        self._guard()
        try:
            return self._reader.update(data)
        except FormatError as exc:
            self._fail(exc)

    def output_size(self, n: int) -> int:
        """Plaintext bytes the next ``update`` of ``n`` ciphertext bytes releases (0 past the
        last chunk: ``update_into`` then raises ``TrailingData``)."""
        try:
            return self._reader.output_size(n)
        except FormatError:
            return 0

    def update_into(self, data: Buffer, out: bytearray | memoryview) -> int:
        """``update`` into ``out`` (at least ``output_size(len(data))`` bytes); returns the bytes
        written.  On a ``FormatError`` ``out`` may hold unverified bytes: discard them."""
        if self._failure is not None or self._finalized:
            self._guard()
        try:
            return self._reader.update_into(data, out)
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


class DekBox:
    """Holds a copy of a DEK for the life of a multi-part read; repr-safe, zeroable."""

    __slots__ = ("value",)

    def __init__(self, dek: Buffer) -> None:
        self.value = bytearray(dek)

    def clear(self) -> None:
        self.value[:] = bytes(len(self.value))

    def __repr__(self) -> str:
        return "<DEK>"
