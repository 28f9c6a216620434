"""Numbers from the wire are ASCII digits: Unicode digits and int()'s extra syntax are 4xx, never a 500.

``str.isdigit()`` accepts '²' (then int() raises: a 500), ``re``'s ``\\d`` and int() accept '٣' and '３',
and int() accepts '+1', ' 1' and '1_000'.  S3 accepts none of these.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3proxy.aws.awschunked import ChunkedDecoder
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_hex, parse_uint
from s3proxy.aws.ranges import ByteRange, parse_range
from s3proxy.aws.sigv2 import verify_v2
from s3proxy.aws.sigv4 import RequestView, SigV4Error, verify_request
from tests.fuzz.helpers import FUZZ, check_s3_error
from tests.fuzz.test_auth import NOW as AUTH_NOW
from tests.fuzz.test_auth import SETTINGS as AUTH_SETTINGS
from tests.fuzz.test_auth import read_body, request

NOT_NUMBERS = ["²", "1²", "٣", "１", "𝟏", "+1", " 1", "1 ", "1_000", "-1", "0x1", "1\x00", ""]

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def lookup(ak: str) -> str | None:
    return SK if ak == AK else None


def s3_error(fn) -> S3Error:  # type: ignore[no-untyped-def]
    with pytest.raises(S3Error) as info:
        fn()
    return check_s3_error(info.value)


# -- numbers.py ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_parse_uint_refuses(text: str) -> None:
    assert parse_uint(text) is None
    assert parse_hex(text) is None


@FUZZ
@given(text=st.text(max_size=25))
def test_parse_uint_is_ascii_decimal(text: str) -> None:
    n = parse_uint(text)
    if n is None:
        assert not (text.isascii() and text.isdigit() and len(text) <= 20)
    else:
        assert text.isascii() and text.isdigit() and str(n) == text.lstrip("0").rjust(1, "0")


# -- SigV2 Expires ----------------------------------------------------------------------------


@pytest.mark.parametrize("expires", ["²", "%C2%B2", "٣", "+1", "%201", "1_000", "9" * 5000])
def test_sigv2_expires(expires: str) -> None:
    """Anonymous ``?Expires=%C2%B2`` was a 500 with a traceback."""
    query = f"AWSAccessKeyId={AK}&Signature=x&Expires={expires}"
    err = s3_error(lambda: verify_v2("GET", "/b/k", query, [], lookup, NOW))
    assert (err.code, err.status) == ("AccessDenied", 403)


@pytest.mark.parametrize("expires", ["%C2%B2", "1_000", "+1"])
def test_sigv2_expires_through_authenticate(expires: str) -> None:
    from s3proxy.http.auth import authenticate

    req = request("GET", f"/b/k?AWSAccessKeyId={AK}&Signature=x&Expires={expires}", [("Host", "s3.example.com")])
    err = s3_error(lambda: authenticate(req, AUTH_SETTINGS, AUTH_NOW))  # type: ignore[arg-type]
    assert (err.code, err.status) == ("AccessDenied", 403)


@pytest.mark.parametrize("date", ["Wed, 01 May ٢٠٢٤ 12:00:00 GMT", "Wed, ０1 May 2024 12:00:00 GMT"])
def test_sigv2_date_is_ascii(date: str) -> None:
    err = s3_error(lambda: verify_v2("GET", "/b/k", "", [("Authorization", f"AWS {AK}:x"), ("Date", date)], lookup, NOW))
    assert (err.code, err.status) == ("AccessDenied", 403)


def test_sigv2_naive_date() -> None:
    """'-0000' makes parsedate_to_datetime() return a naive datetime: was a TypeError (500)."""
    headers = [("Authorization", f"AWS {AK}:x"), ("Date", "Wed, 01 May 2024 12:00:00 -0000")]
    err = s3_error(lambda: verify_v2("GET", "/b/k", "", headers, lookup, NOW))
    assert err.code == "SignatureDoesNotMatch"


# -- SigV4 X-Amz-Expires / X-Amz-Date -----------------------------------------------------------


def presigned_query(**override: str) -> str:
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{AK}/20240501/us-east-1/s3/aws4_request",
        "X-Amz-Date": "20240501T120000Z",
        "X-Amz-Expires": "60",
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": "0" * 64,
        **override,
    }
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


@pytest.mark.parametrize("expires", [*NOT_NUMBERS, "9" * 5000, "604801"])
def test_x_amz_expires(expires: str) -> None:
    req = RequestView("GET", "/b/k", presigned_query(**{"X-Amz-Expires": expires}), [("host", "h")])
    err = s3_error(lambda: verify_request(req, lookup, NOW))
    assert isinstance(err, SigV4Error) and (err.code, err.status) == ("AuthorizationQueryParametersError", 400)


@pytest.mark.parametrize("expires", ["60", "0" * 5000 + "60", "604800"])
def test_x_amz_expires_ascii_digits_accepted(expires: str) -> None:
    """Leading zeros are still a number (int() of 5000 digits raised ValueError: a 500)."""
    req = RequestView("GET", "/b/k", presigned_query(**{"X-Amz-Expires": expires}), [("host", "h")])
    err = s3_error(lambda: verify_request(req, lookup, NOW))
    assert err.code == "SignatureDoesNotMatch"  # past every number check


@pytest.mark.parametrize("date", ["٢٠٢٤٠٥٠١T١٢٠٠٠٠Z", "２０２４０５０１T１２００００Z", "2024050²T120000Z"])
def test_x_amz_date_digits(date: str) -> None:
    """``\\d`` matched Unicode digits: an Arabic-Indic X-Amz-Date parsed as a real date."""
    cred = f"{AK}/{date[:8]}/us-east-1/s3/aws4_request"
    req = RequestView("GET", "/b/k", presigned_query(**{"X-Amz-Date": date, "X-Amz-Credential": cred}), [("host", "h")])
    err = s3_error(lambda: verify_request(req, lookup, NOW))
    assert (err.code, err.status) == ("AuthorizationQueryParametersError", 400)
    assert "X-Amz-Date" in err.message or "Credential" in err.message


# -- Content-Length, x-amz-decoded-content-length, chunk sizes -------------------------------------


# Leading and trailing blanks are HTTP's optional white space around a header value, not part of it.
@pytest.mark.parametrize("value", ["²", "1²", "٣", "１", "𝟏", "+1", "1_000", "-1", "0x1", "1\x00", "\xa01", "1\u3000", "", "9" * 5000])
@pytest.mark.parametrize("name", ["Content-Length", "x-amz-decoded-content-length"])
def test_lengths(name: str, value: str) -> None:
    headers = {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Length": "22", "x-amz-decoded-content-length": "11"}
    headers[name] = value
    err = read_body(request("PUT", "/b/k", list(headers.items()), [b"b\r\nhello world\r\n0\r\n\r\n"]), None)
    assert isinstance(err, S3Error) and (err.code, err.status) == ("InvalidArgument", 400), err


@pytest.mark.parametrize("size", ["²", "٣", "１", "+1", " 1", "1_0", "0x1", "-1", "1" * 17])
def test_chunk_size(size: str) -> None:
    d = ChunkedDecoder(signing=None, trailer=True, decoded_length=None)
    err = s3_error(lambda: d.feed(size.encode() + b"\r\nx\r\n0\r\n\r\n"))
    assert (err.code, err.status) == ("InvalidRequest", 400)


# -- Range ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["bytes=²-3", "bytes=1-²", "bytes=-²", "bytes=٣-4", "bytes=１-2", "bytes=+1-3", "bytes=1-+3", "bytes=1_000-2000",
     "bytes=0-1_0", "bytes=-1_0", "bytes=\u30001-3", "bytes=1-3\xa0", "bytes=0x1-3"],
)
def test_range_unicode_digits_are_ignored(value: str) -> None:
    """A Range S3 cannot parse is ignored (whole object), as S3 does: never int()'s reading, never a 500."""
    assert parse_range(value) is None


def test_range_ascii_forms_still_parse() -> None:
    assert parse_range("bytes=0-9") == ByteRange(0, 9)
    assert parse_range("bytes = 1 - 3") == ByteRange(1, 3)
    assert parse_range("bytes=5-") == ByteRange(5, None)
    assert parse_range("bytes=-5") == ByteRange(None, None, 5)
    assert parse_range("bytes=0007-0009") == ByteRange(7, 9)
    huge = parse_range("bytes=" + "9" * 5000 + "-")
    assert huge is not None and huge.start is not None
    err = s3_error(lambda: huge.resolve(100))
    assert (err.code, err.status) == ("InvalidRange", 416)
    r = parse_range("bytes=0-" + "9" * 5000)
    assert r is not None and r.resolve(100) == (0, 100)
