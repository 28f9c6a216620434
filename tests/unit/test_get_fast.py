"""Decrypt-into for large GETs (issue 11): ``update_into`` equals ``update``, tampering and
truncation are still caught at every boundary, and ``OutBuffers`` never overwrites a piece
that something (a consumer, a transport that has not sent it yet) still holds."""

from __future__ import annotations

import asyncio
import collections
import os
import random
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto import streams
from s3proxy.crypto.errors import (
    ChunkAuthenticationFailed,
    CommitmentMismatch,
    FormatError,
    PartOrderError,
    TrailingData,
    Truncated,
)
from s3proxy.crypto.format import (
    KObjectDecryptor,
    KPartDecryptor,
    KPartEncryptor,
    SDecryptor,
    SEncryptor,
    SRangeDecryptor,
)
from s3proxy.crypto.sizes import CHUNK_SIZE, K_HEADER_SIZE, S_FULL_CHUNK_CT, S_HEADER_SIZE, k_span, s_span
from s3proxy.crypto.streams import OutBuffers, _unshared, decrypt_stream

DEK = bytes(range(100, 132))
OID = bytes.fromhex("0f" * 16)
KiB = 1024
MiB = 1024 * KiB


def s_body(pt: bytes) -> bytes:
    enc = SEncryptor(DEK, OID)
    return bytes(enc.update(pt) + enc.finalize())


def k_part(pt: bytes, number: int = 1) -> bytes:
    enc = KPartEncryptor(DEK, OID, number, len(pt))
    return bytes(enc.update(pt) + enc.finalize())


def cuts(n: int, seed: int, extra: tuple[int, ...] = ()) -> list[int]:
    rnd = random.Random(seed)
    points = {0, n, *[x for x in extra if 0 <= x <= n]}
    points.update(rnd.randrange(n + 1) for _ in range(12))
    return sorted(points)


def split(data: bytes, points: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed_into(dec: SDecryptor | SRangeDecryptor | KPartDecryptor, pieces: list[bytes]) -> bytes:
    out = bytearray()
    for piece in pieces:
        size = dec.output_size(len(piece))
        buf = bytearray(size + 7)  # larger than needed is fine
        n = dec.update_into(piece, buf)
        assert n == size  # output_size is exact
        out += buf[:n]
    return bytes(out + dec.finalize())


def feed_update(dec: SDecryptor | SRangeDecryptor | KPartDecryptor, pieces: list[bytes]) -> list[bytes]:
    return [bytes(dec.update(p)) for p in pieces] + [bytes(dec.finalize())]


# -- update_into is update --------------------------------------------------------------------

S_SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 5 * CHUNK_SIZE + 1234]


@pytest.mark.parametrize("size", S_SIZES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_s_update_into_equals_update(size: int, seed: int) -> None:
    pt = os.urandom(size)
    ct = s_body(pt)
    bounds = (S_HEADER_SIZE - 1, S_HEADER_SIZE, S_HEADER_SIZE + 1, S_HEADER_SIZE + S_FULL_CHUNK_CT,
              S_HEADER_SIZE + S_FULL_CHUNK_CT - 1)
    pieces = split(ct, cuts(len(ct), seed, bounds))
    a, b = SDecryptor(DEK, OID, len(ct)), SDecryptor(DEK, OID, len(ct))
    per_piece = []
    got = bytearray()
    for piece in pieces:
        size_before = a.output_size(len(piece))
        buf = bytearray(size_before)
        n = a.update_into(piece, buf)
        assert n == size_before  # output_size is exact
        per_piece.append(bytes(buf[:n]))
        got += buf[:n]
    got += a.finalize()
    assert bytes(got) == pt
    assert per_piece == feed_update(b, pieces)[:-1]  # piece for piece what update returns


@pytest.mark.parametrize("seed", [4, 5])
def test_s_range_update_into_equals_update(seed: int) -> None:
    p = 7 * CHUNK_SIZE + 99
    pt = os.urandom(p)
    ct = s_body(pt)
    rnd = random.Random(seed)
    for _ in range(6):
        a = rnd.randrange(p)
        b = rnd.randrange(a, p + 1)
        span = s_span(p, a, b)
        body = ct[span.ct_start : span.ct_end]
        pieces = split(body, cuts(len(body), seed))
        dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
        assert feed_into(dec, pieces) == pt[a:b]
        ref = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
        assert b"".join(feed_update(ref, pieces)) == pt[a:b]


@pytest.mark.parametrize("p", [0, 5, 1000, 300 * KiB + 3])
def test_k_part_update_into_equals_update(p: int) -> None:
    pt = os.urandom(p)
    part = k_part(pt)
    body = part[K_HEADER_SIZE:]
    dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part))
    assert feed_into(dec, split(body, cuts(len(body), p))) == pt
    if p:
        a, b = p // 3, p - p // 5
        span = k_span(p, a, b)
        dec = KPartDecryptor(DEK, OID, part[:K_HEADER_SIZE], len(part), span)
        rng_body = part[span.ct_start : span.ct_end]
        assert feed_into(dec, split(rng_body, cuts(len(rng_body), 7))) == pt[a:b]


