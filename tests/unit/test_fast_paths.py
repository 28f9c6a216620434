"""The per-request fast paths (issue 11) give exactly what the general code gives.

Each shortcut on the small-object path is checked against the code it skips:
the Authorization regex against the general field parser (including the
hostile variants a client may send to confuse a shortcut), the plain-path
canonical URI and backend key encoding against percent-encoding, the cached
x-amz-date against ``strftime``, and the cached metric children against
``labels()``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from s3proxy.aws import sigv4
from s3proxy.aws.sigv4 import SigV4Error, amz_date_of, canonical_uri, wire_bytes
from s3proxy.backend.client import encode_key
from s3proxy.observability import Metrics
from s3proxy.state import RequestMetrics


def _general_fields(header: str) -> dict[str, str]:
    return sigv4._parse_authorization(header)


_PIECE = st.text(alphabet=st.sampled_from(list("aZ09=,/;-_ \t\r\n\xa0\x85\u2003\u3000")), max_size=10)


@settings(max_examples=3000, deadline=None)
@given(_PIECE, _PIECE, _PIECE, st.sampled_from([",", ", ", " ,", ",  ", ",\t"]), st.sampled_from([",", ", ", " , "]))
def test_authorization_fast_path_equals_general(cred: str, signed: str, sig: str, sep1: str, sep2: str) -> None:
    header = f"AWS4-HMAC-SHA256 Credential={cred}{sep1}SignedHeaders={signed}{sep2}Signature={sig}"
    try:
        want: dict[str, str] | str = _general_fields(header)
    except SigV4Error as e:
        want = e.code
    try:
        got: dict[str, str] | str = sigv4._authorization_fields(header)
    except SigV4Error as e:
        got = e.code
    assert got == want


@pytest.mark.parametrize("header", [
    "AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=ab, Signature=cd",
    "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=ab, Extra=1",
    "AWS4-HMAC-SHA256 Credential=a, Credential=b, SignedHeaders=host, Signature=ab",
    "AWS4-HMAC-SHA256 Credential=, SignedHeaders=host, Signature=ab",
    "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=ab",
    "AWS4-HMAC-SHA256  Credential=a, SignedHeaders=host, Signature=ab",
    "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=a\u00a0b",
    "aws4-hmac-sha256 Credential=a, SignedHeaders=host, Signature=ab",
    "AWS4-HMAC-SHA512 Credential=a, SignedHeaders=host, Signature=ab",
    "AWS a:b",
])
def test_hostile_authorization_values_take_the_general_path(header: str) -> None:
    """A value the shortcut does not match exactly is parsed (and refused) by the general parser."""
    assert sigv4._AUTH_FAST.fullmatch(header) is None or header.count("=") == 3
    try:
        want: dict[str, str] | str = _general_fields(header)
    except SigV4Error as e:
        want = e.code
    try:
        got: dict[str, str] | str = sigv4._authorization_fields(header)
    except SigV4Error as e:
        got = e.code
    assert got == want


@given(st.text(max_size=40))
def test_canonical_uri_fast_path(path: str) -> None:
    raw = "/" + path
    slow = quote_from_bytes(unquote_to_bytes(wire_bytes(raw)), safe="/")
    assert canonical_uri(raw) == slow


@given(st.text(max_size=40))
def test_encode_key_fast_path(key: str) -> None:
    try:
        want = quote(key, safe="/~")
    except UnicodeEncodeError:  # lone surrogates: both ways refuse
        with pytest.raises(UnicodeEncodeError):
            encode_key(key)
        return
    assert encode_key(key) == want


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
       st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]))
def test_amz_date_of_equals_strftime(t: datetime, tz: timezone | None) -> None:
    t = t.replace(tzinfo=tz)
    utc = t.replace(tzinfo=UTC) if tz is None else t.astimezone(UTC)
    assert amz_date_of(t) == utc.strftime("%Y%m%dT%H%M%SZ")


def test_request_metrics_children_are_the_labelled_ones() -> None:
    m = Metrics()
    rm = RequestMetrics(m)
    for status in (200, 200, 404, 200):
        rm.observe("GetObject", status, 0.002)
    rm.observe("PutObject", 200, 0.5)
    reg: CollectorRegistry = m.registry
    assert reg.get_sample_value("s3proxy_requests_total", {"op": "GetObject", "status": "200"}) == 3
    assert reg.get_sample_value("s3proxy_requests_total", {"op": "GetObject", "status": "404"}) == 1
    assert reg.get_sample_value("s3proxy_request_seconds_count", {"op": "GetObject"}) == 4
    assert reg.get_sample_value("s3proxy_request_seconds_count", {"op": "PutObject"}) == 1
