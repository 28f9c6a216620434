"""aws-chunked decoding (s3proxy/aws/awschunked.py): any body, cut anywhere, decodes or fails with a 4xx."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from s3proxy.aws.awschunked import AwsChunkedError, ChunkedDecoder, ChunkSigning
from s3proxy.aws.sigv4 import chunk_signature, derive_signing_key, trailer_signature
from tests.fuzz.helpers import FUZZ, check_s3_error, no_hang

KEY = derive_signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3")
SIGNING = ChunkSigning(KEY, "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", "a" * 64)
MODES = {
    "signed": (SIGNING, False),
    "signed-trailer": (SIGNING, True),
    "unsigned-trailer": (None, True),
    "unsigned": (None, False),
}
mode_names = st.sampled_from(sorted(MODES))


def encode(chunks: Sequence[bytes], signing: ChunkSigning | None, trailers: Sequence[tuple[str, str]] | None) -> bytes:
    out = bytearray()
    prev = signing.seed_signature if signing else ""
    for data in [*chunks, b""]:
        if signing is not None:
            prev = chunk_signature(signing.signing_key, signing.amz_date, signing.scope, prev, hashlib.sha256(data).hexdigest())
            out += f"{len(data):x};chunk-signature={prev}\r\n".encode()
        else:
            out += f"{len(data):x}\r\n".encode()
        if data:
            out += data + b"\r\n"
    if trailers is None:
        return bytes(out + b"\r\n")
    out += b"".join(f"{n}:{v}\r\n".encode() for n, v in trailers)
    if signing is not None:
        canon = b"".join(f"{n}:{v}\n".encode() for n, v in trailers)
        sig = trailer_signature(signing.signing_key, signing.amz_date, signing.scope, prev, canon)
        out += f"x-amz-trailer-signature:{sig}\r\n".encode()
    return bytes(out + b"\r\n")


Result = tuple[bytes, dict[str, str]] | str  # (payload, trailers) or an error code


def decode(body: bytes, cuts: Sequence[int], mode: str, decoded_length: int | None = None, **kw: int) -> Result:
    """Feed ``body`` cut at ``cuts``; the decoded payload and trailers, or the S3 error code."""
    signing, trailer = MODES[mode]
    d = ChunkedDecoder(signing=signing, trailer=trailer, decoded_length=decoded_length, **kw)
    out = bytearray()
    start = 0
    with no_hang():
        try:
            for cut in [*sorted(set(cuts)), len(body)]:
                cut = min(max(cut, start), len(body))
                pieces = d.feed(body[start:cut])
                for piece in pieces:
                    assert isinstance(piece, bytes | memoryview)
                    out += piece
                start = cut
            d.finish()
        except AwsChunkedError as err:
            check_s3_error(err)
            # A failed decoder keeps failing with the same error.
            for again in (lambda: d.feed(b"0"), d.finish):
                try:
                    again()
                except AwsChunkedError as err2:
                    assert err2.code == err.code
                else:
                    raise AssertionError("a failed decoder accepted more input")
            return err.code
    assert d.done
    assert d.decoded_bytes == len(out)
    if decoded_length is not None:
        assert len(out) == decoded_length
    return bytes(out), dict(d.trailers)


# Bytes a chunk header line is made of, and look-alikes that must not be accepted.
FRAMING = [b"\r\n", b"\r", b"\n", b";", b"chunk-signature=", b"0", b"1", b"a", b"F", b"10", b"ffffffffffffffff",
           b"1" * 17, b"x-amz-checksum-crc32:", b"x-amz-trailer-signature:", b"AAAAAA==", b":", b" ", b"\t",
           "²".encode(), "٣".encode(), "１".encode(), b"+1", b"-1", b"0x1", b"1_0", b"\x00", b"\xff", b"a" * 64]
framing_bytes = st.lists(st.sampled_from(FRAMING) | st.binary(max_size=8), max_size=30).map(b"".join)


@FUZZ
@given(body=framing_bytes | st.binary(max_size=200), mode=mode_names, cuts=st.lists(st.integers(0, 200), max_size=8),
       declared=st.none() | st.integers(0, 40))
def test_random_bodies(body: bytes, mode: str, cuts: list[int], declared: int | None) -> None:
    whole = decode(body, [], mode, declared)
    split = decode(body, cuts, mode, declared)
    assert whole == split, (whole, split)
    if isinstance(whole, tuple):
        assert declared is None or len(whole[0]) == declared


@st.composite
def valid_bodies(draw: st.DrawFn) -> tuple[str, list[bytes], list[tuple[str, str]], bytes]:
    mode = draw(mode_names)
    signing, trailer = MODES[mode]
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    trailers = draw(st.lists(st.sampled_from([("x-amz-checksum-crc32", "NSRBwg=="), ("x-amz-meta-x", "y z"), ("x-amz-checksum-sha256", "")]),
                             max_size=2, unique_by=lambda t: t[0])) if trailer else []
    return mode, chunks, trailers, encode(chunks, signing, trailers if trailer else None)


@FUZZ
@given(case=valid_bodies(), data=st.data())
def test_valid_bodies_any_split(case: tuple[str, list[bytes], list[tuple[str, str]], bytes], data: st.DataObject) -> None:
    mode, chunks, trailers, body = case
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
    expected = (b"".join(chunks), dict(trailers))
    assert decode(body, cuts, mode) == expected
    assert decode(body, cuts, mode, len(expected[0])) == expected


def mutate(body: bytes, data: st.DataObject) -> bytes:
    b = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "replace", "dup"]))
        i = data.draw(st.integers(0, len(b)))
        if kind == "flip" and i < len(b):
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            b[i:i] = data.draw(st.sampled_from(FRAMING) | st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del b[i : i + data.draw(st.integers(1, 4))]
        elif kind == "truncate":
            del b[i:]
        elif kind == "replace" and i < len(b):
            b[i : i + 1] = data.draw(st.sampled_from(FRAMING))
        elif kind == "dup":
            j = data.draw(st.integers(i, len(b)))
            b[j:j] = b[i:j]
    return bytes(b)


@FUZZ
@given(case=valid_bodies(), data=st.data())
def test_mutated_bodies(case: tuple[str, list[bytes], list[tuple[str, str]], bytes], data: st.DataObject) -> None:
    mode, chunks, trailers, body = case
    bad = mutate(body, data)
    cuts = data.draw(st.lists(st.integers(0, len(bad)), max_size=6))
    whole = decode(bad, [], mode)
    assert decode(bad, cuts, mode) == whole
    if isinstance(whole, tuple) and mode.startswith("signed"):
        # Signatures cover every payload byte and the trailers.
        assert whole[0] == b"".join(chunks), (bad, whole)
        if mode == "signed-trailer":
            assert whole[1] == dict(trailers)


@FUZZ
@given(case=valid_bodies(), data=st.data())
def test_every_byte_boundary(case: tuple[str, list[bytes], list[tuple[str, str]], bytes], data: st.DataObject) -> None:
    mode, chunks, trailers, body = case
    expected = (b"".join(chunks), dict(trailers))
    assert decode(body, range(len(body)), mode) == expected  # one byte at a time
    for n in data.draw(st.lists(st.integers(0, len(body) - 1), max_size=20)):
        # Every proper prefix is incomplete, except in trailer mode one that ends after a whole
        # trailer line (the closing empty line is optional).
        got = decode(body[:n], [], mode)
        assert got == "IncompleteBody" or (MODES[mode][1] and isinstance(got, tuple)), (n, got)


size_lines = st.sampled_from(["²", "٣", "１", "+1", "-1", " 1", "1 ", "0x1", "1_0", "", "g", "1" * 17, "0" * 17 + "1", "1;", "1;x=y"]) | st.text(max_size=6)


@FUZZ
@given(size=size_lines, mode=st.sampled_from(["unsigned", "unsigned-trailer", "signed"]))
def test_chunk_size_lines(size: str, mode: str) -> None:
    """A chunk size is 1-16 ASCII hex digits; anything else is a 400 (or a 403 in signed mode)."""
    raw = size.encode("utf-8", "surrogatepass")
    if mode == "signed":
        raw += b";chunk-signature=" + b"0" * 64
    body = raw + b"\r\nx\r\n0\r\n\r\n"
    got = decode(body, [], mode)
    if re.fullmatch(rb"[0-9a-fA-F]{1,16}", size.encode("utf-8", "surrogatepass")) is None:
        assert got in ("InvalidRequest", "SignatureDoesNotMatch"), (size, got)


@FUZZ
@given(header=st.integers(1, 100), trailer=st.integers(1, 200), case=valid_bodies(), data=st.data())
def test_small_limits(header: int, trailer: int, case: tuple[str, list[bytes], list[tuple[str, str]], bytes], data: st.DataObject) -> None:
    mode, _, _, body = case
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=6))
    assert decode(body, cuts, mode, max_chunk_header=header, max_trailer_bytes=trailer) == decode(
        body, [], mode, max_chunk_header=header, max_trailer_bytes=trailer
    )