def test_too_small_buffer_changes_nothing() -> None:
    pt = os.urandom(3 * CHUNK_SIZE)
    ct = s_body(pt)
    dec = SDecryptor(DEK, OID, len(ct))
    need = dec.output_size(len(ct))
    with pytest.raises(ValueError):
        dec.update_into(ct, bytearray(need - 1))
    buf = bytearray(need)
    assert dec.update_into(ct, buf) == need  # the failed call consumed nothing
    assert bytes(buf) + dec.finalize() == pt

    span = s_span(len(pt), 10, 2 * CHUNK_SIZE)
    rdec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], len(pt), span)
    body = ct[span.ct_start : span.ct_end]
    with pytest.raises(ValueError):
        rdec.update_into(body, bytearray(rdec.output_size(len(body)) - 1))
    assert feed_into(rdec, [body]) == pt[10 : 2 * CHUNK_SIZE]


# -- tampering and truncation, through update_into and OutBuffers -----------------------------


async def _aiter(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


def drain(dec: streams.Decryptor, pieces: list[bytes], buffers: OutBuffers | None) -> tuple[bytes, Exception | None]:
    """What ``decrypt_stream`` yields before it stops, and why it stopped."""
    got = bytearray()

    async def run() -> None:
        async for out in decrypt_stream(dec, _aiter(pieces), buffers):
            got.extend(out)

    try:
        asyncio.run(run())
    except FormatError as exc:
        return bytes(got), exc
    return bytes(got), None


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x40
    return bytes(out)


S_PT = 6 * CHUNK_SIZE + 777
C0 = S_HEADER_SIZE  # first chunk
C3 = S_HEADER_SIZE + 3 * S_FULL_CHUNK_CT  # fourth chunk
CUT = (Truncated, ChunkAuthenticationFailed)  # a cut inside a chunk fails that chunk's tag
S_ATTACKS: dict[str, tuple[Callable[[bytes], bytes], type[FormatError] | tuple[type[FormatError], ...], int]] = {
    # name: (tamper, error, authenticated plaintext that may come out before it)
    "salt": (lambda c: _flip(c, 3), CommitmentMismatch, 0),
    "commitment": (lambda c: _flip(c, 40), CommitmentMismatch, 0),
    "chunk-0-first-byte": (lambda c: _flip(c, C0), ChunkAuthenticationFailed, 0),
    "chunk-0-tag": (lambda c: _flip(c, C0 + S_FULL_CHUNK_CT - 1), ChunkAuthenticationFailed, 0),
    "chunk-3": (lambda c: _flip(c, C3 + 100), ChunkAuthenticationFailed, 3 * CHUNK_SIZE),
    "final-tag": (lambda c: _flip(c, len(c) - 1), ChunkAuthenticationFailed, 6 * CHUNK_SIZE),
    "cut-at-chunk-boundary": (lambda c: c[:C3], Truncated, 3 * CHUNK_SIZE),
    "cut-mid-chunk": (lambda c: c[: C3 + 5000], CUT, 3 * CHUNK_SIZE),
    "cut-in-header": (lambda c: c[:30], Truncated, 0),
    "cut-last-16": (lambda c: c[:-16], CUT, 6 * CHUNK_SIZE),
    "appended": (lambda c: c + b"\0" * 16, (TrailingData, ChunkAuthenticationFailed), 6 * CHUNK_SIZE),
    "swapped-chunks": (lambda c: c[:C0] + c[C0 + S_FULL_CHUNK_CT : C0 + 2 * S_FULL_CHUNK_CT]
                       + c[C0 : C0 + S_FULL_CHUNK_CT] + c[C0 + 2 * S_FULL_CHUNK_CT :], ChunkAuthenticationFailed, 0),
}


@pytest.mark.parametrize("attack", list(S_ATTACKS))
@pytest.mark.parametrize("piece", [1000, S_FULL_CHUNK_CT, 3 * S_FULL_CHUNK_CT + 5, 1 << 20])
def test_s_tamper_and_truncation_caught_with_buffers(attack: str, piece: int) -> None:
    pt = os.urandom(S_PT)
    good = s_body(pt)
    tamper, error, may_leak = S_ATTACKS[attack]
    bad = tamper(good)
    pieces = [bad[i : i + piece] for i in range(0, len(bad), piece)]
    # As ``reads._get_full`` builds it: no declared size (the backend's could be the attacker's).
    got, exc = drain(SDecryptor(DEK, OID), pieces, OutBuffers())
    assert isinstance(exc, error), exc
    assert len(got) <= may_leak and pt.startswith(got)  # only authenticated chunks came out
    got_u, exc_u = drain(SDecryptor(DEK, OID), pieces, None)
    # The same failure as without buffers; what was held back (not yet ``FLUSH_AT``) is dropped.
    assert type(exc_u) is type(exc) and got_u.startswith(got)
    # With the honest size declared, any change of length is caught before decrypting.
    got, exc = drain(SDecryptor(DEK, OID, len(good)), pieces, OutBuffers())
    assert isinstance(exc, FormatError) and pt.startswith(got) and len(got) <= may_leak


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 5000])
def test_s_range_truncation_caught_with_buffers(cut: int) -> None:
    p = 5 * CHUNK_SIZE + 10
    pt = os.urandom(p)
    ct = s_body(pt)
    span = s_span(p, 100, 4 * CHUNK_SIZE + 3)
    body = ct[span.ct_start : span.ct_end]
    dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
    got, exc = drain(dec, [body[: len(body) - cut]], OutBuffers())
    assert isinstance(exc, Truncated) and pt[100:].startswith(got)
    dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
    got, exc = drain(dec, [body, b"x"], OutBuffers())
    assert isinstance(exc, TrailingData) and pt[100 : 4 * CHUNK_SIZE + 3].startswith(got)
    dec = SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], p, span)
    got, exc = drain(dec, [_flip(body, len(body) - 20)], OutBuffers())
    assert isinstance(exc, ChunkAuthenticationFailed) and pt[100:].startswith(got)


