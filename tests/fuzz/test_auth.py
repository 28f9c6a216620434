"""s3proxy/http/auth.py: authenticate() and RequestBody for any request: a result or a 4xx S3Error."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from s3proxy.aws.errors import S3Error
from s3proxy.aws.sigv4 import AuthResult, derive_signing_key
from s3proxy.config import Identity
from s3proxy.http.auth import Caller, RequestBody, authenticate
from tests.fuzz.helpers import FUZZ, check_s3_error, no_hang, s3_outcome, tricky_text, unicode_digit_variants
from tests.fuzz.test_awschunked import SIGNING, encode

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = SimpleNamespace(
    identities=(Identity(access_key=AK, secret_key=SK),), allow_sigv2=True, base_domain="s3.example.com",
    clock_skew_seconds=900,
)
AUTH = AuthResult(
    access_key=AK, payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD", presigned=False, amz_date=SIGNING.amz_date,
    scope=SIGNING.scope, region="us-east-1", signature=SIGNING.seed_signature, signing_key=SIGNING.signing_key,
)


class FakeStream:
    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(pieces)

    async def readchunk(self) -> tuple[bytes, bool]:
        if self._pieces:
            return self._pieces.pop(0), False
        return b"", False

    def at_eof(self) -> bool:
        return not self._pieces


@dataclass
class FakeRequest:
    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    host: str
    content: Any = field(default=None)


def request(method: str, raw_path: str, headers: list[tuple[str, str]], body: list[bytes] = ()) -> FakeRequest:  # type: ignore[assignment]
    h = CIMultiDictProxy(CIMultiDict(headers))
    return FakeRequest(method, raw_path, h, h.get("Host", "bucket.s3.example.com"), FakeStream(list(body)))


@FUZZ
@given(
    path=st.sampled_from(["/b/k", "/b/\udcff", "/", "/b/k?AWSAccessKeyId=AKIDEXAMPLE&Signature=x&Expires="]) | tricky_text,
    query=st.sampled_from(["", "Expires=%C2%B2&AWSAccessKeyId=AKIDEXAMPLE&Signature=x", "partNumber=²", "X-Amz-Expires=²&X-Amz-Signature=0"])
    | tricky_text,
    headers=st.lists(
        st.tuples(st.sampled_from(["Authorization", "Date", "x-amz-date", "Host", "x-amz-content-sha256"]) | tricky_text,
                  st.sampled_from(["AWS AKIDEXAMPLE:abc=", "AWS4-HMAC-SHA256 Credential=x", "Wed, 01 May 2024 12:00:00 -0000",
                                   "s3.example.com", "b.s3.example.com:1"]) | tricky_text),
        max_size=4,
    ),
)
def test_authenticate_any_request(path: str, query: str, headers: list[tuple[str, str]]) -> None:
    raw = f"{path}?{query}" if query else path
    result = s3_outcome(lambda: authenticate(request("GET", raw, headers), SETTINGS, NOW))  # type: ignore[arg-type]
    assert isinstance(result, Caller | S3Error)


def read_body(req: FakeRequest, auth: AuthResult | None) -> bytes | S3Error:
    async def run() -> bytes:
        body = RequestBody(req, auth)  # type: ignore[arg-type]
        out = bytearray()
        async for piece in body.chunks():
            out += piece
        return bytes(out)

    with no_hang():
        try:
            return asyncio.run(run())
        except S3Error as err:
            return check_s3_error(err)


numbers = st.sampled_from(["0", "5", "11", "00011", "", "-1", "1" * 25, "9" * 5000]) | st.sampled_from(
    unicode_digit_variants(11)
) | tricky_text
hashes = st.sampled_from(
    ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-X",
     hashlib.sha256(b"hello world").hexdigest(), "é" * 64, "²" * 64, "G" * 64]
) | tricky_text


@FUZZ
@given(
    headers=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["Content-Length", "x-amz-decoded-content-length"]), numbers),
            st.tuples(st.just("x-amz-content-sha256"), hashes),
            st.tuples(st.sampled_from(["x-amz-trailer", "Content-MD5", "x-amz-checksum-crc32", "Transfer-Encoding"]), tricky_text),
        ),
        max_size=5,
    ),
    body=st.lists(st.sampled_from([b"hello world", b"b\r\nhello world\r\n0\r\n\r\n", b""]) | st.binary(max_size=20), max_size=3),
    signed=st.booleans(),
)
def test_request_body_any_headers(headers: list[tuple[str, str]], body: list[bytes], signed: bool) -> None:
    read_body(request("PUT", "/b/k", headers, body), AUTH if signed else None)


@FUZZ
@given(value=st.sampled_from(["²", "٣", "+11", " 11", "1_1", "11\x00", "١١"]) | st.sampled_from(unicode_digit_variants(11)),
       name=st.sampled_from(["Content-Length", "x-amz-decoded-content-length"]))
def test_lengths_are_ascii_digits(value: str, name: str) -> None:
    """Content-Length and x-amz-decoded-content-length: ASCII digits only, else 400 InvalidArgument."""
    headers = [("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"), ("Content-Length", "22"), ("x-amz-decoded-content-length", "11")]
    headers = [(n, value if n == name else v) for n, v in headers]
    result = read_body(request("PUT", "/b/k", headers, [b"b\r\nhello world\r\n0\r\n\r\n"]), None)
    if value.strip(" \t").isascii() and value.strip(" \t").isdigit():
        assert result == b"hello world", result
    else:
        assert isinstance(result, S3Error) and (result.code, result.status) == ("InvalidArgument", 400), (value, result)


@FUZZ
@given(chunks=st.lists(st.binary(min_size=1, max_size=30), max_size=3), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_signed_streaming_body(chunks: list[bytes], cuts: list[int]) -> None:
    wire = encode(chunks, SIGNING, None)
    pieces, start = [], 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(wire))):
        pieces.append(wire[start:cut])
        start = cut
    pieces.append(wire[start:])
    payload = b"".join(chunks)
    headers = [("x-amz-content-sha256", AUTH.payload_hash), ("Content-Length", str(len(wire))),
               ("x-amz-decoded-content-length", str(len(payload)))]
    assert read_body(request("PUT", "/b/k", headers, pieces), AUTH) == payload


def test_signing_key_matches() -> None:
    assert derive_signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3") == SIGNING.signing_key
