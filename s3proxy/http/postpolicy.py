"""POST object's pure parts: the policy signature, the policy document and its conditions.

Sans-IO (no asyncio, no aiohttp), used by ``s3proxy.http.postobject``:

* ``verify_signature``: which configured identity signed the form's ``policy``
  field (SigV4: hex HMAC-SHA256 with the derived signing key; SigV2: base64
  HMAC-SHA1), compared in constant time;
* ``parse_policy``: the base64 JSON document (``expiration``, ``conditions``),
  ``InvalidPolicyDocument`` for anything malformed (duplicate keys included);
* ``check_policy``: expiration, every condition (exact match, ``eq``,
  ``starts-with``, each entry of a comma-separated ``Content-Type``), and
  "Extra input fields" for a field no condition names, with S3's messages;
* ``object_headers``: which form fields become the object's headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from s3proxy.aws import sigv2
from s3proxy.aws.errors import S3Error, access_denied
from s3proxy.aws.sigv4 import ALGORITHM, SigV4Error, derive_signing_key, wire_bytes
from s3proxy.config import Identity
from s3proxy.http import tagging

# Fields that authenticate the form or steer the answer: never object headers.
SIGNATURE_FIELDS = frozenset({"x-amz-signature", "signature", "awsaccesskeyid", "policy", "file"})
CONTROL_FIELDS = frozenset(
    {"key", "bucket", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "success_action_status",
     "success_action_redirect", "redirect"}
)
# Object headers a form may set (besides x-amz-meta-*, acl, and the SSE/grant/lock/checksum prefixes).
HEADER_FIELDS = frozenset(
    {"content-type", "cache-control", "content-disposition", "content-encoding", "content-language", "expires",
     "x-amz-storage-class", "x-amz-website-redirect-location", "content-md5"}
)
HEADER_PREFIXES = ("x-amz-meta-", "x-amz-grant-", "x-amz-object-lock-", "x-amz-checksum-")
SSE_PREFIX = "x-amz-server-side-encryption"
# Conditions that S3 allows as exact matches only.
EXACT_ONLY = frozenset(
    {"bucket", "success_action_status", "x-amz-algorithm", "x-amz-credential", "x-amz-date"}
)
_EXPIRATION = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?Z", re.ASCII)
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z", re.ASCII)


def policy_failed(detail: str) -> S3Error:
    return S3Error("AccessDenied", f"Invalid according to Policy: {detail}", 403)


def bad_policy(detail: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {detail}", 400)


def missing_field(name: str) -> S3Error:
    return S3Error(
        "InvalidArgument",
        f"Bucket POST must contain a field named '{name}'.  If it is specified, please check the order of the fields.",
        400, extra={"ArgumentName": name, "ArgumentValue": ""},
    )


# --------------------------------------------------------------------- signature


def verify_signature(fields: Mapping[str, str], identities: Sequence[Identity], allow_sigv2: bool) -> Identity:
    """The identity that signed the form's policy (SigV4 or SigV2), compared in constant time."""
    v4 = "x-amz-signature" in fields or "x-amz-algorithm" in fields
    v2 = "signature" in fields or "awsaccesskeyid" in fields
    if not v4 and not v2:
        raise access_denied()  # anonymous: s3proxy has no publicly writable buckets
    if v4 and v2:
        raise S3Error("InvalidArgument", "Only one authentication mechanism is allowed in a POST form.", 400)
    needed = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature", "policy") if v4 else (
        "awsaccesskeyid", "signature", "policy")
    for name in needed:
        if name not in fields:
            raise missing_field(name)
    policy = fields["policy"]
    by_key = {i.access_key: i for i in identities}
    if v4:
        if fields["x-amz-algorithm"] != ALGORITHM:
            raise S3Error("InvalidArgument", "Only AWS4-HMAC-SHA256 is supported as x-amz-algorithm.", 400)
        access_key, date, region = _credential(fields["x-amz-credential"])
        amz_date = fields["x-amz-date"]
        if _AMZ_DATE.fullmatch(amz_date) is None or amz_date[:8] != date:
            raise S3Error("InvalidArgument", "x-amz-date must be YYYYMMDDTHHMMSSZ on the credential's date.", 400)
        ident = _identity(by_key, access_key)
        key = derive_signing_key(ident.secret_key.get_secret_value(), date, region, "s3")
        expected = hmac.new(key, wire_bytes(policy), hashlib.sha256).hexdigest()
        provided = fields["x-amz-signature"]
    else:
        if not allow_sigv2:
            raise S3Error("InvalidArgument", "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.", 400)
        access_key = fields["awsaccesskeyid"]
        ident = _identity(by_key, access_key)
        expected = sigv2.sign(ident.secret_key.get_secret_value(), policy)
        provided = fields["signature"]
    if not hmac.compare_digest(expected.encode(), wire_bytes(provided)):
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            403, (("AWSAccessKeyId", access_key), ("StringToSign", policy), ("SignatureProvided", provided)),
        )
    return ident


def _credential(value: str) -> tuple[str, str, str]:
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or not re.fullmatch(r"[0-9]{8}", parts[1], re.ASCII) or not parts[2] \
            or parts[3] != "s3" or parts[4] != "aws4_request":
        raise S3Error("InvalidArgument", 'x-amz-credential must be "<access key>/YYYYMMDD/<region>/s3/aws4_request".', 400,
                      extra={"ArgumentName": "x-amz-credential"})
    return parts[0], parts[1], parts[2]