# -- buffer reuse never leaks or overwrites ---------------------------------------------------


def test_probe_sees_every_kind_of_view() -> None:
    buf = bytearray(100)
    assert _unshared(buf) and len(buf) == 100
    view = memoryview(buf)[:10]
    assert not _unshared(buf)
    cast = memoryview(view).cast("b")  # what uvloop keeps of a written piece
    del view
    assert not _unshared(buf)
    del cast
    assert _unshared(buf)
    with memoryview(buf) as v:
        assert not _unshared(buf)
        v2 = v[1:]
    assert not _unshared(buf)  # the slice outlives the released parent
    v2.release()
    assert _unshared(buf) and len(buf) == 100


def test_pool_reuses_only_free_buffers() -> None:
    pool = OutBuffers(count=2, size=1000)
    a = pool.take(10)
    assert a is not None
    va = memoryview(a)[:10]
    b = pool.take(10)
    assert b is not None and b is not a  # a is held
    vb = memoryview(b)[:10]
    assert pool.take(10) is None  # both held, the pool is full: the caller allocates
    del va
    assert pool.take(10) is a  # a came free
    del vb
    big = pool.take(5000)
    assert big is not None and len(big) >= 5000  # grown in place of a free one
    assert OutBuffers(limit=100).take(101) is None  # a piece above the limit is allocated as before


