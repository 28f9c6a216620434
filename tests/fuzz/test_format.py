"""Object format readers (s3proxy/crypto/format.py, crypto/streams.py) fed random, mutated and truncated
ciphertext: the right plaintext or a FormatError, never another exception."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from s3proxy.crypto import streams
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import (
    KObjectDecryptor,
    KPartDecryptor,
    KPartEncryptor,
    SDecryptor,
    SEncryptor,
    SRangeDecryptor,
    parse_k_header,
)
from s3proxy.crypto.sizes import (
    CHUNK_SIZE,
    K_HEADER_SIZE,
    K_PART_OVERHEAD,
    S_HEADER_SIZE,
    k_part_plaintext_size,
    k_span,
    s_plaintext_size,
    s_span,
)
from tests.fuzz.helpers import FUZZ, no_hang

DEK = bytes(range(100, 132))
OID = bytes.fromhex("0f" * 16)

S_SIZES = [0, 1, 15, 16, 17, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 5]
K_SIZES = [0, 1, 2, 100, 1023, 1024, 1025, 3000]


def plaintext(n: int) -> bytes:
    return random.Random(n).randbytes(n)


@functools.cache
def s_object(p: int) -> bytes:
    enc = SEncryptor(DEK, OID)
    return bytes(enc.update(plaintext(p)) + enc.finalize())


@functools.cache
def k_part(p: int, part_number: int) -> bytes:
    enc = KPartEncryptor(DEK, OID, part_number, p)
    return bytes(enc.update(plaintext(p)) + enc.finalize())


def mutate(data: bytes, d: st.DataObject) -> bytes:
    b = bytearray(data)
    for _ in range(d.draw(st.integers(1, 3), label="mutations")):
        kind = d.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend", "swap", "zero", "none"]))
        i = d.draw(st.integers(0, len(b)))
        if kind == "flip" and i < len(b):
            b[i] ^= 1 << d.draw(st.integers(0, 7))
        elif kind == "insert":
            b[i:i] = d.draw(st.binary(min_size=1, max_size=20))
        elif kind == "delete":
            del b[i : i + d.draw(st.integers(1, 40))]
        elif kind == "truncate":
            del b[i:]
        elif kind == "extend":
            b += d.draw(st.binary(min_size=1, max_size=40))
        elif kind == "swap":
            j = d.draw(st.integers(0, len(b)))
            n = d.draw(st.integers(1, 64))
            b[i : i + n], b[j : j + n] = b[j : j + n], b[i : i + n]
        elif kind == "zero":
            n = d.draw(st.integers(1, 64))
            b[i : i + n] = bytes(len(b[i : i + n]))
    return bytes(b)


def cut(data: bytes, d: st.DataObject) -> list[bytes]:
    cuts = sorted(set(d.draw(st.lists(st.integers(0, max(len(data), 1)), max_size=6), label="cuts")))
    pieces, start = [], 0
    for c in [*cuts, len(data)]:
        c = min(max(c, start), len(data))
        pieces.append(data[start:c])
        start = c
    return pieces


def run(make: Callable[[], object], pieces: Sequence[bytes]) -> bytes | FormatError:
    """Construct a decryptor, feed it, finalize: the plaintext or the FormatError (anything else fails the test)."""
    with no_hang():
        try:
            dec = make()
            out = bytearray()
            for piece in pieces:
                got = dec.update(piece)  # type: ignore[attr-defined]
                out += b"".join(got) if isinstance(got, list) else got
            out += dec.finalize()  # type: ignore[attr-defined]
            return bytes(out)
        except FormatError as err:
            assert "\x00" not in str(err) and DEK.hex() not in str(err)
            return err


# -- S layout ---------------------------------------------------------------------


@FUZZ
@given(p=st.sampled_from(S_SIZES) | st.integers(0, 300), sized=st.booleans(), d=st.data())
def test_s_decryptor_mutated(p: int, sized: bool, d: st.DataObject) -> None:
    ct = s_object(p)
    bad = mutate(ct, d)
    result = run(lambda: SDecryptor(DEK, OID, len(bad) if sized else None), cut(bad, d))
    if not isinstance(result, FormatError):
        assert result == plaintext(p), "tampered S body decrypted to something else"
        assert bad == ct or not sized


@FUZZ
@given(p=st.sampled_from(S_SIZES) | st.integers(0, 300), d=st.data())
def test_s_range_decryptor_mutated(p: int, d: st.DataObject) -> None:
    ct = s_object(p)
    bad = mutate(ct, d) if d.draw(st.booleans()) else ct
    try:
        q = s_plaintext_size(len(bad))  # what the proxy derives from the backend size
    except FormatError:
        return
    start = d.draw(st.integers(0, q))
    end = d.draw(st.integers(start, q))
    span = s_span(q, start, end)
    result = run(lambda: SRangeDecryptor(DEK, OID, bad[:S_HEADER_SIZE], q, span), cut(bad[span.ct_start : span.ct_end], d))
    if not isinstance(result, FormatError):
        # Chunks authenticate their index, the final chunk the size: released bytes are genuine.
        assert end <= p and result == plaintext(p)[start:end], (p, q, start, end)
    elif bad == ct:
        raise AssertionError(f"untampered range failed: {result!r}")


@FUZZ
@given(data=st.binary(max_size=400), sized=st.booleans(), d=st.data())
def test_s_decryptor_random_bytes(data: bytes, sized: bool, d: st.DataObject) -> None:
    result = run(lambda: SDecryptor(DEK, OID, len(data) if sized else None), cut(data, d))
    assert isinstance(result, FormatError)


# -- K layout ---------------------------------------------------------------------


@FUZZ
@given(p=st.sampled_from(K_SIZES) | st.integers(0, 300), n=st.integers(1, 10000), d=st.data())
def test_k_part_decryptor_mutated(p: int, n: int, d: st.DataObject) -> None:
    part = k_part(p, n if p < 50 else 1)
    n = parse_k_header(part[:K_HEADER_SIZE]).part_number
    bad = mutate(part, d)
    header = bad[:K_HEADER_SIZE]
    if d.draw(st.booleans()):
        result = run(lambda: KPartDecryptor(DEK, OID, header, len(bad), expected_part_number=n), [bad[K_HEADER_SIZE:]])
        if not isinstance(result, FormatError):
            assert result == plaintext(p) and bad == part
        return
    try:
        q = k_part_plaintext_size(len(bad))
    except FormatError:
        return
    start = d.draw(st.integers(0, q))
    end = d.draw(st.integers(start, q))
    span = k_span(q, start, end)
    result = run(lambda: KPartDecryptor(DEK, OID, header, len(bad), span), cut(bad[span.ct_start : span.ct_end], d))
    if not isinstance(result, FormatError):
        assert result == plaintext(p)[start:end] and q == p
    elif bad == part:
        raise AssertionError(f"untampered range failed: {result!r}")


@st.composite
def k_objects(draw: st.DrawFn) -> tuple[list[int], bytes]:
    sizes = draw(st.lists(st.sampled_from([0, 1, 100, 1025]), min_size=1, max_size=3))
    numbers = sorted(draw(st.lists(st.integers(1, 10000), min_size=len(sizes), max_size=len(sizes), unique=True)))
    return sizes, b"".join(k_part(p, n) for p, n in zip(sizes, numbers, strict=True))


@FUZZ
@given(obj=k_objects(), declared=st.integers(-1, 4), d=st.data())
def test_k_object_decryptors_mutated(obj: tuple[list[int], bytes], declared: int, d: st.DataObject) -> None:
    sizes, ct = obj
    bad = mutate(ct, d) if d.draw(st.booleans()) else ct
    expected = b"".join(plaintext(p) for p in sizes)
    pieces = cut(bad, d)
    n_parts = declared if declared > 0 else len(sizes)
    known = run(lambda: KObjectDecryptor(DEK, OID, n_parts), pieces)
    if isinstance(known, FormatError):
        assert bad != ct or n_parts != len(sizes), known
    else:
        assert known == expected, "tampered K object decrypted to something else"
    unknown = None if declared == 0 else n_parts
    result = run(lambda: streams.KObjectDecryptor(DEK, OID, unknown), pieces)
    if isinstance(result, FormatError):
        assert bad != ct or n_parts != len(sizes), result
    elif unknown is None:
        # Without the part count (no "-N" ETag) a body cut at a part boundary reads as fewer parts.
        prefixes = [b"".join(plaintext(p) for p in sizes[:i]) for i in range(len(sizes) + 1)]
        assert result in prefixes, "tampered K object decrypted to something else"
    else:
        assert result == expected, "tampered K object decrypted to something else"


@FUZZ
@given(data=st.binary(max_size=300), n_parts=st.integers(1, 3), d=st.data())
def test_k_object_random_bytes(data: bytes, n_parts: int, d: st.DataObject) -> None:
    # A plausible header at the front gets the parser past the first checks.
    prefix = d.draw(st.sampled_from([b"", k_part(0, 1)[:K_HEADER_SIZE], b"\x01K\x00\x00\x00\x01" + bytes(8)]))
    body = prefix + data
    pieces = cut(body, d)
    assert isinstance(run(lambda: KObjectDecryptor(DEK, OID, n_parts), pieces), FormatError)
    result = run(lambda: streams.KObjectDecryptor(DEK, OID, None), pieces)
    # Zero parts is a (vacuously) complete object when the part count is unknown.
    assert isinstance(result, FormatError) or (body == b"" and result == b"")


@FUZZ
@given(header=st.binary(max_size=K_HEADER_SIZE))
def test_parse_k_header(header: bytes) -> None:
    try:
        h = parse_k_header(header)
    except FormatError:
        return
    assert len(header) == K_HEADER_SIZE and 1 <= h.part_number <= 10000
    assert h.part_size == h.plaintext_length + K_PART_OVERHEAD and h.encode() == header
