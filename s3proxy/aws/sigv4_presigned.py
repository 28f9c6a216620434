"""SigV4 verification of presigned URLs (``X-Amz-Algorithm``, ``-Credential``, ``-Date``,
``-Expires``, ``-SignedHeaders``, ``-Signature`` query parameters, each exactly once): parameter
parsing, expiry and the signature.  Pure; reached through :func:`s3proxy.aws.sigv4.verify_request`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.sigv4_canonical import (
    ALGORITHM,
    MAX_PRESIGN_EXPIRES,
    UNSIGNED_PAYLOAD,
    AuthResult,
    RequestView,
    SigV4Error,
    canonical_query,
    canonical_request,
    canonical_uri,
    parse_amz_date,
)
from s3proxy.aws.sigv4_checks import (
    DIGITS,
    MSG_QUERY_MISSING,
    check_all_signed,
    check_payload_hash,
    compare_signature,
    lookup_secret_of,
    parse_credential,
    parse_signed_headers,
)


def _query_error(message: str) -> SigV4Error:
    return SigV4Error("AuthorizationQueryParametersError", message, 400)


_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires")


def _params(query: Sequence[tuple[bytes, bytes]]) -> tuple[list[str], str | None]:
    """The six required ``X-Amz-*`` parameters (in :data:`_PARAMS` order) and the optional
    ``X-Amz-Content-Sha256``; each may be given once."""
    params: dict[str, list[str]] = {}
    for name, value in query:
        key = name.decode("utf-8", "replace")
        if key.startswith("X-Amz-"):
            params.setdefault(key, []).append(value.decode("utf-8", "surrogateescape"))

    def one(name: str, *, required: bool = True) -> str | None:
        values = params.get(name)
        if not values:
            if required:
                raise _query_error(MSG_QUERY_MISSING)
            return None
        if len(values) > 1:
            raise _query_error(f"{name} must be given only once.")
        return values[0]

    required = [one(name) for name in _PARAMS]
    content_sha = one("X-Amz-Content-Sha256", required=False)
    return [v for v in required if v is not None], content_sha


def _parse_expires(raw_expires: str) -> int:
    if DIGITS.fullmatch(raw_expires) is None:
        if raw_expires.startswith("-") and DIGITS.fullmatch(raw_expires[1:]):
            raise _query_error("X-Amz-Expires must be non-negative")
        raise _query_error("X-Amz-Expires should be a number")
    expires = parse_uint(raw_expires.lstrip("0") or "0")
    if expires is None or expires > MAX_PRESIGN_EXPIRES:
        raise _query_error(f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGN_EXPIRES}")
    return expires


def _check_window(t: datetime, raw_date: str, raw_expires: str, expires: int, now: datetime, max_skew: timedelta) -> None:
    """Not before X-Amz-Date (within the allowed skew), not after X-Amz-Date + X-Amz-Expires."""
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


def verify_presigned(
    req: RequestView,
    headers: Mapping[str, list[str]],
    query: Sequence[tuple[bytes, bytes]],
    lookup_secret: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta,
    service: str,
) -> AuthResult:
    values, content_sha = _params(query)
    algorithm, credential, provided, raw_date, signed_raw, raw_expires = values
    if algorithm != ALGORITHM:
        raise _query_error('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    access_key, cred_date, region = parse_credential(
        credential, service, lambda d: _query_error(f"Error parsing the X-Amz-Credential parameter; {d}")
    )
    t = parse_amz_date(raw_date)
    if t is None:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if cred_date != raw_date[:8]:
        raise _query_error(
            f'Error parsing the X-Amz-Credential parameter; Invalid credential date "{cred_date}". '
            f'Date is not the same as X-Amz-Date: "{raw_date[:8]}".'
        )
    expires = _parse_expires(raw_expires)
    signed = parse_signed_headers(signed_raw)
    if signed is None:
        raise _query_error("X-Amz-SignedHeaders is empty or malformed.")
    payload_hash = UNSIGNED_PAYLOAD
    if content_sha is not None:
        check_payload_hash(content_sha)
        payload_hash = content_sha
    check_all_signed(signed, headers)

    secret = lookup_secret_of(lookup_secret, access_key)
    _check_window(t, raw_date, raw_expires, expires, now, max_skew)

    canonical = canonical_request(
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query, exclude_signature=True),
        signed,
        headers,
        payload_hash,
    )
    scope, signing_key, signature = compare_signature(
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
