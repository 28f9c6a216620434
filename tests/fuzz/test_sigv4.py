"""SigV4 (s3proxy/aws/sigv4.py): any request verifies, is anonymous, or fails with a 4xx SigV4Error."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from hypothesis import assume, given
from hypothesis import strategies as st

from s3proxy.aws.sigv4 import (
    MAX_PRESIGN_EXPIRES,
    AuthResult,
    RequestView,
    SigV4Error,
    canonical_query,
    canonical_uri,
    encode_query,
    parse_http_date,
    presign_url,
    sign_request,
    uri_encode,
    verify_request,
)
from tests.fuzz.helpers import FUZZ, TRICKY_CHARS, no_hang, s3_outcome, tricky_text, unicode_digit_variants

AK = "AKIAIOSFODNN7EXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
NOW = datetime(2013, 5, 24, 0, 0, 30, tzinfo=UTC)
AMZ = "20130524T000000Z"
HOST = "bucket.example.com"


def lookup(ak: str) -> str | None:
    return SK if ak == AK else None


def lookup_any(ak: str) -> str | None:
    return SK + ak  # every key "exists": reaches the signature comparison with any credential


def outcome(req: RequestView, lookup_fn=lookup, now: datetime = NOW) -> AuthResult | SigV4Error | None:  # type: ignore[no-untyped-def]
    result = s3_outcome(lambda: verify_request(req, lookup_fn, now))
    if not isinstance(result, AuthResult | None):
        assert isinstance(result, SigV4Error), repr(result)
    return result


# -- building blocks -----------------------------------------------------------------

digits_like = st.sampled_from(["20130524", "2013O524", "２０１３０５２４", "٢٠١٣٠٥٢٤", "2013052", "201305245", "²0130524"])
amz_dates = st.sampled_from(
    [AMZ, "20130524T000000", "20130524t000000z", "٢٠١٣٠٥٢٤T000000Z", "20130524T00000²Z", "20131324T000000Z",
     "20130524T250000Z", "99991231T235959Z", "00010101T000000Z", "20130524T000000Z\x00", " 20130524T000000Z"]
)
http_dates = st.sampled_from(
    ["Fri, 24 May 2013 00:00:00 GMT", "Fri, 24 May 2013 00:00:00 -0000", "Fri, ٢٤ May 2013 00:00:00 GMT",
     "Fri, 24 May 99999999999 00:00:00 GMT", "24 May 2013 00:00:00 +9999", "24 May 2013 99:00:00 GMT", "", "x",
     "Fri, 24 May 2013 00:00:00 +0000", "Fri, 24 May ²013 00:00:00 GMT"]
)
credentials = st.builds(
    lambda ak, d, region, svc, term: f"{ak}/{d}/{region}/{svc}/{term}",
    st.sampled_from([AK, "", "AK\udcff", "x"]) | tricky_text,
    digits_like,
    st.sampled_from(["us-east-1", "", "é", "\udcff", "a/b"]) | tricky_text,
    st.sampled_from(["s3", "S3", "iam"]) | tricky_text,
    st.sampled_from(["aws4_request", "aws4_request ", "x"]),
) | tricky_text
sig_hex = st.sampled_from(["0" * 64, "A" * 64, "g" * 64, "", "0" * 63, "\udcff" * 64]) | tricky_text
signed_headers = st.sampled_from(["host", "host;x-amz-date", "host;x-amz-content-sha256;x-amz-date", "", ";", "HOST", "host;;"]) | tricky_text
payload_hashes = st.sampled_from(
    ["UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
     "é" * 64, "²" * 64, "", "unsigned-payload"]
) | tricky_text
expires_values = st.sampled_from(["0", "1", "604800", "604801", "-1", "²", "٣", "+1", " 1", "1_000", "1" * 30, "0" * 5000 + "1", "9" * 5000]) | st.integers(-10, 10**7).map(str) | tricky_text

QUERY_NAMES = ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders",
               "X-Amz-Expires", "X-Amz-Content-Sha256", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId",
               "Expires", "partNumber", "uploadId", "x-id"]
HEADER_NAMES = ["authorization", "Authorization", "host", "x-amz-date", "date", "x-amz-content-sha256",
                "x-amz-meta-a", "content-type", "X-Amz-Date", "x-amz-security-token"]


@st.composite
def query_value(draw: st.DrawFn, name: str) -> str:
    gen = {
        "X-Amz-Algorithm": st.sampled_from(["AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"]) | tricky_text,
        "X-Amz-Credential": credentials,
        "X-Amz-Signature": sig_hex,
        "X-Amz-Date": amz_dates | tricky_text,
        "X-Amz-SignedHeaders": signed_headers,
        "X-Amz-Expires": expires_values,
        "X-Amz-Content-Sha256": payload_hashes,
    }.get(name, tricky_text)
    return draw(gen)


@st.composite
def raw_queries(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 9))):
        name = draw(st.sampled_from(QUERY_NAMES) | tricky_text)
        value = draw(query_value(name))
        encode = draw(st.booleans())
        n = quote(name.encode("utf-8", "surrogatepass"), safe="") if encode else name
        v = quote(value.encode("utf-8", "surrogatepass"), safe="") if encode else value
        parts.append(draw(st.sampled_from([f"{n}={v}", n, f"{n}=", f"={v}"])))
    return "&".join(parts)


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    headers = []
    for _ in range(draw(st.integers(0, 7))):
        name = draw(st.sampled_from(HEADER_NAMES) | tricky_text)
        lname = name.lower()
        if lname == "authorization":
            value = draw(auth_headers())
        elif lname == "x-amz-date":
            value = draw(amz_dates | tricky_text)
        elif lname == "date":
            value = draw(http_dates | tricky_text)
        elif lname == "x-amz-content-sha256":
            value = draw(payload_hashes)
        else:
            value = draw(tricky_text)
        headers.append((name, value))
    return headers


@st.composite
def auth_headers(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["AWS4-HMAC-SHA256", "AWS", "AWS4-HMAC-SHA1", "Bearer", ""]) | tricky_text)
    fields = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["Credential", "SignedHeaders", "Signature", "credential", ""]) | tricky_text)
        value = draw(
            {"Credential": credentials, "SignedHeaders": signed_headers, "Signature": sig_hex}.get(name, tricky_text)
        )
        eq = draw(st.sampled_from(["=", " = ", "", "=="]))
        fields.append(f"{name}{eq}{value}")
    sep = draw(st.sampled_from([",", ", ", " ,", ";"]))
    return f"{scheme}{draw(st.sampled_from([' ', '  ', '', chr(9)]))}{sep.join(fields)}"


methods = st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]) | tricky_text
raw_paths = st.sampled_from(["/", "", "/bucket/key", "/b/%", "/b/%zz", "/b/%C2%B2", "/b/\udcff", "/b/é", "/b/%ED%A0%80"]) | tricky_text


# -- properties ----------------------------------------------------------------------------


@FUZZ
@given(method=methods, path=raw_paths, query=raw_queries(), headers=header_lists(), any_key=st.booleans())
def test_verify_request_any_input(method: str, path: str, query: str, headers: list[tuple[str, str]], any_key: bool) -> None:
    outcome(RequestView(method, path, query, headers), lookup_any if any_key else lookup)


header_names = st.from_regex(r"x-amz-meta-[a-z0-9-]{1,10}", fullmatch=True) | st.sampled_from(
    ["content-type", "content-md5", "range", "if-match", "x-amz-acl", "cache-control"]
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30) | st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), max_size=10
)
AUTH_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "Signature", "AWSAccessKeyId")
query_pairs = st.lists(st.tuples(tricky_text, tricky_text), max_size=5).filter(
    lambda q: all(n.replace("+", " ") not in AUTH_PARAMS for n, _ in q)
)
path_bytes = st.binary(max_size=30)


@FUZZ
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE"]),
    path=path_bytes,
    query=query_pairs,
    headers=st.dictionaries(header_names, header_values, max_size=4),
    payload=payload_hashes.filter(lambda v: v in ("UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD") or bool(re.fullmatch(r"[0-9a-f]{64}", v))),
    region=st.sampled_from(["us-east-1", "eu-west-3", "é"]),
    skew=st.integers(-900, 900),
)
def test_signed_requests_verify(
    method: str, path: bytes, query: list[tuple[str, str]], headers: dict[str, str], payload: str, region: str, skew: int
) -> None:
    """What sign_request signs verifies: the right key, payload hash and region."""
    raw_path = "/" + uri_encode(path, keep_slash=True)
    all_headers = {"host": HOST, **headers}
    added = sign_request(method, raw_path, query, all_headers, payload, AK, SK, region, NOW + timedelta(seconds=skew))
    wire = [*all_headers.items(), *added.items()]
    result = outcome(RequestView(method, raw_path, encode_query(query), wire))
    assert isinstance(result, AuthResult), result
    assert (result.access_key, result.payload_hash, result.region, result.presigned) == (AK, payload, region, False)


@FUZZ
@given(
    path=path_bytes,
    query=query_pairs.filter(lambda q: all(not n.startswith("X-Amz-") for n, _ in q)),
    expires=st.integers(0, MAX_PRESIGN_EXPIRES),
    age=st.integers(0, MAX_PRESIGN_EXPIRES),
)
def test_presigned_urls_verify(path: bytes, query: list[tuple[str, str]], expires: int, age: int) -> None:
    raw_path = "/" + uri_encode(path, keep_slash=True)
    url = presign_url("GET", raw_path, query, HOST, AK, SK, "us-east-1", NOW - timedelta(seconds=age), expires)
    p, _, q = url.partition("?")
    result = outcome(RequestView("GET", p, q, [("Host", HOST)]))
    if age <= expires:
        assert isinstance(result, AuthResult), result
        assert result.presigned and result.access_key == AK
    else:
        assert isinstance(result, SigV4Error) and result.message == "Request has expired"


@st.composite
def mutated_presigned(draw: st.DrawFn) -> tuple[str, str, str]:
    url = presign_url("GET", "/bucket/key", [("partNumber", "1")], HOST, AK, SK, "us-east-1", NOW, 3600)
    path, _, query = url.partition("?")
    parts = query.split("&")
    i = draw(st.integers(0, len(parts) - 1))
    name, _, value = parts[i].partition("=")
    new_value = draw(query_value(name) | st.sampled_from(unicode_digit_variants(3600)))
    encoded = draw(st.booleans())
    parts[i] = f"{name}={quote(new_value.encode('utf-8', 'surrogatepass'), safe='') if encoded else new_value}"
    return path, "&".join(parts), new_value


@FUZZ
@given(mutated_presigned())
def test_mutated_presigned_urls(case: tuple[str, str, str]) -> None:
    path, query, _ = case
    outcome(RequestView("GET", path, query, [("Host", HOST)]))
    outcome(RequestView("GET", path, query, [("Host", HOST)]), lookup_any)


@FUZZ
@given(raw=expires_values | st.sampled_from(unicode_digit_variants(3600)))
def test_x_amz_expires_is_ascii_digits(raw: str) -> None:
    """X-Amz-Expires: ASCII digits up to a week, anything else a 400 (never int()'s idea of a number)."""
    params = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"{AK}/20130524/us-east-1/s3/aws4_request"),
        ("X-Amz-Date", AMZ),
        ("X-Amz-Expires", raw),
        ("X-Amz-SignedHeaders", "host"),
        ("X-Amz-Signature", "0" * 64),
    ]
    result = outcome(RequestView("GET", "/b/k", encode_query(params), [("host", HOST)]))
    assert isinstance(result, SigV4Error)
    digits = re.fullmatch(r"[0-9]+", raw, re.ASCII) is not None
    if digits and len(raw.lstrip("0")) <= 7 and int(raw.lstrip("0") or "0") <= MAX_PRESIGN_EXPIRES:
        # NOW is 30 s after X-Amz-Date
        expected = "SignatureDoesNotMatch" if int(raw.lstrip("0") or "0") >= 30 else "AccessDenied"
        assert result.code == expected, (raw, result.code, result.message)
    else:
        assert (result.code, result.status) == ("AuthorizationQueryParametersError", 400), (raw, result.message)
        assert "X-Amz-Expires" in result.message


