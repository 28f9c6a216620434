"""Async adapters over the pure format: drive a ``crypto.format`` decryptor through an async
iterator of ciphertext pieces (``decrypt_stream``; ``decrypt_batches``: into reused buffers,
handed on ``FLUSH_AT`` bytes at a time), the part-table planner of
``crypto.k_table`` through a ``fetch(start, end)`` callable (``k_part_table``), and ranged
reads (``decrypt_s_range``, ``decrypt_k_range``) planned with ``crypto.sizes`` (``s_span``,
``k_object_spans``), fetching headers through ``fetch`` and chunks through ``stream``.

There is one reader of whole K objects, ``crypto.format.KObjectDecryptor`` (in
``crypto.k_body``); it is importable from here too for the callers that always did.
No I/O of its own: the caller's iterator does the fetching.

Imports: ``crypto.chunked``, ``crypto.k_body``, ``crypto.s_body``, ``crypto.k_table`` and ``crypto.sizes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol, cast

from s3proxy.crypto.chunked import Buffer
from s3proxy.crypto.k_body import KObjectDecryptor, KPartDecryptor, PartNumberSequence
from s3proxy.crypto.k_table import HeaderWalk, PartTable, check_part_count, confirm_guess, part_info, uniform_guess
from s3proxy.crypto.s_body import SRangeDecryptor
from s3proxy.crypto.sizes import K_HEADER_SIZE, K_PART_OVERHEAD, k_object_spans, s_span

__all__ = ["FLUSH_AT", "Decryptor", "Fetch", "IntoDecryptor", "KObjectDecryptor", "OutBuffers", "Stream", "decrypt_batches",
           "decrypt_k_range", "decrypt_s_range", "decrypt_stream", "k_part_table"]


class Decryptor(Protocol):
    def update(self, data: Buffer, /) -> bytearray: ...
    def finalize(self) -> bytearray: ...


class IntoDecryptor(Decryptor, Protocol):
    """A decryptor that can write into a caller's buffer: ``update_into(data, out)`` of ``n``
    bytes writes at most ``n + slack`` bytes (``slack`` read just before the call)."""

    slack: int

    def update_into(self, data: Buffer, out: memoryview, /) -> int: ...


# ``decrypt_batches`` hands plaintext on once it holds this much (or the ciphertext ended):
# a write of at least this size to the client instead of one per backend piece (issue 11).
FLUSH_AT = 256 * 1024
# A pooled buffer: ``FLUSH_AT`` of plaintext less a byte, then one more backend piece (uvloop
# reads at most 256 KiB at a time) with a chunk of slack.
BUFFER_SIZE = FLUSH_AT + 272 * 1024


class OutBuffers:
    """Buffers ``decrypt_batches`` decrypts into instead of a new ``bytearray`` per piece
    (issue 11: the allocation's zero-fill was ~6% of a large GET's CPU), for one response.

    The pieces handed out are ``memoryview`` slices of these buffers.  A buffer is written again
    only when no view of it is alive anywhere: a transport that has not sent a piece yet holds a
    view of it (uvloop, asyncio's transports since Python 3.12, a TLS write backlog), and so does
    a consumer that keeps a piece.  CPython refuses to resize a ``bytearray`` while any view of it
    exists, which is the probe (``_unshared``): a piece is never overwritten before it is sent,
    whatever the event loop.  All buffers busy, or a piece larger than ``limit``: ``take``
    returns None and the caller allocates as before.  ``size`` holds ``FLUSH_AT`` of plaintext
    plus one more backend piece (uvloop reads at most 256 KiB) and a chunk: at most ``count``
    such buffers per response.
    """

    __slots__ = ("_bufs", "_count", "_limit", "_size")

    def __init__(self, count: int = 4, size: int = BUFFER_SIZE, limit: int = 1 << 20) -> None:
        self._bufs: list[bytearray] = []
        self._count = count
        self._size = size
        self._limit = limit

    def take(self, need: int) -> bytearray | None:
        """A buffer of at least ``need`` bytes that nothing else can see, or None."""
        if need > self._limit:
            return None
        bufs = self._bufs
        for i, buf in enumerate(bufs):
            if _unshared(buf):
                if len(buf) < need:
                    buf = bufs[i] = _new_buffer(need)
                return buf
        if len(bufs) < self._count:
            buf = _new_buffer(max(need, self._size))
            bufs.append(buf)
            return buf
        return None


def _new_buffer(size: int) -> bytearray:
    buf = bytearray(size + 1)
    del buf[-1]  # leaves room for the probe's one byte: it never reallocates
    return buf


def _unshared(buf: bytearray) -> bool:
    """True when no view of ``buf`` is alive (``bytearray`` refuses to resize while one is)."""
    try:
        buf.append(0)
    except BufferError:
        return False
    del buf[-1]
    return True


async def decrypt_stream(
    dec: Decryptor, ciphertext: AsyncIterable[Buffer], buffers: OutBuffers | None = None
) -> AsyncIterator[bytearray | memoryview]:
    """Authenticated plaintext of ``ciphertext``, piece by piece, as ``dec`` releases it.

    A ``FormatError`` propagates at the failing piece; nothing unverified is yielded.
    With ``buffers`` and a decryptor that has ``update_into`` (every whole-body and range
    decryptor), ``decrypt_batches``: ``memoryview``s of those buffers of at least ``FLUSH_AT``
    bytes each; else a fresh ``bytearray`` per piece.
    A ``KObjectDecryptor`` abandoned mid-body (the consumer stops early) has its DEK copy
    zeroed when this generator closes.
    """
    if buffers is not None and hasattr(dec, "update_into") and hasattr(dec, "slack"):
        async for out in decrypt_batches(cast(IntoDecryptor, dec), _one_by_one(ciphertext), buffers):
            yield out
        return
    try:
        async for piece in ciphertext:
            out = dec.update(piece)
            if out:
                yield out
        tail = dec.finalize()
        if tail:
            yield tail
    finally:
        if isinstance(dec, KObjectDecryptor):
            dec.close()


_NO_VIEW = memoryview(b"")


async def _one_by_one(ciphertext: AsyncIterable[Buffer]) -> AsyncIterator[tuple[Buffer]]:
    async for piece in ciphertext:
        yield (piece,)


async def decrypt_batches(
    dec: IntoDecryptor, batches: AsyncIterable[Iterable[Buffer]], buffers: OutBuffers, flush_at: int = FLUSH_AT
) -> AsyncIterator[bytearray | memoryview]:
    """Authenticated plaintext of the ciphertext pieces of ``batches`` (a batch: the pieces
    a backend read had ready), in pieces of at least ``flush_at`` bytes but the last.

    Each ciphertext piece is decrypted straight into one of ``buffers`` (``update_into``), after
    the plaintext already there; the buffer is handed on (a ``memoryview`` of it) once it holds
    ``flush_at`` bytes, or when the next piece might not fit, or at the end: one write to the
    client per ``flush_at`` bytes however small the backend's pieces.  Only authenticated bytes
    are handed on, and a buffer is never written again while a view of it is alive (the rule
    of ``OutBuffers``); the plaintext held is at most one buffer.  A ``FormatError``
    propagates at the failing piece and what was held is dropped with it.  No free buffer, or
    a piece too large for one: that piece comes out of ``update`` as its own ``bytearray``.
    """
    into, take = dec.update_into, buffers.take
    view = _NO_VIEW  # of the buffer being filled: ``w`` bytes written, ``room`` left
    w = room = 0
    try:
        async for batch in batches:
            for piece in batch:
                need = len(piece) + dec.slack
                if need > room:  # send what is held (if any), then a free buffer
                    if w:
                        yield view[:w]
                    view = _NO_VIEW  # our own view goes before the pool probes
                    w = room = 0
                    buf = take(need)
                    if buf is None:
                        out = dec.update(piece)
                        if out:
                            yield out
                        continue
                    view = memoryview(buf)
                    room = len(buf)
                n = into(piece, view[w:])
                w += n
                room -= n
                if w >= flush_at:
                    yield view[:w]
                    view = _NO_VIEW
                    w = room = 0
        tail = dec.finalize()  # the last chunk (S): with what is held when it fits, one write
        if tail and len(tail) <= room:
            view[w : w + len(tail)] = tail
            w += len(tail)
            tail = bytearray()
        if w:
            yield view[:w]
        view = _NO_VIEW
        if tail:
            yield tail
    finally:
        view = _NO_VIEW
        if isinstance(dec, KObjectDecryptor):
            dec.close()


Fetch = Callable[[int, int], Awaitable[Buffer]]


async def k_part_table(fetch: Fetch, ct_total: int, n: int | None, first_header: Buffer | None = None) -> PartTable:
    """The part table of a K object of ``ct_total`` stored bytes (``n``: the ETag's ``-N``), reading
    only part headers through ``fetch(start, end)`` (bytes ``[start, end)`` of the stored object):
    the uniform guess, its headers fetched together, else a walk.  Raises a ``FormatError``
    (the handlers' integrity error) when the headers do not make a table."""
    check_part_count(n)
    first = first_header if first_header is not None else await fetch(0, K_HEADER_SIZE)
    first_size, first_number = part_info(first)
    guess = uniform_guess(ct_total, n, first_size)
    if guess is not None:
        headers = await asyncio.gather(*(fetch(off, off + K_HEADER_SIZE) for off, _ in guess[1:]))
        if confirm_guess(guess, first_number, headers):
            return guess
    walk = HeaderWalk(ct_total, n)
    walk.feed(first)
    while (off := walk.next_offset) is not None:
        walk.feed(await fetch(off, off + K_HEADER_SIZE))
    return walk.table()


Stream = Callable[[int, int], AsyncIterator[Buffer]]


async def decrypt_s_range(
    dek: Buffer, object_id: Buffer, header: Buffer, p: int, start: int, end: int, stream: Stream,
    buffers: OutBuffers | None = None,
) -> AsyncIterator[bytearray | memoryview]:
    """Plaintext ``[start, end)`` of an S object of plaintext size ``p`` (``header``: its first
    56 bytes), streaming only the chunks it needs through ``stream(ct_start, ct_end)``;
    ``buffers`` as for ``decrypt_stream``."""
    span = s_span(p, start, end)
    dec = SRangeDecryptor(dek, object_id, header, p, span)
    async for out in decrypt_stream(dec, stream(span.ct_start, span.ct_end), buffers):
        yield out


async def decrypt_k_range(
    dek: Buffer, object_id: Buffer, table: PartTable, start: int, end: int, fetch: Fetch, stream: Stream,
    buffers: OutBuffers | None = None,
) -> AsyncIterator[bytearray | memoryview]:
    """Plaintext ``[start, end)`` of a K object with part table ``table``: for each part the range
    touches, its header through ``fetch``, then only the chunks needed through ``stream``.  The
    parts read must have strictly increasing numbers (``PartOrderError``)."""
    order = PartNumberSequence()
    for piece in k_object_spans([c - K_PART_OVERHEAD for _, c in table], start, end):
        off, c = table[piece.index]
        kd = KPartDecryptor(dek, object_id, await fetch(off, off + K_HEADER_SIZE), c, piece.span)
        order.check(kd.part_number)
        async for out in decrypt_stream(kd, stream(off + piece.span.ct_start, off + piece.span.ct_end), buffers):
            yield out
