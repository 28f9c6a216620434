"""AWS Signature Version 2 for S3, verification only (pure).

Still produced by default by boto3's ``generate_presigned_url`` and the AWS
CLI's ``aws s3 presign`` (query form: ``AWSAccessKeyId``, ``Signature``,
``Expires``), and by old tools (header form ``Authorization: AWS ak:sig``).
HMAC-SHA1 over the canonical string of the S3 REST authentication docs;
signatures compared in constant time.  New clients should use SigV4.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.sigv4 import SigV4Error, parse_http_date, wire_bytes

# Query parameters that are part of the signed resource (as botocore signs them).
SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber", "policy",
        "requestPayment", "torrent", "versioning", "versionId", "versions", "website", "uploads", "uploadId",
        "response-content-type", "response-content-language", "response-expires", "response-cache-control",
        "response-content-disposition", "response-content-encoding", "delete", "lifecycle", "tagging", "restore",
        "storageClass", "notification", "replication", "analytics", "metrics", "inventory", "select",
        "select-type", "object-lock",
    }
)


@dataclass(frozen=True)
class V2Result:
    access_key: str
    presigned: bool


def _split_query(raw_query: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            out.append((unquote(k), unquote(v)))
        else:
            out.append((unquote(part), None))
    return out


def is_v2(raw_query: str, authorization: str | None) -> bool:
    if authorization is not None:
        return authorization.startswith("AWS ")
    names = {k for k, _ in _split_query(raw_query)}
    return "AWSAccessKeyId" in names and "Signature" in names


def string_to_sign(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    date_or_expires: str,
    resource_prefix: str = "",
) -> str:
    lower: dict[str, list[str]] = {}
    for k, v in headers:
        lower.setdefault(k.lower(), []).append(v)
    query = _split_query(raw_query)
    qmap = {k.lower(): v for k, v in query if v is not None}

    def std(name: str) -> str:
        if name in lower:
            return lower[name][0].strip()
        return (qmap.get(name) or "").strip()

    amz: dict[str, str] = {}
    for k, vs in lower.items():
        if k.startswith("x-amz-"):
            amz[k] = ",".join(v.strip() for v in vs)
    for k, qv in query:
        lk = k.lower()
        if lk.startswith("x-amz-") and lk not in amz and qv is not None:
            amz[lk] = qv.strip()
    canon_amz = "".join(f"{k}:{amz[k]}\n" for k in sorted(amz))
    sub = sorted((k, v) for k, v in query if k in SUBRESOURCES)
    resource = resource_prefix + raw_path
    if sub:
        resource += "?" + "&".join(k if v is None else f"{k}={v}" for k, v in sub)
    return f"{method}\n{std('content-md5')}\n{std('content-type')}\n{date_or_expires}\n{canon_amz}{resource}"


def sign(secret_key: str, sts: str) -> str:
    mac = hmac.new(wire_bytes(secret_key), wire_bytes(sts), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def verify_v2(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    lookup_secret: Callable[[str], str | None],
    now: datetime,
    *,
    max_skew_seconds: int = 900,
    resource_prefix: str = "",
) -> V2Result:
    """Verify a SigV2 request; raises SigV4Error with S3's codes (the shared error type)."""
    auth = next((v for k, v in headers if k.lower() == "authorization"), None)
    if auth is not None:
        try:
            access_key, signature = auth[4:].strip().rsplit(":", 1)
        except ValueError:
            raise SigV4Error("InvalidArgument", "Authorization header is invalid.", 400) from None
        hmap = {k.lower(): v for k, v in headers}
        date = hmap.get("date", "")
        stamp = hmap.get("x-amz-date") or hmap.get("date")
        if not stamp:
            raise SigV4Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header", 403)
        when = parse_http_date(stamp)  # aware UTC, ASCII digits only
        if when is None:
            raise SigV4Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header", 403)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if abs((now - when).total_seconds()) > max_skew_seconds:
            raise SigV4Error("RequestTimeTooSkewed", "The difference between the request time and the current time is too large.", 403)
        presigned = False
        stamp_field = date
    else:
        q = dict((k, v) for k, v in _split_query(raw_query) if v is not None)
        access_key, signature, expires = q.get("AWSAccessKeyId", ""), q.get("Signature", ""), q.get("Expires", "")
        expires_at = parse_uint(expires)  # ASCII digits only: isdigit() accepts '²', which int() refuses
        if expires_at is None:
            raise SigV4Error("AccessDenied", "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters", 403)
        if expires_at < now.timestamp():
            raise SigV4Error("AccessDenied", "Request has expired", 403)
        presigned = True
        stamp_field = expires
        # The signed resource excludes the auth parameters themselves.
        raw_query = "&".join(
            p for p in raw_query.split("&") if unquote(p.split("=", 1)[0]) not in ("AWSAccessKeyId", "Signature", "Expires")
        )
    secret = lookup_secret(access_key)
    if secret is None:
        raise SigV4Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", 403)
    resources = [raw_path]
    if not resource_prefix and raw_path.count("/") == 1 and len(raw_path) > 1:
        # A bucket addressed path-style as ``/bucket``: botocore (and AWS) sign ``/bucket/``.
        resources.append(raw_path + "/")
    matched = False
    for resource in resources:
        sts = string_to_sign(method, resource, raw_query, headers, stamp_field, resource_prefix)
        matched |= hmac.compare_digest(sign(secret, sts).encode(), wire_bytes(signature))
    if not matched:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            403,
        )
    return V2Result(access_key, presigned)