_AMZ_REF = re.compile(r"[0-9]{8}T[0-9]{6}Z", re.ASCII)


@FUZZ
@given(raw=amz_dates | st.sampled_from(unicode_digit_variants(20130524)) | tricky_text, header=st.booleans())
def test_amz_date_is_ascii(raw: str, header: bool) -> None:
    """X-Amz-Date (query or header) must be yyyyMMddTHHmmssZ in ASCII digits."""
    if header:
        headers = [("host", HOST), ("x-amz-date", raw), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                   ("authorization", f"AWS4-HMAC-SHA256 Credential={AK}/{raw[:8]}/us-east-1/s3/aws4_request, "
                                     f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}")]
        result = outcome(RequestView("GET", "/b/k", "", headers))
    else:
        params = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{AK}/{raw[:8]}/us-east-1/s3/aws4_request"),
            ("X-Amz-Date", raw),
            ("X-Amz-Expires", "60"),
            ("X-Amz-SignedHeaders", "host"),
            ("X-Amz-Signature", "0" * 64),
        ]
        result = outcome(RequestView("GET", "/b/k", encode_query(params), [("host", HOST)]))
    assert isinstance(result, SigV4Error)
    if _AMZ_REF.fullmatch(raw.strip() if header else raw) is None:
        assert result.code in ("AccessDenied", "AuthorizationQueryParametersError", "AuthorizationHeaderMalformed"), result.code
        assert result.code != "SignatureDoesNotMatch"


