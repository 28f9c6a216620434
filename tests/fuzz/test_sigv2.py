"""SigV2 (s3proxy/aws/sigv2.py): any request verifies or fails with a 4xx SigV4Error."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from s3proxy.aws.sigv2 import V2Result, is_v2, sign, string_to_sign, verify_v2
from s3proxy.aws.sigv4 import SigV4Error
from tests.fuzz.helpers import FUZZ, no_hang, s3_outcome, tricky_text, unicode_digit_variants

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
FUTURE = str(int(NOW.timestamp()) + 600)


def lookup(ak: str) -> str | None:
    return SK if ak == AK else None


def outcome(method: str, path: str, query: str, headers: list[tuple[str, str]], now: datetime = NOW) -> V2Result | SigV4Error:
    with no_hang():
        is_v2(query, next((v for k, v in headers if k.lower() == "authorization"), None))
    result = s3_outcome(lambda: verify_v2(method, path, query, headers, lookup, now))
    assert isinstance(result, V2Result | SigV4Error), repr(result)
    return result


QUERY_NAMES = ["AWSAccessKeyId", "Signature", "Expires", "acl", "partNumber", "uploadId", "versionId",
               "response-content-type", "x-amz-meta-a", "X-Amz-Date", "prefix"]
dates = st.sampled_from(
    [format_datetime(NOW, usegmt=True), "Wed, 01 May 2024 12:00:00 -0000", "Wed, 01 May 2024 12:00:00 +0000",
     "Wed, ٠١ May 2024 12:00:00 GMT", "Wed, 01 May 99999999999 12:00:00 GMT", "01 May 2024 12:00:00 +9999",
     "01 May 2024 99:00:00 GMT", "", "garbage", "Wed, 01 May ²024 12:00:00 GMT"]
) | tricky_text
expires = st.sampled_from([FUTURE, "0", "²", "٣", "+" + FUTURE, " " + FUTURE, "1_000", "9" * 30, "9" * 5000, "-1", ""]) | st.sampled_from(
    unicode_digit_variants(int(FUTURE))
) | tricky_text
auths = st.builds(
    lambda scheme, ak, sep, sig: f"{scheme}{ak}{sep}{sig}",
    st.sampled_from(["AWS ", "AWS", "AWS  ", "aws "]),
    st.sampled_from([AK, "", "x"]) | tricky_text,
    st.sampled_from([":", "", "::"]),
    st.sampled_from(["", "abc=", "\udcff"]) | tricky_text,
) | tricky_text


@st.composite
def queries(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(QUERY_NAMES) | tricky_text)
        value = draw({"Expires": expires, "AWSAccessKeyId": st.just(AK) | tricky_text}.get(name, tricky_text))
        if draw(st.booleans()):
            name, value = quote(name.encode("utf-8", "surrogatepass"), safe=""), quote(value.encode("utf-8", "surrogatepass"), safe="")
        parts.append(draw(st.sampled_from([f"{name}={value}", name])))
    return "&".join(parts)


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["Authorization", "Date", "x-amz-date", "Content-MD5", "Content-Type", "x-amz-meta-a"]) | tricky_text)
        value = draw({"authorization": auths, "date": dates, "x-amz-date": dates}.get(name.lower(), tricky_text))
        out.append((name, value))
    return out


@FUZZ
@given(method=st.sampled_from(["GET", "PUT"]) | tricky_text, path=tricky_text, query=queries(), headers=header_lists())
def test_verify_v2_any_input(method: str, path: str, query: str, headers: list[tuple[str, str]]) -> None:
    outcome(method, path, query, headers)


@FUZZ
@given(raw=expires)
def test_expires_is_ascii_digits(raw: str) -> None:
    """Expires: ASCII digits, anything else a 403 AccessDenied (``?Expires=%C2%B2`` was a 500)."""
    query = f"AWSAccessKeyId={AK}&Signature=abc%3D&Expires={quote(raw.encode('utf-8', 'surrogatepass'), safe='')}"
    result = outcome("GET", "/b/k", query, [])
    assert isinstance(result, SigV4Error)
    number = re.fullmatch(r"[0-9]{1,20}", raw, re.ASCII) is not None
    if number and int(raw) >= NOW.timestamp():
        assert result.code == "SignatureDoesNotMatch", (raw, result.code)
    else:
        assert (result.code, result.status) == ("AccessDenied", 403), (raw, result.code)


@FUZZ
@given(stamp=dates, use_amz=st.booleans())
def test_date_header(stamp: str, use_amz: bool) -> None:
    headers = [("Authorization", f"AWS {AK}:abc="), ("x-amz-date" if use_amz else "Date", stamp)]
    result = outcome("GET", "/b/k", "", headers)
    assert isinstance(result, SigV4Error)
    if not stamp.isascii():
        assert result.code == "AccessDenied"


subresources = st.lists(
    st.tuples(st.sampled_from(["acl", "partNumber", "uploadId", "versionId", "response-content-type", "tagging"]),
              st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="&=%+"), max_size=8)),
    max_size=3, unique_by=lambda p: p[0],
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@FUZZ
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE"]),
    path=st.binary(max_size=20).map(lambda b: "/" + quote(b, safe="/")),
    sub=subresources,
    ctype=header_values,
    meta=header_values,
    presigned=st.booleans(),
)
def test_signed_requests_verify(method: str, path: str, sub: list[tuple[str, str | None]], ctype: str, meta: str, presigned: bool) -> None:
    """What a SigV2 client signs verifies."""
    base_query = "&".join(n if v is None else f"{n}={v}" for n, v in sub)
    headers = [("Content-Type", ctype), ("x-amz-meta-a", meta)]
    if presigned:
        sts = string_to_sign(method, path, base_query, headers, FUTURE)
        sig = quote(sign(SK, sts), safe="")
        query = "&".join(p for p in (base_query, f"AWSAccessKeyId={AK}&Expires={FUTURE}&Signature={sig}") if p)
        result = outcome(method, path, query, headers)
    else:
        date = format_datetime(NOW - timedelta(seconds=60), usegmt=True)
        headers.append(("Date", date))
        sts = string_to_sign(method, path, base_query, headers, date)
        headers.append(("Authorization", f"AWS {AK}:{sign(SK, sts)}"))
        result = outcome(method, path, base_query, headers)
    assert isinstance(result, V2Result), result
    assert result.access_key == AK and result.presigned == presigned
