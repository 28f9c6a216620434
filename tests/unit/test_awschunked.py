"""aws-chunked decoding: AWS's examples, botocore's encoder, random splits, every failure."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.aws.awschunked import AwsChunkedError, ChunkedDecoder, ChunkSigning
from s3proxy.aws.checksums import Checker
from s3proxy.aws.sigv4 import (
    RequestView,
    chunk_signature,
    derive_signing_key,
    trailer_signature,
    verify_request,
)

AK = "AKIAIOSFODNN7EXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY = derive_signing_key(SK, "20130524", "us-east-1", "s3")
AMZ = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
SIGNING = ChunkSigning(KEY, AMZ, SCOPE, SEED)
TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"

AWS_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536
    + b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024
    + b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
)
AWS_TRAILER_BODY = (
    b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n"
    + b"a" * 65536
    + b"\r\n400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n"
    + b"a" * 1024
    + b"\r\n0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n"
    + b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    + b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n"
    + b"\r\n"
)


# --------------------------------------------------------------------------
# A small test encoder


def encode(
    chunks: Sequence[bytes],
    *,
    signing: ChunkSigning | None,
    trailers: Sequence[tuple[str, str]] | None,
    final_crlf: bool = True,
    upper: bool = False,
) -> bytes:
    """aws-chunked framing of ``chunks``; ``trailers=None`` is the non-trailer form."""
    out = bytearray()
    prev = signing.seed_signature if signing else ""
    for data in [*chunks, b""]:
        size = f"{len(data):X}" if upper else f"{len(data):x}"
        if signing is not None:
            prev = chunk_signature(
                signing.signing_key, signing.amz_date, signing.scope, prev, hashlib.sha256(data).hexdigest()
            )
            out += f"{size};chunk-signature={prev}\r\n".encode()
        else:
            out += f"{size}\r\n".encode()
        if data:
            out += data + b"\r\n"
    if trailers is None:
        out += b"\r\n"
        return bytes(out)
    canon = b"".join(f"{n}:{v}\n".encode() for n, v in trailers)
    out += b"".join(f"{n}:{v}\r\n".encode() for n, v in trailers)
    if signing is not None:
        sig = trailer_signature(signing.signing_key, signing.amz_date, signing.scope, prev, canon)
        out += f"x-amz-trailer-signature:{sig}\r\n".encode()
    if final_crlf:
        out += b"\r\n"
    return bytes(out)


def decode(
    body: bytes,
    *,
    signing: ChunkSigning | None,
    trailer: bool,
    decoded_length: int | None = None,
    splits: Sequence[int] = (),
    **kw: Any,
) -> tuple[bytes, dict[str, str]]:
    d = ChunkedDecoder(signing=signing, trailer=trailer, decoded_length=decoded_length, **kw)
    out = bytearray()
    start = 0
    for cut in [*sorted(splits), len(body)]:
        for piece in d.feed(body[start:cut]):
            out += piece
        start = max(start, cut)
    d.finish()
    assert d.done
    assert d.decoded_bytes == len(out)
    return bytes(out), d.trailers


def fails(code: str, status: int, body: bytes, **kw: Any) -> AwsChunkedError:
    with pytest.raises(AwsChunkedError) as info:
        decode(body, **kw)
    assert (info.value.code, info.value.status) == (code, status), info.value.message
    return info.value


MODES = {
    "signed": {"signing": SIGNING, "trailer": False},
    "signed-trailer": {"signing": SIGNING, "trailer": True},
    "unsigned-trailer": {"signing": None, "trailer": True},
    "unsigned": {"signing": None, "trailer": False},
}
TRAILERS = [("x-amz-checksum-crc32", "NSRBwg=="), ("x-amz-meta-x", "y z")]


def sample(mode: str, chunks: Sequence[bytes] = (b"x" * 10, b"yz", b"0123456789abcdef" * 2)) -> bytes:
    kw = MODES[mode]
    return encode(chunks, signing=kw["signing"], trailers=TRAILERS if kw["trailer"] else None)


# --------------------------------------------------------------------------
# AWS's examples and a real client


@pytest.mark.parametrize("step", [len(AWS_BODY), 1, 7, 8192, 65536, 70000])
def test_aws_signed_example(step: int) -> None:
    data, trailers = decode(
        AWS_BODY, signing=SIGNING, trailer=False, decoded_length=66560, splits=range(step, len(AWS_BODY), step)
    )
    assert data == b"a" * 66560 and trailers == {}


@pytest.mark.parametrize("step", [len(AWS_TRAILER_BODY), 1, 13, 65536])
def test_aws_signed_trailer_example(step: int) -> None:
    signing = ChunkSigning(KEY, AMZ, SCOPE, TRAILER_SEED)
    splits = range(step, len(AWS_TRAILER_BODY), step)
    data, trailers = decode(AWS_TRAILER_BODY, signing=signing, trailer=True, decoded_length=66560, splits=splits)
    assert data == b"a" * 66560
    assert trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    checker = Checker.from_headers({}, ["x-amz-checksum-crc32c"])
    checker.update(data)
    checker.expect("x-amz-checksum-crc32c", trailers["x-amz-checksum-crc32c"])
    checker.verify()


def test_aws_example_encoder_agrees() -> None:
    assert encode([b"a" * 65536, b"a" * 1024], signing=SIGNING, trailers=None) == AWS_BODY
    signing = ChunkSigning(KEY, AMZ, SCOPE, TRAILER_SEED)
    assert encode([b"a" * 65536, b"a" * 1024], signing=signing, trailers=[("x-amz-checksum-crc32c", "sOO8/Q==")]) == (
        AWS_TRAILER_BODY
    )


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        self.request = request


@pytest.fixture(scope="module")
def https_client() -> Iterator[Any]:
    """boto3 over HTTPS: PutObject as STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC trailer."""
    client = boto3.client(
        "s3",
        endpoint_url="https://s3.local.test:9443",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send.s3.*", capture)
    yield client
    client.close()


@pytest.mark.parametrize("size", [0, 1, 65536, 1024 * 1024 + 17])
@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_boto3_streaming_upload(https_client: Any, size: int, algorithm: str) -> None:
    payload = bytes(range(256)) * (size // 256) + b"q" * (size % 256)
    with pytest.raises(_Captured) as info:
        https_client.put_object(Bucket="b", Key="k ü", Body=payload, ChecksumAlgorithm=algorithm)
    request = info.value.request
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    parts = urlsplit(request.url)
    headers.setdefault("host", parts.netloc)
    view = RequestView("PUT", parts.path, parts.query, list(headers.items()))
    now = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    auth = verify_request(view, lambda ak: SK, now)
    assert auth is not None
    body = request.body.read()
    trailer_names = [t.strip() for t in headers["x-amz-trailer"].split(",")]
    checker = Checker.from_headers(headers, trailer_names)
    decoder = ChunkedDecoder(
        signing=None, trailer=True, decoded_length=int(headers["x-amz-decoded-content-length"])
    )
    out = bytearray()
    for i in range(0, len(body), 100_000):
        for piece in decoder.feed(memoryview(body)[i : i + 100_000]):
            checker.update(piece)
            out += piece
    decoder.finish()
    assert bytes(out) == payload
    name = f"x-amz-checksum-{algorithm.lower()}"
    assert list(decoder.trailers) == [name]
    checker.expect(name, decoder.trailers[name])
    checker.verify()


# --------------------------------------------------------------------------
# Round trips and random splits


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("upper", [False, True])
def test_round_trip_modes(mode: str, upper: bool) -> None:
    chunks = [b"a" * 8192, b"\r\n" * 100, b"0;chunk-signature=\r\n\r\n", b"z"]
    kw = MODES[mode]
    body = encode(chunks, signing=kw["signing"], trailers=TRAILERS if kw["trailer"] else None, upper=upper)
    data, trailers = decode(body, decoded_length=sum(map(len, chunks)), **kw)
    assert data == b"".join(chunks)
    assert trailers == (dict(TRAILERS) if kw["trailer"] else {})


@pytest.mark.parametrize("mode", ["signed-trailer", "unsigned-trailer"])
def test_empty_body_and_no_trailers(mode: str) -> None:
    kw = MODES[mode]
    for trailers in ([], TRAILERS):
        body = encode([], signing=kw["signing"], trailers=trailers)
        assert decode(body, decoded_length=0, **kw) == (b"", dict(trailers))


def test_trailer_section_may_end_without_final_crlf() -> None:
    for signing in (None, SIGNING):
        body = encode([b"abc"], signing=signing, trailers=TRAILERS, final_crlf=False)
        assert decode(body, signing=signing, trailer=True) == (b"abc", dict(TRAILERS))
    assert decode(b"3\r\nabc\r\n0\r\n", signing=None, trailer=True) == (b"abc", {})


def test_uppercase_signature_hex_accepted() -> None:
    body = AWS_BODY.replace(b"ad80c730a21e5b8d", b"AD80C730A21E5B8D")
    assert decode(body, signing=SIGNING, trailer=False)[0] == b"a" * 66560


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(sorted(MODES)),
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
    data=st.data(),
)
def test_random_splits_give_the_same_result(mode: str, chunks: list[bytes], data: st.DataObject) -> None:
    kw = MODES[mode]
    body = encode(chunks, signing=kw["signing"], trailers=TRAILERS if kw["trailer"] else None)
    splits = data.draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=20))
    as_view = data.draw(st.booleans())
    d = ChunkedDecoder(decoded_length=sum(map(len, chunks)), **kw)
    out = bytearray()
    start = 0
    for cut in [*sorted(splits), len(body)]:
        piece = memoryview(body)[start:cut] if as_view else body[start:cut]
        for p in d.feed(piece):
            out += p
        start = cut
    d.finish()
    assert bytes(out) == b"".join(chunks)
    assert d.trailers == (dict(TRAILERS) if kw["trailer"] else {})
    assert d.done


def test_every_single_byte_split() -> None:
    for mode in MODES:
        body = sample(mode)
        expected = decode(body, **MODES[mode])
        for cut in range(len(body) + 1):
            assert decode(body, splits=[cut], **MODES[mode]) == expected


def test_pieces_are_views_of_the_input() -> None:
    body = sample("unsigned-trailer")
    d = ChunkedDecoder(signing=None, trailer=True, decoded_length=None)
    pieces = d.feed(body)
    assert pieces and all(isinstance(p, memoryview) and p.obj is body for p in pieces)
    buf = bytearray(body)
    d = ChunkedDecoder(signing=None, trailer=True, decoded_length=None)
    assert b"".join(d.feed(buf)) == b"x" * 10 + b"yz" + b"0123456789abcdef" * 2


def test_non_byte_memoryview_input() -> None:
    import array

    raw = b"4\r\nabcd\r\n0\r\n\r\n"
    padded = raw + b"\x00" * (-len(raw) % 4)
    arr = array.array("I", padded)
    d = ChunkedDecoder(signing=None, trailer=False, decoded_length=4)
    pieces = d.feed(memoryview(arr)[: len(raw) // 4])  # a whole number of items
    d.feed(raw[len(raw) // 4 * 4 :])
    d.finish()
    assert b"".join(bytes(p) for p in pieces) == b"abcd"


# --------------------------------------------------------------------------
# Truncation


def _complete_prefixes(mode: str, body: bytes) -> set[int]:
    """Prefix lengths that are complete bodies (the full one and tolerated trailer endings)."""
    ok = {len(body)}
    if MODES[mode]["trailer"]:
        final = body.rindex(b"0;chunk-signature=" if MODES[mode]["signing"] else b"\r\n0\r\n")
        start = body.index(b"\r\n", final + 2) + 2 if MODES[mode]["signing"] else final + 5
        cuts = [i + 2 for i in range(start - 2, len(body) - 1) if body[i : i + 2] == b"\r\n"]
        if MODES[mode]["signing"]:
            ok.add(len(body) - 2)  # after the trailer signature line
        else:
            ok.update(cuts)
            ok.add(start)
    return ok


@pytest.mark.parametrize("mode", MODES)
def test_truncation_everywhere(mode: str) -> None:
    body = sample(mode)
    complete = _complete_prefixes(mode, body)
    for cut in range(len(body) + 1):
        if cut in complete:
            decode(body[:cut], **MODES[mode])
            continue
        err = fails("IncompleteBody", 400, body[:cut], **MODES[mode])
        assert "incomplete" in err.message


def test_truncated_with_declared_length() -> None:
    body = sample("signed")
    # The chunks alone carry 44 bytes; a bigger declared length fails at the final chunk.
    fails("IncompleteBody", 400, body, decoded_length=45, **MODES["signed"])
    err = fails("IncompleteBody", 400, body, decoded_length=43, **MODES["signed"])
    assert "more than" in err.message


def test_excess_data_is_refused_before_it_is_released() -> None:
    d = ChunkedDecoder(signing=None, trailer=False, decoded_length=3)
    with pytest.raises(AwsChunkedError) as info:
        d.feed(b"4\r\nabcd\r\n0\r\n\r\n")
    assert info.value.code == "IncompleteBody"
    d = ChunkedDecoder(signing=None, trailer=False, decoded_length=3)
    assert b"".join(d.feed(b"3\r\nabc\r\n")) == b"abc"
    with pytest.raises(AwsChunkedError):
        d.feed(b"1\r\n")


# --------------------------------------------------------------------------
# Signatures


def _chunk(data: bytes, sig: str) -> bytes:
    return f"{len(data):x};chunk-signature={sig}\r\n".encode() + data + b"\r\n"


SIGS = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
A1, A2 = b"a" * 65536, b"a" * 1024
FINAL = f"0;chunk-signature={SIGS[2]}\r\n\r\n".encode()


@pytest.mark.parametrize(
    "body",
    [
        AWS_BODY.replace(b"a\r\n400;", b"b\r\n400;"),
        AWS_BODY.replace(SIGS[1].encode(), b"0" * 64),
        AWS_BODY.replace(SIGS[2].encode(), SIGS[1].encode()),
        _chunk(A2, SIGS[1]) + _chunk(A1, SIGS[0]) + FINAL,
        _chunk(A1, SIGS[0]) + FINAL,
        _chunk(A1, SIGS[0]) + _chunk(A2, SIGS[1]) + _chunk(b"a", SIGS[2]) + FINAL,
        _chunk(A1, SIGS[0]) + f"0;chunk-signature={SIGS[1]}\r\n\r\n".encode(),
        AWS_BODY.replace(b"400;chunk-signature=" + SIGS[1].encode(), b"400"),
        AWS_BODY.replace(b"400;chunk-signature=", b"400;chunk-signatures="),
        AWS_BODY.replace(b"400;chunk-signature=" + SIGS[1].encode(), b"400;chunk-signature=" + SIGS[1][:-1].encode()),
        AWS_BODY.replace(b"400;chunk-signature=", b"400;chunk-signature=" + b" "),
    ],
    ids=[
        "data",
        "chunk-sig",
        "final-sig",
        "reordered",
        "dropped",
        "appended",
        "cut-at-boundary",
        "sig-missing",
        "ext-name",
        "sig-short",
        "sig-space",
    ],
)
def test_chunk_signature_tampering(body: bytes) -> None:
    fails("SignatureDoesNotMatch", 403, body, signing=SIGNING, trailer=False)


def test_wrong_seed_or_key() -> None:
    fails("SignatureDoesNotMatch", 403, AWS_BODY, signing=ChunkSigning(KEY, AMZ, SCOPE, TRAILER_SEED), trailer=False)
    other = derive_signing_key(SK, "20130525", "us-east-1", "s3")
    fails("SignatureDoesNotMatch", 403, AWS_BODY, signing=ChunkSigning(other, AMZ, SCOPE, SEED), trailer=False)


def test_signature_failure_raises_at_the_end_of_the_chunk() -> None:
    body = AWS_BODY.replace(SIGS[0].encode(), b"0" * 64)
    d = ChunkedDecoder(signing=SIGNING, trailer=False, decoded_length=66560)
    header_end = body.index(b"\r\n") + 2
    released = b"".join(d.feed(body[: header_end + 65535]))
    assert released == b"a" * 65535  # released, not yet verified: the caller must abort on failure
    with pytest.raises(AwsChunkedError) as info:
        d.feed(body[header_end + 65535 : header_end + 65536])
    assert info.value.code == "SignatureDoesNotMatch"
    # Errors are sticky.
    with pytest.raises(AwsChunkedError):
        d.feed(b"")
    with pytest.raises(AwsChunkedError):
        d.finish()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"sOO8/Q==", b"AAAAAA=="),
        (b"x-amz-checksum-crc32c:sOO8/Q==\r\n", b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-meta-extra:1\r\n"),
        (b"x-amz-checksum-crc32c:sOO8/Q==\r\n", b""),
        (b"d81f82fc3505edab", b"d81f82fc3505edac"),
        (b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n", b""),
        (b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n",
         b"x-amz-trailer-signature:\r\n"),
    ],
    ids=["value", "added", "dropped", "sig-changed", "sig-missing", "sig-empty"],
)
def test_trailer_signature_tampering(old: bytes, new: bytes) -> None:
    body = AWS_TRAILER_BODY.replace(old, new)
    assert body != AWS_TRAILER_BODY
    fails("SignatureDoesNotMatch", 403, body, signing=ChunkSigning(KEY, AMZ, SCOPE, TRAILER_SEED), trailer=True)


def test_signed_trailer_missing_signature_at_eof_is_incomplete() -> None:
    body = AWS_TRAILER_BODY.split(b"x-amz-trailer-signature")[0]
    fails("IncompleteBody", 400, body, signing=ChunkSigning(KEY, AMZ, SCOPE, TRAILER_SEED), trailer=True)


# --------------------------------------------------------------------------
# Framing


@pytest.mark.parametrize(
    "size", [b"g", b"0x10", b" 10", b"10 ", b"+10", b"1_0", b"", b"-1", b"1" * 17, b"\xff", b"10\r"]
)
def test_bad_chunk_size(size: bytes) -> None:
    fails("InvalidRequest", 400, size + b"\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", signing=None, trailer=False)


def test_bad_chunk_size_in_signed_mode() -> None:
    body = AWS_BODY.replace(b"400;", b"4O0;")
    fails("InvalidRequest", 400, body, signing=SIGNING, trailer=False)


@pytest.mark.parametrize(
    ("body", "mode"),
    [
        (b"3\nabc\r\n0\r\n\r\n", "unsigned"),  # bare LF after the size
        (b"3\r\nabc\n0\r\n\r\n", "unsigned"),  # bare LF after data
        (b"3\r\nabcd\r\n0\r\n\r\n", "unsigned"),  # data longer than the size
        (b"3\r\nabc\r\n0\r\n\n", "unsigned"),
        (b"3\r\nabc0\r\n\r\n", "unsigned"),
        (b"3;ext=1\r\nabc\r\n0\r\n\r\n", "unsigned"),  # no extensions in unsigned mode
        (b"3;chunk-signature=" + b"0" * 64 + b"\r\nabc\r\n0\r\n\r\n", "unsigned-trailer"),
        (b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n", "unsigned"),  # trailer not announced
        (b"3\r\nabc\r\n0\r\nno-colon\r\n\r\n", "unsigned-trailer"),
        (b"3\r\nabc\r\n0\r\n:empty-name\r\n\r\n", "unsigned-trailer"),
        (b"3\r\nabc\r\n0\r\nbad name:x\r\n\r\n", "unsigned-trailer"),
        (b"3\r\nabc\r\n0\r\na:1\r\nA:2\r\n\r\n", "unsigned-trailer"),  # duplicate trailer
        (b"3\r\nabc\r\n0\r\na:\xff\r\n\r\n", "unsigned-trailer"),
        (b"3\r\nabc\r\n0\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n", "unsigned-trailer"),
        (b"3\r\nabc\r\n0\r\na:1\r\na:1\n\r\n", "unsigned-trailer"),
    ],
)
def test_malformed_framing(body: bytes, mode: str) -> None:
    fails("InvalidRequest", 400, body, **MODES[mode])


def test_signed_body_refuses_trailers() -> None:
    body = AWS_BODY[:-2] + b"x-amz-checksum-crc32:NSRBwg==\r\n\r\n"
    fails("InvalidRequest", 400, body, signing=SIGNING, trailer=False)


def test_trailer_after_signature_refused() -> None:
    signing = ChunkSigning(KEY, AMZ, SCOPE, TRAILER_SEED)
    body = AWS_TRAILER_BODY[:-2] + b"x-amz-meta-late:1\r\n\r\n"
    fails("InvalidRequest", 400, body, signing=signing, trailer=True)


@pytest.mark.parametrize("mode", MODES)
def test_extra_data_after_the_end(mode: str) -> None:
    body = sample(mode)
    for extra in (b"x", b"\r\n", b"0\r\n\r\n"):
        fails("InvalidRequest", 400, body + extra, **MODES[mode])


def test_extra_data_in_a_later_feed() -> None:
    d = ChunkedDecoder(signing=None, trailer=False, decoded_length=None)
    d.feed(b"1\r\na\r\n0\r\n\r\n")
    assert d.done
    with pytest.raises(AwsChunkedError) as info:
        d.feed(b"!")
    assert info.value.code == "InvalidRequest"


def test_chunk_header_limit() -> None:
    sig_header = len(b"10000;chunk-signature=") + 64 + 2
    assert decode(AWS_BODY, signing=SIGNING, trailer=False, max_chunk_header=sig_header)[0] == b"a" * 66560
    err = fails("InvalidRequest", 400, AWS_BODY, signing=SIGNING, trailer=False, max_chunk_header=sig_header - 1)
    assert "too long" in err.message
    # An endless header line is refused once the limit is passed, fed in small pieces.
    d = ChunkedDecoder(signing=None, trailer=False, decoded_length=None, max_chunk_header=100)
    with pytest.raises(AwsChunkedError):
        for _ in range(100):
            d.feed(b"0" * 7)
    fails("InvalidRequest", 400, b"0" * 5000, signing=None, trailer=False)


def test_trailer_limit() -> None:
    trailers = [(f"x-amz-meta-{i}", "v" * 50) for i in range(10)]
    body = encode([b"abc"], signing=None, trailers=trailers)
    section = len(body) - body.index(b"0\r\n") - 3
    assert decode(body, signing=None, trailer=True, max_trailer_bytes=section)[1] == dict(trailers)
    fails("InvalidRequest", 400, body, signing=None, trailer=True, max_trailer_bytes=section - 1)
    fails("InvalidRequest", 400, b"0\r\n" + b"a" * 20000, signing=None, trailer=True)


def test_error_fields() -> None:
    err = AwsChunkedError("InvalidRequest", "bad")
    assert (err.code, err.message, err.status, str(err)) == ("InvalidRequest", "bad", 400, "InvalidRequest: bad")
    assert "signing_key" not in repr(SIGNING) and KEY.hex() not in repr(SIGNING)


# --------------------------------------------------------------------------
# Speed: 64 KiB chunks in 1 MiB reads


def test_throughput_signed_64k_chunks() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    n = 128  # 8 MiB
    body = encode([chunk] * n, signing=SIGNING, trailers=None)
    d = ChunkedDecoder(signing=SIGNING, trailer=False, decoded_length=n * len(chunk))
    t = time.perf_counter()
    total = 0
    for i in range(0, len(body), 1 << 20):
        for piece in d.feed(body[i : i + (1 << 20)]):
            total += len(piece)
    d.finish()
    elapsed = time.perf_counter() - t
    assert total == n * len(chunk)
    assert elapsed < 2.0, elapsed  # SHA-256 bound: ~0.02-0.05 s here
