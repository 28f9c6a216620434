"""SigV4's vocabulary and canonical forms: the constants, :class:`SigV4Error`, the request view
and result types, UriEncode, the canonical URI / query / request, the string to sign, key
derivation and signatures (request, aws-chunked chunk and trailer), and the date formats.

Pure; part of :mod:`s3proxy.aws.sigv4`, which re-exports the public names (import them from there).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote_from_bytes, unquote_to_bytes

from s3proxy.aws.errors import S3Error

ALGORITHM: Final = "AWS4-HMAC-SHA256"

UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"

STREAMING_PAYLOAD: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

STREAMING_PAYLOAD_TRAILER: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"

STREAMING_UNSIGNED_PAYLOAD_TRAILER: Final = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()

MAX_PRESIGN_EXPIRES: Final = 604800  # seven days, S3's limit

# ASCII digits only: in a str pattern ``\d`` matches every Unicode digit too.
_AMZ_DATE: Final = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z", re.ASCII)

AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"

# A path or query component that UriEncode leaves as it is: its canonical form is itself.
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9_.~/-]*", re.ASCII)


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


def split_query(raw_query: str) -> list[tuple[bytes, bytes]]:
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
    for name, value in split_query(raw_query):
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


def canonical_request(
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


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
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


def sign_string(signing_key: bytes, string_to_sign: str) -> str:
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
    return sign_string(signing_key, sts)


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
    return sign_string(signing_key, sts)


def as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@functools.lru_cache(maxsize=64)
def parse_amz_date(value: str) -> datetime | None:
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
        return as_utc(parsedate_to_datetime(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@functools.lru_cache(maxsize=4)
def _amz_date_of_second(epoch_second: int) -> str:
    return datetime.fromtimestamp(epoch_second, UTC).strftime(AMZ_DATE_FORMAT)


def amz_date_of(now: datetime) -> str:
    """``now`` as an x-amz-date (``YYYYMMDDTHHMMSSZ``), formatted once per second (a naive ``now`` is UTC)."""
    return _amz_date_of_second(int(as_utc(now).timestamp()) if now.tzinfo is not UTC else int(now.timestamp()))