class LazyTransport:
    """Holds written pieces as uvloop does (a cast view, sent later), and checks at send time
    that every piece still holds what was written."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.queue: collections.deque[tuple[memoryview, bytes]] = collections.deque()
        self.sent = bytearray()

    def write(self, piece: bytes | bytearray | memoryview) -> None:
        self.queue.append((memoryview(piece).cast("b"), bytes(piece)))
        while len(self.queue) > self.backlog:
            self.send_one()

    def send_one(self) -> None:
        view, snapshot = self.queue.popleft()
        assert view.tobytes() == snapshot, "a piece was overwritten before it was sent"
        self.sent += view
        view.release()

    def close(self) -> None:
        while self.queue:
            self.send_one()


@pytest.mark.parametrize("backlog", [0, 1, 3, 10])
def test_pieces_held_by_the_transport_are_never_overwritten(backlog: int) -> None:
    pt = os.urandom(40 * CHUNK_SIZE + 5)
    ct = s_body(pt)
    pieces = split(ct, cuts(len(ct), backlog, tuple(range(0, len(ct), 70 * KiB))))
    transport = LazyTransport(backlog)
    pool = OutBuffers(count=3, size=128 * KiB)  # a piece (< 90 KiB with its slack) never grows one
    seen: set[int] = set()

    async def run() -> None:
        async for out in decrypt_stream(SDecryptor(DEK, OID, len(ct)), _aiter(pieces), pool):
            if isinstance(out, memoryview):
                seen.add(id(out.obj))
            transport.write(out)
            del out  # as send_plaintext's loop variable is rebound

    asyncio.run(run())
    transport.close()
    assert bytes(transport.sent) == pt
    assert len(seen) <= 3  # pooled: at most ``count`` buffers ever handed out
    if backlog == 0:
        assert len(seen) <= 2  # the piece in flight and the next one


def test_kept_pieces_stay_intact() -> None:
    """A consumer that keeps every piece (a list) sees each exactly as it was produced."""
    pt = os.urandom(30 * CHUNK_SIZE)
    ct = s_body(pt)
    pieces = [ct[i : i + 50 * KiB] for i in range(0, len(ct), 50 * KiB)]
    kept: list[bytes | bytearray | memoryview] = []

    async def run() -> None:
        async for out in decrypt_stream(SDecryptor(DEK, OID, len(ct)), _aiter(pieces), OutBuffers(count=2)):
            kept.append(out)

    asyncio.run(run())
    assert b"".join(bytes(k) for k in kept) == pt


def test_failed_piece_never_reaches_a_later_piece() -> None:
    """Unverified bytes a failed ``update_into`` left in a pooled buffer are never handed out:
    the stream ends at the failure."""
    pt = os.urandom(8 * CHUNK_SIZE)
    ct = bytearray(s_body(pt))
    ct[S_HEADER_SIZE + 5 * S_FULL_CHUNK_CT + 7] ^= 1
    pool = OutBuffers(count=1, size=1 << 20)
    got, exc = drain(SDecryptor(DEK, OID, len(ct)), [bytes(ct[: S_HEADER_SIZE + 2 * S_FULL_CHUNK_CT]),
                                                      bytes(ct[S_HEADER_SIZE + 2 * S_FULL_CHUNK_CT :])], pool)
    assert isinstance(exc, ChunkAuthenticationFailed)
    assert pt.startswith(got) and len(got) <= 2 * CHUNK_SIZE


# -- K objects (multipart) --------------------------------------------------------------------


def k_object(parts: list[tuple[int, bytes]]) -> bytes:
    return b"".join(k_part(pt, pn) for pn, pt in parts)


K_PARTS = [(1, os.urandom(300 * KiB + 5)), (2, os.urandom(7)), (4, b""), (5, os.urandom(90 * KiB))]
K_BODY = k_object(K_PARTS)
K_PT = b"".join(pt for _, pt in K_PARTS)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("n_parts", [4, None])
def test_k_object_update_into_equals_update(seed: int, n_parts: int | None) -> None:
    offsets, off = [], 0
    for _, pt in K_PARTS:  # every part boundary and the ends of every header
        offsets += [off, off + K_HEADER_SIZE - 1, off + K_HEADER_SIZE]
        off += len(k_part(pt))
    pieces = split(K_BODY, cuts(len(K_BODY), seed, tuple(offsets)))
    a, b = KObjectDecryptor(DEK, OID, n_parts), KObjectDecryptor(DEK, OID, n_parts)
    got = bytearray()
    for piece in pieces:
        bound = a.output_size(len(piece))
        buf = bytearray(bound)
        n = a.update_into(piece, buf)
        assert n <= bound
        ref = b.update(piece)
        assert buf[:n] == ref  # piece for piece what update returns
        got += buf[:n]
    assert bytes(got + a.finalize()) == K_PT
    b.finalize()


K_P1 = len(k_part(K_PARTS[0][1]))
K_ATTACKS: dict[str, Callable[[bytes], bytes]] = {
    "part-1-chunk": lambda c: _flip(c, K_HEADER_SIZE + 5000),
    "part-2-header": lambda c: _flip(c, K_P1 + 30),
    "cut-at-part-boundary": lambda c: c[:K_P1],
    "cut-in-header": lambda c: c[: K_P1 + 10],
    "cut-mid-chunk": lambda c: c[: K_P1 - 100],
    "appended": lambda c: c + b"\0" * 20,
    "parts-swapped": lambda c: c[K_P1 : K_P1 + len(k_part(K_PARTS[1][1]))] + c[:K_P1] + c[K_P1 + len(k_part(K_PARTS[1][1])) :],
}


@pytest.mark.parametrize("attack", list(K_ATTACKS))
@pytest.mark.parametrize("piece", [777, 64 * KiB, 1 << 20])
def test_k_tamper_and_truncation_caught_with_buffers(attack: str, piece: int) -> None:
    bad = K_ATTACKS[attack](K_BODY)
    pieces = [bad[i : i + piece] for i in range(0, len(bad), piece)]
    got, exc = drain(KObjectDecryptor(DEK, OID, len(K_PARTS)), pieces, OutBuffers())
    assert isinstance(exc, FormatError), exc
    if attack == "parts-swapped":
        # Part 2 first is a well-formed object start by itself (part numbers need only increase;
        # the manifest, when there is one, pins the order): caught at the next header.
        assert got in (b"", K_PARTS[1][1]) and isinstance(exc, PartOrderError)
    else:
        assert K_PT.startswith(got)
    got_u, exc_u = drain(KObjectDecryptor(DEK, OID, len(K_PARTS)), pieces, None)
    assert type(exc_u) is type(exc) and got_u.startswith(got)


def test_k_object_too_small_buffer_changes_nothing() -> None:
    dec = KObjectDecryptor(DEK, OID, len(K_PARTS))
    first = K_BODY[:100 * KiB]
    with pytest.raises(ValueError):
        dec.update_into(first, bytearray(dec.output_size(len(first)) - 1))
    buf = bytearray(dec.output_size(len(K_BODY)))
    with pytest.raises(ValueError):
        dec.update_into(K_BODY, bytearray(0))
    n = dec.update_into(K_BODY, buf)
    assert bytes(buf[:n]) + dec.finalize() == K_PT


# -- property: any split, any pool, the same plaintext ----------------------------------------


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5 * CHUNK_SIZE + 100), cut_seed=st.integers(0, 2**32), count=st.integers(1, 4),
       keep=st.integers(0, 3))
def test_property_any_split_reads_back(size: int, cut_seed: int, count: int, keep: int) -> None:
    pt = random.Random(size).randbytes(size)
    ct = s_body(pt)
    pieces = split(ct, cuts(len(ct), cut_seed, (S_HEADER_SIZE,)))
    held: collections.deque[memoryview] = collections.deque()
    got = bytearray()

    async def run() -> None:
        async for out in decrypt_stream(SDecryptor(DEK, OID), _aiter(pieces), OutBuffers(count=count, size=4 * KiB)):
            held.append(memoryview(out))  # a transport keeping the last ``keep`` pieces
            while len(held) > keep:
                got.extend(held.popleft())

    asyncio.run(run())
    while held:
        got.extend(held.popleft())
    assert bytes(got) == pt


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40 * KiB), min_size=1, max_size=4), cut_seed=st.integers(0, 2**32))
def test_property_k_object_any_split(sizes: list[int], cut_seed: int) -> None:
    parts = [(i + 1, random.Random(i * 7 + n).randbytes(n)) for i, n in enumerate(sizes)]
    body = k_object(parts)
    pieces = split(body, cuts(len(body), cut_seed))
    got, exc = drain(KObjectDecryptor(DEK, OID, len(parts)), pieces, OutBuffers(count=2, size=4 * KiB))
    assert exc is None and got == b"".join(pt for _, pt in parts)


# -- coalescing (issue 11, second step): one write per FLUSH_AT, slack bounds, latching -------


@pytest.mark.parametrize("piece", [1000, 16 * KiB, 64 * KiB + 3, 200 * KiB])
def test_small_backend_pieces_coalesce_into_flush_at_writes(piece: int) -> None:
    pt = os.urandom(2 * MiB + 12345)
    ct = s_body(pt)
    pieces = [ct[i : i + piece] for i in range(0, len(ct), piece)]
    outs: list[int] = []
    got = bytearray()

    async def run() -> None:
        async for out in streams.decrypt_batches(SDecryptor(DEK, OID, len(ct)), _aiter([pieces]), OutBuffers()):
            outs.append(len(out))
            got.extend(out)

    asyncio.run(run())
    assert bytes(got) == pt
    assert all(n >= streams.FLUSH_AT for n in outs[:-1])  # every write but the last is full-size
    assert len(outs) <= len(pt) // streams.FLUSH_AT + 1


def test_batches_and_one_by_one_agree_for_k_objects() -> None:
    pieces = split(K_BODY, cuts(len(K_BODY), 11))
    got, exc = drain(KObjectDecryptor(DEK, OID, len(K_PARTS)), pieces, OutBuffers())
    assert exc is None and got == K_PT
    out = bytearray()

    async def run() -> None:
        async for o in streams.decrypt_batches(KObjectDecryptor(DEK, OID, len(K_PARTS)), _aiter([pieces[:3], pieces[3:]]),
                                               OutBuffers(count=2, size=8 * KiB)):
            out.extend(o)

    asyncio.run(run())
    assert bytes(out) == K_PT


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slack_bounds_every_update_into(seed: int) -> None:
    """``update_into`` of ``n`` bytes never needs more than ``n + slack`` bytes of buffer."""
    pt = os.urandom(9 * CHUNK_SIZE + 77)
    ct = s_body(pt)
    decs: list[tuple[streams.IntoDecryptor, bytes, bytes]] = [(SDecryptor(DEK, OID, len(ct)), ct, pt)]
    span = s_span(len(pt), 5000, 7 * CHUNK_SIZE + 1)
    decs.append((SRangeDecryptor(DEK, OID, ct[:S_HEADER_SIZE], len(pt), span), ct[span.ct_start : span.ct_end],
                 pt[5000 : 7 * CHUNK_SIZE + 1]))
    decs.append((KObjectDecryptor(DEK, OID, len(K_PARTS)), K_BODY, K_PT))
    for dec, body, want in decs:
        got = bytearray()
        for piece in split(body, cuts(len(body), seed)):
            buf = bytearray(len(piece) + dec.slack)  # exactly the bound
            n = dec.update_into(piece, memoryview(buf))
            assert n <= len(piece) + dec.slack
            got += buf[:n]
        got += dec.finalize()
        assert bytes(got) == want


def test_s_failure_and_finalize_latch_on_the_fast_path() -> None:
    pt = os.urandom(4 * CHUNK_SIZE)
    ct = bytearray(s_body(pt))
    ct[S_HEADER_SIZE + S_FULL_CHUNK_CT + 3] ^= 1
    dec = SDecryptor(DEK, OID, len(ct))
    buf = bytearray(len(ct) + CHUNK_SIZE)
    assert dec.update_into(bytes(ct[: S_HEADER_SIZE + 100]), buf) == 0
    with pytest.raises(ChunkAuthenticationFailed):
        dec.update_into(bytes(ct[S_HEADER_SIZE + 100 :]), buf)
    with pytest.raises(ChunkAuthenticationFailed):  # latched: no later piece gets through
        dec.update_into(b"x" * 10, buf)
    good = s_body(pt)
    dec = SDecryptor(DEK, OID, len(good))
    n = dec.update_into(good, buf)
    assert bytes(buf[:n]) + dec.finalize() == pt
    from cryptography.exceptions import AlreadyFinalized

    with pytest.raises(AlreadyFinalized):
        dec.update_into(b"", buf)
    dec = SDecryptor(DEK, OID, len(good))
    with pytest.raises(TrailingData):  # a declared size is enforced before decrypting
        dec.update_into(good + b"\0", buf)
