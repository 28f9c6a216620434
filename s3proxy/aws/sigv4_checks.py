"""SigV4 verification steps shared by the Authorization header and presigned-URL verifiers:
payload-hash modes, the credential scope, the signed-header list (``host`` and every
``x-amz-*`` header must be signed), the access-key lookup and the constant-time signature
comparison, with S3's error codes and messages.  Pure."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from s3proxy.aws.sigv4_canonical import (
    STREAMING_PAYLOAD,
    STREAMING_PAYLOAD_TRAILER,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    SigV4Error,
    derive_signing_key,
    sign_string,
    string_to_sign,
    wire_bytes,
)

_PAYLOAD_MODES: Final = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER}
)

_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")

_DATE8: Final = re.compile(r"[0-9]{8}", re.ASCII)

DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)

_MSG_SIGNATURE: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)

MSG_BAD_DATE: Final = "AWS authentication requires a valid Date or x-amz-date header"

MSG_V2: Final = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."

_MSG_NOT_SIGNED: Final = "There were headers present in the request which were not signed"

MSG_PAYLOAD: Final = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, or a valid sha256 value."
)

MSG_QUERY_MISSING: Final = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)


def index_headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.strip().lower()
        values = index.get(lname)
        if values is None:
            index[lname] = [value]
        else:
            values.append(value)
    return index


def check_payload_hash(value: str) -> None:
    if value not in _PAYLOAD_MODES and _HEX64.fullmatch(value) is None:
        raise SigV4Error("InvalidArgument", MSG_PAYLOAD, 400, (("ArgumentName", "x-amz-content-sha256"),))


def parse_credential(credential: str, service: str, fail: Callable[[str], SigV4Error]) -> tuple[str, str, str]:
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


def no_white_space(text: str) -> bool:
    """True if ``text`` holds none of the white space ``str.split()`` and ``str.strip()`` know: every
    such character but the space is unprintable (tests/unit/test_client_fast.py checks every code point)."""
    return text.isprintable() and " " not in text


def parse_signed_headers(value: str) -> list[str] | None:
    if no_white_space(value):  # nothing to strip (every SDK's list)
        names = list(map(str.lower, value.split(";")))
    else:
        names = [n.strip().lower() for n in value.split(";")]
    if not value or "" in names:
        return None
    return names


def check_all_signed(
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


def lookup_secret_of(lookup_secret: Callable[[str], str | None], access_key: str) -> str:
    secret = lookup_secret(access_key)
    if secret is None:
        raise SigV4Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            403,
            (("AWSAccessKeyId", access_key),),
        )
    return secret


def compare_signature(
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
    sts = string_to_sign(amz_date, scope, canonical_request)
    key = derive_signing_key(secret, date, region, service)
    expected = sign_string(key, sts)
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