@FUZZ
@given(raw=http_dates | tricky_text | st.text())
def test_http_date(raw: str) -> None:
    with no_hang():
        t = parse_http_date(raw)
    if t is not None:
        assert raw.isascii() and t.tzinfo is not None and t.utcoffset() == timedelta(0)


@FUZZ
@given(raw=st.text() | tricky_text | raw_paths)
def test_canonical_pieces_are_ascii(raw: str) -> None:
    with no_hang():
        for out in (canonical_uri(raw), canonical_query(raw), canonical_query(raw, exclude_signature=True), uri_encode(raw)):
            assert out.isascii()
            assert all(c not in out for c in " \t\r\n")


@FUZZ
@given(raw=st.text(alphabet=st.sampled_from(TRICKY_CHARS)) | st.text())
def test_unicode_digits_never_reach_int(raw: str) -> None:
    """A presigned date/expires made of any characters: a 4xx or the signature check, never a crash."""
    assume(raw)
    for name in ("X-Amz-Date", "X-Amz-Expires"):
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{AK}/20130524/us-east-1/s3/aws4_request",
            "X-Amz-Date": AMZ,
            "X-Amz-Expires": "60",
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": "0" * 64,
        }
        params[name] = raw
        outcome(RequestView("GET", "/b/k", encode_query(params.items()), [("host", HOST)]))