def _identity(by_key: Mapping[str, Identity], access_key: str) -> Identity:
    ident = by_key.get(access_key)
    if ident is None:
        raise SigV4Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", 403,
                         (("AWSAccessKeyId", access_key),))
    return ident


# --------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Policy:
    expiration: datetime
    conditions: tuple[tuple[str, str, str], ...]  # (op "eq"/"starts-with", field lower case, value)
    ranges: tuple[tuple[int, int], ...]  # content-length-range (min, max)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_policy(policy_b64: str) -> Policy:
    """The policy document (base64 JSON); InvalidPolicyDocument for anything S3 would refuse."""
    try:
        doc = json.loads(base64.b64decode("".join(policy_b64.split()), validate=True), object_pairs_hook=_unique_keys)
    except (binascii.Error, ValueError, RecursionError):
        raise bad_policy("Invalid JSON.") from None
    if not isinstance(doc, dict):
        raise bad_policy("Invalid JSON.")
    exp = doc.get("expiration")
    m = _EXPIRATION.fullmatch(exp) if isinstance(exp, str) else None
    if m is None:
        raise bad_policy("Policy missing expiration." if exp is None else f"Invalid 'expiration' value: '{exp}'")
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
        expiration = datetime(y, mo, d, h, mi, sec, tzinfo=UTC)
    except ValueError:
        raise bad_policy(f"Invalid 'expiration' value: '{exp}'") from None
    raw = doc.get("conditions")
    if not isinstance(raw, list):
        raise bad_policy("Policy missing conditions.")
    conditions: list[tuple[str, str, str]] = []
    ranges: list[tuple[int, int]] = []
    for c in raw:
        if isinstance(c, dict):
            for name, value in c.items():
                if not isinstance(value, str):
                    raise bad_policy(f"Invalid Simple-Condition: value must be a string: {json.dumps(c)}")
                conditions.append(("eq", name.lower(), value))
        elif isinstance(c, list) and len(c) == 3 and isinstance(c[0], str):
            op = c[0].lower()
            if op == "content-length-range":
                lo, hi = (_length(v, c) for v in c[1:])
                ranges.append((lo, hi))
            elif op in ("eq", "starts-with") and isinstance(c[1], str) and c[1].startswith("$") and isinstance(c[2], str):
                name = c[1][1:].lower()
                if op == "starts-with" and name in EXACT_ONLY:
                    raise bad_policy(f"Invalid Condition: starts-with is not supported for {name}: {json.dumps(c)}")
                conditions.append((op, name, c[2]))
            else:
                raise bad_policy(f"Invalid Condition: {json.dumps(c)}")
        else:
            raise bad_policy(f"Invalid Condition: {json.dumps(c)}")
    return Policy(expiration, tuple(conditions), tuple(ranges))


def _length(v: object, c: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise bad_policy(f"Invalid content-length-range: {json.dumps(c)}")
    if isinstance(v, str):
        if not v.isascii() or not v.isdigit():
            raise bad_policy(f"Invalid content-length-range: {json.dumps(c)}")
        v = int(v)
    if v < 0:
        raise bad_policy(f"Invalid content-length-range: {json.dumps(c)}")
    return v


def check_policy(policy: Policy, fields: Mapping[str, str], now: datetime) -> None:
    """Expiration, every condition, and no field without a condition (``fields`` as the object gets them)."""
    if policy.expiration <= now:
        raise policy_failed("Policy expired.")
    for op, name, want in policy.conditions:
        have = fields.get(name, "")
        if op == "eq":
            ok = have == want
        elif name == "content-type" and "," in have:  # each of a list must match (S3)
            ok = all(v.strip().startswith(want) for v in have.split(","))
        else:
            ok = have.startswith(want)
        if not ok:
            raise policy_failed(f"Policy Condition failed: {json.dumps([op, '$' + name, want])}")
    covered = {name for _, name, _ in policy.conditions}
    extra = [n for n in fields if n not in covered and n not in SIGNATURE_FIELDS and n != "bucket"
             and not n.startswith("x-ignore-")]
    if extra:
        raise policy_failed(f"Extra input fields: {', '.join(sorted(extra))}")


def size_limits(policy: Policy, hard_max: int) -> tuple[int, int]:
    lo, hi = 0, hard_max
    for a, b in policy.ranges:
        lo, hi = max(lo, a), min(hi, b)
    return lo, hi


# --------------------------------------------------------------------- headers


def object_headers(fields: Mapping[str, str]) -> dict[str, str]:
    """The headers the object gets from the form (and the SSE fields, as headers)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name in SIGNATURE_FIELDS or name in CONTROL_FIELDS or name.startswith("x-ignore-"):
            continue
        if name == "acl":
            out["x-amz-acl"] = value
        elif name in HEADER_FIELDS or name.startswith(HEADER_PREFIXES) or name.startswith(SSE_PREFIX):
            out[name] = value
        elif name == "x-amz-security-token":
            raise S3Error("InvalidToken", "s3proxy issues no session tokens; sign the policy with an access key.", 400)
        elif name == "tagging":
            out["x-amz-tagging"] = tagging.form_field(value)
        elif name.startswith("x-amz-"):
            raise S3Error("NotImplemented", f"s3proxy does not support the POST form field {name!r}.", 501)
    return out
