"""AWS Signature Version 4 for S3: verify what clients send, sign what we send.

Pure and sans-IO: the caller hands in a :class:`RequestView` (method, raw path,
raw query, headers as received) and gets an :class:`AuthResult` or a
:class:`SigV4Error` carrying the S3 error code and HTTP status.

Rules followed here (S3 flavour of SigV4):

* Canonical URI: the raw path is percent-decoded once and every byte except
  the unreserved set (``A-Z a-z 0-9 - _ . ~``) and ``/`` is re-encoded.  No
  path normalisation: ``//``, ``.`` and ``..`` segments are kept.
* Canonical query: every ``name=value`` pair is decoded once (``+`` is a
  space, as in form encoding) and re-encoded like the path but with ``/``
  encoded too, then the pairs are sorted by encoded name, then value.
* Canonical headers: lower-case names; each value trimmed and runs of white
  space collapsed to one space; repeated headers joined with ``,``.
* The payload hash is the ``x-amz-content-sha256`` value as sent (a hex
  SHA-256, ``UNSIGNED-PAYLOAD`` or a ``STREAMING-...`` mode); presigned URLs
  use ``UNSIGNED-PAYLOAD`` unless an ``X-Amz-Content-Sha256`` parameter is
  given.
* ``host`` must be signed, and so must every ``x-amz-*`` header present
  (except ``x-amz-content-sha256``, which the signature covers anyway), as on
  S3 (``AccessDenied``: "There were headers present in the request which
  were not signed").

Signatures are compared in constant time.  Error messages never contain
secrets; ``SigV4Error.details`` carries the extra XML elements S3 returns
(``StringToSign``, ``CanonicalRequest``, ``HeadersNotSigned``...), all derived
from the request itself.

Module map: :mod:`~s3proxy.aws.sigv4_canonical` (canonical forms, key derivation, signatures),
:mod:`~s3proxy.aws.sigv4_checks`, :mod:`~s3proxy.aws.sigv4_header` and
:mod:`~s3proxy.aws.sigv4_presigned` (verification).  This module verifies
(:func:`verify_request`), signs (:func:`sign_request`, :func:`presign_url`) and re-exports the
public names: import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from s3proxy.aws.sigv4_canonical import (
    ALGORITHM,
    AMZ_DATE_FORMAT,
    EMPTY_SHA256,
    MAX_PRESIGN_EXPIRES,
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    AuthResult,
    RequestView,
    SigV4Error,
    amz_date_of,
    as_utc,
    canonical_query,
    canonical_request,
    canonical_uri,
    chunk_signature,
    derive_signing_key,
    encode_query,
    parse_http_date,
    sign_string,
    split_query,
    string_to_sign,
    trailer_signature,
    uri_encode,
    wire_bytes,
    wire_text,
)
from s3proxy.aws.sigv4_checks import MSG_V2, index_headers

# The Authorization parsers under their old names (tests/unit/test_fast_paths.py compares them).
from s3proxy.aws.sigv4_header import AUTH_FAST as _AUTH_FAST  # noqa: F401
from s3proxy.aws.sigv4_header import authorization_fields as _authorization_fields  # noqa: F401
from s3proxy.aws.sigv4_header import parse_authorization as _parse_authorization  # noqa: F401
from s3proxy.aws.sigv4_header import verify_header_auth
from s3proxy.aws.sigv4_presigned import verify_presigned

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_PRESIGN_EXPIRES",
    "STREAMING_PAYLOAD",
    "STREAMING_PAYLOAD_TRAILER",
    "STREAMING_UNSIGNED_PAYLOAD_TRAILER",
    "UNSIGNED_PAYLOAD",
    "AuthResult",
    "RequestView",
    "SigV4Error",
    "canonical_query",
    "canonical_uri",
    "chunk_signature",
    "derive_signing_key",
    "encode_query",
    "presign_url",
    "sign_request",
    "trailer_signature",
    "uri_encode",
    "verify_request",
    "amz_date_of",
    "parse_http_date",
    "wire_bytes",
    "wire_text",
]

# Headers an HTTP client or proxy may add or rewrite on the way: never signed
# by sign_request (botocore leaves the same ones out).
_UNSIGNABLE: Final = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

_NOT_SIGNED_OUT: Final = _UNSIGNABLE | {"x-amz-date", "x-amz-content-sha256"}

# Query parameters that mark a request as presigned (SigV4) or SigV2-signed.
_V4_QUERY: Final = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"})

_V2_QUERY: Final = frozenset({"Signature", "AWSAccessKeyId"})


def verify_request(
    req: RequestView,
    lookup_secret: Callable[[str], str | None],
    now: datetime,
    *,
    max_skew: timedelta = timedelta(minutes=15),
    service: str = "s3",
) -> AuthResult | None:
    """Verify the SigV4 signature of a request (header or presigned URL).

    Returns ``None`` when the request carries no authentication at all
    (anonymous; the caller decides), an :class:`AuthResult` when the signature
    is valid, and raises :class:`SigV4Error` otherwise.  ``lookup_secret``
    maps an access key to its secret, or ``None`` for an unknown key.
    """
    headers = index_headers(req.headers)
    query = split_query(req.raw_query)
    names = {n.decode("utf-8", "replace") for n, _ in query}
    auth = headers.get("authorization")
    v4_query = not _V4_QUERY.isdisjoint(names)
    v2_query = not _V2_QUERY.isdisjoint(names)
    if auth is not None:
        if v4_query or v2_query:
            raise SigV4Error(
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
                400,
                (("ArgumentName", "Authorization"),),
            )
        return verify_header_auth(req, headers, auth, lookup_secret, as_utc(now), max_skew, service)
    if v4_query:
        return verify_presigned(req, headers, query, lookup_secret, as_utc(now), max_skew, service)
    if v2_query:
        raise SigV4Error("InvalidRequest", MSG_V2, 400)
    return None


def sign_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    payload_hash: str,
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime,
    service: str = "s3",
) -> dict[str, str]:
    """Sign an outgoing request; return the headers to add.

    ``path`` is percent-encoded as it will be sent; ``query`` holds decoded
    (name, value) pairs (send them as :func:`encode_query` encodes them);
    ``headers`` are the headers that will be sent -- ``host`` is required.
    Every header given is signed except hop-by-hop ones an HTTP client may
    rewrite (``connection``, ``expect``, ``transfer-encoding``,
    ``user-agent``...).  Any ``authorization``, ``x-amz-date`` or
    ``x-amz-content-sha256`` given is ignored: the returned
    ``Authorization``, ``x-amz-date`` and ``x-amz-content-sha256`` replace
    them.
    """
    amz_date = amz_date_of(now)
    values: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.strip().lower()
        if lname in _NOT_SIGNED_OUT:
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
    # The canonical request of canonical_request, one value per header, built in one pass.
    canonical_headers = "".join([f"{n}:{' '.join(values[n].split())}\n" for n in signed])
    canonical = (
        f"{method}\n{canonical_uri(path)}\n{encode_query(query)}\n{canonical_headers}\n{signed_names}\n{payload_hash}"
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    key = derive_signing_key(secret_key, amz_date[:8], region, service)
    signature = sign_string(key, string_to_sign(amz_date, scope, canonical))
    return {
        "Authorization": (
            f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_names}, Signature={signature}"
        ),
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
    }


def presign_url(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    host: str,
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime,
    expires: int,
) -> str:
    """A presigned ``path?query``: only ``host`` signed; the payload is ``UNSIGNED-PAYLOAD``
    unless ``query`` carries an ``X-Amz-Content-Sha256`` parameter."""
    if not 0 <= expires <= MAX_PRESIGN_EXPIRES:
        raise ValueError(f"expires must be between 0 and {MAX_PRESIGN_EXPIRES} seconds")
    amz_date = as_utc(now).strftime(AMZ_DATE_FORMAT)
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    params = [
        *query,
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    cquery = encode_query(params)
    payload_hash = next((v for n, v in query if n == "X-Amz-Content-Sha256"), UNSIGNED_PAYLOAD)
    canonical = canonical_request(method, canonical_uri(path), cquery, ["host"], {"host": [host]}, payload_hash)
    key = derive_signing_key(secret_key, amz_date[:8], region, "s3")
    signature = sign_string(key, string_to_sign(amz_date, scope, canonical))
    return f"{path}?{cquery}&X-Amz-Signature={signature}"
