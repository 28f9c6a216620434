"""The devstore's request vocabulary: limits, subresource names, the request context and the
small parsers of request parts (keys, integers, tokens, object headers, copy sources, part
numbers).  No I/O."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_plus, unquote_to_bytes
from xml.etree import ElementTree as ET

from aiohttp import web
from multidict import CIMultiDictProxy

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error as ProxyS3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.sigv4 import AuthResult
from s3proxy.devstore.errors import S3Error, invalid_argument, malformed_xml
from s3proxy.devstore.records import MAX_PARTS
from s3proxy.devstore.render import OWNER_ID, OWNER_NAME, document, owner

MAX_OBJECT_SIZE = 5 << 30  # single PUT, single part, copy source
MAX_KEY_BYTES = 1024
MAX_XML_BODY = 4 << 20
MAX_DELETE_KEYS = 1000

HEX64 = re.compile(r"[0-9a-fA-F]{64}")

# Headers stored with an object and returned on GET/HEAD (lower-case -> response spelling).
STORED_HEADERS = {
    "content-type": "Content-Type",
    "content-encoding": "Content-Encoding",
    "content-disposition": "Content-Disposition",
    "cache-control": "Cache-Control",
    "content-language": "Content-Language",
    "expires": "Expires",
}
# response-* query parameters of GetObject / HeadObject.
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-encoding": "Content-Encoding",
    "response-content-disposition": "Content-Disposition",
    "response-cache-control": "Cache-Control",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
}
BUCKET_SUBRESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "cors", "delete", "encryption", "intelligent-tiering",
        "inventory", "lifecycle", "location", "logging", "metadataTable", "metrics", "notification",
        "object-lock", "ownershipControls", "policy", "policyStatus", "publicAccessBlock",
        "replication", "requestPayment", "session", "tagging", "uploads", "versioning", "versions",
        "website",
    }
)  # fmt: skip
OBJECT_SUBRESOURCES = frozenset(
    {"acl", "attributes", "legal-hold", "renameObject", "restore", "retention", "select", "tagging",
     "torrent", "uploadId", "uploads"}
)  # fmt: skip
# GET on a bucket configuration S3 has no value for: (code, message).
NO_CONFIG = {
    "policy": ("NoSuchBucketPolicy", "The bucket policy does not exist"),
    "cors": ("NoSuchCORSConfiguration", "The CORS configuration does not exist"),
    "lifecycle": ("NoSuchLifecycleConfiguration", "The lifecycle configuration does not exist"),
    "encryption": (
        "ServerSideEncryptionConfigurationNotFoundError",
        "The server side encryption configuration was not found",
    ),
    "tagging": ("NoSuchTagSet", "The TagSet does not exist"),
    "website": ("NoSuchWebsiteConfiguration", "The specified bucket does not have a website configuration"),
    "replication": ("ReplicationConfigurationNotFoundError", "The replication configuration was not found"),
    "object-lock": (
        "ObjectLockConfigurationNotFoundError",
        "Object Lock configuration does not exist for this bucket",
    ),
    "ownershipControls": (
        "OwnershipControlsNotFoundError",
        "The bucket ownership controls were not found",
    ),
    "publicAccessBlock": (
        "NoSuchPublicAccessBlockConfiguration",
        "The public access block configuration was not found",
    ),
}
# GET on a bucket configuration with a fixed, empty-ish answer.
FIXED_CONFIG = {
    "versioning": "VersioningConfiguration",
    "logging": "BucketLoggingStatus",
    "notification": "NotificationConfiguration",
    "accelerate": "AccelerateConfiguration",
}


def not_implemented(what: str = "") -> S3Error:
    message = "A header or query you provided requested a function that is not implemented."
    if what:
        message = f"{message} ({what})"
    return S3Error("NotImplemented", message, 501)


def method_not_allowed() -> S3Error:
    return S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)


def clean_header(value: str) -> str:
    """A header value as received, made safe to send back (undecodable bytes replaced)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def parse_xml(body: bytes) -> ET.Element:
    """DTDs and entities refused in every encoding (s3proxy.aws.xmlsafe); namespaces stripped."""
    try:
        return xmlsafe.parse(body)
    except ProxyS3Error:
        raise malformed_xml() from None


def int_param(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    parsed = parse_uint(raw)
    if parsed is None:
        raise invalid_argument("Provided " + name + " not an integer or within integer range", name, raw)
    value = parsed
    if value < 0:
        raise invalid_argument(f"Argument {name} must be an integer between 0 and 2147483647", name, raw)
    return min(value, maximum)


def check_key(key: str) -> None:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", 400, extra={"MaxSizeAllowed": str(MAX_KEY_BYTES)})


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError, binascii.Error):
        raise invalid_argument(
            "The continuation token provided is incorrect", "continuation-token", token
        ) from None


def object_headers(h: CIMultiDictProxy[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The stored headers and user metadata a request gives its object."""
    stored: dict[str, str] = {}
    for name in STORED_HEADERS:
        value = h.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            tokens = [t.strip() for t in value.split(",") if t.strip() and t.strip().lower() != "aws-chunked"]
            if not tokens:
                continue
            value = ",".join(tokens)
        stored[name] = clean_header(value)
    metadata: dict[str, str] = {}
    for name, value in h.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            value = clean_header(value)
            metadata[lname] = f"{metadata[lname]},{value}" if lname in metadata else value
    size = sum(len(k) - len("x-amz-meta-") + len(v.encode("utf-8")) for k, v in metadata.items())
    if size > 2048:
        raise S3Error(
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size",
            400,
            extra={"Size": str(size), "MaxSizeAllowed": "2048"},
        )
    return stored, metadata


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    raw, _, query = value.partition("?")
    version_id = None
    for part in query.split("&"):
        name, _, version = part.partition("=")
        if name == "versionId":
            version_id = unquote_plus(version)
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_argument("Invalid copy source encoding", "x-amz-copy-source", value) from None
    path = path.removeprefix("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise invalid_argument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            "x-amz-copy-source",
            value,
        )
    check_key(key)
    return bucket, key, version_id


def parse_part_number(value: str) -> int:
    number = parse_uint(value, max_digits=6) or 0
    if not 1 <= number <= MAX_PARTS:
        raise invalid_argument(
            f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive", "partNumber", value
        )
    return number


def acl_document() -> bytes:
    grant = (
        '<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
        f"<ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Grantee>"
        "<Permission>FULL_CONTROL</Permission></Grant>"
    )
    return document("AccessControlPolicy", f"{owner()}<AccessControlList>{grant}</AccessControlList>")


@dataclass
class Ctx:
    request: web.Request
    request_id: str
    method: str
    raw_path: str
    raw_query: str
    resource: str
    bucket: str | None
    key: str | None
    query: dict[str, str]
    auth: AuthResult | None = None
