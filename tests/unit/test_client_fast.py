"""The backend client's and SigV4's per-request shortcuts (issue 11) give exactly what the general
code gives: ``parse_signed_headers``'s no-white-space path, the backend URL built from its parts
instead of parsed from a string, the access-key map kept per identities tuple.  The SigV4 signing
and verification steps are pinned against reference copies of the per-header code, so a later
fast path (the C-call variants tried in issue 11 were slower in CPU time, see the report) has its
oracle ready.  The inputs are hostile on purpose: every white-space character ``str.split()``
knows, NULs, U+FFFD, repeated and differently-cased names, names with white space, empty values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from s3proxy.aws import sigv4
from s3proxy.aws.sigv4 import SigV4Error, sign_request
from s3proxy.aws.sigv4_canonical import (
    canonical_query,
    canonical_request,
    canonical_uri,
    derive_signing_key,
    sign_string,
    string_to_sign,
)
from s3proxy.aws.sigv4_checks import check_all_signed, index_headers, no_white_space, parse_signed_headers

# Every character str.split() treats as white space, plus NUL (the fast path's separator) and a
# few plain ones.
_WS = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
       "\u2000", "\u2003", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
_VALUE = st.text(alphabet=st.sampled_from([*_WS, "\x00", "\ufffd", "a", "Z", "0", "=", ",", ";", "é", "\u200b"]), max_size=12)
_NAME = st.sampled_from(["host", "Host", "HOST", " host", "x-amz-meta-a", "X-Amz-Meta-A", "x-amz-date", "X-Amz-Date",
                         "x-amz-content-sha256", "content-type", "Content-Type", "range", "user-agent", "authorization",
                         "x-amz-copy-source", "x-amz-meta-b ", "expect", "if-match", "x amz", "x-amz-meta-\u0130"])
_NOW = datetime(2026, 12, 2, 17, 0, 0, tzinfo=UTC)


def _ref_sign_request(method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
                      payload_hash: str, access_key: str, secret_key: str, region: str, now: datetime) -> dict[str, str]:
    """sign_request before the fast path."""
    amz_date = sigv4.amz_date_of(now)
    values: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.strip().lower()
        if lname in sigv4._NOT_SIGNED_OUT:
            continue
        if lname in values:
            raise ValueError(f"header {lname!r} given twice")
        values[lname] = value
    if "host" not in values:
        raise ValueError("the headers to sign must include 'host'")
    values["x-amz-date"] = amz_date
    values["x-amz-content-sha256"] = payload_hash
    signed = sorted(values)
    signed_names = ";".join(signed)
    canonical_headers = "".join([f"{n}:{' '.join(values[n].split())}\n" for n in signed])
    canonical = (f"{method}\n{canonical_uri(path)}\n{sigv4.encode_query(query)}\n{canonical_headers}\n"
                 f"{signed_names}\n{payload_hash}")
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    key = derive_signing_key(secret_key, amz_date[:8], region, "s3")
    signature = sign_string(key, string_to_sign(amz_date, scope, canonical))
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_names}, "
                         f"Signature={signature}",
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
    }


def _ref_canonical_request(method: str, curi: str, cquery: str, signed: Sequence[str],
                           values: Mapping[str, Sequence[str]], payload_hash: str) -> str:
    def trimmed(vs: Sequence[str]) -> str:
        if len(vs) == 1:
            return " ".join(vs[0].split())
        return ",".join(" ".join(v.split()) for v in vs)

    lines = [method, curi, cquery]
    lines += [f"{name}:{trimmed(values.get(name, ()))}" for name in signed]
    lines += ("", ";".join(signed), payload_hash)
    return "\n".join(lines)


def _ref_index_headers(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for name, value in headers:
        index.setdefault(name.strip().lower(), []).append(value)
    return index


def _ref_parse_signed_headers(value: str) -> list[str] | None:
    names = [n.strip().lower() for n in value.split(";")]
    if not value or any(not n for n in names):
        return None
    return names


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except (ValueError, SigV4Error) as e:
        return type(e), str(e)


def test_every_white_space_but_the_space_is_unprintable() -> None:
    """What no_white_space and trimmed_values rest on, over every code point: str.split()'s white
    space (str.isspace) is unprintable, the space excepted."""
    spaces = [c for c in map(chr, range(0x110000)) if c.isspace()]
    assert len(spaces) > 20
    assert [c for c in spaces if c != " " and c.isprintable()] == []
    assert all(no_white_space(c) is False for c in spaces)
    assert no_white_space("x-amz-meta-\u00e9;host") and not no_white_space("a b")


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=7), st.sampled_from(["GET", "PUT", "HEAD"]),
       st.sampled_from(["/b/k", "/b/a%20b", "/", "/b/~x$"]),
       st.lists(st.tuples(st.sampled_from(["uploads", "partNumber", "a b"]), _VALUE), max_size=2))
def test_sign_request_equals_per_header_code(pairs: list[tuple[str, str]], method: str, path: str,
                                             query: list[tuple[str, str]]) -> None:
    headers = dict(pairs)
    args = (method, path, query, headers, "UNSIGNED-PAYLOAD", "AK", "SK", "us-east-1", _NOW)
    assert _outcome(sign_request, *args) == _outcome(_ref_sign_request, *args)


def test_sign_request_multidict_with_repeats() -> None:
    """A multidict repeating a name (in any case) takes the per-header path and is refused as before."""
    from multidict import CIMultiDict

    h = CIMultiDict([("host", "h"), ("x-amz-meta-a", "1"), ("X-Amz-Meta-A", "2")])
    with pytest.raises(ValueError, match="given twice"):
        sign_request("GET", "/b/k", [], h, "UNSIGNED-PAYLOAD", "AK", "SK", "us-east-1", _NOW)
    # Repeats among the names never signed are ignored, as before.
    ok = CIMultiDict([("host", "h"), ("authorization", "x"), ("Authorization", "y")])
    assert sign_request("GET", "/b/k", [], ok, "UNSIGNED-PAYLOAD", "AK", "SK", "us-east-1", _NOW) == \
        _ref_sign_request("GET", "/b/k", [], ok, "UNSIGNED-PAYLOAD", "AK", "SK", "us-east-1", _NOW)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=8), st.lists(_NAME, max_size=5))
def test_verify_side_equals_per_header_code(pairs: list[tuple[str, str]], signed_raw: list[str]) -> None:
    index = index_headers(pairs)
    assert index == _ref_index_headers(pairs)
    assert list(index) == list(_ref_index_headers(pairs))  # the same order too
    signed_value = ";".join(signed_raw)
    signed = parse_signed_headers(signed_value)
    assert signed == _ref_parse_signed_headers(signed_value)
    if signed is None:
        return
    assert canonical_request("GET", "/b/k", "", signed, index, "UNSIGNED-PAYLOAD") == \
        _ref_canonical_request("GET", "/b/k", "", signed, index, "UNSIGNED-PAYLOAD")
    got = _outcome(check_all_signed, signed, index)
    signed_set = set(signed)
    want_missing = {"host"} - signed_set
    want_missing.update(n for n in index if n.startswith("x-amz-") and n != "x-amz-content-sha256" and n not in signed_set)
    if want_missing:
        assert isinstance(got, tuple) and got[0] is SigV4Error
    else:
        assert got is None


def test_check_all_signed_names_what_is_missing() -> None:
    index = index_headers([("Host", "h"), ("X-Amz-Meta-A", "1"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                           ("x-amz-date", "d"), ("Date", "x")])
    with pytest.raises(SigV4Error) as e:
        check_all_signed(["host"], index, ("date",))
    assert e.value.details == (("HeadersNotSigned", "date, x-amz-date, x-amz-meta-a"),)
    check_all_signed(["date", "host", "x-amz-date", "x-amz-meta-a"], index, ("date",))


def test_canonical_request_edge_cases() -> None:
    """Missing, repeated and empty-list values and an empty signed list take the general code."""
    for signed, values in ((["host"], {}), (["host", "x"], {"host": ["a", "b"], "x": []}), ([], {"host": ["h"]}),
                           (["host"], {"host": [" a  b "]}), (["a", "b"], {"a": ["1", "2"], "b": []})):
        assert canonical_request("PUT", "/", "a=b", signed, values, "h") == \
            _ref_canonical_request("PUT", "/", "a=b", signed, values, "h")


@pytest.mark.parametrize("base", ["http://127.0.0.1:9000", "https://s3.example.com", "http://[::1]:9000",
                                  "https://h.example:8443/prefix", "http://Host.Example:80"])
@pytest.mark.parametrize(("path", "qs"), [("/b/k", ""), ("/b/a%20b/c%2Fd", "x=1&uploads="), ("/", ""),
                                          ("/b/%E2%82%AC", "a=%2F&versionId=abc"), ("/b/a/../k", ""),
                                          ("/b/./k/.", "x="), ("/b//k", "")])
def test_backend_url_built_from_parts_equals_parsed(base: str, path: str, qs: str) -> None:
    """BackendClient builds its URL with URL.build(encoded=True): the URL the string parse gave (dot
    segments and empty segments kept: they are part of an S3 key)."""
    from pydantic import SecretStr

    from s3proxy.backend.client import BackendClient
    from s3proxy.config import BackendSettings

    client = BackendClient(BackendSettings(url=base, access_key=SecretStr("a"), secret_key=SecretStr("s")))
    parts = urlsplit(base)
    full = client._prefix + path
    parsed = URL(parts.scheme + "://" + parts.netloc + full + ("?" + qs if qs else ""), encoded=True)
    built = URL.build(scheme=client._scheme, authority=client._host, path=full, query_string=qs, encoded=True)
    assert built == parsed
    assert built.raw_path == full
    assert (str(built), built.raw_host, built.port, built.raw_path_qs, built.host_port_subcomponent) == \
        (str(parsed), parsed.raw_host, parsed.port, parsed.raw_path_qs, parsed.host_port_subcomponent)


def test_canonical_query_untouched() -> None:
    """The verify side's canonical query is the general code's (no fast path there): a sanity pin."""
    assert canonical_query("b=2&a=1&a=0") == "a=0&a=1&b=2"


def test_identities_by_key_follows_the_identities_tuple() -> None:
    """authenticate's access-key map is built once per identities tuple: a new tuple (a new
    configuration) is never answered from the old map, and a list is never kept."""
    from pydantic import SecretStr

    from s3proxy.config import Identity
    from s3proxy.http.auth import _identities_by_key

    a = Identity(name="a", access_key="AK1", secret_key=SecretStr("s1"))
    b = Identity(name="b", access_key="AK2", secret_key=SecretStr("s2"))
    first = (a,)
    assert _identities_by_key(first) == {"AK1": a}
    assert _identities_by_key(first) is _identities_by_key(first)
    second = (b,)
    assert _identities_by_key(second) == {"AK2": b}  # AK1 is gone with its configuration
    as_list = [a]
    assert _identities_by_key(as_list) == {"AK1": a}  # type: ignore[arg-type]
    as_list[0] = b
    assert _identities_by_key(as_list) == {"AK2": b}  # type: ignore[arg-type]
