"""SigV4 verification of the ``Authorization`` header (``AWS4-HMAC-SHA256 Credential=...,
SignedHeaders=..., Signature=...``): the field parser (a one-regex fast path for the form every SDK
writes, checked against the general parser by tests/unit/test_fast_paths.py), the date and skew
checks and the signature.  Pure; reached through :func:`s3proxy.aws.sigv4.verify_request`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Final

from s3proxy.aws.sigv4_canonical import (
    ALGORITHM,
    AMZ_DATE_FORMAT,
    AuthResult,
    RequestView,
    SigV4Error,
    canonical_query,
    canonical_request,
    canonical_uri,
    parse_amz_date,
    parse_http_date,
)
from s3proxy.aws.sigv4_checks import (
    MSG_BAD_DATE,
    MSG_PAYLOAD,
    MSG_V2,
    check_all_signed,
    check_payload_hash,
    compare_signature,
    lookup_secret_of,
    parse_credential,
    parse_signed_headers,
)


def _header_malformed(detail: str) -> SigV4Error:
    return SigV4Error("AuthorizationHeaderMalformed", f"The authorization header is malformed; {detail}", 400)


# The Authorization value as every SDK writes it; anything else takes the general parser below.
# Not re.ASCII: \s is every character str.strip() strips, so the values need no stripping.
AUTH_FAST: Final = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^,\s]+), ?SignedHeaders=([^,\s]+), ?Signature=([^,\s]+)"
)


def authorization_fields(header: str) -> dict[str, str]:
    """Credential, SignedHeaders and Signature of an ``AWS4-HMAC-SHA256`` Authorization value."""
    m = AUTH_FAST.fullmatch(header)
    if m is not None:  # the same fields the general parser finds for this value, in one regex match
        return {"Credential": m[1], "SignedHeaders": m[2], "Signature": m[3]}
    return parse_authorization(header)


def parse_authorization(header: str) -> dict[str, str]:
    """The general parser: any spacing and order; refuses unknown, repeated, empty or missing elements."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != ALGORITHM:
        if scheme == "AWS" or scheme.startswith("AWS4-"):
            raise SigV4Error("InvalidRequest", MSG_V2, 400)
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


def verify_header_auth(
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
    fields = authorization_fields(auth[0])
    access_key, cred_date, region = parse_credential(fields["Credential"], service, _header_malformed)

    payload = headers.get("x-amz-content-sha256")
    if not payload:
        raise SigV4Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400)
    if len(payload) != 1:
        raise SigV4Error("InvalidArgument", MSG_PAYLOAD, 400, (("ArgumentName", "x-amz-content-sha256"),))
    payload_hash = payload[0].strip()
    check_payload_hash(payload_hash)

    date_header = "x-amz-date" if "x-amz-date" in headers else "date"
    date_values = headers.get(date_header, [])
    if len(date_values) != 1:
        raise SigV4Error("AccessDenied", MSG_BAD_DATE, 403)
    raw_date = date_values[0].strip()
    t = parse_amz_date(raw_date) if date_header == "x-amz-date" else parse_http_date(raw_date)
    if t is None:
        raise SigV4Error("AccessDenied", MSG_BAD_DATE, 403)
    # An x-amz-date that parsed is already in the canonical form (the pattern is exact).
    amz_date = raw_date if date_header == "x-amz-date" else t.strftime(AMZ_DATE_FORMAT)
    if cred_date != amz_date[:8]:
        raise _header_malformed(
            f'Invalid credential date "{cred_date}". Date is not the same as X-Amz-Date: "{amz_date[:8]}".'
        )

    signed = parse_signed_headers(fields["SignedHeaders"])
    if signed is None:
        raise _header_malformed("the SignedHeaders element is empty or malformed.")
    check_all_signed(signed, headers, ("date",) if date_header == "date" else ())

    secret = lookup_secret_of(lookup_secret, access_key)

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

    canonical = canonical_request(
        req.method, canonical_uri(req.raw_path), canonical_query(req.raw_query), signed, headers, payload_hash
    )
    scope, key, signature = compare_signature(
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
