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
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote_from_bytes, unquote_to_bytes

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint

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
]

ALGORITHM: Final = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_PAYLOAD_TRAILER: Final = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_EXPIRES: Final = 604800  # seven days, S3's limit

_PAYLOAD_MODES: Final = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER}
)
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
# ASCII digits only: in a str pattern ``\d`` matches every Unicode digit too.
_AMZ_DATE: Final = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z", re.ASCII)
_DATE8: Final = re.compile(r"[0-9]{8}", re.ASCII)
_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
_AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
# A path or query component that UriEncode leaves as it is: its canonical form is itself.
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9_.~/-]*", re.ASCII)

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

_MSG_SIGNATURE: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)
_MSG_BAD_DATE: Final = "AWS authentication requires a valid Date or x-amz-date header"
_MSG_V2: Final = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
_MSG_NOT_SIGNED: Final = "There were headers present in the request which were not signed"
_MSG_PAYLOAD: Final = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, or a valid sha256 value."
)
_MSG_QUERY_MISSING: Final = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)


class SigV4Error(S3Error):
    """An authentication failure, as the S3 error it maps to.

    ``details`` holds the additional elements S3 puts in its error XML
    (name, value) -- never anything secret.
    """

    details: tuple[tuple[str, str], ...]

    def __init__(
        self, code: str, message: str, status: int = 403, details: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.details = tuple((name, wire_text(value)) for name, value in details)
        super().__init__(code, wire_text(message), status, extra=dict(self.details))


def wire_text(value: str) -> str:
    """``value`` made encodable as UTF-8 for an error body.

    Request text reaches us decoded with ``surrogateescape`` (aiohttp's
    headers and path, our query parameters), so it may hold lone surrogates
    that ``str.encode()`` refuses; they are shown as U+FFFD.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


@dataclass(frozen=True)
class RequestView:
    """The parts of an incoming request that the signature covers, as on the wire."""

    method: str
    raw_path: str  # percent-encoded as received, no query
    raw_query: str  # as received, without '?', may be ''
    headers: Sequence[tuple[str, str]]  # as received: any case, repeats allowed


@dataclass(frozen=True)
class AuthResult:
    """A verified request: who signed it and what the body must match."""

    access_key: str
    payload_hash: str  # x-amz-content-sha256 as sent; UNSIGNED-PAYLOAD for presigned URLs
    presigned: bool
    amz_date: str  # YYYYMMDDTHHMMSSZ
    scope: str  # YYYYMMDD/region/service/aws4_request
    region: str
    signature: str  # the (seed) signature, lower-case hex
    signing_key: bytes = field(repr=False)  # verifies aws-chunked chunk signatures


# --------------------------------------------------------------------------
# Canonical forms


def uri_encode(value: str | bytes, *, keep_slash: bool = False) -> str:
    """AWS UriEncode: every byte except ``A-Za-z0-9-_.~`` (and ``/`` if kept) as %XX."""
    raw = wire_bytes(value) if isinstance(value, str) else value
    return quote_from_bytes(raw, safe="/" if keep_slash else "")


def canonical_uri(raw_path: str) -> str:
    """The S3 canonical URI of a raw (percent-encoded) request path.

    Decoded once and re-encoded byte by byte, so that ``%7E``, ``~`` and
    ``%7e`` all sign as ``~`` and a literal ``$`` signs as ``%24``.  No
    double encoding and no path normalisation (S3 keeps ``//``).
    """
    if not raw_path:
        return "/"
    if _PLAIN_PATH.fullmatch(raw_path) is not None:  # nothing to decode or encode (the common case)
        return raw_path
    return quote_from_bytes(unquote_to_bytes(wire_bytes(raw_path)), safe="/")


def wire_bytes(raw: str) -> bytes:
    """The bytes of request text decoded with ``surrogateescape`` (as aiohttp decodes the
    path and headers); ``str.encode()`` would raise on them."""
    try:
        return raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: not from the wire
        return raw.encode("utf-8", "surrogatepass")


def _decode_component(raw: str) -> bytes:
    return unquote_to_bytes(wire_bytes(raw.replace("+", " ")))


def _split_query(raw_query: str) -> list[tuple[bytes, bytes]]:
    pairs: list[tuple[bytes, bytes]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_decode_component(name), _decode_component(value)))
    return pairs


def canonical_query(raw_query: str, *, exclude_signature: bool = False) -> str:
    """The canonical query string of a raw query (without the ``?``)."""
    if not raw_query:
        return ""
    encoded: list[tuple[str, str]] = []
    for name, value in _split_query(raw_query):
        if exclude_signature and name == b"X-Amz-Signature":
            continue
        encoded.append((quote_from_bytes(name, safe=""), quote_from_bytes(value, safe="")))
    encoded.sort()
    return "&".join(f"{n}={v}" for n, v in encoded)


def encode_query(query: Iterable[tuple[str, str]]) -> str:
    """Encode decoded (name, value) pairs the way they are signed: sorted, UriEncoded.

    The result is both the canonical query string and a correct wire query.
    """
    if not query:
        return ""
    encoded = sorted((uri_encode(n), uri_encode(v)) for n, v in query)
    return "&".join(f"{n}={v}" for n, v in encoded)


def _trimmed(values: Sequence[str]) -> str:
    """The canonical value of a header: each value trimmed, runs of white space collapsed, joined with ``,``."""
    if len(values) == 1:
        return " ".join(values[0].split())
    return ",".join(" ".join(v.split()) for v in values)


def _canonical_request(
    method: str,
    curi: str,
    cquery: str,
    signed: Sequence[str],
    values: Mapping[str, Sequence[str]],
    payload_hash: str,
) -> str:
    lines = [method, curi, cquery]
    get = values.get
    lines += [f"{name}:{_trimmed(get(name, ()))}" for name in signed]
    lines += ("", ";".join(signed), payload_hash)
    return "\n".join(lines)


def _string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(wire_bytes(canonical_request)).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, wire_bytes(msg), "sha256")


@functools.lru_cache(maxsize=256)
def derive_signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").

    Memoised: the key changes once a day per identity, and four HMACs per
    request are a measurable share of a small object's cost.
    """
    k_date = _hmac(wire_bytes("AWS4" + secret_key), date)
    return _hmac(_hmac(_hmac(k_date, region), service), "aws4_request")


def _sign(signing_key: bytes, string_to_sign: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, without the Python-level hmac.HMAC object.
    return hmac.digest(signing_key, wire_bytes(string_to_sign), "sha256").hex()


def chunk_signature(
    signing_key: bytes, amz_date: str, scope: str, previous_signature: str, chunk_sha256_hex: str
) -> str:
    """Signature of one aws-chunked chunk (``AWS4-HMAC-SHA256-PAYLOAD``)."""
    sts = (
        f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous_signature}\n"
        f"{EMPTY_SHA256}\n{chunk_sha256_hex}"
    )
    return _sign(signing_key, sts)


def trailer_signature(
    signing_key: bytes, amz_date: str, scope: str, previous_signature: str, trailer_bytes: bytes
) -> str:
    """Signature of the trailing headers (``AWS4-HMAC-SHA256-TRAILER``).

    ``trailer_bytes`` are the trailer lines as signed: each ``name:value``
    followed by a bare ``\\n`` (not the ``\\r\\n`` of the wire), without the
    ``x-amz-trailer-signature`` line.  ``previous_signature`` is the final
    (zero-length) chunk's signature.
    """
    sts = (
        f"AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous_signature}\n"
        f"{hashlib.sha256(trailer_bytes).hexdigest()}"
    )
    return _sign(signing_key, sts)


# --------------------------------------------------------------------------
# Verification


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@functools.lru_cache(maxsize=64)
def _parse_amz_date(value: str) -> datetime | None:
    """``YYYYMMDDTHHMMSSZ`` as an aware UTC datetime, or None.  Memoised: concurrent requests
    share their date to the second (a datetime is immutable)."""
    if _AMZ_DATE.fullmatch(value) is None:
        return None
    v = value
    try:
        return datetime(int(v[0:4]), int(v[4:6]), int(v[6:8]), int(v[9:11]), int(v[11:13]), int(v[13:15]), tzinfo=UTC)
    except ValueError:
        return None


def parse_http_date(value: str) -> datetime | None:
    """An RFC 7231 / RFC 2822 ``Date`` as an aware UTC datetime, or None.

    ASCII only: the email parser's int() would accept Unicode digits.
    """
    if not value.isascii():
        return None
    try:
        return _utc(parsedate_to_datetime(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _index_headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.strip().lower()
        values = index.get(lname)
        if values is None:
            index[lname] = [value]
        else:
            values.append(value)
    return index


def _check_payload_hash(value: str) -> None:
    if value not in _PAYLOAD_MODES and _HEX64.fullmatch(value) is None:
        raise SigV4Error("InvalidArgument", _MSG_PAYLOAD, 400, (("ArgumentName", "x-amz-content-sha256"),))


def _parse_credential(credential: str, service: str, fail: Callable[[str], SigV4Error]) -> tuple[str, str, str]:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or _DATE8.fullmatch(parts[1]) is None or not parts[2]:
        raise fail(
            'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    access_key, date, region, svc, terminal = parts
    if svc != service:
        raise fail(f'incorrect service "{svc}". This endpoint belongs to "{service}".')
    if terminal != "aws4_request":
        raise fail(f'incorrect terminal "{terminal}". This endpoint uses "aws4_request".')
    return access_key, date, region


def _parse_signed_headers(value: str) -> list[str] | None:
    names = [n.strip().lower() for n in value.split(";")]
    if not value or any(not n for n in names):
        return None
    return names


def _check_all_signed(
    signed: Sequence[str], headers: Mapping[str, list[str]], extra_required: Iterable[str] = ()
) -> None:
    signed_set = set(signed)
    missing = {"host", *extra_required} - signed_set
    missing.update(
        name
        for name in headers
        if name.startswith("x-amz-") and name != "x-amz-content-sha256" and name not in signed_set
    )
    if missing:
        raise SigV4Error("AccessDenied", _MSG_NOT_SIGNED, 403, (("HeadersNotSigned", ", ".join(sorted(missing))),))


def _lookup(lookup_secret: Callable[[str], str | None], access_key: str) -> str:
    secret = lookup_secret(access_key)
    if secret is None:
        raise SigV4Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            403,
            (("AWSAccessKeyId", access_key),),
        )
    return secret


def _compare(
    *,
    provided: str,
    secret: str,
    access_key: str,
    date: str,
    region: str,
    service: str,
    amz_date: str,
    canonical_request: str,
) -> tuple[str, bytes, str]:
    scope = f"{date}/{region}/{service}/aws4_request"
    sts = _string_to_sign(amz_date, scope, canonical_request)
    key = derive_signing_key(secret, date, region, service)
    expected = _sign(key, sts)
    if not hmac.compare_digest(expected.encode("ascii"), wire_bytes(provided)):
        raise SigV4Error(
            "SignatureDoesNotMatch",
            _MSG_SIGNATURE,
            403,
            (
                ("AWSAccessKeyId", access_key),
                ("StringToSign", sts),
                ("SignatureProvided", provided),
                ("CanonicalRequest", canonical_request),
            ),
        )
    return scope, key, expected


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
    headers = _index_headers(req.headers)
    query = _split_query(req.raw_query)
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
        return _verify_header_auth(req, headers, auth, lookup_secret, _utc(now), max_skew, service)
    if v4_query:
        return _verify_presigned(req, headers, query, lookup_secret, _utc(now), max_skew, service)
    if v2_query:
        raise SigV4Error("InvalidRequest", _MSG_V2, 400)
    return None


def _header_malformed(detail: str) -> SigV4Error:
    return SigV4Error("AuthorizationHeaderMalformed", f"The authorization header is malformed; {detail}", 400)


# The Authorization value as every SDK writes it; anything else takes the general parser below.
# Not re.ASCII: \s is every character str.strip() strips, so the values need no stripping.
_AUTH_FAST: Final = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^,\s]+), ?SignedHeaders=([^,\s]+), ?Signature=([^,\s]+)"
)


def _authorization_fields(header: str) -> dict[str, str]:
    """Credential, SignedHeaders and Signature of an ``AWS4-HMAC-SHA256`` Authorization value."""
    m = _AUTH_FAST.fullmatch(header)
    if m is not None:  # the same fields the general parser finds for this value, in one regex match
        return {"Credential": m[1], "SignedHeaders": m[2], "Signature": m[3]}
    return _parse_authorization(header)


def _parse_authorization(header: str) -> dict[str, str]:
    """The general parser: any spacing and order; refuses unknown, repeated, empty or missing elements."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != ALGORITHM:
        if scheme == "AWS" or scheme.startswith("AWS4-"):
            raise SigV4Error("InvalidRequest", _MSG_V2, 400)
        raise SigV4Error("InvalidArgument", "Unsupported Authorization Type", 400, (("ArgumentName", "Authorization"),))

    fields: dict[str, str] = {}
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name in fields or name not in ("Credential", "SignedHeaders", "Signature"):
            raise _header_malformed(f"unexpected element {name!r}.")
        fields[name] = value.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(required):
            raise _header_malformed(f"missing {required}.")
    return fields


def _verify_header_auth(
    req: RequestView,
    headers: Mapping[str, list[str]],
    auth: list[str],
    lookup_secret: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta,
    service: str,
) -> AuthResult:
    if len(auth) != 1:
        raise _header_malformed("more than one Authorization header.")
    fields = _authorization_fields(auth[0])
    access_key, cred_date, region = _parse_credential(fields["Credential"], service, _header_malformed)

    payload = headers.get("x-amz-content-sha256")
    if not payload:
        raise SigV4Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400)
    if len(payload) != 1:
        raise SigV4Error("InvalidArgument", _MSG_PAYLOAD, 400, (("ArgumentName", "x-amz-content-sha256"),))
    payload_hash = payload[0].strip()
    _check_payload_hash(payload_hash)

    date_header = "x-amz-date" if "x-amz-date" in headers else "date"
    date_values = headers.get(date_header, [])
    if len(date_values) != 1:
        raise SigV4Error("AccessDenied", _MSG_BAD_DATE, 403)
    raw_date = date_values[0].strip()
    t = _parse_amz_date(raw_date) if date_header == "x-amz-date" else parse_http_date(raw_date)
    if t is None:
        raise SigV4Error("AccessDenied", _MSG_BAD_DATE, 403)
    # An x-amz-date that parsed is already in the canonical form (the pattern is exact).
    amz_date = raw_date if date_header == "x-amz-date" else t.strftime(_AMZ_DATE_FORMAT)
    if cred_date != amz_date[:8]:
        raise _header_malformed(
            f'Invalid credential date "{cred_date}". Date is not the same as X-Amz-Date: "{amz_date[:8]}".'
        )

    signed = _parse_signed_headers(fields["SignedHeaders"])
    if signed is None:
        raise _header_malformed("the SignedHeaders element is empty or malformed.")
    _check_all_signed(signed, headers, ("date",) if date_header == "date" else ())

    secret = _lookup(lookup_secret, access_key)

    if abs(now - t) > max_skew:
        raise SigV4Error(
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            403,
            (
                ("RequestTime", raw_date),
                ("ServerTime", now.strftime("%Y-%m-%dT%H:%M:%SZ")),
                ("MaxAllowedSkewMilliseconds", str(int(max_skew.total_seconds() * 1000))),
            ),
        )

    canonical = _canonical_request(
        req.method, canonical_uri(req.raw_path), canonical_query(req.raw_query), signed, headers, payload_hash
    )
    scope, key, signature = _compare(
        provided=fields["Signature"],
        secret=secret,
        access_key=access_key,
        date=cred_date,
        region=region,
        service=service,
        amz_date=amz_date,
        canonical_request=canonical,
    )
    return AuthResult(
        access_key=access_key,
        payload_hash=payload_hash,
        presigned=False,
        amz_date=amz_date,
        scope=scope,
        region=region,
        signature=signature,
        signing_key=key,
    )


def _query_error(message: str) -> SigV4Error:
    return SigV4Error("AuthorizationQueryParametersError", message, 400)


def _verify_presigned(
    req: RequestView,
    headers: Mapping[str, list[str]],
    query: Sequence[tuple[bytes, bytes]],
    lookup_secret: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta,
    service: str,
) -> AuthResult:
    params: dict[str, list[str]] = {}
    for name, value in query:
        key = name.decode("utf-8", "replace")
        if key.startswith("X-Amz-"):
            params.setdefault(key, []).append(value.decode("utf-8", "surrogateescape"))

    def one(name: str, *, required: bool = True) -> str | None:
        values = params.get(name)
        if not values:
            if required:
                raise _query_error(_MSG_QUERY_MISSING)
            return None
        if len(values) > 1:
            raise _query_error(f"{name} must be given only once.")
        return values[0]

    algorithm = one("X-Amz-Algorithm")
    credential = one("X-Amz-Credential")
    provided = one("X-Amz-Signature")
    raw_date = one("X-Amz-Date")
    signed_raw = one("X-Amz-SignedHeaders")
    raw_expires = one("X-Amz-Expires")
    content_sha = one("X-Amz-Content-Sha256", required=False)
    assert algorithm is not None and credential is not None and provided is not None
    assert raw_date is not None and signed_raw is not None and raw_expires is not None

    if algorithm != ALGORITHM:
        raise _query_error('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    access_key, cred_date, region = _parse_credential(
        credential, service, lambda d: _query_error(f"Error parsing the X-Amz-Credential parameter; {d}")
    )
    t = _parse_amz_date(raw_date)
    if t is None:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if cred_date != raw_date[:8]:
        raise _query_error(
            f'Error parsing the X-Amz-Credential parameter; Invalid credential date "{cred_date}". '
            f'Date is not the same as X-Amz-Date: "{raw_date[:8]}".'
        )
    if _DIGITS.fullmatch(raw_expires) is None:
        if raw_expires.startswith("-") and _DIGITS.fullmatch(raw_expires[1:]):
            raise _query_error("X-Amz-Expires must be non-negative")
        raise _query_error("X-Amz-Expires should be a number")
    expires = parse_uint(raw_expires.lstrip("0") or "0")
    if expires is None or expires > MAX_PRESIGN_EXPIRES:
        raise _query_error(f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGN_EXPIRES}")
    signed = _parse_signed_headers(signed_raw)
    if signed is None:
        raise _query_error("X-Amz-SignedHeaders is empty or malformed.")
    payload_hash = UNSIGNED_PAYLOAD
    if content_sha is not None:
        _check_payload_hash(content_sha)
        payload_hash = content_sha
    _check_all_signed(signed, headers)

    secret = _lookup(lookup_secret, access_key)

    if t - now > max_skew:
        raise SigV4Error("AccessDenied", "Request is not valid yet", 403, (("X-Amz-Date", raw_date),))
    if now - t > timedelta(seconds=expires):
        raise SigV4Error(
            "AccessDenied",
            "Request has expired",
            403,
            (
                ("X-Amz-Expires", raw_expires),
                ("Expires", (t + timedelta(seconds=expires)).strftime("%Y-%m-%dT%H:%M:%SZ")),
                ("ServerTime", now.strftime("%Y-%m-%dT%H:%M:%SZ")),
            ),
        )

    canonical = _canonical_request(
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query, exclude_signature=True),
        signed,
        headers,
        payload_hash,
    )
    scope, signing_key, signature = _compare(
        provided=provided,
        secret=secret,
        access_key=access_key,
        date=cred_date,
        region=region,
        service=service,
        amz_date=raw_date,
        canonical_request=canonical,
    )
    return AuthResult(
        access_key=access_key,
        payload_hash=payload_hash,
        presigned=True,
        amz_date=raw_date,
        scope=scope,
        region=region,
        signature=signature,
        signing_key=signing_key,
    )


# --------------------------------------------------------------------------
# Signing


@functools.lru_cache(maxsize=4)
def _amz_date_of_second(epoch_second: int) -> str:
    return datetime.fromtimestamp(epoch_second, UTC).strftime(_AMZ_DATE_FORMAT)


def amz_date_of(now: datetime) -> str:
    """``now`` as an x-amz-date (``YYYYMMDDTHHMMSSZ``), formatted once per second (a naive ``now`` is UTC)."""
    return _amz_date_of_second(int(_utc(now).timestamp()) if now.tzinfo is not UTC else int(now.timestamp()))


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
    # The canonical request of _canonical_request, one value per header, built in one pass.
    canonical_headers = "".join([f"{n}:{' '.join(values[n].split())}\n" for n in signed])
    canonical = (
        f"{method}\n{canonical_uri(path)}\n{encode_query(query)}\n{canonical_headers}\n{signed_names}\n{payload_hash}"
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    key = derive_signing_key(secret_key, amz_date[:8], region, service)
    signature = _sign(key, _string_to_sign(amz_date, scope, canonical))
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
    amz_date = _utc(now).strftime(_AMZ_DATE_FORMAT)
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
    canonical = _canonical_request(method, canonical_uri(path), cquery, ["host"], {"host": [host]}, payload_hash)
    key = derive_signing_key(secret_key, amz_date[:8], region, "s3")
    signature = _sign(key, _string_to_sign(amz_date, scope, canonical))
    return f"{path}?{cquery}&X-Amz-Signature={signature}"
